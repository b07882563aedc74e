"""Audio-caption datasets as shards: a CSV or JSONL table of audio file paths and captions (Clotho's
`file_name,caption_1..caption_5`, one row per file; AudioCaps' `audiocap_id,youtube_id,start_time,caption`,
one row per caption) becomes shards of `{key}.flac` (16 kHz mono), `{key}.txt` and `{key}.json`.

One sample per audio file: rows naming the same file are grouped, `txt` holds the file's first caption
and the json all of them (`captions`), with the file's path. One sample per caption would store each clip
up to five times and put the same clip twice in a contrastive batch, where its copies are false
negatives of each other. A file that is missing, unreadable or silent, or that has no caption, is left
out and counted by reason. Resumable and parallel like `speak` (see `writing.py`).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

from eg_data.errors import DataError, is_missing
from eg_data.writing import (
    AudioLengths,
    Failures,
    ShardJob,
    ShardOutput,
    encode_flac,
    file_stamp,
    fingerprint,
    merge_stats,
    run_shard_jobs,
)

AUDIO_CAPTION_REASONS = (
    "no_caption",  # every caption of the file is empty
    "missing_file",  # the path does not exist under --audio-dir
    "unreadable",  # soundfile cannot decode it
    "empty_audio",  # it decodes to no samples
    "silent",  # its absolute peak is below min_peak
)
_CAPTION_COLUMN = re.compile(r"^captions?(_\d+)?$")
_KEY_CHARS = re.compile(r"[^0-9A-Za-z_-]+")


@dataclass
class AudioCaptionsConfig:
    """How a table of audio files and captions becomes shards."""

    file_col: str = "file_name"
    """The column with each audio file's path, relative to the audio folder (Clotho: file_name)."""
    file_format: str = ""
    """Instead of file_col, a path built from the row's columns, e.g. AudioCaps downloaded as
    `{youtube_id}_{start_time}.wav` (Python format fields are column names; "" = use file_col)."""
    caption_cols: list[str] = field(default_factory=list)
    """The caption columns, in order ([] = every column named caption, captions or caption_N, by N). A JSONL
    value may be a list of captions."""
    extra_cols: list[str] = field(default_factory=list)
    """Columns copied into each sample's json (from the file's first row)."""
    num_samples: int = 0
    """Import the first N audio files only (0 = all)."""
    samples_per_shard: int = 1000
    """Audio files per shard."""
    min_peak: float = 1e-4
    """A file whose largest absolute sample is below this (full scale 1.0) is silent: skipped and counted."""
    max_seconds: float = 30.0
    """The audio encoder's context in seconds; longer files are written and reported."""
    num_workers: int = 0
    """Processes (0 = one per CPU core)."""

    def __post_init__(self) -> None:
        if not is_missing(self.file_col) and not self.file_col and not self.file_format:
            raise DataError("file_col is empty and file_format unset; name the column with the audio paths")
        for key, low in (("num_samples", 0), ("samples_per_shard", 1), ("num_workers", 0)):
            value = getattr(self, key)
            if not is_missing(value) and not value >= low:
                raise DataError(f"{key} must be >= {low}, got {value}")
        if not is_missing(self.min_peak) and not 0.0 <= self.min_peak < 1.0:
            raise DataError(f"min_peak must be in [0, 1), got {self.min_peak}")
        if not is_missing(self.max_seconds) and not self.max_seconds > 0:
            raise DataError(f"max_seconds must be > 0, got {self.max_seconds}")


