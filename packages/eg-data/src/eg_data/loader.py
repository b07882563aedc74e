"""The shard loader: reads webdataset shards in the epoch plan's order (see `order.py`), decodes and
transforms samples in loader workers, skips bad ones counting each by reason, and collates the batch
dict of the architecture contract. Implements `set_epoch(epoch, start_batch)` and `__len__` for the
trainer's exact mid-epoch resume.

Batches are cut from a fixed number of plan slots (`batch_size`), so batch counts and contents are known
before decoding: a bad sample leaves its batch one smaller instead of pulling in a later sample.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

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


def _shared_empty(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An uninitialized tensor; in a loader worker placed in shared memory, which saves the copy made
    when the batch is sent to the main process (as torch's default_collate does)."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    numel = int(np.prod(shape))
    storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(numel, device="cpu")
    return torch.empty(0, dtype=dtype).new(storage).view(shape)


def _stack(samples: list[dict[str, Any]], name: str, zero: torch.Tensor) -> torch.Tensor:
    """Stack `name` over samples (`zero` where absent). Images already written in order into one batch
    buffer are returned as a view of it, without copying."""
    if not any(name in s for s in samples):
        return zero.new_zeros(len(samples), *zero.shape)
    tensors = [s.get(name, zero) for s in samples]
    first = tensors[0]
    base = first._base
    in_one_buffer = (
        base is not None
        and base.dim() == first.dim() + 1
        and base.shape[1:] == first.shape
        and all(t._base is base and t.data_ptr() == base[i].data_ptr() for i, t in enumerate(tensors))
    )
    if in_one_buffer:
        return base[: len(tensors)]
    return torch.stack(tensors, out=_shared_empty((len(tensors), *first.shape), first.dtype))


def collate(samples: list[dict[str, Any]], cfg: LoaderConfig) -> dict[str, Any]:
    """Stack decoded samples into the contract batch dict; absent modalities are zeros, present=False."""
    size, n_mels, n_frames = cfg.image.size, cfg.audio.n_mels, cfg.audio.n_frames
    zero_image = torch.zeros(3, size, size)
    zero_mel, zero_mask = torch.zeros(n_mels, n_frames), torch.zeros(n_frames, dtype=torch.bool)
    return {
        "image": _stack(samples, "image", zero_image),  # (B, 3, H, W)
        "audio": _stack(samples, "audio", zero_mel),  # (B, n_mels, n_frames)
        "audio_mask": _stack(samples, "audio_mask", zero_mask),  # (B, n_frames)
        "text": [s.get("text", "") for s in samples],
        "question": [s.get("question", "") for s in samples],
        "answer": [s.get("answer", "") for s in samples],
        "image_present": torch.tensor(["image" in s for s in samples], dtype=torch.bool),  # (B,)
        "audio_present": torch.tensor([bool("audio" in s) for s in samples], dtype=torch.bool),
        "text_present": torch.tensor(["text" in s for s in samples], dtype=torch.bool),
        "qa_present": torch.tensor(["question" in s for s in samples], dtype=torch.bool),
        "key": [s["key"] for s in samples],
        "label": torch.tensor([s["label"] for s in samples], dtype=torch.long),  # (B,)
    }


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
        # (worker, reason) counters in shared memory so the main process sees what workers skipped.
        self.counters = torch.zeros(self.workers_per_rank, len(BAD_REASONS) + 1, dtype=torch.int64)
        self.counters.share_memory_()

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
            for ordinal, raw in iter_raw_samples(path, on_error=lambda exn: None, wanted=wanted):
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
        row = self.counters[physical]
        last_good: dict[str, Any] | None = None
        batch: list[dict[str, Any]] = []
        size = cfg.image.size
        images: torch.Tensor | None = None  # (bs, 3, size, size) buffer the batch's images land in
        for i, pos in enumerate(emit.tolist()):
            if images is None and "image" in cfg.modalities:
                images = _shared_empty((bs, 3, size, size))
            while pos not in pending:
                got, raw = next(reader)
                pending[got] = raw
            raw = pending.pop(pos)
            slot = images[len(batch)] if images is not None else None
            if raw is None:
                sample, reason = None, "truncated_shard"
            else:
                sample, reason = decode_sample(raw, cfg, self.epoch, image_out=slot)
            if sample is None:
                row[BAD_REASONS.index(reason)] += 1
            else:
                row[-1] += 1
                batch.append(sample)
                last_good = sample
            if (i + 1) % bs == 0:
                if not batch:
                    # Skipping a wholly bad batch would desynchronize ranks: repeat one good sample, or
                    # before any, send one sample with every modality absent (all present flags False).
                    batch = [last_good or {"key": "", "label": -1}]
                yield collate(batch, cfg)
                batch, images = [], None


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
        if self.cfg.num_workers == 0:
            yield from self.dataset
            return
        loader = DataLoader(self.dataset, batch_size=None, num_workers=self.cfg.num_workers)
        yield from loader

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
