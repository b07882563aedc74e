"""Parts of the web demo (apps/demo_ui, apps/qa/ui.py) that belong to no stage: the samples of a shard
folder by key, their image and audio written out as files for the browser."""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eg_data import DataError, load_index
from eg_data.shards import AUDIO_EXTS, IMAGE_EXTS, iter_raw_samples

from apps.common.config import ConfigError


class ShardSamples:
    """The samples of a shard folder by key. Opening it reads only each sample's txt and json (seeking past
    the media); `read(keys)` reads the whole samples of those keys; `media(key)` writes a sample's image
    and audio into a temporary folder (removed at exit) for the browser."""

    def __init__(self, shard_dir: str | Path, what: str) -> None:
        self.shard_dir = Path(shard_dir)
        if not self.shard_dir.is_dir():
            raise ConfigError(f"{what}={str(shard_dir)!r} is not a folder")
        self.errors: list[str] = []
        try:
            shards = load_index(self.shard_dir, build_if_missing=True, save=False)
        except DataError as exc:
            raise ConfigError(f"{what}={str(shard_dir)!r}: {exc}") from exc
        self._where: dict[str, tuple[str, int]] = {}
        self.info: dict[str, dict[str, Any]] = {}  # key -> {"txt": caption, "json": metadata}
        for shard in shards:
            for ordinal, raw in iter_raw_samples(shard.path, self._error, suffixes=("txt", "json")):
                key = raw["__key__"]
                self._where[key] = (shard.path, ordinal)
                try:
                    meta = json.loads(raw["json"]) if "json" in raw else {}
                except ValueError as exc:  # shown without its questions, and counted
                    self._error(ValueError(f"sample {key!r}: json: {exc}"))
                    meta = {}
                self.info[key] = {"txt": raw.get("txt", b"").decode("utf-8", "replace").strip(), "json": meta}
        self.keys = list(self.info)
        self._media_dir = ""

    def _error(self, exc: Exception) -> None:
        self.errors.append(f"{type(exc).__name__}: {exc}")

    def read(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """{key: raw sample (suffix -> bytes)} for `keys`; a key the folder lacks is a ConfigError."""
        missing = [k for k in keys if k not in self._where]
        if missing:
            raise ConfigError(f"{self.shard_dir}: no sample with key {missing[0]!r}")
        by_shard: dict[str, set[int]] = defaultdict(set)
        for key in keys:
            path, ordinal = self._where[key]
            by_shard[path].add(ordinal)
        out: dict[str, dict[str, Any]] = {}
        for path, ordinals in by_shard.items():
            for _, raw in iter_raw_samples(path, self._error, wanted=ordinals.__contains__):
                out[raw["__key__"]] = raw
        unread = [k for k in keys if k not in out]
        if unread:
            raise ConfigError(
                f"{self.shard_dir}: sample {unread[0]!r} could not be read ({self.errors[-1] if self.errors else 'gone'})"
            )
        return out

    def media(self, keys: Sequence[str]) -> dict[str, tuple[str | None, str | None]]:
        """{key: (image file, audio file)} written from the samples of `keys` (None where one lacks it)."""
        if not self._media_dir:
            self._media_dir = tempfile.mkdtemp(prefix="eg-demo-ui-")
            atexit.register(shutil.rmtree, self._media_dir, True)
        out = {}
        for key, raw in self.read(keys).items():
            files: list[str | None] = []
            for exts in (IMAGE_EXTS, AUDIO_EXTS):
                ext = next((e for e in exts if e in raw), None)
                if ext is None:
                    files.append(None)
                    continue
                path = Path(self._media_dir) / f"{key.replace('/', '_')}.{ext}"
                path.write_bytes(raw[ext])
                files.append(str(path))
            out[key] = (files[0], files[1])
        return out
