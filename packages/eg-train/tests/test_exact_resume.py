"""A checkpoint carries every piece of state that decides the future of the run: a run SIGKILLed between
checkpoints and resumed writes the same metrics rows and the same final checkpoint, tensor for tensor,
as the uninterrupted run. The model draws from generators held in module extra state and as a plain
module attribute, uses dropout, and the data reports bad samples."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import eg_train
import pytest
import torch
from eg_train import checkpoint as ck
from eg_train.metrics import TIME_COLUMNS

# 8 batches per epoch; kill during step 11 (epoch 1): latest is step 9, whose logging window holds step 9,
# so the first row after the resume (step 12) averages steps 9-12 only if the window was restored.
# async_save false: step 9's file is on disk before step 10 starts (written in the background, it may still
# be in flight two toy steps later, and the kill would find step 8; test_resume kills the background write).
CONFIG = {"max_steps": 20, "save_every": 3, "log_every": 4, "lr": 0.02, "async_save": False}
OPTS = {"model": "sampled", "data": "reporting", "dropout": 0.2, "config": CONFIG}


def _launch(toy, opts: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(Path(toy.__file__)), json.dumps(opts)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def assert_same_tree(a: Any, b: Any, where: str = "checkpoint") -> None:
    """Every tensor torch.equal, every other value ==, the same keys everywhere."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a, key=str) == sorted(b, key=str), where
        for k in a:
            assert_same_tree(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{where}[{i}]")
    else:
        nan = isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
        assert a == b or nan, (where, a, b)


def _rows(toy, path: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k not in TIME_COLUMNS} for r in toy.read_rows(path)]


@pytest.mark.slow
def test_sigkill_mid_window_resumes_with_identical_rows_and_checkpoint(toy, tmp_path):
    ref = _launch(toy, {**OPTS, "dir": str(tmp_path / "ref")})
    assert ref.returncode == 0, ref.stderr[-3000:]
    run = {**OPTS, "dir": str(tmp_path / "run")}
    killed = _launch(toy, {**run, "kill_at_call": 11})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    latest = tmp_path / "run/checkpoints/checkpoint_latest.pt"
    assert eg_train.load_checkpoint(latest)["step"] == 9
    resumed = _launch(toy, run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "at step 9 (epoch 1, batch 1)" in resumed.stdout

    rows_ref = _rows(toy, tmp_path / "ref/outputs/metrics.csv")
    rows_run = _rows(toy, tmp_path / "run/outputs/metrics.csv")
    assert [r["step"] for r in rows_ref] == ["4", "8", "12", "16", "20"]
    assert rows_run == rows_ref  # every column but the wall-clock ones, as written (exact floats)
    assert {r["width"] for r in rows_ref} != {"16.0"}  # the sampler really draws several widths
    assert int(rows_ref[2]["data/bad/corrupt_image"]) > 0  # the data report crosses the resume

    ref_ckpt = torch.load(tmp_path / "ref/checkpoints/checkpoint_latest.pt", weights_only=True)
    run_ckpt = torch.load(latest, weights_only=True)
    assert ref_ckpt["step"] == 20
    # output_dir/checkpoint_dir differ by design (two folders); everything else must be identical
    for c, name in ((ref_ckpt, "ref"), (run_ckpt, "run")):
        assert c["config"]["output_dir"].endswith(f"{name}/outputs")
        c["config"]["output_dir"] = c["config"]["checkpoint_dir"] = ""
    assert_same_tree(ref_ckpt, run_ckpt)
    assert "sampler._extra_state" in run_ckpt["model"]
    assert set(run_ckpt["ranks"][0]["generators"]) == {"noise.generator"}

    # the summary of epoch 1, which the kill cut in two, is the same line in both runs
    line = [x for x in ref.stdout.splitlines() if "in epoch 1 " in x]
    assert len(line) == 1 and line[0] in resumed.stdout.splitlines(), (ref.stdout, resumed.stdout)


def test_extra_state_and_module_generators_are_saved_and_restored(toy, tmp_path):
    model = toy.SampledToyModel()
    model.net[0].requires_grad_(False)  # trainable-only checkpoint: extra state must still be in it
    eg_train.Trainer(model, toy.make_config(tmp_path, max_steps=3), toy.ToyData()).fit()
    path = tmp_path / "checkpoints/checkpoint_latest.pt"
    raw = torch.load(path, weights_only=True)
    assert raw["model_state_kind"] == "trainable"
    assert torch.equal(
        raw["model"]["sampler._extra_state"]["generator"], model.sampler.rngs["draw"].get_state()
    )
    assert torch.equal(raw["ranks"][0]["generators"]["noise.generator"], model.noise.generator.get_state())

    fresh = toy.SampledToyModel()
    fresh.net[0].requires_grad_(False)
    before = [fresh.sampler.draw() for _ in range(20)]
    fresh = toy.SampledToyModel()
    fresh.net[0].requires_grad_(False)
    eg_train.load_model_weights(fresh, path)
    after_model = [model.sampler.draw() for _ in range(20)]
    assert [fresh.sampler.draw() for _ in range(20)] == after_model != before


def test_checkpoints_missing_run_state_are_refused_in_one_line(toy, tmp_path):
    toy.run_from_options({"dir": str(tmp_path), "model": "sampled", "config": {"max_steps": 2}})
    path = tmp_path / "checkpoints/checkpoint_latest.pt"
    good = torch.load(path, weights_only=True)

    def resume_with(c: dict) -> None:
        torch.save(c, path)
        toy.run_from_options({"dir": str(tmp_path), "model": "sampled", "config": {"max_steps": 4}})

    with pytest.raises(eg_train.TrainError, match=r"lacks 'log_window'"):
        resume_with({k: v for k, v in good.items() if k != "log_window"})
    rank0 = {k: v for k, v in good["ranks"][0].items() if k != "generators"}
    with pytest.raises(eg_train.TrainError, match=r"rank 0's state lacks 'generators'"):
        resume_with({**good, "ranks": [rank0]})
    no_gen = {**good["ranks"][0], "generators": {}}
    with pytest.raises(eg_train.TrainError, match=r"generator noise.generator of the model is missing"):
        resume_with({**good, "ranks": [no_gen]})
    model = {k: v for k, v in good["model"].items() if k != "sampler._extra_state"}
    with pytest.raises(eg_train.TrainError, match=r"model key sampler._extra_state is missing"):
        resume_with({**good, "model": model})
    # an older format is refused as such, never skipped for an older file
    torch.save({**good, "format": "eg-train/1"}, tmp_path / "checkpoints/checkpoint_step_00000001.pt")
    with pytest.raises(eg_train.TrainError, match=r"format 'eg-train/1'.*resume=never") as info:
        resume_with({**good, "format": "eg-train/1"})
    assert "\n" not in str(info.value)
    assert ck.FORMAT == "eg-train/2"
