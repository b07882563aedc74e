"""The offline demo dataset: sizes, disjoint stratified splits, real speech of plausible length, QA
answers consistent with labels, captions that vary within a class, a no-op rebuild, and the two mixture
sources of each split.

Needs the `eg-data[demo]` extra (scikit-learn, espeakng-loader), except the measured-properties test."""

import io
import json
import time
from collections import Counter

import numpy as np
import pytest
import soundfile
from eg_data import (
    AudioTransformConfig,
    ImageTransformConfig,
    LoaderConfig,
    ShardLoader,
    Speaker,
    Voice,
    build_demo_dataset,
    read_all,
)
from eg_data.demo import WORDS, measure_digits
from PIL import Image


def need_demo_extra() -> None:
    pytest.importorskip("sklearn", reason="needs the eg-data[demo] extra (scikit-learn)")
    pytest.importorskip("espeakng_loader", reason="needs the eg-data[demo] extra (espeakng-loader)")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    need_demo_extra()
    out = tmp_path_factory.mktemp("demo")
    manifest = build_demo_dataset(out)
    return out, manifest, {split: read_all(out / split) for split in ("train", "val", "test")}


def test_sizes_splits_and_noop_rebuild(demo):
    out, manifest, splits = demo
    assert manifest["num_samples"] == {"train": 1437, "val": 180, "test": 180}
    keys = {s: {r["__key__"] for r in rows} for s, rows in splits.items()}
    assert sum(len(k) for k in keys.values()) == 1797
    assert not (keys["train"] & keys["val"] or keys["train"] & keys["test"] or keys["val"] & keys["test"])
    val_labels = Counter(json.loads(r["json"])["label"] for r in splits["val"])
    assert sorted(val_labels) == list(range(10)) and min(val_labels.values()) >= 17  # stratified: ~18 each
    start = time.perf_counter()
    assert build_demo_dataset(out) == manifest
    assert time.perf_counter() - start < 0.5


def test_mixture_sources_split_every_split_in_two(demo):
    """image_text/{split} and audio_text/{split}: the split's even and odd storage positions, each with
    only its own modalities (and the json), together the whole split with no sample in both."""
    out, manifest, splits = demo
    for split, rows in splits.items():
        image_text, audio_text = read_all(out / "image_text" / split), read_all(out / "audio_text" / split)
        assert [r["__key__"] for r in image_text] == [r["__key__"] for r in rows[0::2]]
        assert [r["__key__"] for r in audio_text] == [r["__key__"] for r in rows[1::2]]
        assert {k for r in image_text for k in r if not k.startswith("__")} == {"png", "txt", "json"}
        assert {k for r in audio_text for k in r if not k.startswith("__")} == {"flac", "txt", "json"}
        assert image_text[0]["png"] == rows[0]["png"] and audio_text[0]["flac"] == rows[1]["flac"]
        assert manifest["sources"]["image_text"][split] + manifest["sources"]["audio_text"][split] == len(
            rows
        )


def test_images_are_the_sklearn_digits(demo):
    from sklearn.datasets import load_digits  # the demo fixture made sure it is installed

    _, _, splits = demo
    row = splits["val"][0]
    index = int(json.loads(row["json"])["source"].split("[")[1].rstrip("]"))
    img = Image.open(io.BytesIO(row["png"]))
    assert img.size == (32, 32)
    small = np.asarray(img.resize((8, 8), Image.BOX), dtype=np.float64) / 255 * 16
    assert np.abs(small - load_digits().images[index]).mean() < 1.5


def test_audio_is_real_speech_of_plausible_length(demo):
    _, _, splits = demo
    durations = []
    for row in splits["val"]:
        wave, rate = soundfile.read(io.BytesIO(row["flac"]))
        words = len(row["txt"].decode().split())
        seconds = len(wave) / rate
        durations.append(seconds)
        assert 0.15 * words < seconds < 0.2 + 0.7 * words
        assert np.sqrt(np.mean(wave**2)) > 0.02  # not silence
    assert max(durations) < 4.0  # the tiny demo Whisper's context


def test_qa_and_captions_match_the_labels(demo):
    _, _, splits = demo
    captions_of_three = set()
    for row in splits["train"]:
        meta = json.loads(row["json"])
        digit, caption = meta["label"], row["txt"].decode()
        qa = {p["question"]: p["answer"] for p in meta["qa"]}
        assert qa["which digit is this?"] == str(digit)
        assert qa["is the digit odd or even?"] == ("odd" if digit % 2 else "even")
        assert qa["what is the digit plus one?"] == str(digit + 1)
        assert qa["are the strokes thin, medium or thick?"] == meta["thickness"]
        assert WORDS[digit] in caption.split(" ") or f"{WORDS[digit]}," in caption.split(" ")
        if digit == 3:
            captions_of_three.add(caption)
    assert len(captions_of_three) > 15  # instance properties make captions differ within a class


def test_measured_properties_follow_the_pixels():
    thin = np.zeros((1, 8, 8))
    thin[0, 1:7, 4] = 16  # a one-pixel vertical bar
    thick = np.zeros((1, 8, 8))
    thick[0, 1:7, 2:6] = 16  # a four-pixel bar
    leaning = np.zeros((1, 8, 8))
    for row in range(1, 7):
        leaning[0, row, 6 - row] = 16  # top to the right
    props = measure_digits(np.concatenate([thin, thick, leaning, thin]))
    assert props["thickness"][0] == "thin" and props["thickness"][1] == "thick"
    assert props["slant"][2] == "right" and props["slant"][0] == "upright"


def test_loader_reads_the_demo(demo):
    out, _, _ = demo
    cfg = LoaderConfig(
        shard_dir=str(out / "val"),
        batch_size=64,
        mode="eval",
        qa_pairs="all",
        image=ImageTransformConfig(size=32, mean=[0.5] * 3, std=[0.5] * 3),
        audio=AudioTransformConfig(n_samples=64000),  # 4 s context: 400 mel frames
    )
    loader = ShardLoader(cfg)
    loader.set_epoch(0)
    batches = list(loader)
    assert batches[0]["audio"].shape == (64, 80, 400)
    assert all(b["audio_present"].all() and (b["audio_mask"].sum(1) < 400).all() for b in batches)
    assert all((b["label"] >= 0).all() for b in batches)
    rows = {(k, int(i)) for b in batches for k, i in zip(b["key"], b["qa_index"])}
    assert len(rows) == sum(len(b["key"]) for b in batches) == 180 * 6  # every pair of the split, once
    assert not any(loader.data_report()["bad"].values())


def test_speaker_voices_differ():
    need_demo_extra()
    speaker = Speaker()
    slow = speaker.say("seven", Voice("en-us", rate=120, pitch=30))
    fast = speaker.say("seven", Voice("en-us", rate=250, pitch=30))
    assert len(slow) > 1.3 * len(fast)
    assert np.abs(slow).max() > 0.1
