"""Stage 1 end to end through the real apps (subprocesses): outputs, kill-and-resume, 2-process DDP, config errors."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

sys.path.insert(
    0, str(Path(__file__).resolve().parent)
)  # --import-mode=importlib: make conftest's helpers importable
from conftest import (
    EVALUATE_SCRIPT,
    TRAIN_SCRIPT,
    copy_split,
    kill_train_at_step,
    run_app,
    run_torchrun,
    tiny_config,
    write_config,
)

pytestmark = pytest.mark.slow


def _check_outputs(workdir: Path, name: str, steps: int) -> dict:
    out, ckpt = workdir / "outputs" / name, workdir / "checkpoints" / name
    for png in ("training_curves.png", "loss_components.png", "embedding_space.png"):
        with Image.open(out / png) as image:
            assert image.size[0] > 200, png
    assert any((out / "tensorboard").iterdir())
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["experiment_name"] == name and resolved["model"]["pairs"]
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and int(rows[-1]["step"]) == steps
    assert "vision_text/contrastive" in rows[0] and "audio_text/mrl" in rows[0]
    report = json.loads((out / "eval.json").read_text())
    assert report["split"] == "test" and report["num_samples"] == 180
    for pair in ("vision_text", "audio_text", "vision_audio"):
        for dim in ("8", "16", "32"):
            directions = report["retrieval"][pair][dim]
            assert len(directions) == 2
            for metrics in directions.values():
                assert 0.0 <= metrics["recall@1"] <= metrics["recall@5"] <= metrics["recall@10"] <= 1.0
                assert 1.0 <= metrics["median_rank"] <= 180 and 0.0 <= metrics["label_match@1"] <= 1.0
    ckpt_latest = torch.load(ckpt / "checkpoint_latest.pt", map_location="cpu", weights_only=True)
    assert ckpt_latest["step"] == steps
    return report


def test_train_writes_every_output_and_evaluate_recomputes(tmp_path: Path, demo_data: Path) -> None:
    config = write_config(tmp_path, tiny_config(tmp_path, demo_data))
    done = run_app(TRAIN_SCRIPT, ["--config", str(config)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "vision_to_text" in done.stdout  # the printed table
    report = _check_outputs(tmp_path, "tiny", 4)
    outputs_before = [p.name for p in (tmp_path / "outputs" / "tiny").iterdir()]
    (tmp_path / "outputs" / "tiny" / "eval.json").unlink()
    again = run_app(
        EVALUATE_SCRIPT,
        [
            "--config",
            str(config),
            "--checkpoint",
            str(tmp_path / "checkpoints" / "tiny" / "checkpoint_latest.pt"),
        ],
        tmp_path,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    recomputed = json.loads((tmp_path / "outputs" / "tiny" / "eval.json").read_text())
    assert recomputed["checkpoint_step"] == 4
    assert sorted(p.name for p in (tmp_path / "outputs" / "tiny").iterdir()) == sorted(outputs_before)
    for pair, per_dim in report["retrieval"].items():  # same weights, same data: the same numbers
        for dim, directions in per_dim.items():
            for direction, metrics in directions.items():
                for name, value in metrics.items():
                    assert recomputed["retrieval"][pair][dim][direction][name] == pytest.approx(
                        value, abs=1e-6
                    )

    # a prime-sized split in uneven shards, by --split-dir: every sample scored once, nothing else written
    split = copy_split(demo_data / "test", tmp_path / "split53", 53, 20)
    files_before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    checkpoint = str(tmp_path / "checkpoints" / "tiny" / "checkpoint_latest.pt")
    done = run_app(
        EVALUATE_SCRIPT,
        ["--config", str(config), "--checkpoint", checkpoint, "--split-dir", str(split)],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "outputs" / "tiny" / "eval.json").read_text())["num_samples"] == 53
    changed = {
        p.name for p in tmp_path.rglob("*") if p.is_file() and files_before.get(p) != p.stat().st_mtime_ns
    }
    assert changed == {"eval.json", "embedding_space.png"}, changed


def test_killed_run_resumes_through_the_app(tmp_path: Path, demo_data: Path) -> None:
    cfg = tiny_config(
        tmp_path,
        demo_data,
        **{
            "train.max_steps": 8,
            "train.save_every": 1,
            "train.val_every": 0,
            "train.val_at_epoch_end": False,
        },
    )
    config = write_config(tmp_path, cfg)
    latest = tmp_path / "checkpoints" / "tiny" / "checkpoint_latest.pt"
    killed_at = kill_train_at_step(config, tmp_path, latest, min_step=2, poll_s=0.2)
    assert 2 <= killed_at < 8
    done = run_app(TRAIN_SCRIPT, ["--config", str(config)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(tmp_path / "outputs" / "tiny" / "metrics.csv", newline="") as f:
        steps = [int(row["step"]) for row in csv.DictReader(f)]
    # the restarted run continued after the checkpoint: it logged the remaining steps, not step 1 again
    assert steps[-1] == 8 and max(steps) == 8
    assert torch.load(latest, map_location="cpu", weights_only=True)["step"] == 8


def test_two_process_torchrun_gloo(tmp_path: Path, demo_data: Path) -> None:
    """Two gloo ranks train, validate and evaluate; prime-sized val/test splits (97 and 101 samples in uneven
    shards) are scored whole, each sample once: eval.json's num_samples is the split size."""
    val = copy_split(demo_data / "val", tmp_path / "val97", 97, 40)
    test = copy_split(demo_data / "test", tmp_path / "test101", 101, 30)
    cfg = tiny_config(
        tmp_path,
        demo_data,
        **{"train.max_steps": 3, "train.val_every": 3, "data.val_dir": str(val), "data.test_dir": str(test)},
    )
    config = write_config(tmp_path, cfg)
    done = run_torchrun(config, tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "outputs" / "tiny" / "eval.json").read_text())
    assert report["num_samples"] == 101  # both ranks' shares gathered, nothing counted twice or dropped
    assert report["data"]["samples"] == 101 and not any(report["data"]["bad"].values())
    with open(tmp_path / "outputs" / "tiny" / "metrics.csv", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row.get("val/retrieval/mean_recall@1")]
    assert rows and float(rows[-1]["val/loss"]) > 0  # the validation loss ran on both ranks too
    assert (
        torch.load(
            tmp_path / "checkpoints" / "tiny" / "checkpoint_latest.pt", map_location="cpu", weights_only=True
        )["step"]
        == 3
    )


@pytest.mark.parametrize(
    "override, message",
    [
        ({"losses.not_a_key": 1}, "not_a_key"),
        ({"data.val_dir": "/nonexistent/val"}, "data.val_dir"),
        ({"model.pairs": ["vision_text", "depth_text"]}, "depth_text"),
    ],
    ids=["unknown-key", "missing-data-path", "absent-modality"],
)
def test_config_errors_exit_2_with_one_line(
    tmp_path: Path, demo_data: Path, override: dict, message: str
) -> None:
    cfg = tiny_config(tmp_path, demo_data)
    for dotted, value in override.items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    done = run_app(TRAIN_SCRIPT, ["--config", str(write_config(tmp_path, cfg))], tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in done.stderr


def test_pair_with_unconfigured_modality_is_a_config_error(tmp_path: Path, demo_data: Path) -> None:
    cfg = tiny_config(tmp_path, demo_data, **{"model.pairs": ["vision_text", "audio_text"]})
    del cfg["model"]["audio"]
    done = run_app(TRAIN_SCRIPT, ["--config", str(write_config(tmp_path, cfg))], tmp_path)
    assert done.returncode == 2
    assert "model.audio" in done.stderr and "Traceback" not in done.stderr
