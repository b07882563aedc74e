"""The shard loader: reads webdataset shards in the epoch plan's order (see `order.py`), decodes and
transforms samples in loader workers, skips bad ones counting each by reason, and collates the batch
dict of the architecture contract. Implements `set_epoch(epoch, start_batch)` and `__len__` for the
trainer's exact mid-epoch resume.

Batches are cut from a fixed number of plan slots (`batch_size`), so batch counts and contents are known
before decoding: a bad sample leaves its batch one smaller instead of pulling in a later sample.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .buffers import BatchPool, shared_empty
from .errors import DataError
from .order import StreamPlan, plan_stream, slots_per_stream
from .shards import AUDIO_EXTS, IMAGE_EXTS, iter_raw_samples, load_index
from .transforms import (
    AudioTransformConfig,
    ImageTransformConfig,
    decode_audio,
    decode_image,
    drop_text,
    sample_rng,
    transform_audio,
    transform_image,
)

MODALITIES = ("image", "audio", "text", "qa")
MODALITY_TENSORS = ("image", "audio", "audio_mask")  # (B, ...) each, zeros where a sample has none
PRESENCE = ("image_present", "audio_present", "text_present", "qa_present")  # bool (B,) each
SLOT_KEY = "__slot__"  # a batch sent as (stream, pool slot, rows) instead of its tensors
POOL_SLOTS = 4  # buffers per stream: 2 batches queued (DataLoader's prefetch), 1 being filled, 1 in use
BAD_REASONS = (
    "truncated_shard",
    "json_decode",
    "image_decode",
    "audio_decode",
    "empty_caption",
    "missing_image",
    "missing_audio",
    "missing_text",
    "missing_qa",
)


@dataclass
class LoaderConfig:
    """How a shard directory becomes batches."""

    shard_dir: str = "data/demo/train"
    batch_size: int = 32
    num_workers: int = 0
    seed: int = 0
    shuffle: bool = True  # shard permutation and shuffle buffer, from (seed, epoch)
    shuffle_buffer: int = 1000  # raw samples held per worker for shuffling
    modalities: list[str] = field(default_factory=lambda: ["image", "audio", "text", "qa"])
    required: list[str] = field(default_factory=lambda: ["image", "text"])  # else the sample is bad
    text_dropout: float = 0.0  # probability a caption is dropped (text "" and text_present False)
    image: ImageTransformConfig = field(default_factory=ImageTransformConfig)
    audio: AudioTransformConfig = field(default_factory=AudioTransformConfig)

    def validate(self) -> None:
        """Raise DataError on a value no loader can run with."""
        if self.batch_size < 1:
            raise DataError(f"data.batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise DataError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if not 0.0 <= self.text_dropout < 1.0:
            raise DataError(f"data.text_dropout must be in [0, 1), got {self.text_dropout}")
        for name in list(self.modalities) + list(self.required):
            if name not in MODALITIES:
                raise DataError(
                    f"data.modalities/required: unknown modality {name!r}; use {list(MODALITIES)}"
                )
        for name in self.required:
            if name not in self.modalities:
                raise DataError(f"data.required has {name!r} which is not in data.modalities")


def _first_ext(raw: dict[str, Any], exts: tuple[str, ...]) -> str | None:
    return next((ext for ext in exts if ext in raw), None)


def decode_sample(
    raw: dict[str, Any], cfg: LoaderConfig, epoch: int, image_out: torch.Tensor | None = None
) -> tuple[dict[str, Any] | None, str]:
    """Decode and transform one raw sample; returns (sample, "") or (None, bad reason).

    `image_out` (3, size, size), when given, receives the image (a slot of the batch buffer).
    """
    key = str(raw["__key__"])
    meta: dict[str, Any] = {}
    if "json" in raw:
        try:
            meta = json.loads(raw["json"])
            assert isinstance(meta, dict)
        except (ValueError, AssertionError):
            return None, "json_decode"
    out: dict[str, Any] = {"key": key, "label": int(meta.get("label", -1)) if "label" in meta else -1}
    mods = cfg.modalities
    if "image" in mods:
        ext = _first_ext(raw, IMAGE_EXTS)
        if ext is None:
            if "image" in cfg.required:
                return None, "missing_image"
        else:
            try:
                img = decode_image(raw[ext])
            except Exception:  # noqa: BLE001 (PIL raises many types on garbage bytes)
                return None, "image_decode"
            rng = sample_rng(cfg.seed, epoch, key, "image") if cfg.image.augment else None
            out["image"] = transform_image(img, cfg.image, rng, out=image_out)  # (3, H, W)
    if "audio" in mods:
        ext = _first_ext(raw, AUDIO_EXTS)
        if ext is None:
            if "audio" in cfg.required:
                return None, "missing_audio"
        else:
            try:
                wave = decode_audio(raw[ext])
            except Exception:  # noqa: BLE001 (soundfile/soxr raise several types on corrupt audio)
                return None, "audio_decode"
            out["audio"], out["audio_mask"] = transform_audio(wave, cfg.audio)  # (M, F), (F,)
    if "text" in mods:
        text = raw["txt"].decode("utf-8", errors="replace").strip() if "txt" in raw else None
        if not text:
            if "text" in cfg.required:
                return None, "missing_text" if text is None else "empty_caption"
        elif not drop_text(cfg.seed, epoch, key, cfg.text_dropout):
            out["text"] = text
    if "qa" in mods:
        pairs = list(meta.get("qa", []))
        if "question" in meta and "answer" in meta:
            pairs.append({"question": meta["question"], "answer": meta["answer"]})
        pairs = [p for p in pairs if str(p.get("question", "")).strip() and str(p.get("answer", "")).strip()]
        if pairs:
            pick = int(sample_rng(cfg.seed, epoch, key, "qa").integers(len(pairs))) if cfg.shuffle else 0
            out["question"], out["answer"] = str(pairs[pick]["question"]), str(pairs[pick]["answer"])
        elif "qa" in cfg.required:
            return None, "missing_qa"
    return out, ""


def tensor_fields(cfg: LoaderConfig) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Per-sample shape and dtype of each batch tensor (those of the configured modalities, the presence
    masks and the label)."""
    fields: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    if "image" in cfg.modalities:
        fields["image"] = ((3, cfg.image.size, cfg.image.size), torch.float32)
    if "audio" in cfg.modalities:
        fields["audio"] = ((cfg.audio.n_mels, cfg.audio.n_frames), torch.float32)
        fields["audio_mask"] = ((cfg.audio.n_frames,), torch.bool)
    fields.update({name: ((), torch.bool) for name in PRESENCE})
    fields["label"] = ((), torch.long)
    return fields


