"""The epoch plan: which stored sample each batch holds, in which order.

Per epoch the shards are permuted from (seed, epoch), their samples concatenated into one sequence of
slots, and the sequence is cut into contiguous ranges, one per stream. Each stream emits its range in the
order of a seeded shuffle buffer simulated on slot indices: the order depends only on (seed, epoch,
stream), never on the data, so skipping the first k batches needs no decoding and whole shards before the
resume point are never opened. Memory stays bounded by the buffer size because the order is what a real
buffer would emit.

Training (`StepLayout`): the streams are a fixed number of virtual streams V, chosen when the run starts
(its world size) and kept by its checkpoints, each reading its own range of shards sequentially. An
optimizer step of G samples (all ranks, all accumulation micro-batches) takes the next G / V samples of
every stream; the step's sequence is stream 0's chunk, then stream 1's, ... Rank r takes the contiguous
piece [r G / W, (r + 1) G / W) of it, cut into micro-batches of its batch size. So the samples of every
step, in order, are a function of (seed, epoch, V, G) alone: a run resumed on another world size W (or
batch size and accumulation with the same G) reads exactly the sequence of the run it continues, and an
epoch has (num_samples // V) // (G / V) steps whatever W is. With V = W (a fresh run) rank r reads stream
r alone, batch after batch, which is the order of the per-rank streams before virtual streams existed.
The loader workers of a rank each build whole micro-batches (worker k the k-th of every round), reading
the shards of the streams they need and seeking past the samples of the other workers' batches.

Evaluation: every (rank, worker) pair is one stream; the ranges cover every slot, the first
`num_samples % num_streams` streams holding one slot more, and each worker emits its own stream.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from eg_data.errors import DataError


def plan_rng(seed: int, *parts: int) -> np.random.Generator:
    """A generator fixed by the seed and integer parts (epoch, stream, ...)."""
    text = "|".join(str(p) for p in (seed, *parts))
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def buffer_order(length: int, buffer_size: int, rng: np.random.Generator) -> np.ndarray:
    """The emission order of a shuffle buffer of `buffer_size` fed positions 0..length-1.

    Position p is always emitted after at most `buffer_size` positions beyond the read cursor.
    """
    if buffer_size <= 1 or length <= 1:
        return np.arange(length)
    # Draw all random picks at once; the buffer loop itself stays pure Python integers.
    picks = rng.random(length)
    out = np.empty(length, dtype=np.int64)
    buf: list[int] = []
    n_out = 0
    for pos in range(length):
        buf.append(pos)
        if len(buf) >= buffer_size:
            j = int(picks[n_out] * len(buf))
            out[n_out] = buf[j]
            buf[j] = buf[-1]
            buf.pop()
            n_out += 1
    while buf:
        j = int(picks[n_out] * len(buf))
        out[n_out] = buf[j]
        buf[j] = buf[-1]
        buf.pop()
        n_out += 1
    return out


@dataclass
class StreamPlan:
    """One stream's epoch: its slots in read order, and the order in which they are emitted."""

    shard_ids: np.ndarray  # (L,) shard index of each slot, in read order
    ordinals: np.ndarray  # (L,) sample ordinal inside that shard, in read order
    emit_order: np.ndarray  # (L,) read positions in emission order


def stream_range(num_samples: int, num_streams: int, stream: int, cover_all: bool) -> tuple[int, int]:
    """(first slot, number of slots) of `stream`. Equal shares with the remainder dropped, or with
    `cover_all` every slot, the first `num_samples % num_streams` streams taking one more."""
    share, extra = divmod(num_samples, num_streams)
    if not cover_all:
        return stream * share, share
    return stream * share + min(stream, extra), share + (stream < extra)


def plan_stream(
    counts: list[int],
    seed: int,
    epoch: int,
    stream: int,
    num_streams: int,
    shuffle: bool,
    buffer_size: int,
    cover_all: bool = False,
) -> StreamPlan:
    """The emission order of `stream` (0 <= stream < num_streams) for `epoch` over shards of `counts`;
    `cover_all` (evaluation) gives every slot to some stream (see `stream_range`)."""
    counts_arr = np.asarray(counts, dtype=np.int64)
    shard_order = plan_rng(seed, epoch).permutation(len(counts)) if shuffle else np.arange(len(counts))
    ordered_counts = counts_arr[shard_order]
    ends = np.cumsum(ordered_counts)  # (S,) end slot of each shard in the epoch sequence
    start, length = stream_range(int(ends[-1]) if len(ends) else 0, num_streams, stream, cover_all)
    slots = np.arange(start, start + length)  # (L,) global slots, in read order
    which = np.searchsorted(ends, slots, side="right")  # (L,) index into shard_order
    ordinals = slots - (ends[which] - ordered_counts[which])
    shard_ids = shard_order[which]
    order = (
        buffer_order(length, buffer_size, plan_rng(seed, epoch, 1 + stream)) if shuffle else np.arange(length)
    )
    return StreamPlan(shard_ids=shard_ids, ordinals=ordinals, emit_order=order)


@dataclass(frozen=True)
class StepLayout:
    """How the samples of an optimizer step come from the virtual streams and go to the ranks.

    num_streams: V, fixed for the run; step_samples: G, the global batch (all ranks, all micro-batches);
    world_size: W; batch_size: b, a rank's micro-batch. G must be a multiple of V and of W * b (the
    accumulation is G / (W * b))."""

    num_streams: int
    step_samples: int
    world_size: int
    batch_size: int

    def __post_init__(self) -> None:
        problem = layout_problem(self.num_streams, self.step_samples, self.world_size, self.batch_size)
        if problem:
            raise DataError(problem)

    @property
    def chunk(self) -> int:
        """Samples each virtual stream gives to every step (G / V)."""
        return self.step_samples // self.num_streams

    @property
    def accumulation(self) -> int:
        """Micro-batches per step on each rank (G / (W * b))."""
        return self.step_samples // (self.world_size * self.batch_size)

    def steps(self, num_samples: int) -> int:
        """Whole steps in an epoch of `num_samples` slots (each stream holds num_samples // V of them)."""
        return (num_samples // self.num_streams) // self.chunk

    def positions(self, rank: int, batches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(stream, emission index) of every sample of `rank`'s micro-batches `batches` (indices in the
        epoch), batch after batch: two (len(batches) * b,) arrays."""
        b, a = self.batch_size, self.accumulation
        step, micro = np.divmod(np.asarray(batches, dtype=np.int64), a)  # (K,), (K,)
        start = rank * (self.step_samples // self.world_size) + micro * b  # (K,) offset in the step
        offsets = start[:, None] + np.arange(b)[None, :]  # (K, b) positions in the step's sequence
        stream, within = np.divmod(offsets, self.chunk)  # (K, b) which stream, where in its chunk
        emission = step[:, None] * self.chunk + within  # (K, b) index in the stream's emission order
        return stream.reshape(-1), emission.reshape(-1)


def layout_problem(num_streams: int, step_samples: int, world_size: int, batch_size: int) -> str:
    """Why (V, G, W, b) is no layout (one line), or "" when it is one."""
    if min(num_streams, step_samples, world_size, batch_size) < 1:
        return (
            f"streams {num_streams}, global batch {step_samples}, world size {world_size}, batch {batch_size}"
        )
    if step_samples % num_streams:
        return f"a global batch of {step_samples} does not split over the run's {num_streams} sample streams"
    if step_samples % (world_size * batch_size):
        return (
            f"a global batch of {step_samples} is no whole number of batches of {batch_size} on each of "
            f"{world_size} rank(s)"
        )
    return ""
