"""The offline demo dataset: scikit-learn's 1,797 handwritten digits as images, short captions from
varied templates that name measured instance properties (stroke thickness, slant, size), each caption
spoken by eSpeak NG with a varied voice, pitch and speed, QA pairs whose answers need the image, and
the digit as `label`. Deterministic, with fixed stratified 80/10/10 train/val/test splits, and each split
also as two disjoint single-pair sources (image-text, audio-text) for the mixture demo.

scikit-learn and espeakng-loader come with the `eg-data[demo]` extra and are imported on first use."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
from PIL import Image

from eg_data.errors import DataError, require_extra
from eg_data.shards import ShardWriter, load_index, write_subset
from eg_data.speech import VOICES, Speaker, Voice

DEMO_VERSION = 2
MANIFEST = "demo.json"
SPLITS = ("train", "val", "test")
SOURCES = {"image_text": ("image", "text"), "audio_text": ("audio", "text")}  # the mixture demo's sources
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEMPLATES = (
    "a {thick} handwritten {word}",
    "the digit {word}, {slant}",
    "a {size} {word} with {thick} strokes",
    "{word}, written {slant}",
    "handwritten number {word}, {thick}",
    "a {size} {word} {slant}",
    "a {thick}, {slant} {word}",
)
SLANT_PHRASE = {"left": "leaning left", "upright": "upright", "right": "leaning right"}


def measure_digits(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image stroke thickness, slant and size from 8x8 ink maps (0..16), each as a 3-way class.

    images: (N, 8, 8). Returns arrays of class words: thickness thin/medium/thick (ink per occupied
    row, dataset tertiles), slant left/upright/right (horizontal drift of ink per row down, from the
    ink-weighted second moments), size small/medium/large (ink bounding-box area, tertiles).
    """
    ink = images.astype(np.float64) / 16.0  # (N, 8, 8)
    ys, xs = np.mgrid[0:8, 0:8]
    mass = ink.sum(axis=(1, 2)) + 1e-9  # (N,)
    cx = (ink * xs).sum(axis=(1, 2)) / mass
    cy = (ink * ys).sum(axis=(1, 2)) / mass
    cov_xy = (ink * (xs - cx[:, None, None]) * (ys - cy[:, None, None])).sum(axis=(1, 2)) / mass
    var_y = (ink * (ys - cy[:, None, None]) ** 2).sum(axis=(1, 2)) / mass + 1e-9
    drift = cov_xy / var_y  # x change per row downward; negative = top leans right
    on = images > 4  # (N, 8, 8)
    rows, cols = on.any(axis=2), on.any(axis=1)  # (N, 8)
    height = np.maximum(rows.sum(axis=1), 1)
    area = height * np.maximum(cols.sum(axis=1), 1)
    per_row = mass / height

    def tertile(values: np.ndarray, names: tuple[str, str, str]) -> np.ndarray:
        lo, hi = np.quantile(values, [1 / 3, 2 / 3])
        return np.where(values <= lo, names[0], np.where(values <= hi, names[1], names[2]))

    slant = np.where(drift < -0.12, "right", np.where(drift > 0.12, "left", "upright"))
    return {
        "thickness": tertile(per_row, ("thin", "medium", "thick")),
        "slant": slant,
        "size": tertile(area.astype(np.float64), ("small", "medium", "large")),
    }


def demo_qa(digit: int, thickness: str, slant: str) -> list[dict[str, str]]:
    """QA pairs for one digit image; every answer needs the image."""
    return [
        {"question": "which digit is this?", "answer": str(digit)},
        {"question": "is the digit odd or even?", "answer": "odd" if digit % 2 else "even"},
        {"question": "what is the digit plus one?", "answer": str(digit + 1)},
        {"question": "is the digit greater than five?", "answer": "yes" if digit > 5 else "no"},
        {"question": "are the strokes thin, medium or thick?", "answer": thickness},
        {"question": "does it lean left, right or stand upright?", "answer": slant},
    ]


