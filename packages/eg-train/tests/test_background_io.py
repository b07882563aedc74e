"""Saving and plotting stay off the training loop's critical path: checkpoint files are written on a
background thread while training goes on (each still atomic and complete when fit() returns), and plots
at validations are drawn only within 1% of the run's wall time, with one final drawing of every row."""

from __future__ import annotations

import threading
import time

import eg_train
from eg_train import checkpoint as ck
from eg_train import plots


def test_checkpoints_are_written_while_training_goes_on(toy, tmp_path, monkeypatch):
    writes: list[tuple[int, str, int, int]] = []  # (step, thread, forward calls before, after)
    drawings: list[tuple[str, int]] = []  # (thread, rows drawn)
    model = toy.ToyModel()
    real_write = ck.write_checkpoint

    def slow_write(folder, data, step, *args, **kwargs):
        before = model.calls
        time.sleep(0.3)  # a slow disk: the loop must not wait for it
        real_write(folder, data, step, *args, **kwargs)
        writes.append((step, threading.current_thread().name, before, model.calls))

    def draw(rows, path):
        drawings.append((threading.current_thread().name, len(rows)))

    monkeypatch.setattr(ck, "write_checkpoint", slow_write)
    monkeypatch.setattr(plots, "draw_training_curves", draw)
    monkeypatch.setattr(plots, "draw_loss_components", lambda rows, path: None)
    cfg = toy.make_config(tmp_path, max_steps=8, save_every=4, val_every=4, plots=True, log_every=1)
    summary = eg_train.Trainer(model, cfg, toy.ToyData(), val_data=toy.ToyData()).fit()

    assert [w[0] for w in writes] == [4, 8] and summary["num_failed_saves"] == 0
    assert all(w[1].startswith("eg-train-checkpoint") for w in writes)
    step4 = writes[0]
    assert step4[3] > step4[2], "training should go on while step 4's checkpoint is written"
    assert eg_train.load_checkpoint(tmp_path / "checkpoints" / ck.LATEST)["step"] == 8
    assert not list((tmp_path / "checkpoints").glob(".checkpoint_*.tmp.*"))
    # a run of milliseconds has no budget for a drawing at its step-4 validation: one final drawing of every row
    rows = toy.read_rows(tmp_path / "outputs" / "metrics.csv")
    assert drawings == [("MainThread", len(rows))] and len(rows) == 8


def test_plot_drawings_stay_within_the_budget(tmp_path, monkeypatch):
    now = [0.0]
    calls: list[int] = []

    def draw(rows, path):
        calls.append(len(rows))
        now[0] += 0.5  # each drawing costs 0.5 s

    monkeypatch.setattr(plots, "draw_training_curves", draw)
    monkeypatch.setattr(plots, "draw_loss_components", lambda rows, path: None)
    drawer = plots.PlotDrawer(tmp_path, budget=0.01, clock=lambda: now[0])
    rows: list[dict] = []
    drawn = []
    for t in (10.0, 99.0, 100.0, 120.0, 130.0, 200.0, 1000.0):
        now[0] = t
        rows.append({"step": t, "loss": 1.0})
        drawn.append(drawer.maybe_draw(rows))
    # a drawing is allowed while (spent + last cost) <= 1% of the elapsed time; the first one is assumed
    # to cost 1 s (so from 100 s on), later ones cost what the previous one did (0.5 s)
    assert drawn == [False, False, True, True, False, True, True]
    assert calls == [3, 4, 6, 7] and drawer.spent == 2.0 and drawer.num_skipped == 3
    assert drawer.finish(rows) is False  # the last drawing showed every row
    rows.append({"step": 1001.0, "loss": 0.5})
    assert drawer.finish(rows) is True and calls[-1] == 8
