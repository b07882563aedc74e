"""LLaVA-format instruction data as shards: a JSON array (or JSONL) of records
`{"id", "image": file, "conversations": [{"from": "human" | "gpt", "value"}, ...]}` (llava_instruct_150k.json,
llava_v1_5_mix665k.json) becomes shards of `{key}.<image ext>` (the file's own bytes), `{key}.flac` when a
record names an audio file (16 kHz mono), and `{key}.json` holding the record's id, file names and its turns
as given, which the loader checks again with the same rules (`conversations.parse_conversation`).

A record is skipped and counted by reason, with the first record id of each reason (the downloader's
report): a record that is not an object, turns that break a rule (CONVERSATION_REASONS: no turns, two
human turns in a row, a placeholder with no media, an unknown role, ...), an image or audio file that is
missing or does not decode. Text-only records (no image, no audio) are kept. A file none of whose records
can be written is refused with one line. Resumable and parallel like `audio-captions` (see `writing.py`).
"""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import soundfile
from PIL import Image

from eg_data.conversations import CONVERSATION_REASONS, ConversationError, parse_conversation
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

LLAVA_REASONS = (
    "not_a_record",  # an entry of the file that is not a JSON object
    *CONVERSATION_REASONS,
    "missing_image",  # the record names an image that is not under --images
    "unreadable_image",  # PIL cannot decode it
    "missing_audio",  # the record names an audio file that is not under --audio
    "unreadable_audio",  # soundfile cannot decode it, or it holds no samples
)
IMAGE_SUFFIXES = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp"}  # the loader's members
FORMAT_SUFFIX = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}  # PIL's format -> the member it is stored as
_KEY_CHARS = re.compile(r"[^0-9A-Za-z_-]+")


@dataclass
class LlavaConfig:
    """How a LLaVA-format conversation file becomes shards."""

    id_field: str = "id"
    """The record's id (LLaVA: id); it names the sample (made unique) and the bad-record reports."""
    image_field: str = "image"
    """The record's image file, relative to --images (LLaVA: image); a record without it has no image."""
    audio_field: str = "audio"
    """The record's audio file, relative to --audio; a record without it has no audio."""
    conversations_field: str = "conversations"
    """The record's turns (LLaVA: conversations)."""
    offset: int = 0
    """Skip the first N records of the file (with num_samples: a slice, e.g. held-out val/test records)."""
    num_samples: int = 0
    """Import N records only, from `offset` (0 = all the rest)."""
    samples_per_shard: int = 1000
    """Records per shard."""
    max_seconds: float = 30.0
    """The audio encoder's context in seconds; longer files are written and reported."""
    num_workers: int = 0
    """Processes (0 = one per CPU core)."""

    def __post_init__(self) -> None:
        for key in ("id_field", "image_field", "audio_field", "conversations_field"):
            value = getattr(self, key)
            if not is_missing(value) and not value:
                raise DataError(f"{key} is empty; name the record's field")
        for key, low in (("offset", 0), ("num_samples", 0), ("samples_per_shard", 1), ("num_workers", 0)):
            value = getattr(self, key)
            if not is_missing(value) and not value >= low:
                raise DataError(f"{key} must be >= {low}, got {value}")
        if not is_missing(self.max_seconds) and not self.max_seconds > 0:
            raise DataError(f"max_seconds must be > 0, got {self.max_seconds}")


def read_records(path: str | Path) -> list[Any]:
    """The entries of a .json file holding one array (LLaVA's files), or of a .jsonl file (one per line)."""
    src = Path(path)
    if not src.is_file():
        raise DataError(f"--input {src} does not exist")
    text = src.read_text(encoding="utf-8")
    if src.suffix.lower() == ".jsonl":
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except ValueError as exn:
                    raise DataError(f"{src}:{number} is not a JSON line ({exn})") from None
        return records
    try:
        records = json.loads(text)
    except ValueError as exn:
        raise DataError(f"{src} is not JSON ({exn}); LLaVA's files are one array of records") from None
    if not isinstance(records, list):
        raise DataError(f"{src} holds a JSON {type(records).__name__}, not an array of records")
    return records


