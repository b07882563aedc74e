"""Bad data through the real app: shards holding garbage image bytes, an empty caption, undecodable
audio, samples missing a required modality, a tar cut short and a zero-byte shard. The run completes
and every skipped sample is counted by reason in the log, in metrics.csv and in eval.json; data that is
mostly unreadable stops the run with one line (max_bad_fraction)."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from dataclasses import dataclass
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
    """27 good samples + a garbage image + an empty caption: 29 (prime) in one shard."""
    broken = _broken(good[:5])
    records = good[5:32]
    records.insert(5, broken["image_decode"])
    records.insert(15, broken["empty_caption"])
    write_split(out, records, per_shard=len(records))
    return {"image_decode": 1, "empty_caption": 1}


@dataclass
class CorruptRun:
    workdir: Path
    done: subprocess.CompletedProcess
    want_train: dict[str, int]
    want_eval: dict[str, int]


@pytest.fixture(scope="module")
def corrupt_run(demo_data: Path, suite_root: Path, tmp_path_factory: pytest.TempPathFactory) -> CorruptRun:
    """One epoch of training on the corrupt train split, validated and tested on corrupt eval splits
    (29 samples each, 2 of them bad, in eval batches of 8: a short last batch)."""
    from eg_data import read_all

    workdir = tmp_path_factory.mktemp("corrupt_run")
    train = [sample_record(r) for r in read_all(demo_data / "train")[:80]]
    test = [sample_record(r) for r in read_all(demo_data / "test")[:32]]
    data = workdir / "data"
    want_train = _corrupt_train(data / "train", train)
    want_eval = _corrupt_eval(data / "test", test)
    _corrupt_eval(data / "val", test)
    cfg = base_config(
        suite_root,
        **{
            "train.max_steps": 0,
            "train.epochs": 1,
            "train.log_every": 1,
            "train.val_every": 0,  # validated once, at the end
            "train.keep_last_n": 0,
            "eval.plot_max_points": 0,
            "eval.batch_size": 8,
        },
    )
    cfg["data"].update(val_dir=str(data / "val"), test_dir=str(data / "test"))
    cfg["data"]["train"]["shard_dir"] = str(data / "train")
    done = run_train(write_config(workdir, cfg), workdir)
    return CorruptRun(workdir, done, want_train, want_eval)


@pytest.mark.slow
def test_run_on_corrupt_shards_completes_and_reports_by_reason(corrupt_run: CorruptRun) -> None:
    """Guarantee: a run on shards with garbage image bytes, an empty caption, undecodable audio, a
    sample missing its audio, one missing its image, a tar cut short and a zero-byte shard completes
    (exit 0), and the skipped training samples are reported by reason, exactly: one summary line in the
    log with an example per reason, and the data/bad/<reason> and data/samples columns of metrics.csv at
    the epoch's last step."""
    done, want = corrupt_run.done, corrupt_run.want_train
    assert done.returncode == 0, done.stderr[-3000:]
    readable = 57
    num_bad = sum(want.values())
    lines = [line for line in done.stdout.splitlines() if "data: skipped" in line]
    assert len(lines) == 1, done.stdout[-3000:]
    assert f"skipped {num_bad} of {readable + num_bad} samples in epoch 0" in lines[0]
    for reason, count in want.items():
        assert f"{reason} {count}, e.g. " in lines[0], lines[0]

    last = read_rows(metrics_path(corrupt_run.workdir))[-1]
    bad_columns = {
        k.removeprefix("data/bad/"): float(v) for k, v in last.items() if k.startswith("data/bad/")
    }
    assert {k: v for k, v in bad_columns.items() if v} == {k: float(v) for k, v in want.items()}
    assert float(last["data/samples"]) == readable + num_bad


@pytest.mark.slow
def test_test_split_bad_samples_in_eval_json(corrupt_run: CorruptRun) -> None:
    """Guarantee: the held-out evaluation scores every good sample of the test split exactly once (27
    of 29, in batches of 8 with a short last one) and reports the 2 bad ones by reason in eval.json
    (`data`) and in one printed line."""
    assert corrupt_run.done.returncode == 0, corrupt_run.done.stderr[-3000:]
    report = json.loads((corrupt_run.workdir / "outputs" / "tiny" / "eval.json").read_text())
    assert report["num_samples"] == 27
    assert {k: v for k, v in report["data"]["bad"].items() if v} == corrupt_run.want_eval
    assert report["data"]["samples"] == 29
    lines = [line for line in corrupt_run.done.stdout.splitlines() if "of the test split" in line]
    assert len(lines) == 1 and "skipped 2 " in lines[0], corrupt_run.done.stdout[-2000:]


@pytest.mark.slow
def test_validation_split_bad_samples_are_reported(corrupt_run: CorruptRun) -> None:
    """Guarantee: the validation split's bad samples are reported too, by reason, in the validation
    row of metrics.csv (val/data/bad/<reason>, val/data/samples), as the training split's are."""
    assert corrupt_run.done.returncode == 0, corrupt_run.done.stderr[-3000:]
    rows = [r for r in read_rows(metrics_path(corrupt_run.workdir)) if r.get("val/loss")]
    assert rows, "no validation row"
    val = rows[-1]
    bad = {
        k.removeprefix("val/data/bad/"): float(v)
        for k, v in val.items()
        if k.startswith("val/data/bad/") and v and float(v)
    }
    columns = sorted(k for k in val if k.startswith("val/data/"))
    assert bad == {k: float(v) for k, v in corrupt_run.want_eval.items()}, f"val/data columns: {columns}"
    assert float(val["val/data/samples"]) == 29


@pytest.mark.slow
def test_mostly_unreadable_data_stops_with_one_line(demo_data: Path, suite_root: Path, tmp_path: Path):
    """Guarantee: a run whose training data is mostly unreadable (a zero-byte shard indexed for 64
    samples beside 40 good ones, above the default max_bad_fraction 0.5) stops with exit status 2 and
    one error line naming max_bad_fraction, instead of training on almost nothing."""
    from eg_data import read_all
    from eg_data.shards import ShardInfo, ShardWriter, write_index

    good = [sample_record(r) for r in read_all(demo_data / "train")[:104]]
    train = tmp_path / "data" / "train"
    shards = []
    for prefix, records in (("a", good[:40]), ("b", good[40:])):
        with ShardWriter(train, max_samples_per_shard=len(records), prefix=prefix) as writer:
            for record in records:
                writer.write(record)
        shards.append(ShardInfo(writer.shards[0].path, len(records)))
    write_index(train, shards)
    (train / shards[1].path).write_bytes(b"")
    cfg = base_config(suite_root, **{"train.max_steps": 0, "train.epochs": 1, "train.val_every": 0})
    cfg["data"]["train"]["shard_dir"] = str(train)
    done = run_train(write_config(tmp_path, cfg), tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "max_bad_fraction" in errors[0], done.stderr[-3000:]
    assert "Traceback" not in done.stderr
