"""Spoken captions for existing shards: every sample's caption (`{key}.txt`) spoken by eSpeak NG, as the
demo speaks its captions (voice, pitch and rate drawn per sample from (seed, key), eSpeak reseeded per
utterance), and written with the sample's other members as `{key}.flac` (16 kHz) into new shards. The
input folder is never modified.

One job per input shard (`{name}.tar` out for `{name}.tar` in), run over a process pool and resumable
(see `writing.py`). A sample that cannot be spoken is left out and counted by reason; speech longer than
`max_seconds` (the audio encoder's context: the loader keeps the first `max_seconds`) is written and
counted. eSpeak NG comes with the `eg-data[demo]` extra.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from eg_data.errors import DataError, is_missing
from eg_data.shards import AUDIO_EXTS, iter_raw_samples, load_index, starts_like_tar
from eg_data.speech import VOICES, Speaker, Voice
from eg_data.transforms import sample_rng
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

SPEAK_REASONS = (
    "missing_caption",  # no {key}.txt
    "caption_not_utf8",  # the caption's bytes are not UTF-8
    "empty_caption",  # empty or whitespace only
    "no_speech",  # eSpeak NG returned no samples (nothing speakable, e.g. only punctuation)
    "input_unreadable_shard",  # the input shard is missing, empty or not a tar: its indexed samples
    "input_truncated_shard",  # the input tar is cut short or corrupt: the indexed samples after the fault
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass
class SpeakConfig:
    """How `speak_shards` speaks captions."""

    voices: list[str] = field(default_factory=lambda: list(VOICES))
    """eSpeak NG voices (a language with an optional `+variant`), one drawn per sample."""
    rate_min: int = 150
    """Lowest speaking rate in words per minute, drawn per sample (inclusive)."""
    rate_max: int = 210
    """Highest speaking rate in words per minute (inclusive)."""
    pitch_min: int = 25
    """Lowest pitch (0-99), drawn per sample."""
    pitch_max: int = 75
    """Highest pitch (0-99)."""
    max_words: int = 0
    """Speak at most this many words of a caption: whole sentences while they fit, else the first sentence cut
    at max_words (0 = the whole caption). Long captions (PixMo-Cap's are ~200 words, over a minute of
    speech) otherwise exceed the audio encoder's context."""
    max_seconds: float = 30.0
    """The audio encoder's context in seconds (30 for released Whisper models); longer speech is written and
    reported (the loader keeps the first max_seconds)."""
    overwrite_audio: bool = False
    """Speak samples that already have audio too; false keeps their audio (counted kept_audio)."""
    num_workers: int = 0
    """Processes (0 = one per CPU core)."""
    seed: int = 0
    """Seed of the per-sample voice, rate and pitch draws."""

    def __post_init__(self) -> None:
        named = not is_missing(self.voices) and all(isinstance(v, str) and v.strip() for v in self.voices)
        if not is_missing(self.voices) and not (self.voices and named):
            raise DataError(f"voices must be a non-empty list of eSpeak voice names, got {self.voices!r}")
        for key, low in (("rate_min", 1), ("pitch_min", 0), ("max_words", 0), ("num_workers", 0)):
            value = getattr(self, key)
            if not is_missing(value) and not value >= low:
                raise DataError(f"{key} must be >= {low}, got {value}")
        for key in ("pitch_min", "pitch_max"):
            value = getattr(self, key)
            if not is_missing(value) and not 0 <= value <= 99:
                raise DataError(f"{key} must be in [0, 99], got {value}")
        for low_key, high_key in (("rate_min", "rate_max"), ("pitch_min", "pitch_max")):
            low, high = getattr(self, low_key), getattr(self, high_key)
            if not is_missing(low) and not is_missing(high) and high < low:
                raise DataError(f"{high_key} must be >= {low_key} ({low}), got {high}")
        if not is_missing(self.max_seconds) and not self.max_seconds > 0:
            raise DataError(f"max_seconds must be > 0, got {self.max_seconds}")

    def voice_for(self, key: str) -> Voice:
        """The voice, rate and pitch of sample `key`: a pure function of (seed, key)."""
        rng = sample_rng(self.seed, 0, key, "speak")
        return Voice(
            self.voices[int(rng.integers(len(self.voices)))],
            int(rng.integers(self.rate_min, self.rate_max + 1)),
            int(rng.integers(self.pitch_min, self.pitch_max + 1)),
        )


def clip_words(text: str, max_words: int) -> str:
    """The leading whole sentences of `text` within `max_words` words (the first sentence cut at
    `max_words` when it alone is longer); `text` itself when `max_words` is 0 or it fits."""
    words = text.split()
    if max_words <= 0 or len(words) <= max_words:
        return text
    kept: list[str] = []
    for sentence in _SENTENCE_END.split(text.strip()):
        size = len(sentence.split())
        if len(kept) + size > max_words:
            break
        kept += sentence.split()
    return " ".join(kept or words[:max_words])


_SPEAKER: Speaker | None = None  # one per process: eSpeak NG keeps one global state per process


def _speaker() -> Speaker:
    global _SPEAKER
    if _SPEAKER is None:
        _SPEAKER = Speaker()
    return _SPEAKER


def _caption(raw: dict[str, Any]) -> tuple[str, str]:
    """(caption, "") or ("", reason)."""
    if "txt" not in raw:
        return "", "missing_caption"
    try:
        text = raw["txt"].decode("utf-8").strip()
    except UnicodeDecodeError:
        return "", "caption_not_utf8"
    return (text, "") if text else ("", "empty_caption")


