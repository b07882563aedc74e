"""Exact resume on 2 ranks through the real app: a torchrun (gloo, CPU) stage-1 run and a stage-2 run, each
SIGKILLed mid-epoch with every process of the job and restarted with the same command on the same world size,
end with the uninterrupted 2-rank run's checkpoints, every file compared tensor by tensor and value by value
(model and module extra state, optimizer, scheduler, GradScaler, counters and data position, logging window,
and per rank the python/numpy/torch RNG now and at the epoch's start and the module generators), and with
its metrics rows."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reliability_runs import (
    DDP_OVERRIDES,
    MAX_STEPS,
    NAME,
    assert_checkpoints_equal,
    assert_rows_equal,
    base_config,
    checkpoint_dir,
    load,
    metrics_path,
    run_and_kill,
    run_train,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "qa"))
from qa_helpers import qa_config, write_config

QA_NAME = "qa_tiny"  # experiment_name of qa_config(..., "tiny", ...)
# Stage 2 on the suite's split: 20 samples per rank in batches of 4 (5 steps an epoch), modality dropout
# drawing from each rank's global torch RNG, a checkpoint every step (all kept), validation at step 4.
QA_OVERRIDES = {
    "data.train.batch_size": 4,
    "train.max_steps": MAX_STEPS,
    "train.save_every": 1,
    "train.keep_last_n": MAX_STEPS,
    "train.log_every": 3,
    "train.val_every": 4,
    "model.modality_dropout": {"vision": 0.4, "audio": 0.4, "allow_none": False},
}


def _kill_mid_epoch(config: Path, workdir: Path, at_step: int, name: str) -> int:
    """A 2-rank run SIGKILLed (torchrun and both ranks) once its checkpoint reaches `at_step`; the checkpoint
    it leaves is inside an epoch, written by both ranks. Returns its step."""
    step = run_and_kill(config, workdir, at_step=at_step, nproc=2, name=name)
    left = load(checkpoint_dir(workdir, name) / "checkpoint_latest.pt")
    assert left["world_size"] == 2 and len(left["ranks"]) == 2
    assert 0 < left["batch_in_epoch"] < 5, (step, left["epoch"], left["batch_in_epoch"])
    return step


def _resume_and_compare(config: Path, workdir: Path, reference: Path, killed: int, name: str) -> dict:
    done = run_train(config, workdir, nproc=2)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"eg-train: resumed from checkpoints/{name}/checkpoint_latest.pt at step {killed} " in done.stdout
    assert_checkpoints_equal(checkpoint_dir(reference, name), checkpoint_dir(workdir, name))
    assert_rows_equal(metrics_path(reference, name), metrics_path(workdir, name))
    final = load(checkpoint_dir(workdir, name) / "checkpoint_latest.pt")
    assert final["step"] == MAX_STEPS and final["world_size"] == 2
    # each rank resumed its own RNG: the two ranks' states differ, so one restored for both would show
    assert not torch.equal(final["ranks"][0]["rng"]["torch"], final["ranks"][1]["rng"]["torch"])
    return final


@pytest.mark.slow
def test_two_rank_stage1_killed_mid_epoch_resumes_exactly(
    ddp_reference: Path, suite_root: Path, tmp_path: Path
):
    """Stage 1 with MRL drawing 2 of 3 dims per step from the loss's generator and text dropout 0.3."""
    config = write_config(tmp_path, base_config(suite_root, **DDP_OVERRIDES))
    killed = _kill_mid_epoch(config, tmp_path, at_step=2, name=NAME)
    final = _resume_and_compare(config, tmp_path, ddp_reference, killed, NAME)
    extra = [k for k in final["model"] if k.endswith("_extra_state")]
    assert extra and all(final["ranks"][r]["generators"] for r in (0, 1)), extra  # the MRL generator


@pytest.mark.slow
def test_two_rank_stage2_killed_mid_epoch_resumes_exactly(
    ddp_reference: Path, suite_root: Path, tmp_path: Path
):
    """Stage 2 (the tiny decoder on the 2-rank stage-1 checkpoint) with modality dropout."""
    space = {
        "checkpoint": checkpoint_dir(ddp_reference) / "checkpoint_latest.pt",
        **{split: suite_root / "data" / split for split in ("train", "val", "test")},
    }
    configs = {}
    for folder in ("reference", "resumed"):
        (tmp_path / folder).mkdir()
        configs[folder] = write_config(tmp_path / folder, qa_config(space, "tiny", tmp_path, **QA_OVERRIDES))
    reference = run_train(configs["reference"], tmp_path / "reference", nproc=2)
    assert reference.returncode == 0, reference.stderr[-3000:]
    killed = _kill_mid_epoch(configs["resumed"], tmp_path / "resumed", at_step=2, name=QA_NAME)
    _resume_and_compare(configs["resumed"], tmp_path / "resumed", tmp_path / "reference", killed, QA_NAME)
