"""Validation does not change the training: a run that validates every 2 steps and one that validates only at
its end train identically (the same loss rows), with loader workers as every real config uses them.

Before eg-data gave its DataLoader its own generator, each validation pass drew the workers' base seed from
torch's global RNG, shifting every later dropout draw of the model."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # --import-mode=importlib: conftest's helpers
from conftest import TRAIN_SCRIPT, run_app, tiny_config, write_config

pytestmark = pytest.mark.slow


def train_rows(workdir: Path, data: Path, val_every: int) -> list[dict[str, str]]:
    """The train-loss columns of metrics.csv, one row per logged step, of a 6-step tiny run."""
    workdir.mkdir()
    cfg = tiny_config(
        workdir,
        data,
        **{
            "train.max_steps": 6,
            "train.val_every": val_every,
            "train.save_every": 6,
            "data.train.num_workers": 1,
        },
    )
    done = run_app(TRAIN_SCRIPT, ["--config", str(write_config(workdir, cfg))], workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(workdir / "outputs" / "tiny" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    train = [k for k in rows[0] if k == "loss" or (k.endswith(("/contrastive", "/mrl")) and "val/" not in k)]
    assert "loss" in train and len(train) > 3
    return [{k: row[k] for k in ["step", *train]} for row in rows if row.get("loss")]


def test_validation_passes_leave_the_training_unchanged(tmp_path: Path, demo_data: Path) -> None:
    often = train_rows(tmp_path / "often", demo_data, val_every=2)
    once = train_rows(tmp_path / "once", demo_data, val_every=6)
    assert [r["step"] for r in often] == [str(s) for s in range(1, 7)]
    assert often == once  # the rows after the validations at steps 2 and 4 included
