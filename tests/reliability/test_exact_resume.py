"""Exact resume through the real app: a stage-1 run SIGKILLed at seeded random steps and restarted with
the same command ends with the uninterrupted run's checkpoints (every value torch.load gives) and
metrics rows (every column but the time ones), in each MRL mode, with text dropout on."""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reliability_runs import (
    MAX_STEPS,
    MODES,
    assert_checkpoints_equal,
    assert_rows_equal,
    base_config,
    checkpoint_dir,
    checkpoint_step,
    metrics_path,
    run_and_kill,
    run_train,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import write_config

# Kills land inside a logging window (log_every 3: never at steps 3 or 6), where a resume that lost the
# window would log a different row. The seeds draw: all_dims step 4 (an epoch boundary: 2 batches an
# epoch), single_dim 2 then 5 (a boundary, then mid-epoch), two_of_three 1 (mid-epoch).
MID_WINDOW = [step for step in range(1, MAX_STEPS - 1) if step % 3]
SEEDS = {"all_dims": 5, "single_dim": 9, "two_of_three": 8}
# kills per run: two (a resumed run killed again) in the seed's own mode, one in the others (suite time)
NUM_KILLS = {"all_dims": 1, "single_dim": 2, "two_of_three": 1}


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(MODES))
def test_sigkill_and_rerun_is_exact(
    mode: str, reference: Callable[[str], Path], suite_root: Path, tmp_path: Path
) -> None:
    """Guarantee: a run SIGKILLed (process group, loader worker included) at seeded random steps (twice
    in the single-dim mode, the second time after its resume) and restarted each time with the same
    command ends with every checkpoint file (latest, best, each kept step) equal in every tensor and
    value to the uninterrupted run's, and with the same metrics rows: model, optimizer, scheduler, every
    RNG, the MRL dim draws (all dims / one sampled dim / 2 of 3), text dropout draws, the data position
    across epoch boundaries and the logging window all resume."""
    ref = reference(mode)
    config = write_config(tmp_path, base_config(suite_root, **MODES[mode]))
    rng = random.Random(SEEDS[mode])
    first = rng.choice([step for step in MID_WINDOW if step <= 4])
    killed_at = [run_and_kill(config, tmp_path, at_step=first)]
    later = [step for step in MID_WINDOW if step > killed_at[-1]]
    if NUM_KILLS[mode] == 2 and later:
        killed_at.append(run_and_kill(config, tmp_path, at_step=rng.choice(later)))
    assert all(1 <= step < MAX_STEPS for step in killed_at), killed_at  # every kill landed mid-run
    done = run_train(config, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert checkpoint_step(checkpoint_dir(tmp_path) / "checkpoint_latest.pt") == MAX_STEPS
    assert_checkpoints_equal(checkpoint_dir(ref), checkpoint_dir(tmp_path))
    assert_rows_equal(metrics_path(ref), metrics_path(tmp_path))
