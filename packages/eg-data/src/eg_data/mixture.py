"""Weighted mixtures of shard folders (`LoaderConfig.sources`): each batch comes from one source, drawn
with the sources' weights, and each source is read by its own `ShardLoader` as a continuous stream of its
own epochs.

Why not webdataset's `RandomMix` / `ResampledShards`: they draw per sample from Python's global random
state as samples arrive, so neither the position after k batches nor the batch counts per rank can be
known without replaying the stream: no exact mid-epoch resume, no equal batches per rank under DDP.
Here everything is a function of numbers known in advance:

- An epoch has `sum(len(source loader))` batches. Batch j of epoch e comes from source
  `draws(e)[j]`, drawn from (seed, e) with probabilities proportional to the weights: the same on every
  rank, so every rank trains the same pair(s) at each step and DDP's collectives line up.
- Source s is read as one stream across epochs: its k-th batch overall (counting its draws in all
  earlier epochs) is batch `k % len_s` of its own epoch `k // len_s`, so a small source with a large
  weight is cycled (each pass a new seeded permutation) and a large one is read on from where it was.
- `set_epoch(e, start_batch=j)` counts the draws before (e, j), positions each source loader with its own
  exact `set_epoch(source_epoch, start_batch)`, and yields exactly batches j.. of the uninterrupted epoch,
  decoding nothing it skips.
- Each source loader judges `max_bad_fraction` over its current pass (the batches since its own epoch or
  this epoch began, whichever is later). `data_report()` carries each source's passes of this epoch
  (`SOURCE_PASSES`), so `restore_data_report()` after a resume hands each source loader the counts of the
  pass it continues: reports and stops equal the uninterrupted run's.

A batch of a source that lacks a modality has zeros there and its presence flag False, so a model that
masks each pair's loss by presence trains each pair on the sources that have both sides. The per-batch
cost is one array lookup; per-sample work is that of the source's `ShardLoader`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np

from eg_data.errors import DataError
from eg_data.loader import ShardLoader
from eg_data.order import plan_rng
from eg_data.report import merge_data_reports
from eg_data.settings import LoaderSettings

MIX_STREAM = -1  # plan_rng part of the source draws (the loader's streams use 1 + stream >= 1)
# data_report() key: {source name: {"earlier": report of its passes finished this epoch, "current": report
# of the pass being read, or None}}; what restore_data_report() needs beyond the sum.
SOURCE_PASSES = "source_passes"


class MixtureLoader:
    """The batches of one rank over a mixture of sources (`cfg.sources`): `set_epoch` before iterating.

    `len(loader)` batches per epoch, the same on every rank; `data_report()` sums the sources' reports
    over the batches delivered this epoch (`source_reports()` keeps them apart); `restore_data_report()`
    continues them after a resume.
    """

    def __init__(self, cfg: LoaderSettings, rank: int | None = None, world_size: int | None = None):
        cfg.validate()
        if not cfg.sources:
            raise DataError("sources is empty; a MixtureLoader needs at least one source")
        self.cfg = cfg
        self.names = [source.label for source in cfg.sources]
        self.loaders = [ShardLoader(config, rank, world_size) for config in cfg.source_configs().values()]
        weights = np.array([float(source.weight) for source in cfg.sources])
        self.probs = weights / weights.sum()  # (S,)
        self._sized()
        self.epoch, self.start_batch = 0, 0
        self._finished: list[list[dict[str, Any]]] = [[] for _ in self.loaders]  # earlier source epochs
        self._active: set[int] = set()  # sources read in the current iteration
        # Restored by restore_data_report: passes finished before the resume point, and the counts of
        # the pass each source continues (handed to its loader when the source is first drawn).
        self._restored_finished: list[list[dict[str, Any]]] = [[] for _ in self.loaders]
        self._restored_current: list[dict[str, Any] | None] = [None] * len(self.loaders)
        self._pending = list(self._restored_current)  # the restored passes not handed to a loader yet

    def _sized(self) -> None:
        """Batch counts from the source loaders' layout (after construction and `set_order`)."""
        self.lengths = np.array([len(loader) for loader in self.loaders], dtype=np.int64)  # (S,)
        self.epoch_batches = int(self.lengths.sum())
        self.accumulation = self.loaders[0].dataset.layout.accumulation  # micro-batches per step
        self._consumed: dict[int, np.ndarray] = {0: np.zeros(len(self.loaders), dtype=np.int64)}

    def order_state(self) -> dict[str, int]:
        """The sources' common training order (`ShardLoader.order_state`)."""
        return self.loaders[0].order_state()

    def set_order(self, num_streams: int, step_samples: int, batch_size: int | None = None) -> None:
        """Every source reads the order of `ShardLoader.set_order`; one draw per optimizer step, so the
        draws do not depend on the world size or the accumulation either. Before `set_epoch`."""
        self.check_order(num_streams, step_samples, batch_size)  # all or none
        for loader in self.loaders:
            loader.set_order(num_streams, step_samples, batch_size)
        self.cfg = dataclasses.replace(self.cfg, batch_size=self.loaders[0].cfg.batch_size)
        self._sized()

    def check_order(self, num_streams: int, step_samples: int, batch_size: int | None = None) -> None:
        """DataError (one line) when some source cannot read that order; changes nothing."""
        for loader in self.loaders:
            loader.check_order(num_streams, step_samples, batch_size)

    def draws(self, epoch: int) -> np.ndarray:
        """(len(self),) the source index of each batch of `epoch`: a function of (seed, epoch) only, one
        draw per optimizer step (its `accumulation` micro-batches come from one source)."""
        rng = plan_rng(self.cfg.seed, epoch, MIX_STREAM)
        steps = self.epoch_batches // self.accumulation
        return np.repeat(rng.choice(len(self.loaders), size=steps, p=self.probs), self.accumulation)

    def consumed_before(self, epoch: int) -> np.ndarray:
        """(S,) batches taken from each source in the epochs before `epoch`."""
        known = max(e for e in self._consumed if e <= epoch)
        total = self._consumed[known].copy()
        for e in range(known, epoch):
            total += np.bincount(self.draws(e), minlength=len(self.loaders))
            self._consumed[e + 1] = total.copy()
        return total

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch; the next iteration yields batches start_batch.. of that epoch."""
        if not 0 <= start_batch <= len(self):
            raise DataError(f"start_batch {start_batch} is outside the epoch's {len(self)} batches")
        self.epoch, self.start_batch = int(epoch), int(start_batch)
        self._finished = [[] for _ in self.loaders]
        self._active = set()
        self._restored_finished = [[] for _ in self.loaders]
        self._restored_current = [None] * len(self.loaders)
        self._pending = list(self._restored_current)

    def restore_data_report(self, report: dict[str, Any]) -> None:
        """After `set_epoch(epoch, start_batch)` of a resume, before iterating: continue the epoch's report
        from `report`, this rank's `data_report()` at the resume point. Each source loader gets the counts
        of the pass it continues, so `data_report()`, `source_reports()` and every source's
        `max_bad_fraction` stop equal the uninterrupted run's."""
        passes = report.get(SOURCE_PASSES) if isinstance(report, dict) else None
        if (
            not isinstance(passes, dict)
            or set(passes) != set(self.names)
            or not all(isinstance(p, dict) and {"earlier", "current"} <= set(p) for p in passes.values())
        ):
            got = sorted(passes) if isinstance(passes, dict) else None
            raise DataError(
                f"a restored mixture data report needs {SOURCE_PASSES!r} with the sources {self.names} "
                f"(a MixtureLoader.data_report()), got {got}"
            )
        for i, name in enumerate(self.names):
            self._restored_finished[i] = [passes[name]["earlier"]]
            self._restored_current[i] = passes[name]["current"]
        self._finished = [list(finished) for finished in self._restored_finished]
        self._pending = list(self._restored_current)
        self._active = set()

    def __len__(self) -> int:
        return self.epoch_batches

    @property
    def num_samples(self) -> int:
        """Samples stored in all sources (from their indexes)."""
        return sum(loader.num_samples for loader in self.loaders)

    def _stream(self, source: int, position: int) -> Iterator[dict[str, Any]]:
        """Source `source`'s batches from its `position`-th batch overall, across its own epochs."""
        loader = self.loaders[source]
        source_epoch, batch = divmod(position, int(self.lengths[source]))
        while True:
            pending, self._pending[source] = self._pending[source], None
            if pending is not None and batch == 0:  # the restored pass ended at the resume point
                self._finished[source].append(pending)
            loader.set_epoch(source_epoch, batch)
            if pending is not None and batch > 0:  # the restored pass goes on
                loader.restore_data_report(pending)
            yield from loader
            self._finished[source].append(loader.data_report())
            source_epoch, batch = source_epoch + 1, 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        draws = self.draws(self.epoch)
        position = self.consumed_before(self.epoch)
        position += np.bincount(draws[: self.start_batch], minlength=len(self.loaders))
        self._finished = [list(finished) for finished in self._restored_finished]
        self._pending = list(self._restored_current)
        self._active = set()
        streams: dict[int, Iterator[dict[str, Any]]] = {}
        try:
            for source in draws[self.start_batch :].tolist():
                if source not in streams:
                    streams[source] = self._stream(source, int(position[source]))
                    self._active.add(source)
                yield next(streams[source])
        finally:
            for stream in streams.values():
                stream.close()  # stops the source loaders' workers

    def _current(self, i: int) -> dict[str, Any] | None:
        """The report of source i's pass being read (restored and not yet handed over, or its loader's)."""
        return self.loaders[i].data_report() if i in self._active else self._pending[i]

    def source_reports(self) -> dict[str, dict[str, Any]]:
        """{source name: its bad-sample report over the batches delivered this epoch}."""
        return {
            name: merge_data_reports(self._finished[i] + [r for r in [self._current(i)] if r is not None])
            for i, name in enumerate(self.names)
        }

    def data_report(self) -> dict[str, Any]:
        """This rank's report of the current epoch over the batches delivered so far (from `start_batch`
        after a resume, plus what `restore_data_report` gave), every source summed: the format of
        `ShardLoader.data_report()`, plus `SOURCE_PASSES` for `restore_data_report`."""
        report = merge_data_reports(self.source_reports().values())
        report[SOURCE_PASSES] = {
            name: {"earlier": merge_data_reports(self._finished[i]), "current": self._current(i)}
            for i, name in enumerate(self.names)
        }
        return report
