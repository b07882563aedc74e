"""Stage 2 end to end through the real apps (subprocesses) on a tiny stage-1 checkpoint: every output per
decoder kind, evaluate recomputing eval.json, SIGKILL and resume to the identical state, refusals of a
missing or mismatched stage-1 checkpoint, a 2-process gloo run, and the real configs' structure at tiny size."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from eg_train.metrics import TIME_COLUMNS  # wall-clock measurements: differ between runs
from PIL import Image

from apps.common.cli import train_main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from qa_helpers import (
    EVALUATE_SCRIPT,
    REPO,
    TRAIN_SCRIPT,
    apply,
    kill_train_at_step,
    qa_config,
    run_app,
    run_torchrun,
    write_config,
)

VARIANTS = ["majority", "image+audio", "image", "audio", "blind"]
TEST_PAIRS = 11 * 6  # every QA pair of the 11-sample test split


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def check_outputs(workdir: Path, name: str, steps: int, kind: str) -> dict[str, Any]:
    out, ckpt = workdir / "outputs" / name, workdir / "checkpoints" / name
    for png in ("training_curves.png", "loss_components.png"):
        with Image.open(out / png) as image:
            assert image.size[0] > 200, png
    assert any((out / "tensorboard").iterdir())
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["stage"] == "qa" and resolved["model"]["decoder"]["type"] == kind
    rows = read_rows(out / "metrics.csv")
    assert int(rows[-1]["step"]) == steps
    columns = set(rows[0])
    assert {"loss", "answer_ce", "val/loss", "val/qa/exact_match", "val/qa/token_f1"} <= columns
    if kind == "trm":  # deep supervision: each step's answer loss and halting loss, as named parts
        assert {"step_1/answer_ce", "step_2/answer_ce", "step_1/halt_bce", "step_2/halt_bce"} <= columns
    report = json.loads((out / "eval.json").read_text())
    assert report["split"] == "test11" and report["num_samples"] == 11 and report["num_pairs"] == TEST_PAIRS
    assert list(report["exact_match"]) == VARIANTS and list(report["token_f1"]) == VARIANTS
    assert sum(report["question_counts"].values()) == TEST_PAIRS and len(report["question_counts"]) == 6
    for metric in ("exact_match", "token_f1"):
        for scores in report[metric].values():
            assert 0.0 <= scores["overall"] <= 1.0 and set(scores["per_question"]) == set(
                report["question_counts"]
            )
    assert report["rows"] and set(report["rows"][0]["generated"]) == set(VARIANTS)
    assert report["train"]["steps"] == steps and report["train"]["trainable_parameters"] > 0
    assert torch.load(ckpt / "checkpoint_latest.pt", map_location="cpu", weights_only=True)["step"] == steps
    return report


def train_and_check(workdir: Path, cfg: dict[str, Any], kind: str) -> tuple[Path, dict[str, Any]]:
    config = write_config(workdir, cfg)
    done = run_app(TRAIN_SCRIPT, ["--config", str(config)], workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "exact match (all)" in done.stdout and "blind" in done.stdout  # the printed table
    return config, check_outputs(workdir, cfg["experiment_name"], cfg["train"]["max_steps"], kind)


@pytest.mark.slow
def test_trimodal_trm_at_tiny_size_writes_every_output_and_evaluate_recomputes(
    tmp_path: Path, qa_space: dict
) -> None:
    """configs/trimodal_trm.yaml's structure (TRM, halting, deep supervision, bf16 autocast, dropout with
    blind samples) at tiny size: every output, then apps/evaluate recomputes eval.json from the checkpoint."""
    cfg = real_config_at_tiny_size("trimodal_trm.yaml", qa_space, tmp_path)
    config, report = train_and_check(tmp_path, cfg, "trm")
    name = cfg["experiment_name"]
    eval_json = tmp_path / "outputs" / name / "eval.json"
    eval_json.unlink()
    checkpoint = tmp_path / "checkpoints" / name / "checkpoint_latest.pt"
    again = run_app(EVALUATE_SCRIPT, ["--config", str(config), "--checkpoint", str(checkpoint)], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    recomputed = json.loads(eval_json.read_text())
    assert recomputed["checkpoint_step"] == cfg["train"]["max_steps"]
    for key in ("exact_match", "token_f1", "question_counts", "rows"):  # same weights, same data
        assert recomputed[key] == report[key], key
    assert sorted(p.name for p in (tmp_path / "outputs" / name).iterdir()) == sorted(
        [
            "config.yaml",
            "eval.json",
            "loss_components.png",
            "metrics.csv",
            "tensorboard",
            "training_curves.png",
        ]
    )  # evaluating wrote nothing but its results


@pytest.mark.slow
def test_qwen7b_at_tiny_size_writes_every_output(tmp_path: Path, qa_space: dict) -> None:
    """configs/qa_qwen7b.yaml's structure (8-bit base through bitsandbytes on CPU, LoRA on all linear layers,
    gradient checkpointing, chat template, accumulation) on a tiny Qwen2 written offline and loaded through
    model_name as a hub id would be."""
    cfg = real_config_at_tiny_size("qa_qwen7b.yaml", qa_space, tmp_path)
    train_and_check(tmp_path, cfg, "qwen")
    assert (tmp_path / "qwen" / "tokenizer.json").is_file()


def compare_checkpoints(a: Path, b: Path) -> None:
    """Every tensor of two checkpoints equal (model, optimizer, RNG, ...), every other value too."""

    def walk(x: Any, y: Any, where: str) -> None:
        if torch.is_tensor(x):
            assert torch.is_tensor(y) and x.shape == y.shape and torch.equal(x, y), where
        elif isinstance(x, dict):
            assert set(x) == set(y), where
            for k in x:
                walk(x[k], y[k], f"{where}.{k}")
        elif isinstance(x, (list, tuple)):
            assert len(x) == len(y), where
            for i, (u, v) in enumerate(zip(x, y)):
                walk(u, v, f"{where}[{i}]")
        elif isinstance(x, float) and math.isnan(x):
            assert isinstance(y, float) and math.isnan(y), where
        else:
            assert x == y, where

    left = torch.load(a, map_location="cpu", weights_only=True)
    right = torch.load(b, map_location="cpu", weights_only=True)
    for skip in ("run_config", "config", "wandb_run_id"):  # paths of the two work dirs
        left.pop(skip, None), right.pop(skip, None)
    walk(left, right, "checkpoint")


@pytest.mark.slow
def test_killed_run_resumes_to_the_identical_state(tmp_path: Path, qa_space: dict) -> None:
    overrides = {"train.max_steps": 10, "train.save_every": 1, "train.val_every": 5}
    overrides["model.modality_dropout"] = {"vision": 0.4, "audio": 0.4, "allow_none": False}
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    for folder in (reference, resumed):
        folder.mkdir()
    train_and_check(reference, qa_config(qa_space, "tiny", reference, **overrides), "tiny")

    config = write_config(resumed, qa_config(qa_space, "tiny", resumed, **overrides))
    latest = resumed / "checkpoints" / "qa_tiny" / "checkpoint_latest.pt"
    killed_at = kill_train_at_step(config, resumed, latest, min_step=3, poll_s=0.05)
    assert 3 <= killed_at < 10
    done = run_app(TRAIN_SCRIPT, ["--config", str(config)], resumed)
    assert done.returncode == 0, done.stderr[-3000:]

    compare_checkpoints(reference / "checkpoints" / "qa_tiny" / "checkpoint_latest.pt", latest)
    ref_rows = read_rows(reference / "outputs" / "qa_tiny" / "metrics.csv")
    rows = read_rows(resumed / "outputs" / "qa_tiny" / "metrics.csv")
    assert [r["step"] for r in rows] == [r["step"] for r in ref_rows]
    for ref_row, row in zip(ref_rows, rows):
        for column, value in ref_row.items():
            if column not in TIME_COLUMNS:
                assert row[column] == value, (row["step"], column)
    ref_eval = json.loads((reference / "outputs" / "qa_tiny" / "eval.json").read_text())
    new_eval = json.loads((resumed / "outputs" / "qa_tiny" / "eval.json").read_text())
    assert new_eval["exact_match"] == ref_eval["exact_match"] and new_eval["rows"] == ref_eval["rows"]


@pytest.mark.slow  # the session's tiny stage-1 run (about a minute), shared with the tests above
@pytest.mark.parametrize("damage", ["missing", "unexpected", "mis-shaped"])
def test_stage1_checkpoint_that_does_not_match_its_config_is_refused(
    tmp_path: Path, qa_space: dict, damage: str, capsys: pytest.CaptureFixture
) -> None:
    state = torch.load(qa_space["checkpoint"], map_location="cpu", weights_only=True)
    key = next(k for k in state["model"] if k.startswith("towers.audio.resampler.") and k.endswith("weight"))
    if damage == "missing":
        del state["model"][key]
    elif damage == "unexpected":
        key = "towers.audio.resampler.extra.weight"
        state["model"][key] = torch.zeros(2)
    else:
        state["model"][key] = torch.zeros(*state["model"][key].shape, 2)
    broken = tmp_path / f"stage1_{damage}.pt"
    torch.save(state, broken)
    cfg = qa_config(qa_space, "tiny", tmp_path, **{"stage1.checkpoint": str(broken)})
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        assert train_main(["--config", str(write_config(tmp_path, cfg))]) == 2  # in-process: the CLI path
    finally:
        os.chdir(cwd)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and key in lines[0] and str(broken) in lines[0]
    assert not (tmp_path / "outputs").exists()


def test_missing_stage1_checkpoint_names_the_command_to_run_first(tmp_path: Path) -> None:
    """A fresh clone: `uv run apps/train --config configs/demo_qa_trm.yaml` before the stage-1 demo."""
    (tmp_path / "configs").mkdir()
    for name in ("demo.yaml", "demo_qa_trm.yaml"):
        shutil.copy(REPO / "configs" / name, tmp_path / "configs" / name)
    done = run_app(TRAIN_SCRIPT, ["--config", "configs/demo_qa_trm.yaml"], tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip() == (
        "error: stage1.checkpoint='checkpoints/demo/checkpoint_best.pt' not found; "
        "train stage 1 first: uv run apps/train --config configs/demo.yaml"
    )
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "data").exists()


def real_config_at_tiny_size(name: str, space: dict, workdir: Path) -> dict[str, Any]:
    """A real config's structure (decoder kind and switches, quantization, LoRA targets, accumulation,
    dropout) with tiny sizes, the fixture's stage 1 and data, CPU and a few steps."""
    cfg = yaml.safe_load((REPO / "configs" / name).read_text())
    decoder = cfg["model"]["decoder"]
    if decoder["type"] == "qwen":
        tiny = qa_config(space, "qwen", workdir)
        cfg["demo_qwen"] = tiny["demo_qwen"]  # the tiny model stands in for the hub id
        decoder["qwen"].update(model_name=tiny["demo_qwen"]["dir"], lora_r=4, lora_alpha=8, device="cpu")
    else:
        decoder["trm"].update(hidden_size=32, num_heads=2, n_latent_steps=2, n_cycles=2, max_seq_len=128)
    return apply(
        cfg,
        {
            "stage1.checkpoint": str(space["checkpoint"]),
            "data.val_dir": str(space["val"]),
            "data.test_dir": str(space["test"]),
            "data.train.shard_dir": str(space["train"]),
            "data.train.num_workers": 0,
            "train.device": "cpu",
            "train.max_steps": 2,
            "train.val_every": 2,
            "train.save_every": 2,
            "train.progress_bar": False,
            "eval.max_val_samples": 4,
            "eval.max_new_tokens": 4,
        },
    )


