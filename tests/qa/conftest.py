"""Fixtures of the stage-2 tests: a tiny stage-1 checkpoint trained through the stage-1 app in a few steps,
small uneven held-out splits, and a tiny stage-2 (TRM) checkpoint trained on them through the app."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from qa_helpers import TRAIN_SCRIPT, copy_split, qa_config, run_app, tiny_config, write_config


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


@pytest.fixture(scope="session")
def qa_checkpoint(tmp_path_factory: pytest.TempPathFactory, qa_space: dict[str, Path]) -> dict[str, Path]:
    """configs/demo_qa_trm.yaml at tiny size trained 6 steps through apps/train on `qa_space`, its
    evaluation keeping every row of the 11-sample test split in eval.json (66 QA pairs, each variant's
    answer). {"root", "config", "checkpoint" (the step-6 weights the evaluation used), "eval" (eval.json),
    "test" (the split)}."""
    root = tmp_path_factory.mktemp("qa_checkpoint")
    cfg = qa_config(
        qa_space, "trm", root, **{"train.max_steps": 6, "train.val_every": 6, "eval.num_rows": 100}
    )
    config = write_config(root, cfg, "qa_trm.yaml")
    done = run_app(TRAIN_SCRIPT, ["--config", str(config)], root)
    assert done.returncode == 0, done.stderr[-3000:]
    name = cfg["experiment_name"]
    return {
        "root": root,
        "config": config,
        "checkpoint": root / "checkpoints" / name / "checkpoint_latest.pt",
        "eval": root / "outputs" / name / "eval.json",
        "test": qa_space["test"],
    }