def _record_id(record: Any, index: int, cfg: LlavaConfig) -> str:
    """The record's id as text, or `#index` (its position in the file) when it has none."""
    value = record.get(cfg.id_field) if isinstance(record, dict) else None
    return f"#{index}" if value is None or str(value) == "" else str(value)


def check_records(records: list[Any], cfg: LlavaConfig) -> tuple[list[tuple[str, dict[str, Any]]], Failures]:
    """([(record id, record)] of the records whose turns pass, the failures of the others); the files are
    checked later, by the shard workers."""
    good, failures = [], Failures()
    for index, record in enumerate(records):
        record_id = _record_id(record, index + cfg.offset, cfg)
        if not isinstance(record, dict):
            failures.add("not_a_record", record_id)
            continue
        media = [
            name
            for name, key in (("image", cfg.image_field), ("audio", cfg.audio_field))
            if record.get(key) not in (None, "")
        ]
        try:
            parse_conversation(record.get(cfg.conversations_field), media)
        except ConversationError as exn:
            failures.add(exn.reason, record_id)
            continue
        good.append((record_id, record))
    return good, failures


def _keys(ids: list[str]) -> Iterator[str]:
    """A sample key per record id: other characters as "_", made unique (LLaVA's mixes repeat ids)."""
    seen: set[str] = set()
    for record_id in ids:
        base = _KEY_CHARS.sub("_", record_id).strip("_") or "record"
        key, n = base, 1
        while key in seen:
            n += 1
            key = f"{base}_{n}"
        seen.add(key)
        yield key


def _image_member(path: Path) -> tuple[str, bytes] | None:
    """(member suffix, bytes) of an image file that PIL decodes: the file's own bytes when it is a JPEG,
    PNG or WebP named so, else the image re-encoded as PNG (the loader reads jpg/png/webp members). None
    when it does not decode."""
    try:
        with Image.open(path) as img:
            img.load()
            suffix = IMAGE_SUFFIXES.get(path.suffix.lower())
            if suffix is not None and suffix == FORMAT_SUFFIX.get(img.format or ""):
                return suffix, path.read_bytes()
            buf = io.BytesIO()
            img.convert("RGB").save(buf, format="PNG")
            return "png", buf.getvalue()
    except Exception:  # noqa: BLE001 (PIL raises many types on bad files)
        return None


def import_shard(out_dir: str, job: ShardJob) -> dict[str, Any]:
    """Write one shard of records (a worker job); returns its stats."""
    entries, images_dir, audio_dir, settings = job.payload
    cfg = LlavaConfig(**settings)
    failures, lengths, turns = Failures(), AudioLengths(cfg.max_seconds), Counter()
    shard = ShardOutput(out_dir, job.name)
    try:
        for key, record_id, record in entries:
            sample: dict[str, Any] = {"__key__": key}
            meta: dict[str, Any] = {"id": record_id, "conversations": record[cfg.conversations_field]}
            image = record.get(cfg.image_field)
            if image not in (None, ""):
                path = Path(images_dir) / str(image)
                if not path.is_file():
                    failures.add("missing_image", record_id)
                    continue
                member = _image_member(path)
                if member is None:
                    failures.add("unreadable_image", record_id)
                    continue
                sample[member[0]] = member[1]
                meta["image"] = str(image)
            audio = record.get(cfg.audio_field)
            if audio not in (None, ""):
                path = Path(audio_dir or images_dir) / str(audio)
                if not path.is_file():
                    failures.add("missing_audio", record_id)
                    continue
                try:
                    wave, rate = soundfile.read(str(path), dtype="float32", always_2d=True)  # (T, C)
                except Exception:  # noqa: BLE001 (libsndfile raises several types on bad files)
                    wave, rate = None, 0
                if wave is None or wave.size == 0:
                    failures.add("unreadable_audio", record_id)
                    continue
                sample["flac"], seconds = encode_flac(wave.mean(axis=1), int(rate))
                meta["audio"] = str(audio)
                lengths.add(key, seconds)
            sample["json"] = json.dumps(meta, sort_keys=True).encode("utf-8")
            shard.write(sample)
            turns["turns"] += len(meta["conversations"])
        return shard.commit(
            {
                "count": len(entries),
                "failed": dict(failures.counts),
                "examples": failures.examples,
                "audio": lengths.as_dict(),
                "counters": dict(turns),
                "fingerprint": job.fingerprint,
            }
        )
    except BaseException:
        shard.abort()
        raise