@pytest.mark.slow
def test_two_process_torchrun_gloo_runs_the_trimodal_qwen_structure(tmp_path: Path, qa_space: dict) -> None:
    """configs/trimodal_qwen.yaml (8-bit Qwen, LoRA on all linear layers, gradient checkpointing, gradient
    accumulation) at tiny size under torchrun with 2 CPU processes (gloo), as it runs on 2 GPUs."""
    cfg = real_config_at_tiny_size("trimodal_qwen.yaml", qa_space, tmp_path)
    config = write_config(tmp_path, cfg)
    done = run_torchrun(config, tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    name = cfg["experiment_name"]
    report = json.loads((tmp_path / "outputs" / name / "eval.json").read_text())
    assert report["num_pairs"] == TEST_PAIRS  # both ranks' shares gathered, no pair twice or lost
    rows = read_rows(tmp_path / "outputs" / name / "metrics.csv")
    assert rows[-1]["step"] == "2" and rows[-1]["val/qa/exact_match"] != ""
    state = torch.load(
        tmp_path / "checkpoints" / name / "checkpoint_latest.pt", map_location="cpu", weights_only=True
    )
    assert state["step"] == 2 and state["world_size"] == 2
    keys = list(state["model"])  # trainable weights (LoRA, projectors) and buffers; no frozen tower weight
    assert any("lora_A" in k for k in keys) and any(k.startswith("projectors.audio.") for k in keys)
    assert not any(k.startswith("towers.") and k.endswith(".weight") for k in keys)
