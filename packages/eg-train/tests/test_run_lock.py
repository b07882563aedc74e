"""One run per checkpoint folder: a live training process holds `<checkpoint_dir>/run.lock` (flock); a second
run is refused at once in one line naming the folder and the holder's PID; a SIGKILLed holder never blocks
the next run; the lock is re-entrant in its process and not taken on ranks other than 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import eg_train
import pytest
from eg_train.runlock import LOCK_NAME, holder_pid


def _wait_for_holder(proc: subprocess.Popen, folder: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while holder_pid(folder) != proc.pid:
        assert proc.poll() is None, proc.stdout.read()[-3000:] if proc.stdout else proc.returncode
        assert time.monotonic() < deadline, "the holder never took the lock"
        time.sleep(0.05)


def _try_lock(folder: Path, rank: str = "0") -> subprocess.CompletedProcess:
    """Another process taking the lock of `folder` (as torchrun's rank `rank`)."""
    code = f"from eg_train import run_lock\nwith run_lock({str(folder)!r}):\n    print('acquired')"
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RANK": rank, "OMP_NUM_THREADS": "1"},
        check=False,
    )


@pytest.mark.slow
def test_second_run_is_refused_and_a_killed_holder_never_blocks(toy, tmp_path):
    folder = tmp_path / "checkpoints"
    slow = {"dir": str(tmp_path), "sleep": 0.02, "config": {"max_steps": 100_000, "log_every": 1000}}
    holder = subprocess.Popen(
        [sys.executable, str(Path(toy.__file__)), json.dumps(slow)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        _wait_for_holder(holder, folder)
        with pytest.raises(eg_train.RunLockedError) as refused:
            toy.run_from_options({"dir": str(tmp_path), "config": {"max_steps": 2}})
        message = str(refused.value)
        assert message == (
            f"{folder} is in use by another training run (PID {holder.pid}, lock {folder / LOCK_NAME}); "
            f"wait for it to end, or train into another checkpoint folder"
        )
        assert holder.poll() is None  # refused at once: the second run did not wait for the first
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert holder_pid(folder) == holder.pid  # the dead holder's PID is still in the file: it must not block
    summary = toy.run_from_options({"dir": str(tmp_path), "config": {"max_steps": 3, "resume": "never"}})
    assert summary["step"] == 3
    assert holder_pid(folder) == os.getpid()  # the run that trained took the lock


@pytest.mark.slow
def test_lock_is_reentrant_in_its_process_and_rank_0_only(toy, tmp_path):
    folder = tmp_path / "checkpoints"
    with eg_train.run_lock(folder):  # as apps/train does before it builds anything
        other = _try_lock(folder)
        assert other.returncode == 1 and f"PID {os.getpid()}," in other.stderr.strip().splitlines()[-1]
        assert "acquired" not in other.stdout
        rank1 = _try_lock(folder, rank="1")  # a torchrun peer of the holder: rank 0 alone locks
        assert rank1.returncode == 0 and rank1.stdout.strip() == "acquired", rank1.stderr[-2000:]
        summary = toy.run_from_options({"dir": str(tmp_path), "config": {"max_steps": 2}})  # fit re-enters
        assert summary["step"] == 2
        still = _try_lock(folder)
        assert still.returncode == 1  # fit's release left the outer hold in place
    after = _try_lock(folder)
    assert after.returncode == 0 and after.stdout.strip() == "acquired", after.stderr[-2000:]
