"""Resume on another world size: the checkpoint's sample order kept, and the log of sample keys that shows it.

Data that sets its own training order (eg-data's ShardLoader and MixtureLoader) has `order_state()` ->
{"num_streams": V, "step_samples": G, "batch_size": b}, `check_order(V, G, b)` and `set_order(V, G, b)`:
the samples of every data step (G of them, over all ranks) are a function of the seed, the data and (V, G)
alone, so any world size W that divides G reads the same sequence, each rank b = G / W of each step.
A checkpoint keeps `order_state()` as `data_order`. Before a resume restores anything, `keep_order` sets the
data to that order: the per-rank batch becomes G / W and `grad_accum_steps` is kept, so the global batch
(G x accumulation per optimizer step), the samples of every micro-step and hence the contrastive batch of
each micro-step are those of the run being continued. A world size that does not divide G is refused in
one line (TrainError) before anything is loaded.

`SampleKeyLog` (`log_sample_keys`) writes the keys of every optimizer step, all ranks in global order
(micro-step by micro-step, rank by rank), to output_dir/sample_keys.jsonl on rank 0: the order, audited.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eg_train.distributed import all_gather_objects
from eg_train.errors import TrainError

ORDER_KEYS = ("num_streams", "step_samples", "batch_size")
KEY_LOG = "sample_keys.jsonl"


def has_order(data: Any) -> bool:
    """True when `data` sets its own training order (order_state / check_order / set_order)."""
    return all(callable(getattr(data, name, None)) for name in ("order_state", "check_order", "set_order"))


def order_of(data: Any) -> dict[str, int] | None:
    """What a checkpoint keeps of the data's order (None for data without one)."""
    return {k: int(v) for k, v in data.order_state().items()} if has_order(data) else None


def keep_order(
    data: Any, c: dict[str, Any], path: Path, world_size: int, grad_accum_steps: int
) -> str | None:
    """Set `data` to the order of checkpoint `c` (read from `path`) on `world_size` ranks, before the
    checkpoint's state is restored. Returns the line that says the batch changed (None when the data reads
    as it was built); TrainError (one line) when the order cannot be kept. Every rank calls it alike."""
    if not has_order(data):
        return None  # restore says what does not resume exactly on another world size
    saved, written = c.get("data_order"), int(c["world_size"])
    if saved is None:
        if written == world_size:
            return None  # a checkpoint of data built as this run's: the same order
        raise TrainError(
            f"{path}: this checkpoint keeps no data order (data_order), so a resume on {world_size} rank(s) "
            f"cannot continue the sample order of its {written}; resume on {written} or set resume=never"
        )
    missing = [k for k in ORDER_KEYS if k not in saved]
    if missing:
        raise TrainError(f"{path}: data_order lacks {missing[0]!r}; it was not written by this eg-train")
    streams, step, old_batch = (int(saved[k]) for k in ORDER_KEYS)
    configured = int(data.order_state()["batch_size"])
    if data.order_state() == {"num_streams": streams, "step_samples": step, "batch_size": step // world_size}:
        return None
    if step % world_size:
        fits = ", ".join(str(w) for w in range(1, step + 1) if step % w == 0)
        raise TrainError(
            f"{path}: a resume on {world_size} rank(s) cannot keep the run's sample order: each micro-step "
            f"reads {step} samples ({written} rank(s) x batch_size {old_batch}), which do not split over "
            f"{world_size}; resume on {fits} rank(s) or set resume=never"
        )
    batch = step // world_size
    try:
        data.check_order(streams, step, batch)  # changes nothing; set_order then changes the data
    except ValueError as e:  # the data's own one-line error (eg-data's DataError)
        raise TrainError(
            f"{path}: a resume on {world_size} rank(s) cannot keep the run's sample order: {e}"
        ) from None
    data.set_order(streams, step, batch)
    return (
        f"resuming a checkpoint of {written} rank(s) on {world_size}: the global batch stays "
        f"{step * grad_accum_steps} ({step} per micro-step x grad_accum_steps {grad_accum_steps}) in the "
        f"run's sample order, so batch_size is {batch} per rank (configured {configured})"
    )


class SampleKeyLog:
    """The sample keys of every optimizer step, gathered to rank 0 and appended to output_dir/sample_keys.jsonl
    as {"step": s, "keys": [...]} (micro-step by micro-step, rank by rank: the global order)."""

    def __init__(self, output_dir: Path, is_main: bool) -> None:
        self.path = Path(output_dir) / KEY_LOG
        self.is_main = is_main
        self.micro: list[list[str]] = []  # this rank's keys, one list per micro-batch of the current step

    def start(self, resumed_step: int | None) -> None:
        """Rank 0: a fresh file, or on resume the lines of steps up to the resumed one (a killed run may
        have logged later steps)."""
        if not self.is_main:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if resumed_step is not None and self.path.is_file():
            for line in self.path.read_text().splitlines():
                if line.strip() and json.loads(line)["step"] <= resumed_step:
                    kept.append(line + "\n")
        self.path.write_text("".join(kept))

    def add(self, batch: dict[str, Any]) -> None:
        """Note one micro-batch (its `key` list)."""
        keys = batch.get("key")
        if not isinstance(keys, (list, tuple)):
            raise TrainError("log_sample_keys needs batches with a 'key' list (the sample keys)")
        self.micro.append([str(k) for k in keys])

    def step(self, step: int) -> None:
        """Gather the step's keys from every rank (a collective) and append the line on rank 0."""
        ranks, self.micro = all_gather_objects(self.micro), []
        if not self.is_main:
            return
        keys = [k for m in range(max(len(r) for r in ranks)) for r in ranks if m < len(r) for k in r[m]]
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "keys": keys}) + "\n")
