"""2-process DDP on CPU (gloo, launched by torchrun) equals 1 process on the same global batch, the data
report counts are summed over the ranks, and a 2-rank checkpoint resumed by 1 process says so in one line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import eg_train
import pytest
import torch


@pytest.mark.slow
def test_two_process_gloo_ddp_matches_one_process(toy, tmp_path):
    config = {"max_steps": 4, "grad_accum_steps": 2, "save_every": 2}
    toy.run_from_options(
        {
            "dir": str(tmp_path / "single"),
            "batch_size": 8,
            "data": "reporting",
            "config": config,
            "params_out": str(tmp_path / "single.pt"),
        }
    )
    opts = {
        "dir": str(tmp_path / "ddp"),
        "batch_size": 4,
        "data": "reporting",
        "config": config,
        "params_out": str(tmp_path / "ddp.pt"),
    }
    _run_two_ranks(toy, opts)
    single = torch.load(tmp_path / "single.pt", weights_only=True)
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    for name in single:
        if name != "num_forward":  # counts this rank's forward calls: 8 in both runs
            torch.testing.assert_close(ddp[name], single[name], atol=1e-6, rtol=0, msg=name)
    rows_1 = toy.read_rows(tmp_path / "single/outputs/metrics.csv")
    rows_2 = toy.read_rows(tmp_path / "ddp/outputs/metrics.csv")
    assert len(rows_1) == len(rows_2) == 4
    for r1, r2 in zip(rows_1, rows_2):
        for key in ("loss", "grad_norm", "mse", "index_mean", "samples_seen"):
            assert float(r2[key]) == pytest.approx(float(r1[key]), abs=1e-6), key
        for key in ("data/samples", "data/bad/corrupt_image", "data/bad/truncated_tar"):
            assert r2[key] == r1[key], key  # each rank counts its half; the rows show the sum
    assert rows_2[-1]["data/samples"] == "64" and int(rows_2[-1]["data/bad/corrupt_image"]) > 0
    ckpt = eg_train.load_checkpoint(tmp_path / "ddp/checkpoints/checkpoint_latest.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["ranks"]) == 2  # each rank's RNG state is saved
    assert not torch.equal(ckpt["ranks"][0]["rng"]["torch"], ckpt["ranks"][1]["rng"]["torch"])


def _run_two_ranks(toy, opts: dict) -> None:
    """The toy script as 2 gloo ranks, as torchrun starts them (RANK/WORLD_SIZE/MASTER_* in the env)."""
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, str(Path(toy.__file__)), json.dumps(opts)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    for proc in procs:
        out, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, out[-3000:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_resume_on_another_world_size_says_so_in_one_line_of_ours(toy, tmp_path, capsys):
    """A 2-rank checkpoint resumed by 1 process: the trainer says what does not resume exactly in one
    `eg-train:` line on stdout, and no Python warning (with its source path) reaches the user."""
    opts = {"dir": str(tmp_path), "batch_size": 4, "config": {"max_steps": 2, "save_every": 2}}
    _run_two_ranks(toy, opts)
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = toy.run_from_options({**opts, "batch_size": 8, "config": {"max_steps": 4, "save_every": 2}})
    assert summary["step"] == 4
    ours = [w for w in caught if "eg_train" in w.filename]
    assert not ours, [str(w.message) for w in ours]
    lines = capsys.readouterr().out.splitlines()
    latest = tmp_path / "checkpoints" / "checkpoint_latest.pt"
    note = (
        "eg-train: checkpoint_latest.pt was written by 2 ranks, this run has 1: model, optimizer and schedule "
        "resume exactly; data order, RNG and the epoch's data report counts do not"
    )
    assert lines == [f"eg-train: resumed from {latest} at step 2 (epoch 0, batch 2)", note]