def read_table(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a .csv (header row; a UTF-8 BOM is allowed) or .jsonl file."""
    src = Path(path)
    if not src.is_file():
        raise DataError(f"caption table {src} does not exist")
    suffix = src.suffix.lower()
    if suffix == ".csv":
        with src.open(newline="", encoding="utf-8-sig") as f:
            return list(csv.DictReader(f))
    if suffix in (".jsonl", ".json"):
        rows = []
        for number, line in enumerate(src.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exn:
                raise DataError(f"{src}:{number} is not a JSON line ({exn})") from None
            if not isinstance(row, dict):
                raise DataError(f"{src}:{number} is not a JSON object")
            rows.append(row)
        return rows
    raise DataError(f"caption table {src}: unknown format {suffix!r}; use .csv or .jsonl")


def _caption_columns(columns: list[str], cfg: AudioCaptionsConfig) -> list[str]:
    if cfg.caption_cols:
        return list(cfg.caption_cols)

    def order(name: str) -> int:
        digits = name.rpartition("_")[2]
        return int(digits) if digits.isdigit() else 0

    return sorted((c for c in columns if _CAPTION_COLUMN.match(c)), key=order)


def _captions(row: dict[str, Any], columns: list[str]) -> list[str]:
    out = []
    for column in columns:
        value = row.get(column)
        for caption in value if isinstance(value, list) else [value]:
            text = "" if caption is None else str(caption).strip()
            if text:
                out.append(text)
    return out


def group_files(rows: list[dict[str, Any]], cfg: AudioCaptionsConfig, source: str) -> list[dict[str, Any]]:
    """One entry per audio file, in order of first appearance: {"file": relative path, "captions": [...],
    "extra": {column: value}}; rows naming the same file add their captions to it."""
    if not rows:
        return []
    columns = list(rows[0])
    caption_cols = _caption_columns(columns, cfg)
    needed = ([] if cfg.file_format else [cfg.file_col]) + caption_cols + list(cfg.extra_cols)
    missing = [c for c in needed if c not in columns]
    if missing or not caption_cols:
        what = f"column(s) {missing}" if missing else "caption columns (caption, captions or caption_N)"
        raise DataError(
            f"{source} lacks {what}; found {columns}; set file_col/file_format, caption_cols, extra_cols"
        )
    files: dict[str, dict[str, Any]] = {}
    for number, row in enumerate(rows, 1):
        if cfg.file_format:
            try:
                rel = cfg.file_format.format_map({k: str(v) for k, v in row.items()})
            except (KeyError, IndexError, ValueError) as exn:
                raise DataError(f"{source} row {number}: file_format {cfg.file_format!r}: {exn!r}") from None
        else:
            rel = str(row[cfg.file_col] or "").strip()
        if rel not in files:
            if cfg.num_samples and len(files) >= cfg.num_samples:
                continue  # past the first num_samples files; later rows may still add to earlier ones
            files[rel] = {"file": rel, "captions": [], "extra": {c: row[c] for c in cfg.extra_cols}}
        files[rel]["captions"] += _captions(row, caption_cols)
    return list(files.values())


def _keys(files: list[dict[str, Any]]) -> Iterator[str]:
    """A readable key per file: its path without extension, other characters as "_" (unique)."""
    seen: set[str] = set()
    for entry in files:
        base = _KEY_CHARS.sub("_", str(Path(entry["file"]).with_suffix(""))).strip("_") or "audio"
        key, n = base, 1
        while key in seen:
            n += 1
            key = f"{base}_{n}"
        seen.add(key)
        yield key


def import_shard(out_dir: str, job: ShardJob) -> dict[str, Any]:
    """Write one shard of audio files with their captions (a worker job); returns its stats."""
    entries, audio_dir, settings = job.payload
    cfg = AudioCaptionsConfig(**settings)
    failures, lengths = Failures(), AudioLengths(cfg.max_seconds)
    shard = ShardOutput(out_dir, job.name)
    try:
        for key, entry in entries:
            rel = entry["file"]
            if not entry["captions"]:
                failures.add("no_caption", rel)
                continue
            path = Path(audio_dir) / rel
            if not path.is_file():
                failures.add("missing_file", rel)
                continue
            try:
                wave, rate = soundfile.read(str(path), dtype="float32", always_2d=True)  # (T, C)
            except Exception:  # noqa: BLE001 (libsndfile raises several types on bad files)
                failures.add("unreadable", rel)
                continue
            if wave.size == 0:
                failures.add("empty_audio", rel)
                continue
            mono = wave.mean(axis=1)  # (T,)
            if not np.isfinite(mono).all():
                failures.add("unreadable", rel)
                continue
            if float(np.abs(mono).max()) < cfg.min_peak:
                failures.add("silent", rel)
                continue
            flac, seconds = encode_flac(mono, int(rate))
            meta = {
                "captions": entry["captions"],
                "file": rel,
                "seconds": round(seconds, 3),
                **entry["extra"],
            }
            shard.write(
                {
                    "__key__": key,
                    "flac": flac,
                    "txt": entry["captions"][0].encode("utf-8"),
                    "json": json.dumps(meta, sort_keys=True).encode("utf-8"),
                }
            )
            lengths.add(key, seconds)
        return shard.commit(
            {
                "count": len(entries),
                "failed": dict(failures.counts),
                "examples": failures.examples,
                "audio": lengths.as_dict(),
                "fingerprint": job.fingerprint,
            }
        )
    except BaseException:
        shard.abort()
        raise


def import_audio_captions(
    table: str | Path, audio_dir: str | Path, out_dir: str | Path, cfg: AudioCaptionsConfig | None = None
) -> dict[str, Any]:
    """Write the audio files and captions listed in `table` as shards in `out_dir` (resumable).

    Returns (and writes as `out_dir/stats.json`): `files` listed, `ok` written, `failed` {reason: count}
    (see AUDIO_CAPTION_REASONS) with `examples` (the file's path), `captions` (total, and per written
    file at most), `audio` (files, seconds_total/mean/max, longest, over_max_seconds with an example,
    max_seconds), `shards_written`, `shards_skipped`.
    """
    cfg = cfg or AudioCaptionsConfig()
    if not Path(audio_dir).is_dir():
        raise DataError(f"--audio-dir {audio_dir} is not a folder")
    files = group_files(read_table(table), cfg, str(table))
    if not files:
        raise DataError(f"{table} lists no audio files")
    keyed = list(zip(_keys(files), files))
    settings = asdict(cfg)
    shape = {k: v for k, v in settings.items() if k != "num_workers"}
    per = cfg.samples_per_shard
    jobs = []
    for index in range(0, len(keyed), per):
        chunk = keyed[index : index + per]
        stamps = [(key, e, file_stamp(Path(audio_dir) / e["file"])) for key, e in chunk]
        payload = (chunk, str(audio_dir), settings)
        jobs.append(
            ShardJob(f"shard-{index // per:05d}", fingerprint(shape, str(audio_dir), stamps), payload)
        )
    all_stats, written, skipped = run_shard_jobs(
        out_dir, jobs, import_shard, cfg.num_workers, "audio-captions"
    )
    report = {"files": len(files), **merge_stats(all_stats)}
    report["audio"]["max_seconds"] = cfg.max_seconds
    counts = [len(e["captions"]) for e in files]
    report["captions"] = {"total": sum(counts), "max_per_file": max(counts)}
    report.update(shards_written=written, shards_skipped=skipped)
    (Path(out_dir) / "stats.json").write_text(json.dumps(report, indent=1, sort_keys=True))
    return report
