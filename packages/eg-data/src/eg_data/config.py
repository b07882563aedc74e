"""`LoaderConfig`: the loader settings (settings.py) and `build()`, which makes the `ShardLoader` of one
shard folder or the `MixtureLoader` of a config with sources. This module sits above the loaders (it
imports them; nothing of the implementation imports it), so the package's imports run one way."""

from __future__ import annotations

from dataclasses import dataclass

from eg_data.loader import ShardLoader
from eg_data.mixture import MixtureLoader
from eg_data.settings import DEFAULT_SHARD_DIR, MODALITIES, MODES, QA_PAIRS, LoaderSettings, SourceConfig

__all__ = ["DEFAULT_SHARD_DIR", "MODALITIES", "MODES", "QA_PAIRS", "LoaderConfig", "SourceConfig"]


@dataclass
class LoaderConfig(LoaderSettings):
    """How a shard directory (or a mixture of sources) becomes batches; `build()` makes the loader."""

    def build(self, rank: int | None = None, world_size: int | None = None) -> ShardLoader | MixtureLoader:
        """The loader of this config: a `ShardLoader`, or with sources a `MixtureLoader` (rank and world
        size from torch.distributed when not given)."""
        if self.sources:
            return MixtureLoader(self, rank=rank, world_size=world_size)
        return ShardLoader(self, rank=rank, world_size=world_size)
