"""The offline demo dataset: scikit-learn's 1,797 handwritten digits as images, short captions from
varied templates that name measured instance properties (stroke thickness, slant, size), each caption
spoken by eSpeak NG with a varied voice, pitch and speed, QA pairs whose answers need the image,
conversations of 2-4 turns in LLaVA's format whose follow-ups need the history, and the digit as `label`. Deterministic, with fixed stratified 80/10/10 train/val/test splits, and each split
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

DEMO_VERSION = 3  # 3: conversations added (every other field as in 2)
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
CONVERSATION_STREAM = 27  # the conversations draw from their own seeded RNG, so no earlier field moves


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


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def _parity(value: int) -> str:
    return "odd" if value % 2 else "even"


def demo_conversation(digit: int, rng: np.random.Generator) -> list[dict[str, str]]:
    """A conversation of 2-4 exchanges about one digit image, as LLaVA turns (`<image>\\n<audio>\\n` open
    the first human turn), each gpt turn tagged with the `kind` of question it answers:

    - opening: the first question, about the image (which digit, odd or even, plus one, greater than five);
    - image: a later question about the image, answered without the history;
    - earlier_answer: refers to the previous answer ("and that plus one?", "is that odd or even?"), which
      may itself have needed the history;
    - earlier_fact: needs the number the user stated in an earlier human turn ("my number is 4. ..."),
      which only the history holds ("what is my number plus the digit?", "what was my number?").

    The user states a number in one human turn before the last; each follow-up's kind is drawn uniformly
    from those that apply (earlier_fact once the number was stated, earlier_answer after a numeric answer,
    image while a digit question is left)."""
    image_questions = [
        ("which digit is this?", str(digit)),
        ("is the digit odd or even?", _parity(digit)),
        ("what is the digit plus one?", str(digit + 1)),
        ("is the digit greater than five?", _yes_no(digit > 5)),
    ]
    num_exchanges = int(rng.integers(2, 5))
    number = int(rng.integers(10))
    stated_at = int(rng.integers(num_exchanges - 1))
    order = rng.permutation(len(image_questions)).tolist()
    turns: list[dict[str, str]] = []
    last_number: int | None = None
    for exchange in range(num_exchanges):
        kinds = ["opening"] if exchange == 0 else []
        if exchange > 0:
            kinds += ["image"] * bool(order)
            kinds += ["earlier_answer"] * (last_number is not None)
            kinds += ["earlier_fact"] * (exchange > stated_at)
        kind = kinds[int(rng.integers(len(kinds)))]
        if kind in ("opening", "image"):
            question, answer = image_questions[order.pop(0)]
        elif kind == "earlier_answer":
            assert last_number is not None
            question, answer = [
                ("and that plus one?", str(last_number + 1)),
                ("is that odd or even?", _parity(last_number)),
                ("is that greater than five?", _yes_no(last_number > 5)),
            ][int(rng.integers(3))]
        else:
            question, answer = [
                ("what is my number plus the digit?", str(number + digit)),
                ("what was my number?", str(number)),
                ("is my number greater than the digit?", _yes_no(number > digit)),
            ][int(rng.integers(3))]
        last_number = int(answer) if answer.isdigit() else None
        human = (f"my number is {number}. " if exchange == stated_at else "") + question
        turns.append({"from": "human", "value": ("<image>\n<audio>\n" if exchange == 0 else "") + human})
        turns.append({"from": "gpt", "value": answer, "kind": kind})
    return turns


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
                    "conversations": demo_conversation(
                        digit, np.random.default_rng([seed, CONVERSATION_STREAM, i])
                    ),
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
