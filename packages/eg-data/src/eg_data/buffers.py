"""Batch buffers reused from batch to batch instead of allocated per batch.

A new 64 x 3 x 224 x 224 float batch is 38.5 MB of fresh pages; in shared memory (how a loader worker
hands a batch to the training process) the page faults alone cost 0.5 ms per sample on the 2-core CI
machine, more than the whole 224 px image transform. The pool keeps a few buffers ("slots") per stream
in shared memory. A producer (a loader worker, or the loader itself with 0 workers) claims a free slot,
writes the batch's tensors into it and sends only the slot number; the consumer side turns it back into
tensors that own the slot until the last of them (and of their views) is gone, and only then is the
slot free again. A producer that finds no free slot (the consumer still holds them all) uses fresh
tensors, so keeping batches around is always safe, only slower.
"""

from __future__ import annotations

import weakref
from math import prod
from typing import Any

import numpy as np
import torch

ALIGN = 64  # bytes: every field starts on a cache line


def shared_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialized tensor in shared memory; its pages are only allocated when first written."""
    storage = torch.UntypedStorage._new_shared(max(1, prod(shape)) * dtype.itemsize)  # no zero-fill
    return torch.empty(0, dtype=dtype).set_(storage)[: prod(shape)].view(shape)


class BatchPool:
    """`slots` batch buffers for each of `streams` producers, for fixed per-sample field shapes.

    `fields` maps a batch key to its per-sample shape and dtype, e.g. `{"image": ((3, 224, 224),
    torch.float32)}`; each buffer holds `batch_size` rows of every field.
    """

    def __init__(
        self,
        fields: dict[str, tuple[tuple[int, ...], torch.dtype]],
        batch_size: int,
        streams: int,
        slots: int,
    ):
        self.layout: dict[str, tuple[int, int, tuple[int, ...], torch.dtype]] = {}
        offset = 0
        for name, (shape, dtype) in fields.items():
            nbytes = batch_size * prod(shape) * dtype.itemsize
            self.layout[name] = (offset, nbytes, (batch_size, *shape), dtype)
            offset += -(-nbytes // ALIGN) * ALIGN
        self.memory = [[shared_empty((offset,), torch.uint8) for _ in range(slots)] for _ in range(streams)]
        self.free = torch.ones(streams, slots, dtype=torch.uint8).share_memory_()  # 1 = free
        self._leased: set[tuple[int, int]] = set()  # consumer side: slots held by live batches

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_leased"] = set()  # leases live in the consumer process only
        return state

    def _views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            name: flat[offset : offset + nbytes].view(dtype).view(shape)
            for name, (offset, nbytes, shape, dtype) in self.layout.items()
        }

    def claim(self, stream: int) -> tuple[int, dict[str, torch.Tensor]] | None:
        """Producer side: a free slot of `stream` and its full-size field tensors, or None if all are held."""
        free = self.free.numpy()[stream]
        # A snapshot: the consumer frees slots concurrently (its finalizers write 1s into this shared row),
        # and numpy's nonzero counts twice and raises if the row changes in between. Only this producer
        # writes 0s, so a slot free in the snapshot is still free; one freed just after is seen next time.
        candidates = np.flatnonzero(free.copy())
        if not len(candidates):
            return None
        slot = int(candidates[0])
        free[slot] = 0
        return slot, self._views(self.memory[stream][slot])

    def unclaim(self, stream: int, slot: int) -> None:
        """Producer side: give back a claimed slot that no batch was sent in."""
        self.free.numpy()[stream, slot] = 1

    def lease(self, stream: int, slot: int, rows: int) -> dict[str, torch.Tensor]:
        """Consumer side: the first `rows` rows of each field of a slot the producer filled. The slot goes
        back to the producer when every returned tensor and every view of one is gone."""
        owner = self.memory[stream][slot].numpy()[:]  # a new array object, alive exactly as long as the batch
        key = (stream, slot)
        self._leased.add(key)
        weakref.finalize(owner, self._release, key)
        views = self._views(torch.from_numpy(owner))
        return {name: view[:rows] for name, view in views.items()}

    def _release(self, key: tuple[int, int]) -> None:
        # Runs when the batch's memory is freed, possibly inside another operation: plain numpy only.
        self._leased.discard(key)
        self.free.numpy()[key] = 1

    def reset(self) -> None:
        """Consumer side, with no producer running: slots claimed for batches that were never delivered
        (an iteration abandoned with batches in flight) become free again; leased ones stay held."""
        free = self.free.numpy()
        free[...] = 1
        for key in self._leased:
            free[key] = 0
