"""eg-data loaders as both stages use them: training settings completed from the encoders, evaluation
loaders over a held-out split, the held-out splits of a config (its own and each mixture source's), and
the shard-folder checks that turn a wrong path into one line.

The image size/mean/std and the audio context are dictated by the encoders (`image_spec`, `audio_spec`);
a YAML that sets a different value is refused instead of being overwritten silently.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.distributed as dist
from eg_data import AudioTransformConfig, ImageTransformConfig, LoaderConfig, ShardLoader, load_index

from apps.common.config import ConfigError


def check_shard_dir(key: str, shard_dir: str) -> None:
    """ConfigError naming `key` unless `shard_dir` holds shards (*.tar files and/or shards.json)."""
    folder = Path(shard_dir)
    if not folder.is_dir():
        raise ConfigError(
            f"{key}={shard_dir!r} does not exist; point it at a shard folder "
            "(make one with `uv run apps/data ...`)"
        )
    if not (folder / "shards.json").is_file() and not any(folder.glob("*.tar")):
        raise ConfigError(f"{key}={shard_dir!r}: no shards there (expected *.tar files and shards.json)")


def train_folders(loader: LoaderConfig, key: str = "data.train") -> list[tuple[str, str]]:
    """(YAML key, folder) of every training shard folder: shard_dir, or each source's of a mixture."""
    if not loader.sources:
        return [(f"{key}.shard_dir", loader.shard_dir)]
    return [(f"{key}.sources[{i}].shard_dir", s.shard_dir) for i, s in enumerate(loader.sources)]


@dataclass(frozen=True)
class HeldOut:
    """One held-out folder and how it is read.

    source: "" for the config's own split (data.val_dir / data.test_dir), else the mixture source's name.
    key: the YAML key that names the folder (`data.train.sources[1].test_dir`), for errors.
    loader: the settings it is read with: the training loader's, or for a source the single-folder config
        of that source (`LoaderConfig.source_configs()`: it requires of each sample what the source has).
    has: the loaded modalities its samples have (a source's), or every loaded one for the config's own
        split (a sample that lacks one is then marked absent, as in training).
    """

    source: str
    key: str
    shard_dir: str
    loader: LoaderConfig
    has: tuple[str, ...]


def held_out(train_cfg: LoaderConfig, own_dir: str, split: str, key: str = "data") -> list[HeldOut]:
    """The held-out folders of `split` ("val" or "test"): the config's own (`{key}.{split}_dir`, when not
    "") first, then each mixture source's `{split}_dir` that is set, in the order of the sources."""
    field = f"{split}_dir"
    splits = []
    if own_dir:
        splits.append(HeldOut("", f"{key}.{field}", own_dir, train_cfg, tuple(train_cfg.modalities)))
    per_source = train_cfg.source_configs() if train_cfg.sources else {}
    for i, source in enumerate(train_cfg.sources):
        folder = getattr(source, field)
        if folder:
            has = tuple(m for m in train_cfg.modalities if m in source.modalities)
            splits.append(
                HeldOut(
                    source.label, f"{key}.train.sources[{i}].{field}", folder, per_source[source.label], has
                )
            )
    return splits


def data_folders(
    train_cfg: LoaderConfig, val_dir: str, test_dir: str, key: str = "data"
) -> list[tuple[str, str]]:
    """(YAML key, folder) of every folder a run reads: training, then validation and test (own and per source)."""
    return train_folders(train_cfg, f"{key}.train") + [
        (h.key, h.shard_dir)
        for split, own in (("val", val_dir), ("test", test_dir))
        for h in held_out(train_cfg, own, split, key)
    ]


def _check_spec(key: str, configured: Any, default: Any, wanted: Any) -> None:
    """A data transform value the encoder dictates: fine when unset (default) or equal; else a ConfigError."""
    if configured != default and configured != wanted:
        raise ConfigError(
            f"{key}={configured} conflicts with the encoder, which expects {wanted}; remove the key "
            "(it is taken from the encoder)"
        )


def loader_for_encoders(loader: LoaderConfig, encoders: Mapping[str, Any], key: str) -> LoaderConfig:
    """`loader` (the YAML's `key`, e.g. data.train) with image/audio specs from the vision/audio encoders."""
    image, audio = loader.image, loader.audio
    if "vision" in encoders:
        spec = encoders["vision"].image_spec
        default = ImageTransformConfig()
        for name, wanted in (("size", spec.size), ("mean", list(spec.mean)), ("std", list(spec.std))):
            value = getattr(image, name)
            value = list(value) if isinstance(value, (list, tuple)) else value
            _check_spec(f"{key}.image.{name}", value, getattr(default, name), wanted)
        image = dataclasses.replace(image, size=spec.size, mean=list(spec.mean), std=list(spec.std))
    if "audio" in encoders:
        spec = encoders["audio"].audio_spec
        default_audio = AudioTransformConfig()
        _check_spec(f"{key}.audio.n_mels", audio.n_mels, default_audio.n_mels, spec.n_mels)
        _check_spec(f"{key}.audio.n_samples", audio.n_samples, default_audio.n_samples, spec.n_samples)
        audio = dataclasses.replace(audio, n_mels=spec.n_mels, n_samples=spec.n_samples)
    return dataclasses.replace(loader, image=image, audio=audio)


def eval_loader(
    train_cfg: LoaderConfig, shard_dir: str, batch_size: int, key: str, **changes: Any
) -> ShardLoader:
    """A loader over `shard_dir` yielding every sample exactly once across ranks and workers (eg-data's eval
    mode: a short last batch, no repeats), with the training settings minus shuffling, augmentation and
    text dropout. `changes` overrides further LoaderConfig fields (e.g. the QA stage asks every QA pair).
    """
    check_shard_dir(key, shard_dir)
    cfg = dataclasses.replace(
        train_cfg,
        shard_dir=shard_dir,
        sources=[],  # a held-out folder of its own, also when training reads a mixture
        batch_size=batch_size,
        mode="eval",
        shuffle=False,
        text_dropout=0.0,
        image=dataclasses.replace(train_cfg.image, augment=False),
        **changes,
    )
    loader = cfg.build()
    loader.set_epoch(0)
    return loader


def loss_loader(train_cfg: LoaderConfig, shard_dir: str, batch_size: int, key: str) -> ShardLoader:
    """A loader for the validation *loss*: training mode (the same number of equal batches on every rank, as a
    loss that gathers across ranks needs), without shuffling, augmentation or text dropout. It may leave out
    the remainder of an uneven split; the retrieval / QA metrics use `eval_loader`, which never does.
    """
    check_shard_dir(key, shard_dir)
    streams = max(1, train_cfg.num_workers) * (dist.get_world_size() if dist.is_initialized() else 1)
    per_stream = sum(info.num_samples for info in load_index(shard_dir)) // streams
    top = max(1, min(batch_size, per_stream))
    # the batch size in [top/4, top] that leaves the fewest samples out (the larger one on a tie)
    batch_size = min(range(max(1, top // 4), top + 1), key=lambda b: (per_stream % b, -b))
    cfg = dataclasses.replace(
        train_cfg,
        shard_dir=shard_dir,
        sources=[],
        batch_size=batch_size,
        mode="train",
        shuffle=False,
        text_dropout=0.0,
        image=dataclasses.replace(train_cfg.image, augment=False),
    )
    loader = cfg.build()
    loader.set_epoch(0)
    return loader