def _stamp(folder: str | Path, name: Any) -> list[Any]:
    """The file_stamp of a record's file, or ["none"] when it names none."""
    return ["none"] if name in (None, "") else file_stamp(Path(folder) / str(name))


def _summary(failed: dict[str, int], examples: dict[str, str]) -> str:
    return ", ".join(f"{reason} {n} (e.g. id {examples[reason]!r})" for reason, n in failed.items() if n)


def import_llava(
    input_file: str | Path,
    images_dir: str | Path,
    out_dir: str | Path,
    cfg: LlavaConfig | None = None,
    audio_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Write the records of a LLaVA-format file as shards in `out_dir` (resumable).

    Returns (and writes as `out_dir/stats.json`): `records` in the file, `ok` written, `failed` {reason:
    count} (every reason of LLAVA_REASONS) with `examples` (the first record id of each), `turns` (total
    written), `audio` (lengths), `shards_written`, `shards_skipped`. DataError when no record can be
    written (every one bad), naming the reasons.
    """
    cfg = cfg or LlavaConfig()
    for flag, folder in (("--images", images_dir), ("--audio", audio_dir)):
        if folder is not None and not Path(folder).is_dir():
            raise DataError(f"{flag} {folder} is not a folder")
    records = read_records(input_file)[cfg.offset :]
    if cfg.num_samples:
        records = records[: cfg.num_samples]
    if not records:
        raise DataError(f"{input_file} holds no records")
    good, failures = check_records(records, cfg)
    if not good:
        raise DataError(
            f"{input_file}: none of its {len(records)} records can be imported: "
            f"{_summary(dict(failures.counts), failures.examples)}"
        )
    settings = asdict(cfg)
    shape = {k: v for k, v in settings.items() if k not in ("num_workers", "num_samples", "offset")}
    keyed = [(key, rid, rec) for key, (rid, rec) in zip(_keys([rid for rid, _ in good]), good)]
    per = cfg.samples_per_shard
    jobs = []
    for index in range(0, len(keyed), per):
        chunk = keyed[index : index + per]
        stamps = [
            (
                key,
                rec,
                _stamp(images_dir, rec.get(cfg.image_field)),
                _stamp(audio_dir or images_dir, rec.get(cfg.audio_field)),
            )
            for key, _, rec in chunk
        ]
        payload = (chunk, str(images_dir), None if audio_dir is None else str(audio_dir), settings)
        jobs.append(
            ShardJob(f"shard-{index // per:05d}", fingerprint(shape, str(images_dir), stamps), payload)
        )
    all_stats, written, skipped = run_shard_jobs(out_dir, jobs, import_shard, cfg.num_workers, "llava")
    merged = merge_stats(all_stats)
    failed = Counter(failures.counts)
    failed.update(merged["failed"])
    examples = {**merged["examples"], **failures.examples}
    report = {
        "records": len(records),
        "ok": merged["ok"],
        "failed": {reason: failed.get(reason, 0) for reason in LLAVA_REASONS},
        "examples": {reason: examples[reason] for reason in LLAVA_REASONS if reason in examples},
        "turns": merged.get("turns", 0),
        "audio": merged["audio"],
        "shards_written": written,
        "shards_skipped": skipped,
    }
    if report["ok"] == 0:
        raise DataError(
            f"{input_file}: none of its {len(records)} records could be written: "
            f"{_summary(report['failed'], report['examples'])}"
        )
    (Path(out_dir) / "stats.json").write_text(json.dumps(report, indent=1, sort_keys=True))
    return report
