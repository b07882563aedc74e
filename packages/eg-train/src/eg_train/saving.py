"""Checkpoint saving as the training loop sees it: serialize the captured run state, hand the bytes to the
background writer, and account for each write's outcome.

A failed write (disk full...) warns when its outcome is collected and training goes on with the earlier
files intact; a failed final write raises TrainError.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from eg_train import checkpoint as ck
from eg_train.errors import TrainError


class CheckpointSaver:
    """Writes checkpoints into `folder` one at a time, on a background thread unless `async_save` is off."""

    def __init__(self, folder: Path, keep_last_n: int, async_save: bool) -> None:
        self.folder = folder
        self.keep_last_n = keep_last_n
        self.async_save = async_save
        self.writer = ck.CheckpointWriter()
        self.last_written_step = -1  # of the newest checkpoint_latest.pt known to be on disk
        self.num_failed_saves = 0

    def submit(self, contents: dict[str, Any], step: int, latest: bool, best: bool, final: bool) -> None:
        """Serialize `contents` now (training may then change the tensors) and write them.

        With `async_save`, the caller is blocked only while the state is serialized (about one torch.save);
        the atomic writes and fsyncs overlap the next steps."""
        data = ck.serialize(contents)
        self.collect()  # one write at a time; the previous one's failure is reported first
        self.writer.submit(self.folder, data, step, latest, best, self.keep_last_n)
        if not self.async_save:
            self.collect(final=final)

    def poll(self) -> None:
        """Account for a write that has ended, without waiting for one in flight."""
        if self.writer.done():
            self.collect()

    def collect(self, final: bool = False) -> None:
        """Wait for the write in flight (if any) and account for its outcome."""
        outcome = self.writer.wait()
        if outcome is None:
            return
        if outcome.error is None:
            if outcome.latest:
                self.last_written_step = outcome.step
            return
        self.num_failed_saves += 1
        kept = f"step {self.last_written_step}" if self.last_written_step >= 0 else "none yet"
        if final:
            raise TrainError(
                f"the final checkpoint (step {outcome.step}) could not be written to "
                f"{self.folder}: {outcome.error}; the newest one there is from {kept}"
            ) from None
        warnings.warn(
            f"checkpoint for step {outcome.step} not written to {self.folder} ({outcome.error}); "
            f"the earlier files are intact (latest: {kept}); training continues "
            f"({self.num_failed_saves} failed saves so far)",
            stacklevel=4,
        )

    def close(self) -> None:
        """Finish the write in flight and stop the writer thread."""
        self.writer.close()
