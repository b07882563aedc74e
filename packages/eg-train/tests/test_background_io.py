"""Checkpoint writes and plot drawings run off the training loop's thread: training goes on while a
checkpoint is written, every write is still atomic and complete when fit() returns, and the final plots
show every logged row."""

from __future__ import annotations

import threading
import time

import eg_train
import pytest
from eg_train import checkpoint as ck
from eg_train import plots


@pytest.mark.slow  # matplotlib's import and two drawings: 3-10 s on the shared 2 cores
def test_checkpoint_writes_and_plots_run_off_the_training_thread(toy, tmp_path, monkeypatch):
    writes: list[tuple[int, str, int, int]] = []  # (step, thread, forward calls before, after)
    drawings: list[tuple[str, int]] = []  # (thread, rows drawn)
    model = toy.ToyModel()
    real_write, real_draw = ck.write_checkpoint, plots.draw_training_curves

    def slow_write(folder, data, step, *args, **kwargs):
        before = model.calls
        time.sleep(0.3)  # a slow disk: the loop must not wait for it
        real_write(folder, data, step, *args, **kwargs)
        writes.append((step, threading.current_thread().name, before, model.calls))

    def draw(rows, path):
        drawings.append((threading.current_thread().name, len(rows)))
        real_draw(rows, path)

    monkeypatch.setattr(ck, "write_checkpoint", slow_write)
    monkeypatch.setattr(plots, "draw_training_curves", draw)
    cfg = toy.make_config(tmp_path, max_steps=8, save_every=4, val_every=4, plots=True, log_every=1)
    summary = eg_train.Trainer(model, cfg, toy.ToyData(), val_data=toy.ToyData()).fit()

    assert [w[0] for w in writes] == [4, 8] and summary["num_failed_saves"] == 0
    assert all(w[1].startswith("eg-train-checkpoint") for w in writes)
    step4 = writes[0]
    assert step4[3] > step4[2], "training should go on while step 4's checkpoint is written"
    assert eg_train.load_checkpoint(tmp_path / "checkpoints" / ck.LATEST)["step"] == 8
    assert not list((tmp_path / "checkpoints").glob(".checkpoint_*.tmp.*"))
    assert drawings[0] == ("eg-train-plots_0", 4)  # the validation at step 4, in the background
    rows = toy.read_rows(tmp_path / "outputs" / "metrics.csv")
    assert drawings[-1][1] == len(rows) == 8  # the last drawing shows every row
    assert len(drawings) == 2  # step 8's validation drawing is the final one, not drawn twice
