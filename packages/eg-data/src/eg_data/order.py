"""The epoch plan: which stored sample each loader stream reads, in which order.

Every (rank, worker) pair is one stream. Per epoch the shards are permuted from (seed, epoch), their
samples concatenated into one sequence of slots, and the sequence is cut into contiguous ranges, one
per stream. In training the ranges are equal (the remainder is dropped, so every rank gets the same
number of batches even with fewer shards than streams); in evaluation they cover every slot, the first
`num_samples % num_streams` streams holding one slot more. Each stream then emits its range in the order of a seeded shuffle
buffer simulated on slot indices: the order depends only on (seed, epoch, stream), never on the data,
so skipping the first k batches needs no decoding and whole shards before the resume point are never
opened. Memory stays bounded by the buffer size because the order is what a real buffer would emit.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np


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
