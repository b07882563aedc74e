"""Checkpoint faults: a zero-byte or truncated latest checkpoint falls back to the newest readable one
with a warning; a write that fails (disk full, simulated) leaves the earlier checkpoint intact, says so
in one warning line and training continues; a failed final save stops the run with a TrainError."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import eg_train
import pytest
from eg_train import checkpoint as ck

CONFIG = {"max_steps": 8, "save_every": 2, "keep_last_n": 2}
COMPARED = ("loss", "mse", "l1", "index_mean", "lr", "samples_seen")


@pytest.mark.parametrize("damage", ["zero_bytes", "truncated"])
def test_damaged_latest_falls_back_to_the_newest_readable_with_a_warning(toy, tmp_path, capsys, damage):
    toy.run_from_options({"dir": str(tmp_path / "ref"), "dropout": 0.2, "config": CONFIG})
    run = {"dir": str(tmp_path / "run"), "dropout": 0.2, "config": CONFIG}
    toy.run_from_options(run)
    folder = tmp_path / "run/checkpoints"
    for name in (ck.LATEST, "checkpoint_step_00000008.pt"):  # both copies of step 8
        path = folder / name
        path.write_bytes(b"" if damage == "zero_bytes" else path.read_bytes()[:1000])
    with pytest.warns(UserWarning) as caught:
        summary = toy.run_from_options(run)
    fallbacks = [str(w.message) for w in caught if "falling back" in str(w.message)]
    assert [m.split("/")[-1].split(" ")[0] for m in fallbacks] == [ck.LATEST, "checkpoint_step_00000008.pt"]
    assert all("is unreadable" in m for m in fallbacks)
    assert "resumed from" in capsys.readouterr().out and summary["step"] == 8
    assert eg_train.load_checkpoint(folder / ck.LATEST)["step"] == 8  # rewritten whole by the resumed run
    rows_ref = toy.read_rows(tmp_path / "ref/outputs/metrics.csv")
    rows_run = toy.read_rows(tmp_path / "run/outputs/metrics.csv")
    assert [r["step"] for r in rows_run] == [str(s) for s in range(1, 9)]
    for ra, rb in zip(rows_ref, rows_run):
        assert [ra[k] for k in COMPARED] == [rb[k] for k in COMPARED], ra["step"]


def _disk_full_at(monkeypatch, failing_writes: set[int]) -> list[int]:
    """Make the n-th writes of checkpoint_latest.pt (1-based) fail half-way with ENOSPC."""
    real, count, checked = ck.write_synced, [0], []

    def write(path: Path, data: bytes) -> None:
        if path.name.startswith(f".{ck.LATEST}.tmp"):
            count[0] += 1
            if count[0] in failing_writes:
                path.write_bytes(data[: len(data) // 2])  # what a full disk leaves behind
                checked.append(ck.load_checkpoint(path.parent / ck.LATEST)["step"])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, data)

    monkeypatch.setattr(ck, "write_synced", write)
    return checked


def test_a_failed_save_keeps_the_previous_checkpoint_and_training_goes_on(toy, tmp_path, monkeypatch):
    toy.run_from_options({"dir": str(tmp_path / "ref"), "config": CONFIG})
    checked = _disk_full_at(monkeypatch, {2, 3})  # the saves of steps 4 and 6
    with pytest.warns(UserWarning) as caught:
        summary = toy.run_from_options({"dir": str(tmp_path / "run"), "config": CONFIG})
    messages = [str(w.message) for w in caught if "not written" in str(w.message)]
    assert len(messages) == 2 and all("\n" not in m for m in messages)
    assert "checkpoint for step 4 not written to" in messages[0]
    assert "No space left on device" in messages[0] and "(latest: step 2)" in messages[0]
    assert "(latest: step 2)" in messages[1] and "2 failed saves so far" in messages[1]
    assert checked == [2, 2]  # while each write failed, latest still held step 2
    assert summary["step"] == 8 and summary["num_failed_saves"] == 2
    folder = tmp_path / "run/checkpoints"
    assert not list(folder.glob(".checkpoint_*.tmp.*"))  # the half-written temp files are removed
    assert eg_train.load_checkpoint(folder / ck.LATEST)["step"] == 8
    rows_ref = toy.read_rows(tmp_path / "ref/outputs/metrics.csv")
    rows_run = toy.read_rows(tmp_path / "run/outputs/metrics.csv")
    assert [[r[k] for k in COMPARED] for r in rows_run] == [[r[k] for k in COMPARED] for r in rows_ref]


def test_a_failed_final_save_stops_the_run(toy, tmp_path, monkeypatch):
    _disk_full_at(monkeypatch, {4})  # steps 2, 4, 6 are written; the final one (8) fails
    with pytest.raises(eg_train.TrainError) as info:
        toy.run_from_options({"dir": str(tmp_path), "config": CONFIG})
    message = str(info.value)
    assert message.startswith("the final checkpoint (step 8) could not be written to")
    assert "the newest one there is from step 6" in message and "\n" not in message
    assert eg_train.load_checkpoint(tmp_path / "checkpoints" / ck.LATEST)["step"] == 6


class _Crash(BaseException):
    """A process killed right after a file landed (not an OSError: nothing may catch it)."""


def test_when_latest_shows_a_step_its_step_file_and_best_are_already_on_disk(tmp_path, monkeypatch):
    """A resume starts from checkpoint_latest.pt and never redoes its step: a crash just after latest was
    replaced must not leave that step's step file or best unwritten (the run would never write them)."""
    real = ck.atomic_write
    ck.write_checkpoint(tmp_path, b"step 2", 2, latest=True, best=True, keep_last_n=3)

    def crash_after_latest(path: Path, data: bytes) -> None:
        real(path, data)
        if path.name == ck.LATEST:
            raise _Crash

    monkeypatch.setattr(ck, "atomic_write", crash_after_latest)
    with pytest.raises(_Crash):
        ck.write_checkpoint(tmp_path, b"step 4", 4, latest=True, best=True, keep_last_n=3)
    assert (tmp_path / ck.LATEST).read_bytes() == b"step 4"
    assert (tmp_path / ck.step_file_name(4)).read_bytes() == b"step 4"
    assert (tmp_path / ck.BEST).read_bytes() == b"step 4"
