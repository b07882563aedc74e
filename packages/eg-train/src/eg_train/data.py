"""Batch plumbing: device transfer, batch size inference, model output parsing, per-epoch batch streams."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from eg_train.checkpoint import capture_rng_state, restore_rng_state
from eg_train.distributed import all_gather_objects, all_reduce_sum
from eg_train.errors import TrainError

_END = object()


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Tensors (also inside nested dicts) go to `device`; strings, lists and other values stay as they are."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    return batch


def batch_size(batch: Any) -> int:
    """Size of dim 0 of the first tensor in the batch dict (else the length of the first list)."""
    if not isinstance(batch, dict):
        raise TrainError(
            f"a train/val batch must be a dict, got {type(batch).__name__}; collate batches to dicts"
        )
    for v in batch.values():
        if isinstance(v, torch.Tensor) and v.ndim > 0:
            return int(v.shape[0])
    for v in batch.values():
        if isinstance(v, (list, tuple)):
            return len(v)
    raise TrainError(f"cannot infer the batch size: batch with keys {sorted(batch)} has no tensor or list")


def split_output(out: Any) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """(loss, named scalar parts) from a model's output dict; non-scalar entries (embeddings...) are ignored."""
    if not isinstance(out, dict):
        raise TrainError(f"model forward must return a dict with 'loss'; it returned {type(out).__name__}")
    loss = out.get("loss")
    if loss is not None and not isinstance(loss, torch.Tensor):
        loss = torch.tensor(float(loss))
    parts: dict[str, torch.Tensor] = {}
    for k, v in out.items():
        if k == "loss":
            continue
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            parts[k] = v.detach().float().reshape(())
        elif isinstance(v, (float, int)) and not isinstance(v, bool):
            parts[k] = torch.tensor(float(v))
    return loss, parts


class StepSums:
    """The micro-batches of one optimizer step on this rank: their count, samples, non-finite losses, and the
    loss and named parts summed; `reduce` averages them over micro-batches and ranks."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.micro = self.samples = 0
        self.bad = torch.zeros((), device=device)
        self.loss: Any = 0.0
        self.parts: dict[str, Any] = {}

    def add(self, loss: torch.Tensor, parts: dict[str, torch.Tensor], samples: int) -> None:
        """Count one micro-batch (after its backward)."""
        detached = loss.detach().float()
        self.bad = self.bad + (~torch.isfinite(detached)).float()
        self.loss = self.loss + detached
        for k, v in parts.items():
            self.parts[k] = self.parts.get(k, 0.0) + v.to(self.device)
        self.micro += 1
        self.samples += samples

    def reduce(self, world_size: int) -> tuple[bool, float, dict[str, float]]:
        """(any rank saw a non-finite loss, mean loss, mean parts) over micro-batches and ranks; a collective.

        Ranks may name different parts (a model reports no part for a pair that none of the rank's rows
        has, e.g. every caption of a small per-rank batch dropped): the names are gathered first, so every
        rank packs the same vector, and a part is the mean over the ranks that reported it."""
        names = sorted(self.parts)
        if world_size > 1:
            names = sorted(set().union(*all_gather_objects(names)))
        zero = torch.zeros((), device=self.device)
        means = [self.parts[k] / self.micro if k in self.parts else zero for k in names]
        counts = [torch.ones((), device=self.device) if k in self.parts else zero for k in names]
        packed = torch.stack([self.bad, self.loss / self.micro, *means, *counts])
        values = all_reduce_sum(packed.float()).tolist()
        sums, reported = values[2 : 2 + len(names)], values[2 + len(names) :]
        return values[0] > 0, values[1] / world_size, {k: v / n for k, v, n in zip(names, sums, reported)}


def has_position(data: Any) -> bool:
    """True when the data supports exact positioning: set_epoch(epoch, start_batch) and __len__."""
    return callable(getattr(data, "set_epoch", None)) and _has_len(data)


def _has_len(data: Any) -> bool:
    try:
        len(data)
    except TypeError:
        return False
    return True


def data_length(data: Any) -> int | None:
    """len(data) (batches per epoch on this rank) or None for unsized iterables."""
    return len(data) if _has_len(data) else None


def steps_per_epoch(data: Any, grad_accum_steps: int) -> int | None:
    """Optimizer steps in one epoch of `data` (None for unsized data): a short last group still makes one."""
    n = data_length(data)
    if n is None:
        return None
    if n == 0:
        raise TrainError("train data has length 0; check the dataset path and the batch size")
    return -(-n // grad_accum_steps)


def total_steps(max_steps: int, epochs: int, per_epoch: int | None) -> int:
    """The run's optimizer steps: max_steps when > 0, else epochs full epochs."""
    if max_steps > 0:
        return max_steps
    if per_epoch is None:
        raise TrainError("epochs needs train data with __len__ to size the schedule; set max_steps")
    return epochs * per_epoch


