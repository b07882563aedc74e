"""One run per folder through the real app: a second `apps/train` on the folder of a live run exits 2 at once
with one line naming the folder and the first run's PID, before building anything, and the first run ends with every
checkpoint and metrics row of a run nobody disturbed; `apps/evaluate` reads a locked folder."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from eg_train import run_lock
from eg_train.runlock import holder_pid

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reliability_runs import (
    MODES,
    NAME,
    assert_checkpoints_equal,
    assert_rows_equal,
    base_config,
    checkpoint_dir,
    metrics_path,
    run_train,
    train_command,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import EVALUATE_SCRIPT, app_env, run_app, write_config

MODE = "two_of_three"


@pytest.mark.slow
def test_second_run_exits_2_and_the_first_ends_as_if_undisturbed(
    reference: Callable[[str], Path], suite_root: Path, tmp_path: Path
) -> None:
    """Guarantee: while a run holds checkpoints/<name>, the same command started again is refused at once
    (the lock is not waited for), exit 2, with `error: checkpoints/<name> is in use by another training run
    (PID <first>, ...)`; the first run's checkpoints (every tensor of every file) and metrics rows equal
    those of the reference run, which trained alone. Evaluating a held folder takes no lock."""
    ref = reference(MODE)
    config = write_config(tmp_path, base_config(suite_root, **MODES[MODE]))
    folder = checkpoint_dir(tmp_path)
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(
        train_command(config), cwd=tmp_path, env=app_env(), stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 300
        while holder_pid(folder) != first.pid:  # the app locks right after reading the config
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.05)
        second = run_train(config, tmp_path)  # exit 2 means it tried while the first held the folder
        assert second.returncode == 2, second.stderr[-3000:]
        assert second.stdout == ""  # refused before it built or printed anything
        refusal = (
            f"error: checkpoints/{NAME} is in use by another training run (PID {first.pid}, lock "
            f"checkpoints/{NAME}/run.lock); wait for it to end, or train into another checkpoint folder"
        )
        assert second.stderr.splitlines() == [refusal]
        first.wait(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        log.close()
    assert first.returncode == 0, (tmp_path / "first.log").read_text()[-3000:]
    assert_checkpoints_equal(checkpoint_dir(ref), folder)
    assert_rows_equal(metrics_path(ref), metrics_path(tmp_path))

    with run_lock(folder):  # this process holds the folder; evaluation must not need the lock
        done = run_app(
            EVALUATE_SCRIPT,
            ["--config", str(config), "--checkpoint", str(folder / "checkpoint_latest.pt")],
            tmp_path,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "outputs" / NAME / "eval.json").is_file()
