"""Fixtures of the reliability suite: small splits cut from the demo data (session), one uninterrupted
reference run per MRL mode (session, built on first use), which every test compares against, and an
uninterrupted 2-rank (torchrun, gloo) reference run."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reliability_runs import (
    DDP_OVERRIDES,
    MAX_STEPS,
    MODES,
    base_config,
    checkpoint_dir,
    checkpoint_step,
    run_train,
    sample_record,
    write_split,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import write_config


@pytest.fixture(scope="session")
def suite_root(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with data/{train (40 samples, 2 shards), val (24), test (24)} cut from the demo data;
    the demo backbones are written into its models/ by the first run."""
    from eg_data import read_all

    root = tmp_path_factory.mktemp("reliability")
    for split, count, per_shard in (("train", 40, 20), ("val", 24, 24), ("test", 24, 24)):
        records = [sample_record(raw) for raw in read_all(demo_data / split)[:count]]
        write_split(root / "data" / split, records, per_shard)
    return root


@pytest.fixture(scope="session")
def reference(suite_root: Path) -> Callable[[str], Path]:
    """reference(mode) -> the workdir of an uninterrupted run in that MRL mode (run once per session)."""
    done: dict[str, Path] = {}

    def get(mode: str) -> Path:
        if mode not in done:
            workdir = suite_root / f"reference_{mode}"
            workdir.mkdir()
            config = write_config(workdir, base_config(suite_root, **MODES[mode]))
            result = run_train(config, workdir)
            assert result.returncode == 0, result.stderr[-3000:]
            assert checkpoint_step(checkpoint_dir(workdir) / "checkpoint_latest.pt") == MAX_STEPS
            done[mode] = workdir
        return done[mode]

    return get


@pytest.fixture(scope="session")
def ddp_reference(suite_root: Path) -> Path:
    """The workdir of an uninterrupted 2-rank torchrun run of the suite's stage 1 (`DDP_OVERRIDES`); its
    checkpoint is also the stage 1 of the 2-rank stage-2 runs."""
    workdir = suite_root / "reference_ddp"
    workdir.mkdir()
    config = write_config(workdir, base_config(suite_root, **DDP_OVERRIDES))
    result = run_train(config, workdir, nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert checkpoint_step(checkpoint_dir(workdir) / "checkpoint_latest.pt") == MAX_STEPS
    return workdir