class BatchStream:
    """One epoch of batches as (batch, is_last_in_epoch).

    With a known length the last batch is found by counting; without one the stream reads one batch
    ahead, because DDP must sync gradients on the epoch's last micro-batch and cannot learn it later.
    """

    def __init__(
        self, data: Iterable, index: int, length: int | None, isolate_start: torch.device | None = None
    ) -> None:
        # isolate_start: run iterator creation and the first fetch with the global RNG saved and put back.
        # A DataLoader draws its base seed from the global RNG there; a seeking loader would draw it at
        # the resume point instead of the epoch start, shifting every later random draw of the model.
        saved = capture_rng_state(isolate_start) if isolate_start is not None else None
        self.it: Iterator = iter(data)
        self._isolate = isolate_start
        if saved is not None:
            restore_rng_state(saved, isolate_start)
        self.index = index
        self.length = length
        self._ahead: Any = None

    def skip(self, count: int) -> None:
        """Consume `count` batches without using them (resume of data that cannot seek)."""
        for i in range(count):
            if next(self.it, _END) is _END:
                raise TrainError(
                    f"train data ended after {i} batches while skipping to the checkpoint's "
                    f"position {count}; the data changed since the checkpoint"
                )
        self.index += count

    def prefetch(self) -> None:
        """Read the look-ahead batch now (so a resumed run reads it under the same RNG state)."""
        if self.length is None and self._ahead is None:
            self._ahead = next(self.it, _END)

    def next(self) -> tuple[Any, bool] | None:
        """The next batch and whether it ends the epoch; None when the epoch has no batch left."""
        if self.length is not None:
            if self.index >= self.length:
                return None
            if self._isolate is not None:
                saved = capture_rng_state(self._isolate)
                batch = next(self.it, _END)
                restore_rng_state(saved, self._isolate)
                self._isolate = None
            else:
                batch = next(self.it, _END)
            if batch is _END:
                return None
            self.index += 1
            return batch, self.index == self.length
        self.prefetch()
        batch, self._ahead = self._ahead, None
        if batch is _END:
            return None
        self.index += 1
        self.prefetch()
        return batch, self._ahead is _END


def open_epoch(
    data: Iterable, epoch: int, start: int, epoch_start_rng: dict[str, Any] | None, device: torch.device
) -> BatchStream:
    """A BatchStream for `epoch` positioned after `start` consumed batches.

    Data with set_epoch(epoch, start_batch) + __len__ seeks directly. Other data is replayed: RNG set to
    its state at the epoch's start (e.g. DataLoader(shuffle=True) draws its permutation at iter()), the
    consumed batches skipped, then the current RNG state put back. Data whose randomness comes from the
    global RNG in the middle of an epoch cannot be replayed exactly; give it its own seeded generator.
    """
    if has_position(data):
        data.set_epoch(epoch, start_batch=start)
        return BatchStream(data, start, data_length(data), isolate_start=device)
    if callable(getattr(data, "set_epoch", None)):
        data.set_epoch(epoch)
    if start == 0:
        return BatchStream(data, 0, data_length(data))
    resume_rng = capture_rng_state(device)
    if epoch_start_rng is not None:
        restore_rng_state(epoch_start_rng, device)
    stream = BatchStream(data, 0, data_length(data))
    stream.skip(start)
    stream.prefetch()
    restore_rng_state(resume_rng, device)
    return stream