def _with_speech(meta_bytes: bytes | None, speech: dict[str, Any]) -> bytes | None:
    """The sample's json with a `speech` entry added; None when it is not a JSON object (left as it is)."""
    meta: Any = {}
    if meta_bytes is not None:
        try:
            meta = json.loads(meta_bytes)
        except ValueError:
            return None
    if not isinstance(meta, dict):
        return None
    return json.dumps({**meta, "speech": speech}, sort_keys=True).encode("utf-8")


def _whole_samples(path: str, expected: int, failures: Failures) -> Iterator[dict[str, Any]]:
    """The samples of an input shard that arrived whole; the indexed samples lost to a read fault (the
    one the fault cut, which may arrive with some members missing, and all after it) are counted as
    `input_truncated_shard`, or `input_unreadable_shard` for a shard that is no tar at all."""
    errors: list[Exception] = []
    pending, read = None, 0
    for _, raw in iter_raw_samples(path, errors.append):
        if pending is not None:
            yield pending
            read += 1
        pending = raw
    if pending is not None and not errors:
        yield pending
        read += 1
    if read < expected:
        reason = "input_truncated_shard" if starts_like_tar(path) else "input_unreadable_shard"
        failures.add(reason, path, expected - read)


def speak_shard(out_dir: str, job: ShardJob) -> dict[str, Any]:
    """Write the spoken version of one input shard (a worker job); returns its stats."""
    path, expected, settings = job.payload
    cfg = SpeakConfig(**settings)
    speaker = _speaker()
    speaker.reset()  # the shard's speech depends on nothing spoken before it: same bytes when resumed
    failures, lengths = Failures(), AudioLengths(cfg.max_seconds)
    kept_audio = json_left = 0
    shard = ShardOutput(out_dir, job.name)
    try:
        for raw in _whole_samples(path, expected, failures):
            key = str(raw["__key__"])
            record = {k: v for k, v in raw.items() if k != "__url__"}
            if any(ext in raw for ext in AUDIO_EXTS) and not cfg.overwrite_audio:
                kept_audio += 1
                shard.write(record)
                continue
            text, reason = _caption(raw)
            if reason:
                failures.add(reason, key)
                continue
            spoken = clip_words(text, cfg.max_words)
            voice = cfg.voice_for(key)
            wave = speaker.say(spoken, voice)
            if wave.size == 0:
                failures.add("no_speech", key)
                continue
            flac, seconds = encode_flac(wave, speaker.sample_rate)
            for ext in AUDIO_EXTS:
                record.pop(ext, None)
            record["flac"] = flac
            speech = {
                "voice": voice.name,
                "rate": voice.rate,
                "pitch": voice.pitch,
                "seconds": round(seconds, 3),
                "words": len(spoken.split()),
                "clipped": spoken != text,
            }
            meta = _with_speech(raw.get("json"), speech)
            if meta is None:
                json_left += 1  # the sample keeps its json bytes; the loader will judge them
            else:
                record["json"] = meta
            lengths.add(key, seconds)
            shard.write(record)
        return shard.commit(
            {
                "count": expected,
                "failed": dict(failures.counts),
                "examples": failures.examples,
                "counters": {"kept_audio": kept_audio, "json_not_object": json_left},
                "audio": lengths.as_dict(),
                "fingerprint": job.fingerprint,
                "source": path,
            }
        )
    except BaseException:
        shard.abort()
        raise


def speak_shards(
    input_dir: str | Path, out_dir: str | Path, cfg: SpeakConfig | None = None
) -> dict[str, Any]:
    """Speak the captions of every shard in `input_dir` into new shards in `out_dir` (resumable).

    Returns (and writes as `out_dir/stats.json`): `ok` samples written, `failed` {reason: count} (see
    SPEAK_REASONS) with `examples` (a key, or the shard for input faults), `kept_audio` (samples that
    had audio already), `json_not_object`, `audio` (files, seconds_total/mean/max, longest,
    over_max_seconds with an example, max_seconds), `shards_written`, `shards_skipped` (finished by
    an earlier run).
    """
    cfg = cfg or SpeakConfig()
    source, out = Path(input_dir), Path(out_dir)
    if source.resolve() == out.resolve():
        raise DataError(
            f"--out {out} is the input folder; speak writes new shards and never modifies its input"
        )
    shards = load_index(source, save=False)  # the input folder stays untouched
    speaker = _speaker()  # fails at once, naming the extra, when eSpeak NG is not installed
    for name in cfg.voices:
        try:
            speaker.say("a", Voice(name))
        except DataError:
            raise DataError(f"voices has {name!r}, which eSpeak NG does not know") from None
    settings = asdict(cfg)
    shape = {k: v for k, v in settings.items() if k != "num_workers"}  # what changes the output
    jobs = [
        ShardJob(Path(info.path).stem, fingerprint(shape, info.num_samples, file_stamp(info.path)), payload)
        for info in shards
        for payload in [(info.path, info.num_samples, settings)]
    ]
    if len({job.name for job in jobs}) != len(jobs):
        raise DataError(f"{source}: two shards share a file name; cannot name the output shards")
    all_stats, written, skipped = run_shard_jobs(out, jobs, speak_shard, cfg.num_workers, "speak")
    report = merge_stats(all_stats)
    report["audio"]["max_seconds"] = cfg.max_seconds
    report.update(shards_written=written, shards_skipped=skipped)
    (out / "stats.json").write_text(json.dumps(report, indent=1, sort_keys=True))
    return report
