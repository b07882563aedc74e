"""`speak_shards`: spoken captions added to existing shards as new shards. The audio decodes and lasts
as long as the words take, voices vary and are a pure function of (seed, key), unspeakable samples are
counted by reason, long speech is reported, the input folder is never touched, and a run killed
mid-way (SIGKILL) continues to the same bytes as an uninterrupted run.

Needs the `eg-data[demo]` extra (espeakng-loader)."""

import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
from eg_data import (
    AudioTransformConfig,
    DataError,
    ImageTransformConfig,
    LoaderConfig,
    ShardWriter,
    SpeakConfig,
    read_all,
    speak_shards,
)
from eg_data.speak import clip_words

pytest.importorskip("espeakng_loader", reason="needs the eg-data[demo] extra (espeakng-loader)")

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "near",
    "the",
    "quiet",
    "river",
    "bank",
]


def caption(i: int, words: int) -> str:
    return " ".join(WORDS[(i + j) % len(WORDS)] for j in range(words))


def write_input(root: Path, make_sample, num_shards: int, per_shard: int, words: int = 6) -> Path:
    """Shards of image + caption + json samples without audio; sample 2 has an empty caption, sample 3
    none at all, sample 4 keeps an audio file of its own."""
    with ShardWriter(root, per_shard) as writer:
        for i in range(num_shards * per_shard):
            sample = make_sample(i, text=caption(i, words))
            if i != 4:
                sample.pop("audio")
            if i == 2:
                sample["text"] = "   "
            if i == 3:
                sample.pop("text")
            writer.write(sample)
    return root


def folder_digest(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir()) if p.is_file()}


def test_speak_adds_decodable_speech_of_plausible_length(tmp_path, make_sample):
    src = write_input(tmp_path / "in", make_sample, num_shards=2, per_shard=4)
    before = folder_digest(src)
    report = speak_shards(src, tmp_path / "out", SpeakConfig(num_workers=1, max_seconds=2.0))
    assert folder_digest(src) == before  # input untouched (no index or partial file written there)
    assert report["ok"] == 6 and report["kept_audio"] == 1
    assert report["failed"] == {"empty_caption": 1, "missing_caption": 1}
    assert report["examples"] == {"empty_caption": "s0002", "missing_caption": "s0003"}
    assert report["shards_written"] == 2 and report["shards_skipped"] == 0
    out = {s["__key__"]: s for s in read_all(tmp_path / "out")}
    assert sorted(out) == ["s0000", "s0001", "s0004", "s0005", "s0006", "s0007"]
    original = {s["__key__"]: s for s in read_all(src)}
    voices = set()
    for key, sample in out.items():
        assert sample["png"] == original[key]["png"] and sample["txt"] == original[key]["txt"]
        wave, rate = soundfile.read(io.BytesIO(sample["flac"]))
        if key == "s0004":  # had audio: kept as it was
            assert sample["flac"] == original[key]["flac"]
            continue
        meta = json.loads(sample["json"])
        assert meta["label"] == json.loads(original[key]["json"])["label"]  # json extended, not replaced
        speech = meta["speech"]
        voices.add((speech["voice"], speech["rate"], speech["pitch"]))
        seconds = len(wave) / rate
        assert rate == 16000 and seconds == pytest.approx(speech["seconds"], abs=1e-3)
        # six short words at the drawn words per minute (eSpeak's rate counts average words), plus a pause
        nominal = 60 * 6 / speech["rate"]
        assert 0.6 * nominal < seconds < 1.5 * nominal + 1.0, (key, seconds, speech)
        assert np.abs(wave).max() > 0.05  # speech, not silence
    assert len(voices) == 5  # varied per sample
    over = [k for k, s in out.items() if k != "s0004" and json.loads(s["json"])["speech"]["seconds"] > 2.0]
    assert report["audio"]["over_max_seconds"] == len(over) and report["audio"]["files"] == 5
    assert report["audio"]["max_seconds"] == 2.0


def test_speech_is_a_function_of_seed_and_key(tmp_path, make_sample):
    src = write_input(tmp_path / "in", make_sample, num_shards=1, per_shard=6)
    speak_shards(src, tmp_path / "a", SpeakConfig(num_workers=1))
    speak_shards(src, tmp_path / "b", SpeakConfig(num_workers=1))
    speak_shards(src, tmp_path / "c", SpeakConfig(num_workers=1, seed=1))
    a, b, c = (folder_digest(tmp_path / name) for name in "abc")
    assert a["shard-00000.tar"] == b["shard-00000.tar"]  # same bytes: deterministic
    assert a["shard-00000.tar"] != c["shard-00000.tar"]  # another seed draws other voices
    cfg = SpeakConfig(seed=3)
    assert cfg.voice_for("k1") == SpeakConfig(seed=3).voice_for("k1")


