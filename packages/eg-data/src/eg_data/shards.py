"""Webdataset shards in the img2dataset layout: a writer that rolls shards by sample count, the
per-shard sample-count index (`shards.json`) that makes epoch lengths known without reading data,
and a raw reader that yields the undecoded samples of one shard through webdataset's tar iterators."""

from __future__ import annotations

import json
import os
import re
import struct
import tarfile
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Self

import webdataset as wds
from webdataset import tariterators

from eg_data.errors import DataError

INDEX_NAME = "shards.json"
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
AUDIO_EXTS = ("flac", "wav")


@dataclass
class ShardInfo:
    """One shard file and how many samples it holds."""

    path: str
    num_samples: int


def _write_json_atomic(path: Path, payload: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=True))
    os.replace(tmp, path)


class ShardWriter:
    """Writes samples to `{prefix}-{NNNNN}.tar`, starting a new shard every `max_samples_per_shard`.

    A sample is a dict with `key` (str) and any of: `image` (encoded bytes) with `image_ext`,
    `text` (str), `audio` (encoded bytes) with `audio_ext`, `json` (dict). On `close()` the per-shard
    counts are written to `shards.json` beside the shards.
    """

    def __init__(self, out_dir: str | Path, max_samples_per_shard: int = 1000, prefix: str = "shard"):
        if max_samples_per_shard < 1:
            raise DataError(f"max_samples_per_shard must be >= 1, got {max_samples_per_shard}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.max_samples_per_shard = max_samples_per_shard
        self.prefix = prefix
        self.shards: list[ShardInfo] = []
        self._writer: wds.TarWriter | None = None
        self._count = 0

    def _roll(self) -> None:
        self._close_current()
        name = f"{self.prefix}-{len(self.shards):05d}.tar"
        # A fixed mtime makes shards byte-identical across rebuilds (deterministic demo data).
        self._writer = wds.TarWriter(str(self.out_dir / name), encoder=False, mtime=0)
        self.shards.append(ShardInfo(path=name, num_samples=0))
        self._count = 0

    def _close_current(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def write(self, sample: dict[str, Any]) -> None:
        """Append one sample; bytes are stored as given, text as UTF-8, json serialized."""
        if self._writer is None or self._count >= self.max_samples_per_shard:
            self._roll()
        record: dict[str, Any] = {"__key__": str(sample["key"])}
        if sample.get("image") is not None:
            record[sample.get("image_ext", "png")] = sample["image"]
        if sample.get("text") is not None:
            record["txt"] = sample["text"].encode("utf-8")
        if sample.get("audio") is not None:
            record[sample.get("audio_ext", "flac")] = sample["audio"]
        if sample.get("json") is not None:
            record["json"] = json.dumps(sample["json"], sort_keys=True).encode("utf-8")
        assert self._writer is not None
        self._writer.write(record)
        self._count += 1
        self.shards[-1].num_samples = self._count

    def write_raw(self, record: dict[str, Any]) -> None:
        """Append one sample as stored: `__key__` and suffix -> bytes (e.g. a raw sample of another shard,
        without its `__url__`)."""
        if self._writer is None or self._count >= self.max_samples_per_shard:
            self._roll()
        assert self._writer is not None
        self._writer.write({k: v for k, v in record.items() if k == "__key__" or not k.startswith("__")})
        self._count += 1
        self.shards[-1].num_samples = self._count

    def close(self) -> list[ShardInfo]:
        """Finish the last shard and write `shards.json`; returns the shard list."""
        self._close_current()
        write_index(self.out_dir, self.shards)
        return self.shards

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_index(shard_dir: str | Path, shards: list[ShardInfo]) -> None:
    """Record per-shard sample counts in `shard_dir/shards.json` (paths relative to the dir)."""
    payload = {
        "shards": [{"path": s.path, "num_samples": s.num_samples} for s in shards],
        "num_samples": sum(s.num_samples for s in shards),
    }
    _write_json_atomic(Path(shard_dir) / INDEX_NAME, payload)


def _count_tar_samples(path: Path) -> int:
    keys = set()
    try:
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                if member.isreg():
                    prefix, _ = tariterators.base_plus_ext(member.name)
                    if prefix is not None:
                        keys.add(prefix)
    except (tarfile.TarError, OSError, EOFError):
        pass  # a truncated shard counts what it holds; the reader reports the missing rest
    return len(keys)


def load_index(shard_dir: str | Path, build_if_missing: bool = True, save: bool = True) -> list[ShardInfo]:
    """Shards of a directory with their sample counts (absolute paths).

    Reads `shards.json`; else img2dataset's `{shard}_stats.json` (`successes`); else, when
    `build_if_missing`, counts samples by scanning the tars once. The index made by either fallback is
    written as `shards.json` unless `save` is False (a folder that must stay untouched).
    """
    root = Path(shard_dir)
    if not root.is_dir():
        raise DataError(f"shard directory {root} does not exist; build or download the dataset first")
    index = root / INDEX_NAME
    if index.exists():
        try:
            entries = json.loads(index.read_text())["shards"]
            return [ShardInfo(str(root / e["path"]), int(e["num_samples"])) for e in entries]
        except (ValueError, KeyError, TypeError) as exn:
            raise DataError(f"{index} is not a valid shard index ({exn}); delete it to rebuild") from exn
    tars = sorted(root.glob("*.tar"))
    if not tars:
        raise DataError(f"no .tar shards in {root}; build or download the dataset first")
    shards: list[ShardInfo] = []
    for tar in tars:
        stats = tar.with_name(tar.stem + "_stats.json")
        count = None
        if stats.exists():
            try:
                count = int(json.loads(stats.read_text())["successes"])
            except (ValueError, KeyError, TypeError):
                count = None
        if count is None:
            if not build_if_missing:
                raise DataError(
                    f"{root} has no {INDEX_NAME}; run the data app or load_index(build_if_missing=True)"
                )
            count = _count_tar_samples(tar)
        shards.append(ShardInfo(tar.name, count))
    if save:
        write_index(root, shards)
    return [ShardInfo(str(root / s.path), s.num_samples) for s in shards]


class _NotPlainUstar(Exception):
    """A member the fast reader leaves to tarfile (pax or GNU long-name headers, base-256 sizes)."""


_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_REGULAR = (b"0", b"\0")  # regular-file type flags; "5" (directory) is skipped, anything else falls back
_SKIP_META = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta: "__key__"-style members


def _is_meta(fname: str) -> bool:
    base = fname.rsplit("/", 1)[-1]
    return bool(_SKIP_META.match(fname)) or (base.startswith("__") and base.endswith("__"))


def _signed_checksum(header: bytes) -> int:
    """The header checksum as some old tar writers computed it (bytes as signed chars)."""
    return sum(struct.unpack("148b8x356b", header)) + 256


def _valid_header(header: bytes) -> bool:
    """Whether a 512-byte block is a tar member header with a correct checksum."""
    try:
        checksum = int(header[148:156].split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        return False
    return checksum in (sum(header[:148]) + 256 + sum(header[156:]), _signed_checksum(header))


def starts_like_tar(path: str) -> bool:
    """Whether `path` exists and opens with a tar header: a shard that does not (missing, zero bytes,
    not a tar) yields nothing at all, one that does but fails later was cut or corrupted inside."""
    try:
        with open(path, "rb") as stream:
            header = stream.read(_BLOCK)
    except OSError:
        return False
    return len(header) == _BLOCK and header != _ZERO_BLOCK and _valid_header(header)


def _plain_members(stream: BinaryIO, file_size: int) -> Iterator[tuple[str, int]]:
    """Yield `(name, size)` of each regular member of a plain ustar/GNU/v7 tar, leaving the stream at its
    data; the caller may read those `size` bytes (else they are skipped unread).

    Raises `_NotPlainUstar` for headers it does not parse (tarfile takes over), EOFError when the archive
    ends inside a member or without its end block, and tarfile.ReadError on a corrupt header (tarfile
    itself would silently end the archive there).
    """
    position = stream.tell()  # tracked here: a tell() per member cost more than the parsing
    while True:
        header = stream.read(_BLOCK)
        position += len(header)
        if header == _ZERO_BLOCK:
            return  # the end-of-archive block
        if len(header) < _BLOCK:  # a writer that died leaves no end block: its last sample may be cut
            raise EOFError("the tar ends without its end-of-archive block")
        if header[124] & 0x80:
            raise _NotPlainUstar  # a base-256 size (members over 8 GiB)
        try:
            size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        except ValueError:
            size = -1
        if size < 0 or not _valid_header(header):
            raise tarfile.ReadError(f"corrupt member header at byte {position - _BLOCK}")
        if position + size > file_size:
            raise EOFError("the tar ends inside a member")
        kind = header[156:157]
        if kind in _REGULAR:
            name = header[:100].split(b"\0", 1)[0]
            prefix = header[345:500].split(b"\0", 1)[0]  # as tarfile: the ustar prefix when set
            yield (prefix + b"/" + name if prefix else name).decode("utf-8", "surrogateescape"), size
        elif kind != b"5":  # directories are skipped; links, pax and GNU long-name headers are not ours
            raise _NotPlainUstar
        position += -(-size // _BLOCK) * _BLOCK
        stream.seek(position)


def _fast_samples(
    path: str, wanted: Callable[[int], bool], keep: Callable[[str], bool]
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Group the members of a plain tar into samples like webdataset's `group_by_keys`, reading only the
    bytes of wanted samples' kept suffixes (the rest is skipped). When the file ends early, the
    sample in progress is yielded with the members that arrived whole, then the EOFError is raised."""
    with open(path, "rb") as stream:
        file_size = os.fstat(stream.fileno()).st_size
        ordinal, key = -1, None
        current: dict[str, Any] | None = None
        try:
            for fname, size in _plain_members(stream, file_size):
                prefix, suffix = tariterators.base_plus_ext(fname)
                if prefix is None or ("__" in fname and _is_meta(fname)):
                    continue
                suffix = suffix.lower()
                if prefix != key:
                    if current is not None:
                        yield ordinal, current
                    ordinal, key = ordinal + 1, prefix
                    current = {"__key__": prefix, "__url__": path} if wanted(ordinal) else None
                if current is not None and suffix in current:
                    raise DataError(f"{path}: duplicate file {fname} in one sample")
                if current is not None and keep(suffix):
                    current[suffix] = stream.read(size)
        except (EOFError, tarfile.ReadError):
            if current is not None:
                yield ordinal, current
            raise
        if current is not None:
            yield ordinal, current


def iter_raw_samples(
    path: str,
    on_error: Callable[[Exception], None],
    wanted: Callable[[int], bool] | None = None,
    suffixes: Collection[str] | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield `(ordinal, raw_sample)` for the samples of one tar, undecoded (suffix -> bytes).

    `wanted(ordinal)` False skips a sample without reading its bytes; `suffixes`, when given, keeps only
    those members (others are not read). A read error (a truncated or corrupt tar) is passed to
    `on_error` and ends the shard: the sample it cut arrives with the members read whole (so a
    modality may be missing), the samples after it are missing.

    Plain ustar tars (what webdataset's TarWriter and img2dataset write) are parsed here, header by
    header, seeking past unwanted bytes: 6x faster than tarfile's stream parser on small samples
    (0.03 vs 0.19 ms per 4-file sample). A member it does not parse (pax or GNU long-name headers)
    hands the shard to webdataset's tar iterators, from the sample it was in.
    """
    want = wanted or (lambda ordinal: True)
    keep = (lambda suffix: True) if suffixes is None else frozenset(suffixes).__contains__
    done = 0  # samples yielded by the fast path: the fallback resumes after them
    try:
        for ordinal, sample in _fast_samples(path, want, keep):
            yield ordinal, sample
            done = ordinal + 1
        return
    except _NotPlainUstar:
        pass
    except (OSError, EOFError, tarfile.ReadError, DataError) as exn:
        on_error(exn)
        return
    yield from _tarfile_samples(path, on_error, lambda o: o >= done and want(o), suffixes)


def _tarfile_samples(
    path: str,
    on_error: Callable[[Exception], None],
    wanted: Callable[[int], bool],
    suffixes: Collection[str] | None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """The general reader: webdataset's tar iterators over tarfile (any tar format)."""

    def handler(exn: Exception) -> bool:
        on_error(exn)
        return False

    try:
        with open(path, "rb") as stream:
            files = tariterators.tar_file_expander([{"url": path, "stream": stream}], handler=handler)
            keep = None if suffixes is None else set(suffixes)
            samples = tariterators.group_by_keys(files, suffixes=keep, handler=handler)
            for ordinal, sample in enumerate(samples):
                if wanted(ordinal):
                    yield ordinal, sample
    except OSError as exn:
        on_error(exn)


MODALITY_SUFFIXES = {"image": IMAGE_EXTS, "audio": AUDIO_EXTS, "text": ("txt",)}


def write_subset(
    in_dir: str | Path,
    out_dir: str | Path,
    keep: Collection[str],
    num_parts: int = 1,
    part: int = 0,
    samples_per_shard: int = 1000,
) -> int:
    """Write part of a shard folder, with only some modalities, as a new shard folder; returns its size.

    The samples at storage positions i with i % num_parts == part (num_parts 2: every other sample),
    holding the members of the modalities in `keep` (of image, audio, text) and their json (labels, QA);
    other members are dropped. E.g. the demo's image-text and audio-text sources: two halves of one
    tri-modal split that share no sample.
    """
    unknown = [m for m in keep if m not in MODALITY_SUFFIXES]
    if unknown or not 0 <= part < num_parts:
        raise DataError(
            f"write_subset: keep {list(keep)} (of {list(MODALITY_SUFFIXES)}), part {part} of {num_parts}"
        )
    suffixes = {"json", *(ext for m in keep for ext in MODALITY_SUFFIXES[m])}
    count = 0
    with ShardWriter(out_dir, samples_per_shard) as writer:
        for i, raw in enumerate(read_all(in_dir)):
            if i % num_parts == part:
                writer.write_raw({k: v for k, v in raw.items() if k == "__key__" or k in suffixes})
                count += 1
    return count


def read_all(shard_dir: str | Path) -> list[dict[str, Any]]:
    """Every raw sample of a shard directory in storage order (for inspection and tests)."""
    errors: list[Exception] = []
    out = []
    for info in load_index(shard_dir):
        out.extend(s for _, s in iter_raw_samples(info.path, errors.append))
    return out


__all__ = [
    "MODALITY_SUFFIXES",
    "ShardInfo",
    "ShardWriter",
    "iter_raw_samples",
    "load_index",
    "read_all",
    "write_index",
    "write_subset",
]