def _per_sample_values(samples: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Presence flags and labels of the samples."""
    return {
        "image_present": ["image" in s for s in samples],
        "audio_present": ["audio" in s for s in samples],
        "text_present": ["text" in s for s in samples],  # False also for captions removed by dropout
        "qa_present": ["question" in s for s in samples],
        "label": [s["label"] for s in samples],  # -1 where the data has none
    }


def _strings(samples: list[dict[str, Any]]) -> dict[str, list[str]]:
    return {
        "text": [s.get("text", "") for s in samples],
        "question": [s.get("question", "") for s in samples],
        "answer": [s.get("answer", "") for s in samples],
        "key": [s["key"] for s in samples],
    }


def collate(samples: list[dict[str, Any]], cfg: LoaderConfig) -> dict[str, Any]:
    """Stack decoded samples into the contract batch dict.

    A sample without a loaded modality gets zeros there and its present flag False. Tensors of a modality
    the loader does not load (not in `cfg.modalities`) are left out of the batch (only its all-False
    present flag stays): a zero (B, 80, 3000) log-mel per image-only batch would cost 61 MB to build,
    to send from the worker and to move to the device.
    """
    values = _per_sample_values(samples)
    batch: dict[str, Any] = {}
    for name, (shape, dtype) in tensor_fields(cfg).items():
        if name in values:
            batch[name] = torch.tensor(values[name], dtype=dtype)
        else:
            batch[name] = torch.stack([s.get(name, torch.zeros(shape, dtype=dtype)) for s in samples])
    return {**batch, **_strings(samples)}


class ShardDataset(IterableDataset):
    """Yields collated batches of one rank; each loader worker plays one stream of the epoch plan."""

    def __init__(self, cfg: LoaderConfig, rank: int, world_size: int):
        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        self.shards = load_index(cfg.shard_dir)
        self.counts = [s.num_samples for s in self.shards]
        self.workers_per_rank = max(1, cfg.num_workers)
        self.num_streams = world_size * self.workers_per_rank
        total = sum(self.counts)
        self.batches_per_stream = slots_per_stream(total, self.num_streams) // cfg.batch_size
        if self.batches_per_stream == 0:
            raise DataError(
                f"{cfg.shard_dir}: {total} samples cannot give every one of {world_size} rank(s) x "
                f"{self.workers_per_rank} worker(s) a batch of {cfg.batch_size}; lower data.batch_size "
                "or data.num_workers, or add data"
            )
        self.epoch, self.start_batch = 0, 0
        # Only the members the configured modalities use are read (json: labels and QA).
        self.suffixes = {"json"}
        for name, exts in (("image", IMAGE_EXTS), ("audio", AUDIO_EXTS), ("text", ("txt",))):
            if name in cfg.modalities:
                self.suffixes.update(exts)
        # (worker, reason) counters in shared memory so the main process sees what workers skipped.
        self.counters = torch.zeros(self.workers_per_rank, len(BAD_REASONS) + 1, dtype=torch.int64)
        self.counters.share_memory_()
        self.pool: BatchPool | None = None  # set by ShardLoader for each iteration

    def __len__(self) -> int:
        return self.batches_per_stream * self.workers_per_rank

    def _read(self, plan: StreamPlan, needed: np.ndarray) -> Iterator[tuple[int, dict[str, Any] | None]]:
        """Yield (read position, raw sample or None when missing) for every needed position."""
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
            for offset in np.flatnonzero(needed[lo:hi] & ~seen):
                yield lo + int(offset), None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        physical = info.id if info is not None else 0
        wpr = self.workers_per_rank
        # DataLoader takes batches round-robin from worker 0; rotate so global batch j still comes from
        # logical worker j % wpr after resuming at start_batch.
        logical = (physical + self.start_batch) % wpr
        skip = len(range(logical, self.start_batch, wpr))
        cfg, bs = self.cfg, self.cfg.batch_size
        plan = plan_stream(
            self.counts,
            cfg.seed,
            self.epoch,
            self.rank * wpr + logical,
            self.num_streams,
            cfg.shuffle,
            cfg.shuffle_buffer,
        )
        emit = plan.emit_order[skip * bs : self.batches_per_stream * bs]
        needed = np.zeros(len(plan.emit_order), dtype=bool)
        needed[emit] = True
        reader = self._read(plan, needed)
        pending: dict[int, dict[str, Any] | None] = {}
        counts = self.counters.numpy()[physical]  # shared memory: the main process reads it
        fields = tensor_fields(cfg)
        last_good: dict[str, Any] | None = None  # raw bytes of the last good sample
        batch: list[dict[str, Any]] = []
        buffers: tuple[int | None, dict[str, torch.Tensor]] | None = None
        for i, pos in enumerate(emit.tolist()):
            if buffers is None:
                buffers = self._buffers(physical, fields)
            rows = buffers[1]
            while pos not in pending:
                got, raw = next(reader)
                pending[got] = raw
            raw = pending.pop(pos)
            image_out = rows["image"][len(batch)] if "image" in rows else None
            if raw is None:
                sample, reason = None, "truncated_shard"
            else:
                sample, reason = decode_sample(raw, cfg, self.epoch, image_out=image_out)
            if sample is None:
                counts[BAD_REASONS.index(reason)] += 1
            else:
                counts[-1] += 1
                _place(sample, rows, len(batch))
                batch.append(sample)
                last_good = raw
            if (i + 1) % bs == 0:
                if not batch:
                    # Skipping a wholly bad batch would desynchronize ranks: repeat the last good sample,
                    # or before any, send one sample with every modality absent (all present flags False).
                    stand_in: dict[str, Any] | None = {"key": "", "label": -1}
                    if last_good is not None:
                        image_out = rows["image"][0] if "image" in rows else None
                        stand_in, _ = decode_sample(last_good, cfg, self.epoch, image_out=image_out)
                    assert stand_in is not None
                    _place(stand_in, rows, 0)
                    batch = [stand_in]
                yield self._emit(batch, physical, buffers)
                batch, buffers = [], None

    def _buffers(
        self, stream: int, fields: dict[str, tuple[tuple[int, ...], torch.dtype]]
    ) -> tuple[int | None, dict[str, torch.Tensor]]:
        """(pool slot or None, full-size field tensors) that the next batch is written into."""
        claimed = self.pool.claim(stream) if self.pool is not None else None
        if claimed is not None:
            return claimed
        bs = self.cfg.batch_size
        return None, {name: _fresh_empty((bs, *shape), dtype) for name, (shape, dtype) in fields.items()}

    def _emit(
        self, samples: list[dict[str, Any]], stream: int, buffers: tuple[int | None, dict[str, torch.Tensor]]
    ) -> dict[str, Any]:
        """The batch as sent: its tensors, or the pool slot holding them (`ShardLoader` attaches them)."""
        slot, rows = buffers
        for name, values in _per_sample_values(samples).items():
            rows[name].numpy()[: len(samples)] = values
        batch: dict[str, Any] = _strings(samples)
        if slot is None:
            batch.update({name: tensor[: len(samples)] for name, tensor in rows.items()})
        else:
            batch[SLOT_KEY] = (stream, slot, len(samples))
        return batch


def _place(sample: dict[str, Any], rows: dict[str, torch.Tensor], index: int) -> None:
    """Put a sample's tensors into row `index` of the batch buffers (zeros where it has none); the image
    usually is there already (decoded in place)."""
    for name in MODALITY_TENSORS:  # flags and labels are written per batch by `_emit`
        if name not in rows:
            continue
        value, row = sample.get(name), rows[name][index]
        if value is None:
            row.zero_()
        elif value.data_ptr() != row.data_ptr():
            row.copy_(value)


def _fresh_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialized tensor for a batch no pool buffer was free for; in a loader worker in shared
    memory, which saves the copy made when the batch is sent to the main process."""
    return torch.empty(shape, dtype=dtype) if get_worker_info() is None else shared_empty(shape, dtype)


class ShardLoader:
    """Batches of one rank over a shard directory; `set_epoch` before iterating, `len` = batches/epoch."""

    def __init__(self, cfg: LoaderConfig, rank: int | None = None, world_size: int | None = None):
        cfg.validate()
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

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's order; the next iteration yields batches start_batch.. of that epoch."""
        if not 0 <= start_batch <= len(self):
            raise DataError(f"start_batch {start_batch} is outside the epoch's {len(self)} batches")
        self.dataset.epoch, self.dataset.start_batch = int(epoch), int(start_batch)
        self.dataset.counters.zero_()

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
        try:
            if self.cfg.num_workers == 0:
                source: Iterable[dict[str, Any]] = self.dataset
            else:
                source = DataLoader(self.dataset, batch_size=None, num_workers=self.cfg.num_workers)
            for batch in source:
                if SLOT_KEY in batch:
                    batch.update(pool.lease(*batch.pop(SLOT_KEY)))
                yield batch
        finally:
            if owns_pool:
                self._pool_busy = False

    def bad_counts(self) -> dict[str, int]:
        """Samples skipped this epoch on this rank, by reason (summed over workers), plus `good`."""
        totals = self.dataset.counters.sum(dim=0).tolist()
        return {**{r: int(n) for r, n in zip(BAD_REASONS, totals)}, "good": int(totals[-1])}

    def bad_counts_all_ranks(self) -> dict[str, int]:
        """`bad_counts` summed over ranks (a collective: every rank must call it)."""
        local = self.dataset.counters.sum(dim=0)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(local)
        return {**{r: int(n) for r, n in zip(BAD_REASONS, local.tolist())}, "good": int(local[-1])}
