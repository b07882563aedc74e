"""`import_audio_captions`: Clotho- and AudioCaps-style tables into audio + text shards. Captions are
grouped per file (txt the first, json all of them), audio is stored as 16 kHz mono FLAC that decodes to
the original signal, and missing, unreadable, empty and silent files and caption-less rows are counted by
reason and named; a finished shard is kept when the import is run again."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
from eg_data import (
    AudioCaptionsConfig,
    AudioTransformConfig,
    DataError,
    LoaderConfig,
    import_audio_captions,
    read_all,
)


def tone(seconds: float, rate: int, freq: float, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * freq * t)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


@pytest.fixture
def clotho(tmp_path: Path) -> tuple[Path, Path]:
    """A Clotho-layout table (BOM, file_name, caption_1..caption_3) over good, bad and silent files."""
    audio = tmp_path / "audio"
    (audio / "sub").mkdir(parents=True)
    soundfile.write(audio / "rain.wav", tone(1.5, 44100, 440), 44100)
    soundfile.write(audio / "sub" / "dog bark.flac", tone(0.5, 22050, 220, channels=2), 22050)
    soundfile.write(audio / "quiet.wav", np.zeros(8000), 16000)
    soundfile.write(audio / "empty.wav", np.zeros(0), 16000)
    (audio / "garbage.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio at all")
    table = tmp_path / "clotho.csv"
    table.write_text(
        "\ufefffile_name,caption_1,caption_2,caption_3\n"
        "rain.wav,rain on a tin roof,heavy rain,\n"
        "sub/dog bark.flac,a dog barks twice,,a dog\n"
        "quiet.wav,nothing at all,,\n"
        "empty.wav,zero samples,,\n"
        "garbage.wav,a broken file,,\n"
        "gone.wav,a file that is not there,,\n"
        "rain.wav,,,\n",
        encoding="utf-8",
    )
    return table, audio


def test_clotho_table_with_bad_files(tmp_path, clotho):
    table, audio = clotho
    report = import_audio_captions(table, audio, tmp_path / "out", AudioCaptionsConfig(num_workers=1))
    assert report["files"] == 6 and report["ok"] == 2
    assert report["failed"] == {"empty_audio": 1, "missing_file": 1, "silent": 1, "unreadable": 1}
    assert report["examples"] == {
        "empty_audio": "empty.wav",
        "missing_file": "gone.wav",
        "silent": "quiet.wav",
        "unreadable": "garbage.wav",
    }
    assert report["captions"] == {"total": 8, "max_per_file": 2}
    samples = {s["__key__"]: s for s in read_all(tmp_path / "out")}
    assert sorted(samples) == ["rain", "sub_dog_bark"]
    assert {tuple(sorted(k for k in s if not k.startswith("__"))) for s in samples.values()} == {
        ("flac", "json", "txt")
    }
    rain = samples["rain"]
    assert rain["txt"] == b"rain on a tin roof"
    meta = json.loads(rain["json"])
    assert meta["captions"] == ["rain on a tin roof", "heavy rain"] and meta["file"] == "rain.wav"
    wave, rate = soundfile.read(io.BytesIO(rain["flac"]))
    assert rate == 16000 and len(wave) == 24000  # 1.5 s at 16 kHz
    # resampled 44.1 kHz -> 16 kHz and back to the same 440 Hz tone (16-bit: ~1e-4 quantization)
    assert np.abs(wave[1000:-1000] - tone(1.5, 16000, 440)[1000:-1000]).max() < 0.01
    dog, _ = soundfile.read(io.BytesIO(samples["sub_dog_bark"]["flac"]))
    assert dog.ndim == 1 and len(dog) == 8000  # stereo 22.05 kHz -> mono 16 kHz
    assert json.loads(samples["sub_dog_bark"]["json"])["captions"] == ["a dog barks twice", "a dog"]
    assert report["audio"]["files"] == 2 and report["audio"]["seconds_total"] == 2.0
    assert report["audio"]["longest"] == "rain" and report["audio"]["over_max_seconds"] == 0

    again = import_audio_captions(table, audio, tmp_path / "out", AudioCaptionsConfig(num_workers=1))
    assert again["shards_skipped"] == 1 and again["shards_written"] == 0 and again["ok"] == 2


def test_audiocaps_rows_grouped_by_file(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    soundfile.write(audio / "abc_30.wav", tone(2.0, 16000, 300), 16000)
    soundfile.write(audio / "xyz_0.wav", tone(1.0, 16000, 500), 16000)
    table = tmp_path / "train.csv"
    table.write_text(
        "audiocap_id,youtube_id,start_time,caption\n"
        "1,abc,30,a car passes\n2,xyz,0,birds sing\n3,abc,30,traffic noise\n4,nope,10,lost clip\n"
    )
    cfg = AudioCaptionsConfig(
        file_format="{youtube_id}_{start_time}.wav", extra_cols=["youtube_id"], max_seconds=1.5, num_workers=1
    )
    report = import_audio_captions(table, audio, tmp_path / "out", cfg)
    assert report["ok"] == 2 and report["failed"] == {"missing_file": 1}
    assert report["audio"]["over_max_seconds"] == 1 and report["audio"]["over_max_example"] == "abc_30"
    samples = {s["__key__"]: json.loads(s["json"]) for s in read_all(tmp_path / "out")}
    assert samples["abc_30"]["captions"] == ["a car passes", "traffic noise"]
    assert samples["abc_30"]["youtube_id"] == "abc"
    loader = LoaderConfig(
        shard_dir=str(tmp_path / "out"),
        batch_size=2,
        modalities=["audio", "text"],
        required=["audio", "text"],
        audio=AudioTransformConfig(n_samples=16000),
    ).build()
    loader.set_epoch(0)
    (batch,) = list(loader)
    assert batch["audio_present"].all() and sorted(batch["text"]) == ["a car passes", "birds sing"]


def test_jsonl_with_caption_lists_and_table_errors(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    soundfile.write(audio / "a.wav", tone(0.5, 16000, 300), 16000)
    table = tmp_path / "t.jsonl"
    table.write_text(json.dumps({"path": "a.wav", "captions": ["one", " ", "two"]}) + "\n")
    report = import_audio_captions(
        table, audio, tmp_path / "out", AudioCaptionsConfig(file_col="path", num_workers=1)
    )
    assert report["ok"] == 1 and report["captions"]["total"] == 2
    with pytest.raises(DataError, match=r"lacks column\(s\) \['file_name'\]"):
        import_audio_captions(table, audio, tmp_path / "x", AudioCaptionsConfig(num_workers=1))
    (tmp_path / "t.txt").write_text("a.wav one\n")
    with pytest.raises(DataError, match="unknown format '.txt'"):
        import_audio_captions(tmp_path / "t.txt", audio, tmp_path / "x")
    with pytest.raises(DataError, match="^min_peak must be in"):
        AudioCaptionsConfig(min_peak=2.0)
