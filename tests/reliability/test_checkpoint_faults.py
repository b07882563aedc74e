"""Checkpoint faults through the real app: broken checkpoint files (truncated, zero bytes) are skipped
with a warning and the run resumes exactly from the newest readable one; a save that fails with a full
disk leaves the previous checkpoint intact and says so, and the run resumes from it once there is room."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reliability_runs import (
    MAX_STEPS,
    TRAIN_SCRIPT,
    app_env,
    assert_checkpoints_equal,
    assert_rows_equal,
    checkpoint_dir,
    checkpoint_step,
    differences,
    load,
    metrics_path,
    run_train,
)

MODE = "single_dim"  # the seed's MRL setting: a resume that lost the dim draws would show
DISK_FULL_FROM = 6  # the step whose save first meets a full disk

# Runs the train app with eg-train's checkpoint writer on a disk that fills up: from the save of step
# DISK_FULL_FROM on, every write stores half its bytes and then fails with ENOSPC, as a full disk does.
ENOSPC_WRAPPER = """
import errno, runpy, sys
import eg_train.checkpoint as ck

full_from, script = int(sys.argv[1]), sys.argv[2]
saving = {"step": -1}
real_write_checkpoint, real_write_synced = ck.write_checkpoint, ck.write_synced

def write_checkpoint(folder, data, step, *args, **kwargs):
    saving["step"] = step
    return real_write_checkpoint(folder, data, step, *args, **kwargs)

def write_synced(path, data):
    if saving["step"] >= full_from:
        real_write_synced(path, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    return real_write_synced(path, data)

ck.write_checkpoint, ck.write_synced = write_checkpoint, write_synced
sys.argv = [script, *sys.argv[3:]]
runpy.run_path(script, run_name="__main__")
"""


def _copy_run(reference: Path, workdir: Path) -> Path:
    """The reference run's config, checkpoints and outputs copied into `workdir` (mtimes kept)."""
    shutil.copytree(reference, workdir, dirs_exist_ok=True)
    return workdir / "tiny.yaml"


@pytest.mark.slow
def test_truncated_and_zero_byte_checkpoints_fall_back_with_warnings(
    reference: Callable[[str], Path], tmp_path: Path
) -> None:
    """Guarantee: with checkpoint_latest.pt truncated and the newest step file zero bytes (and
    checkpoint_best.pt cut short when it is as new), the restarted run warns once per broken file,
    resumes from the newest readable checkpoint (step 7) and finishes with every checkpoint equal to the
    uninterrupted run's."""
    ref = reference(MODE)
    config = _copy_run(ref, tmp_path)
    folder = checkpoint_dir(tmp_path)
    broken = {
        "checkpoint_latest.pt": (folder / "checkpoint_latest.pt").read_bytes()[:-4096],  # truncated
        f"checkpoint_step_{MAX_STEPS:08d}.pt": b"",  # zero bytes
    }
    if load(folder / "checkpoint_best.pt")["step"] == MAX_STEPS:  # newer than step 7's file: break it too
        broken["checkpoint_best.pt"] = (folder / "checkpoint_best.pt").read_bytes()[:1000]
    for name, data in broken.items():
        (folder / name).write_bytes(data)
    done = run_train(config, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in broken:
        warned = [line for line in done.stderr.splitlines() if name in line and "falling back" in line]
        assert len(warned) == 1, done.stderr[-3000:]
    resumed = [line for line in done.stdout.splitlines() if "resumed from" in line]
    assert len(resumed) == 1 and f"at step {MAX_STEPS - 1}" in resumed[0], done.stdout[-2000:]
    assert_checkpoints_equal(checkpoint_dir(ref), folder)
    assert_rows_equal(metrics_path(ref), metrics_path(tmp_path))


@pytest.mark.slow
def test_disk_full_during_save_keeps_the_previous_checkpoint(
    reference: Callable[[str], Path], tmp_path: Path
) -> None:
    """Guarantee: when saves fail with ENOSPC (half the bytes written, then the error), each failed save
    is reported with the step still on disk, the files written before stay intact (checkpoint_latest.pt
    equals the uninterrupted run's step-5 checkpoint, no temp file is left), a failed final save ends
    the run with one error line; rerun with room, the run resumes there and ends exactly as the
    uninterrupted run."""
    ref = reference(MODE)
    shutil.copy(ref / "tiny.yaml", tmp_path / "tiny.yaml")
    config = tmp_path / "tiny.yaml"
    wrapper = tmp_path / "disk_full.py"
    wrapper.write_text(ENOSPC_WRAPPER)
    full = subprocess.run(
        [sys.executable, str(wrapper), str(DISK_FULL_FROM), str(TRAIN_SCRIPT), "--config", str(config)],
        check=False,
        cwd=tmp_path,
        env=app_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    kept = DISK_FULL_FROM - 1
    assert full.returncode == 2, full.stderr[-3000:]
    for step in range(DISK_FULL_FROM, MAX_STEPS):
        said = [
            line for line in full.stderr.splitlines() if f"checkpoint for step {step} not written" in line
        ]
        assert len(said) == 1 and f"latest: step {kept}" in said[0], full.stderr[-3000:]
    errors = [line for line in full.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"step {MAX_STEPS}" in errors[0] and f"step {kept}" in errors[0], errors
    folder = checkpoint_dir(tmp_path)
    assert not list(folder.glob(".*tmp*")), "a failed save left its temp file"
    assert checkpoint_step(folder / "checkpoint_latest.pt") == kept
    diff = differences(
        load(checkpoint_dir(ref) / f"checkpoint_step_{kept:08d}.pt"), load(folder / "checkpoint_latest.pt")
    )
    assert not diff, diff[:5]

    done = run_train(config, tmp_path)  # room again
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"at step {kept}" in done.stdout
    assert_checkpoints_equal(checkpoint_dir(ref), folder)
    assert_rows_equal(metrics_path(ref), metrics_path(tmp_path))