def test_speak_loads_as_a_trimodal_source(tmp_path, make_sample):
    src = write_input(tmp_path / "in", make_sample, num_shards=1, per_shard=8)
    speak_shards(src, tmp_path / "out", SpeakConfig(num_workers=1))
    cfg = LoaderConfig(
        shard_dir=str(tmp_path / "out"),
        batch_size=6,
        required=["image", "audio", "text"],
        image=ImageTransformConfig(size=16),
        audio=AudioTransformConfig(n_samples=16000 * 4),
    )
    loader = cfg.build()
    loader.set_epoch(0)
    (batch,) = list(loader)
    assert batch["audio_present"].all() and batch["image_present"].all() and batch["text_present"].all()
    assert loader.data_report()["bad"] == dict.fromkeys(loader.data_report()["bad"], 0)


def test_clip_words_keeps_whole_sentences():
    text = "One two three. Four five six seven. Eight nine."
    assert clip_words(text, 0) == text
    assert clip_words(text, 8) == "One two three. Four five six seven."
    assert clip_words(text, 2) == "One two"  # the first sentence alone is longer: cut
    assert clip_words(text, 100) == text


def test_speak_refuses_bad_settings_and_the_input_as_output(tmp_path, make_sample):
    src = write_input(tmp_path / "in", make_sample, num_shards=1, per_shard=4)
    with pytest.raises(DataError, match="^--out .* is the input folder"):
        speak_shards(src, src, SpeakConfig(num_workers=1))
    with pytest.raises(DataError, match="^voices has 'xx-nonexistent'"):
        speak_shards(src, tmp_path / "out", SpeakConfig(voices=["xx-nonexistent"], num_workers=1))
    for kwargs, message in (
        ({"rate_max": 100}, "rate_max must be >= rate_min (150), got 100"),
        ({"pitch_max": 120}, "pitch_max must be in [0, 99], got 120"),
        ({"max_seconds": 0}, "max_seconds must be > 0, got 0"),
        ({"voices": []}, "voices must be a non-empty list"),
        ({"num_workers": -1}, "num_workers must be >= 0, got -1"),
    ):
        with pytest.raises(DataError, match=f"^{re.escape(message)}"):
            SpeakConfig(**kwargs)
    assert SpeakConfig(rate_max="???").rate_max == "???"  # omegaconf MISSING is not checked


def test_speak_reports_samples_lost_in_a_truncated_input_shard(tmp_path, make_sample):
    src = write_input(tmp_path / "in", make_sample, num_shards=2, per_shard=4)
    tar = src / "shard-00001.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 3])
    report = speak_shards(src, tmp_path / "out", SpeakConfig(num_workers=1))
    lost = report["failed"]["input_truncated_shard"]
    assert lost >= 2 and report["examples"]["input_truncated_shard"] == str(tar)
    assert report["ok"] + lost + 2 == 8  # nothing unaccounted for (2 caption faults in shard 0)


SPEAK_SCRIPT = """
import sys
from eg_data import SpeakConfig, speak_shards
speak_shards(sys.argv[1], sys.argv[2], SpeakConfig(num_workers=1, seed=5))
"""


def test_a_killed_speak_run_resumes_to_the_uninterrupted_result(tmp_path, make_sample):
    """SIGKILL once the first shard is finished; the rerun keeps the finished shards (not rewritten),
    redoes the rest, and every output file equals an uninterrupted run's byte for byte."""
    src = write_input(tmp_path / "in", make_sample, num_shards=8, per_shard=4, words=40)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", SPEAK_SCRIPT, str(src), str(out)], env=env)
    deadline = time.monotonic() + 120
    while not list(out.glob("*_stats.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in out.glob("*_stats.json")}
    assert 1 <= len(finished) < 8, f"the kill came too late to test resuming: {sorted(finished)}"
    subprocess.run([sys.executable, "-c", SPEAK_SCRIPT, str(src), str(out)], env=env, check=True)
    for name, mtime in finished.items():
        assert (out / name).stat().st_mtime_ns == mtime  # finished shards were kept, not redone
    assert not list(out.glob(".*partial"))  # the killed run's partial shard was cleaned up
    reference = tmp_path / "reference"
    subprocess.run([sys.executable, "-c", SPEAK_SCRIPT, str(src), str(reference)], env=env, check=True)
    resumed, uninterrupted = folder_digest(out), folder_digest(reference)
    report = json.loads((out / "stats.json").read_text())
    assert report["shards_skipped"] == len(finished) and report["shards_written"] == 8 - len(finished)
    resumed.pop("stats.json"), uninterrupted.pop("stats.json")  # run counters differ by design
    assert resumed == uninterrupted