def _png(pixels: np.ndarray, size: int) -> bytes:
    img = Image.fromarray((pixels * (255.0 / 16.0)).round().astype(np.uint8), mode="L")
    buf = io.BytesIO()
    img.resize((size, size), Image.BICUBIC).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _flac(wave: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, wave, rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def split_indices(labels: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Stratified 80/10/10 split of sample indices, fixed by `seed`."""
    train_test_split = require_extra("sklearn.model_selection", "demo", "the demo dataset").train_test_split

    idx = np.arange(len(labels))
    train, rest = train_test_split(idx, test_size=0.2, stratify=labels, random_state=seed)
    val, test = train_test_split(rest, test_size=0.5, stratify=labels[rest], random_state=seed)
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def is_demo_complete(out_dir: str | Path, image_size: int = 32) -> bool:
    """Whether `out_dir` holds a finished demo build of this version and image size."""
    manifest = Path(out_dir) / MANIFEST
    if not manifest.exists():
        return False
    try:
        meta = json.loads(manifest.read_text())
    except ValueError:
        return False
    return (
        meta.get("version") == DEMO_VERSION
        and meta.get("image_size") == image_size
        and all((Path(out_dir) / split / "shards.json").exists() for split in SPLITS)
    )


def build_demo_dataset(
    out_dir: str | Path, image_size: int = 32, samples_per_shard: int = 256, seed: int = 0
) -> dict[str, Any]:
    """Build the demo shards under `out_dir/{train,val,test}` (no-op when already complete), and each
    split as a two-source mixture: `image_text/{split}` and `audio_text/{split}` (see `_write_sources`).

    Returns the manifest: version, image_size, per-split sample counts, the audio sample rate, and
    `sources`: the sample count of each mixture source's splits ({name: {split: count}}).
    """
    out = Path(out_dir)
    if image_size < 8:
        raise DataError(f"demo image_size must be >= 8 (the digits are 8x8), got {image_size}")
    if is_demo_complete(out, image_size):
        manifest = json.loads((out / MANIFEST).read_text())
        return {**manifest, "sources": _write_sources(out, rebuild=False)}
    load_digits = require_extra("sklearn.datasets", "demo", "build_demo_dataset").load_digits
    speaker = Speaker()  # before the slow part: fails at once without the extra
    speaker.reset()  # the same bytes whatever this process spoke before (as in a fresh process)
    digits = load_digits()
    images, labels = digits.images, digits.target.astype(int)  # (N, 8, 8), (N,)
    props = measure_digits(images)
    rng = np.random.default_rng(seed)
    template_ids = rng.integers(len(TEMPLATES), size=len(labels))
    voice_ids = rng.integers(len(VOICES), size=len(labels))
    rates = rng.integers(150, 211, size=len(labels))
    pitches = rng.integers(25, 76, size=len(labels))
    splits = split_indices(labels, seed)
    counts = {}
    for split in SPLITS:
        split_dir = out / split
        if split_dir.exists():
            shutil.rmtree(split_dir)  # a partial earlier build; rebuilt whole for determinism
        with ShardWriter(split_dir, samples_per_shard) as writer:
            for i in splits[split].tolist():
                digit = int(labels[i])
                thick, slant, size = (str(props[k][i]) for k in ("thickness", "slant", "size"))
                caption = TEMPLATES[template_ids[i]].format(
                    word=WORDS[digit], thick=thick, slant=SLANT_PHRASE[slant], size=size
                )
                voice = Voice(VOICES[voice_ids[i]], int(rates[i]), int(pitches[i]))
                wave = speaker.say(caption, voice)
                meta = {
                    "label": digit,
                    "thickness": thick,
                    "slant": slant,
                    "size": size,
                    "voice": voice.name,
                    "rate": voice.rate,
                    "pitch": voice.pitch,
                    "qa": demo_qa(digit, thick, slant),
                    "source": f"sklearn.datasets.load_digits[{i}]",
                }
                writer.write(
                    {
                        "key": f"digit-{i:04d}",
                        "image": _png(images[i], image_size),
                        "image_ext": "png",
                        "text": caption,
                        "audio": _flac(wave, speaker.sample_rate),
                        "audio_ext": "flac",
                        "json": meta,
                    }
                )
        counts[split] = len(splits[split])
    manifest = {
        "version": DEMO_VERSION,
        "image_size": image_size,
        "num_samples": counts,
        "audio_sample_rate": speaker.sample_rate,
        "seed": seed,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return {**manifest, "sources": _write_sources(out, rebuild=True)}


def _write_sources(out: Path, rebuild: bool) -> dict[str, dict[str, int]]:
    """The demo as a two-source mixture: each split's even-position samples with image and text
    (`image_text/{split}`) and its odd-position samples with audio and text (`audio_text/{split}`). No
    image ever meets an audio clip in one training sample, so vision-audio retrieval on the tri-modal test
    split measures what the shared text space transfers; each source's val/test halves are its own
    held-out splits. Written when missing (or with rebuilt splits)."""
    counts: dict[str, dict[str, int]] = {}
    for part, (name, keep) in enumerate(SOURCES.items()):
        counts[name] = {}
        for split in SPLITS:
            folder = out / name / split
            if rebuild or not (folder / "shards.json").exists():
                if folder.exists():
                    shutil.rmtree(folder)  # a partial or stale earlier one
                write_subset(
                    out / split, folder, keep, num_parts=len(SOURCES), part=part, samples_per_shard=256
                )
            counts[name][split] = sum(info.num_samples for info in load_index(folder))
    return counts
