"""The shard loader: reads webdataset shards in the epoch plan's order (see `order.py`), decodes and
transforms samples in loader workers, skips bad ones counting each by reason, and writes the batch dict
of the architecture contract into reused buffers. Implements `set_epoch(epoch, start_batch)` and
`__len__` for the trainer's exact mid-epoch resume, and `data_report()` / `restore_data_report()` for
the bad-sample report (continued across a resume, so `max_bad_fraction` judges the whole epoch).

Batches are cut from a fixed number of plan slots (`batch_size`), so batch counts and contents are known
before decoding: a bad sample leaves its batch one smaller instead of pulling in a later sample. The
exception is `qa_pairs: all` (evaluation only): a sample gives one row per QA pair and batches are cut
at `batch_size` rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from eg_data.buffers import BatchPool, shared_empty
from eg_data.errors import DataError
from eg_data.order import StepLayout, StreamPlan, plan_stream, stream_range
from eg_data.report import BAD_REASONS, REPORT_KEY, SHARD_FAULTS, EpochReport
from eg_data.samples import Row, decode_sample, place, row_strings, row_values, tensor_fields
from eg_data.settings import LoaderSettings
from eg_data.shards import AUDIO_EXTS, IMAGE_EXTS, iter_raw_samples, load_index, starts_like_tar

SLOT_KEY = "__slot__"  # a batch sent as (stream, pool slot, rows) instead of its tensors
POOL_SLOTS = 4  # buffers per stream: 2 batches queued (DataLoader's prefetch), 1 being filled, 1 in use
REASON_INDEX = {reason: i for i, reason in enumerate(BAD_REASONS)}

Buffers = tuple[int | None, dict[str, torch.Tensor]]  # (pool slot or None, full-size field tensors)


class ShardDataset(IterableDataset):
    """Yields the batches of one rank; each loader worker builds every `workers_per_rank`-th batch (in
    evaluation each worker plays one stream of the plan)."""

    def __init__(self, cfg: LoaderSettings, rank: int, world_size: int):
        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        self.shards = load_index(cfg.shard_dir)
        self.counts = [s.num_samples for s in self.shards]
        self.workers_per_rank = max(1, cfg.num_workers)
        self.evaluation = cfg.mode == "eval"
        self.by_rows = cfg.qa_pairs == "all"  # batches of batch_size rows, not of batch_size plan slots
        self.epoch, self.start_batch = 0, 0
        # Only the members the configured modalities use are read (json: labels and QA).
        self.suffixes = {"json"}
        for name, exts in (("image", IMAGE_EXTS), ("audio", AUDIO_EXTS), ("text", ("txt",))):
            if name in cfg.modalities:
                self.suffixes.update(exts)
        self.pool: BatchPool | None = None  # set by ShardLoader for each iteration
        if self.evaluation:
            self._size_evaluation()
        else:  # a fresh run's layout: one virtual stream per rank, one batch per rank and step
            self.set_layout(StepLayout(world_size, cfg.batch_size * world_size, world_size, cfg.batch_size))

    def _size_evaluation(self) -> None:
        total, bs, wpr = sum(self.counts), self.cfg.batch_size, self.workers_per_rank
        if total == 0:
            raise DataError(f"{self.cfg.shard_dir}: the shard index lists no samples")
        self.num_streams = self.world_size * wpr
        # Plan slots of each of this rank's streams (logical workers), and the batches they make.
        self.stream_slots = [
            stream_range(total, self.num_streams, self.rank * wpr + w, True)[1] for w in range(wpr)
        ]
        self.stream_batches = [-(-n // bs) for n in self.stream_slots]

    def set_layout(self, layout: StepLayout) -> None:
        """Read the training order of `layout` (its world size and batch size are this rank's)."""
        if layout.world_size != self.world_size or layout.batch_size != self.cfg.batch_size:  # a bug
            raise DataError(
                f"a layout for {layout.world_size} rank(s) in batches of {layout.batch_size} given to a loader "
                f"of {self.world_size} in batches of {self.cfg.batch_size}"
            )
        self.layout = layout
        self.num_streams = layout.num_streams
        self.num_batches = self.steps_of(layout) * layout.accumulation

    def steps_of(self, layout: StepLayout) -> int:
        """Whole steps of `layout` in an epoch; DataError when not even one."""
        total = sum(self.counts)
        steps = layout.steps(total)
        if steps == 0:
            raise DataError(
                f"{self.cfg.shard_dir}: {total} samples cannot fill one step of {layout.step_samples} "
                f"({layout.world_size} rank(s) x a batch of {layout.batch_size} x {layout.accumulation} "
                f"micro-batch(es), {layout.chunk} from each of {layout.num_streams} sample stream(s)); lower "
                "batch_size, add data, or use mode 'eval'"
            )
        return steps

    def __len__(self) -> int:
        if self.by_rows:
            raise TypeError("the batch count of qa_pairs 'all' is known only once the QA pairs are read")
        return sum(self.stream_batches) if self.evaluation else self.num_batches

    def _skipped(self, logical: int) -> int:
        """Evaluation: batches of stream `logical` before `start_batch` (batch j comes from stream
        j % workers)."""
        return len(range(logical, self.start_batch, self.workers_per_rank))

    def planned_samples(self) -> int:
        """Plan slots this rank reads in the iteration that starts at `start_batch`."""
        bs = self.cfg.batch_size
        if not self.evaluation:
            return max(0, self.num_batches - self.start_batch) * bs
        return sum(max(0, n - self._skipped(w) * bs) for w, n in enumerate(self.stream_slots))

    def _plan(self, stream: int) -> StreamPlan:
        cfg = self.cfg
        return plan_stream(
            self.counts,
            cfg.seed,
            self.epoch,
            stream,
            self.num_streams,
            cfg.shuffle,
            cfg.shuffle_buffer,
            cover_all=self.evaluation,
        )

    def _read(self, plan: StreamPlan, needed: np.ndarray) -> Iterator[tuple[int, dict[str, Any] | str]]:
        """Yield (read position, raw sample) for every needed position; a sample that never arrives
        comes as its shard's fault ("unreadable_shard" or "truncated_shard") instead."""
        bounds = np.flatnonzero(np.diff(plan.shard_ids)) + 1
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(plan.shard_ids)]):
            if not needed[lo:hi].any():
                continue  # nothing of this shard is wanted: never opened
            first, last_needed = (
                int(plan.ordinals[lo]),
                int(plan.ordinals[lo] + np.flatnonzero(needed[lo:hi])[-1]),
            )
            seen = np.zeros(hi - lo, dtype=bool)
            path = self.shards[int(plan.shard_ids[lo])].path

            def wanted(o: int, first: int = first, last: int = last_needed, lo: int = int(lo)) -> bool:
                return first <= o <= last and bool(needed[lo + o - first])

            # Read errors need no report here: the slots they lose come back as missing below.
            for ordinal, raw in iter_raw_samples(path, lambda exn: None, wanted, self.suffixes):
                seen[ordinal - first] = True
                yield lo + ordinal - first, raw
                if ordinal >= last_needed:
                    break
            missing = np.flatnonzero(needed[lo:hi] & ~seen)
            if len(missing):
                fault = SHARD_FAULTS[1] if starts_like_tar(path) else SHARD_FAULTS[0]
                for offset in missing:
                    yield lo + int(offset), fault

    def _emission(self, physical: int) -> tuple[dict[int, StreamPlan], np.ndarray, np.ndarray]:
        """The plans of the streams this worker reads, and the stream and read position of every sample
        of its batches in the order they are batched: two (n,) arrays."""
        bs, wpr = self.cfg.batch_size, self.workers_per_rank
        if self.evaluation:
            # DataLoader takes batches round-robin from worker 0; rotate so batch j still comes from
            # logical worker j % wpr after resuming at start_batch. (The streams' batch counts do not
            # grow with the worker index, so this holds up to the last, partial round.)
            logical = (physical + self.start_batch) % wpr
            plan = self._plan(self.rank * wpr + logical)
            emit = plan.emit_order[self._skipped(logical) * bs : self.stream_slots[logical]]
            return {0: plan}, np.zeros(len(emit), dtype=np.int64), emit
        # Batch j of the epoch comes from worker (j - start_batch) % wpr (DataLoader's round robin).
        batches = np.arange(self.start_batch + physical, self.num_batches, wpr)
        streams, emission = self.layout.positions(self.rank, batches)  # (K * bs,) each
        plans = {int(v): self._plan(int(v)) for v in np.unique(streams)}
        reads = np.empty_like(emission)
        for v, plan in plans.items():
            mine = streams == v
            reads[mine] = plan.emit_order[emission[mine]]
        return plans, streams, reads

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        physical = info.id if info is not None else 0
        plans, streams, reads = self._emission(physical)
        readers = {}
        for v, plan in plans.items():
            needed = np.zeros(len(plan.emit_order), dtype=bool)
            needed[reads[streams == v]] = True
            readers[v] = self._read(plan, needed)
        emit = list(zip(streams.tolist(), reads.tolist()))
        yield from self._batches(emit, readers, plans, physical)

    def _batches(
        self,
        emit: list[tuple[int, int]],
        readers: dict[int, Iterator[tuple[int, dict[str, Any] | str]]],
        plans: dict[int, StreamPlan],
        stream: int,
    ) -> Iterator[dict[str, Any]]:
        """Decode the (plan stream, read position)s of `emit` in order; yield the batches, each carrying
        the report of the samples it was cut from, and report-only items for samples that ended in no
        batch. `stream` is this producer's row of the buffer pool."""
        cfg, bs, by_rows = self.cfg, self.cfg.batch_size, self.by_rows
        fields = tensor_fields(cfg)
        has_image = "image" in fields
        pending: dict[tuple[int, int], dict[str, Any] | str] = {}  # read, not yet batched
        rows: list[Row] = []  # rows of the batch being filled
        buffers: Buffers | None = None
        last_good: dict[str, Any] | None = None  # raw bytes of the last good sample
        read, bad, examples = 0, [0] * len(BAD_REASONS), {}  # the report of the batch being filled
        exampled: set[str] = set()  # reasons this stream has sent an example of
        last = len(emit) - 1
        for i, slot in enumerate(emit):
            if buffers is None:
                buffers = self._buffers(stream, fields)
            while slot not in pending:
                got, raw = next(readers[slot[0]])
                pending[slot[0], got] = raw
            raw = pending.pop(slot)
            read += 1
            if isinstance(raw, str):  # the shard lost this sample
                sample, reason = None, raw
            else:
                image_out = buffers[1]["image"][len(rows)] if has_image else None
                sample, reason = decode_sample(raw, cfg, self.epoch, image_out=image_out)
            if sample is None:
                bad[REASON_INDEX[reason]] += 1
                if reason not in exampled:
                    exampled.add(reason)
                    examples[reason] = (
                        self._shard_path(plans, slot) if isinstance(raw, str) else raw["__key__"]
                    )
            elif not by_rows:
                last_good = raw
                place(sample, buffers[1], len(rows))
                rows.append((sample, sample["qa"][0] if sample["qa"] else None))
            else:  # one row per QA pair; a batch is cut whenever batch_size rows are filled
                pairs = sample["qa"] or [None]
                for j, pair in enumerate(pairs):
                    if buffers is None:
                        buffers = self._buffers(stream, fields)
                    place(sample, buffers[1], len(rows))
                    rows.append((sample, pair))
                    if len(rows) == bs:
                        if j < len(pairs) - 1:  # the sample's next rows copy from it: not from a sent buffer
                            sample = _own_tensors(sample)
                        yield self._emit(rows, stream, buffers, (read, bad, examples))
                        rows, buffers = [], None
                        read, bad, examples = 0, [0] * len(BAD_REASONS), {}
            if by_rows or ((i + 1) % bs and i != last):
                continue
            if not rows:  # every sample of this batch was bad
                if self.evaluation:  # nothing to send but the counts; the buffers serve the next batch
                    yield {REPORT_KEY: (read, bad, examples)}
                    read, bad, examples = 0, [0] * len(BAD_REASONS), {}
                    continue
                # Skipping the batch would desynchronize ranks: repeat the last good sample, or before any,
                # send one sample with every modality absent (all present flags False).
                stand_in: dict[str, Any] | None = {"key": "", "label": -1, "qa": []}
                if last_good is not None:
                    image_out = buffers[1]["image"][0] if has_image else None
                    stand_in, _ = decode_sample(last_good, cfg, self.epoch, image_out=image_out)
                assert stand_in is not None
                place(stand_in, buffers[1], 0)
                rows = [(stand_in, stand_in["qa"][0] if stand_in["qa"] else None)]
            yield self._emit(rows, stream, buffers, (read, bad, examples))
            rows, buffers = [], None
            read, bad, examples = 0, [0] * len(BAD_REASONS), {}
        if rows:  # by rows: the stream's last, short batch
            yield self._emit(rows, stream, buffers, (read, bad, examples))
            buffers = None
        elif read:
            yield {REPORT_KEY: (read, bad, examples)}
        if buffers is not None and buffers[0] is not None and self.pool is not None:
            self.pool.unclaim(stream, buffers[0])

    def _shard_path(self, plans: dict[int, StreamPlan], slot: tuple[int, int]) -> str:
        return self.shards[int(plans[slot[0]].shard_ids[slot[1]])].path

    def _buffers(self, stream: int, fields: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> Buffers:
        """(pool slot or None, full-size field tensors) that the next batch is written into."""
        claimed = self.pool.claim(stream) if self.pool is not None else None
        if claimed is not None:
            return claimed
        bs = self.cfg.batch_size
        return None, {name: _fresh_empty((bs, *shape), dtype) for name, (shape, dtype) in fields.items()}

    def _emit(
        self, rows: list[Row], stream: int, buffers: Buffers, report: tuple[int, list[int], dict[str, str]]
    ) -> dict[str, Any]:
        """The batch as sent: its tensors, or the pool slot holding them (`ShardLoader` attaches them),
        and the report of its samples."""
        slot, tensors = buffers
        for name, values in row_values(rows).items():
            tensors[name].numpy()[: len(rows)] = values
        batch: dict[str, Any] = row_strings(rows)
        if slot is None:
            batch.update({name: tensor[: len(rows)] for name, tensor in tensors.items()})
        else:
            batch[SLOT_KEY] = (stream, slot, len(rows))
        batch[REPORT_KEY] = report
        return batch


def _own_tensors(sample: dict[str, Any]) -> dict[str, Any]:
    """The sample with its image (decoded into a batch buffer row) copied out of the buffer."""
    return {**sample, "image": sample["image"].clone()} if "image" in sample else sample


def _fresh_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialized tensor for a batch no pool buffer was free for; in a loader worker in shared
    memory, which saves the copy made when the batch is sent to the main process."""
    return torch.empty(shape, dtype=dtype) if get_worker_info() is None else shared_empty(shape, dtype)


class ShardLoader:
    """The batches of one rank over a shard directory: `set_epoch` before iterating.

    In mode "train", `len(loader)` batches per epoch, the same on every rank. In mode "eval", every
    sample of the split exactly once over all ranks and workers: `len(loader)` is this rank's batch
    count, which may differ between ranks (by one per worker), each stream's last batch may be short,
    and a batch whose samples are all bad is not yielded (the loop then ends earlier); with
    `qa_pairs: all` the batch count depends on the data and `len()` raises TypeError.
    """

    def __init__(self, cfg: LoaderSettings, rank: int | None = None, world_size: int | None = None):
        cfg.validate()  # again: the config may have been changed since it was constructed
        if cfg.sources:
            raise DataError("sources are set: a mixture is read by MixtureLoader (LoaderConfig.build())")
        ready = dist.is_available() and dist.is_initialized()
        if rank is None:
            rank = dist.get_rank() if ready else 0
        if world_size is None:
            world_size = dist.get_world_size() if ready else 1
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside world size {world_size}")
        self.cfg = cfg
        self.dataset = ShardDataset(cfg, rank, world_size)
        self._pool: BatchPool | None = None  # batch buffers reused across iterations
        self._pool_busy = False
        self._restored: dict[str, Any] | None = None  # the epoch's counts before start_batch, if restored
        self._report = self._new_report()

    def _new_report(self) -> EpochReport:
        report = EpochReport(self.cfg.shard_dir, self.cfg.max_bad_fraction, self.dataset.planned_samples())
        if self._restored is not None:
            report.restore(self._restored)
        return report

    def order_state(self) -> dict[str, int]:
        """What the training order depends on beyond the seed and the data: {"num_streams": V,
        "step_samples": G (samples per optimizer step, all ranks), "batch_size": this rank's batch}.
        A checkpoint keeps it; `set_order` with it reads the same sequence on any world size."""
        layout = self._layout()
        return {
            "num_streams": layout.num_streams,
            "step_samples": layout.step_samples,
            "batch_size": layout.batch_size,
        }

    def set_order(self, num_streams: int, step_samples: int, batch_size: int | None = None) -> None:
        """Read the training order of a run with `num_streams` virtual streams and `step_samples`
        samples per optimizer step (all ranks), in batches of `batch_size` (default: the current one) on
        this rank: the accumulation is step_samples / (world size * batch_size). See order.py. Before
        `set_epoch`; a DataError (one line) when the numbers do not divide or the data is too small."""
        layout = self.check_order(num_streams, step_samples, batch_size)
        if layout.batch_size != self.cfg.batch_size:
            self.cfg = dataclasses.replace(self.cfg, batch_size=layout.batch_size)
            self.dataset.cfg = self.cfg
            self._pool = None  # buffers of the old batch size
        self.dataset.set_layout(layout)
        self._report = self._new_report()

    def check_order(self, num_streams: int, step_samples: int, batch_size: int | None = None) -> StepLayout:
        """The layout `set_order` would read, changing nothing; DataError when there is none."""
        size = self._layout().batch_size if batch_size is None else int(batch_size)
        layout = StepLayout(int(num_streams), int(step_samples), self.dataset.world_size, size)
        self.dataset.steps_of(layout)
        return layout

    def _layout(self) -> StepLayout:
        if self.dataset.evaluation:
            raise DataError(
                f"{self.cfg.shard_dir}: mode 'eval' has no training order (it reads each split once)"
            )
        return self.dataset.layout

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's order; the next iteration yields batches start_batch.. of that epoch."""
        if self.dataset.by_rows:
            if start_batch != 0:
                raise DataError(f"start_batch must be 0 with qa_pairs 'all', got {start_batch}")
        elif not 0 <= start_batch <= len(self):
            raise DataError(f"start_batch {start_batch} is outside the epoch's {len(self)} batches")
        self.dataset.epoch, self.dataset.start_batch = int(epoch), int(start_batch)
        self._restored = None
        self._report = self._new_report()

    def restore_data_report(self, report: dict[str, Any]) -> None:
        """After `set_epoch(epoch, start_batch)` of a resume, before iterating: continue the epoch's report
        from `report`, this rank's `data_report()` at the resume point (batches 0..start_batch-1 of the
        epoch). `data_report()` then counts the whole epoch and `max_bad_fraction` judges every sample of
        it, exactly as in the uninterrupted run. The next `set_epoch` drops it."""
        self._report = self._new_report()  # the previous restore, if any, is replaced
        self._report.restore(report)
        self._restored = self._report.as_dict()

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def num_samples(self) -> int:
        """Samples stored in the shard directory (from the index)."""
        return sum(self.dataset.counts)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        pool = self._pool
        if pool is None or self._pool_busy:  # first iteration, or another one is still suspended
            fields = tensor_fields(self.cfg)
            pool = BatchPool(fields, self.cfg.batch_size, self.dataset.workers_per_rank, POOL_SLOTS)
            if self._pool is None:
                self._pool = pool
        else:
            pool.reset()
        owns_pool = pool is self._pool
        self._pool_busy |= owns_pool
        self.dataset.pool = pool
        report = self._report = self._new_report()
        try:
            if self.cfg.num_workers == 0:
                source: Iterable[dict[str, Any]] = self.dataset
            else:
                # Its own generator: without one, each iteration draws the workers' base seed from torch's
                # global RNG, so a validation pass (or a worker count) would shift the model's dropout
                # draws after it. Nothing in the workers uses that seed: order and augmentation have their
                # own seeded generators.
                source = DataLoader(
                    self.dataset,
                    batch_size=None,
                    num_workers=self.cfg.num_workers,
                    generator=torch.Generator().manual_seed(self.cfg.seed),
                )
            for item in source:
                report.add(*item.pop(REPORT_KEY))  # before the batch is handed over: data_report() has it
                if SLOT_KEY in item:
                    item.update(pool.lease(*item.pop(SLOT_KEY)))
                elif "key" not in item:
                    continue  # counts only: every sample of that batch was bad
                yield item
        finally:
            if owns_pool:
                self._pool_busy = False

    def data_report(self) -> dict[str, Any]:
        """This rank's report of the current epoch, over the batches delivered so far (from `start_batch`
        after a resume, plus the counts given to `restore_data_report`; every worker's samples included):
        {"samples": samples read, good and bad,
        "bad": {reason: count for every reason in BAD_REASONS}, "examples": {reason: the first bad
        sample's key, or the shard's path for a shard fault}}. Sum it over ranks for the epoch's total."""
        return self._report.as_dict()
