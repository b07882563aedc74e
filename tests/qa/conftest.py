"""Fixtures of the stage-2 tests: a tiny stage-1 checkpoint trained through the stage-1 app in a few steps,
and small uneven held-out splits."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from qa_helpers import TRAIN_SCRIPT, copy_split, run_app, tiny_config, write_config


@pytest.fixture(scope="session")
def qa_space(tmp_path_factory: pytest.TempPathFactory, demo_data: Path) -> dict[str, Path]:
    """A stage-1 checkpoint of the tiny demo towers (4 steps through apps/train) and 13 / 11 sample
    val / test splits (prime sizes: uneven over ranks and batches)."""
    root = tmp_path_factory.mktemp("qa_space")
    cfg = tiny_config(root, demo_data, **{"train.max_steps": 4, "train.val_every": 4, "train.save_every": 4})
    done = run_app(TRAIN_SCRIPT, ["--config", str(write_config(root, cfg, "stage1.yaml"))], root)
    assert done.returncode == 0, done.stderr[-3000:]
    return {
        "root": root,
        "checkpoint": root / "checkpoints" / "tiny" / "checkpoint_latest.pt",
        "train": demo_data / "train",
        "val": copy_split(demo_data / "val", root / "val13", 13, 5),
        "test": copy_split(demo_data / "test", root / "test11", 11, 4),
    }
