"""Bad data through the real app: shards holding garbage image bytes, an empty caption, undecodable
audio, samples missing a required modality, a tar cut short and a zero-byte shard. The run completes
and every skipped sample is counted by reason in the log, in metrics.csv and in eval.json."""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reliability_runs import base_config, metrics_path, read_rows, run_train, sample_record, write_split

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import write_config

GARBAGE = b"\x00not an image or a sound\xff" * 8
NUM_TRUNCATED = 20  # samples in the shard cut short
NUM_KEPT = 10  # of those, readable before the cut
NUM_ZERO = 8  # samples indexed for the zero-byte shard


def _broken(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """One sample per sample-level fault, each made from a good record; reason -> record."""
    image, caption, audio, no_audio, no_image = (dict(r) for r in records[:5])
    image["image"] = GARBAGE
    caption["text"] = "   "
    audio["audio"] = GARBAGE
    del no_audio["audio"], no_audio["audio_ext"]
    del no_image["image"], no_image["image_ext"]
    return {
        "image_decode": image,
        "empty_caption": caption,
        "audio_decode": audio,
        "missing_audio": no_audio,
        "missing_image": no_image,
    }


def _cut_inside_sample(path: Path, index: int) -> None:
    """Truncate a tar in the middle of the first member of its `index`-th sample: samples before it
    stay whole, it and every later one are lost."""
    with tarfile.open(path) as tar:
        keys: list[str] = []
        for member in tar.getmembers():
            key = member.name.split(".", 1)[0]
            if key not in keys:
                keys.append(key)
                if len(keys) == index + 1:
                    cut = member.offset_data + member.size // 2
                    break
    with open(path, "r+b") as f:
        f.truncate(cut)


def _corrupt_train(out: Path, good: list[dict[str, Any]]) -> dict[str, int]:
    """a-*.tar: 47 good + the 5 broken samples; b-*.tar: 20 samples cut after 10; c-*.tar: zero bytes
    where shards.json lists 8. 80 indexed samples: exactly 5 batches of 16 positions, so the epoch reads
    every one of them (a remainder would be dropped unread), 57 of them good."""
    from eg_data.shards import ShardInfo, ShardWriter, write_index

    broken = _broken(good[:5])
    mixed = good[5:52]
    for i, record in enumerate(broken.values()):
        mixed.insert(7 * i + 3, record)
    shards = []
    for prefix, records in (
        ("a", mixed),
        ("b", good[52 : 52 + NUM_TRUNCATED]),
        ("c", good[72 : 72 + NUM_ZERO]),
    ):
        with ShardWriter(out, max_samples_per_shard=len(records), prefix=prefix) as writer:
            for record in records:
                writer.write(record)
        shards.append(ShardInfo(writer.shards[0].path, len(records)))
    write_index(out, shards)  # one index over the three shards (each writer wrote only its own)
    _cut_inside_sample(out / shards[1].path, NUM_KEPT)
    (out / shards[2].path).write_bytes(b"")
    return {
        **{reason: 1 for reason in broken},
        "truncated_shard": NUM_TRUNCATED - NUM_KEPT,
        "unreadable_shard": NUM_ZERO,
    }


def _corrupt_eval(out: Path, good: list[dict[str, Any]]) -> dict[str, int]:
    """22 good samples + a garbage image + an empty caption, in one shard."""
    broken = _broken(good[:5])
    records = good[5:27]
    records.insert(5, broken["image_decode"])
    records.insert(15, broken["empty_caption"])
    write_split(out, records, per_shard=len(records))
    return {"image_decode": 1, "empty_caption": 1}


@pytest.mark.slow
def test_run_on_corrupt_shards_completes_and_reports_by_reason(
    demo_data: Path, suite_root: Path, tmp_path: Path
):
    """Guarantee: a run on shards with garbage image bytes, an empty caption, undecodable audio, a
    sample missing its audio, one missing its image, a tar cut short and a zero-byte shard completes
    (exit 0), and the skipped samples are reported by reason, exactly: one summary line in the log with
    an example per reason, the data/bad/<reason> and data/samples columns of metrics.csv at the epoch's
    last step, and eval.json's counts for the test split, whose every good sample is scored once."""
    from eg_data import read_all

    train = [sample_record(r) for r in read_all(demo_data / "train")[:80]]
    test = [sample_record(r) for r in read_all(demo_data / "test")[:27]]
    data = tmp_path / "data"
    want_train = _corrupt_train(data / "train", train)
    want_eval = _corrupt_eval(data / "test", test)
    _corrupt_eval(data / "val", test)
    cfg = base_config(
        suite_root,
        **{
            "train.max_steps": 0,
            "train.epochs": 1,
            "train.log_every": 1,
            "train.val_every": 0,
            "train.keep_last_n": 0,
            "eval.plot_max_points": 0,
        },
    )
    cfg["data"].update(val_dir=str(data / "val"), test_dir=str(data / "test"))
    cfg["data"]["train"]["shard_dir"] = str(data / "train")
    done = run_train(write_config(tmp_path, cfg), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

    readable = 57
    num_bad = sum(want_train.values())
    lines = [line for line in done.stdout.splitlines() if "data: skipped" in line]
    assert len(lines) == 1, done.stdout[-3000:]
    assert f"skipped {num_bad} of {readable + num_bad} samples in epoch 0" in lines[0]
    for reason, count in want_train.items():
        assert f"{reason} {count}, e.g. " in lines[0], lines[0]

    last = read_rows(metrics_path(tmp_path))[-1]
    bad_columns = {
        k.removeprefix("data/bad/"): float(v) for k, v in last.items() if k.startswith("data/bad/")
    }
    assert {k: v for k, v in bad_columns.items() if v} == {k: float(v) for k, v in want_train.items()}
    assert float(last["data/samples"]) == readable + num_bad

    report = json.loads((tmp_path / "outputs" / "tiny" / "eval.json").read_text())
    assert report["num_samples"] == 22
    assert {k: v for k, v in report["data"]["bad"].items() if v} == want_eval
    assert report["data"]["samples"] == 24
