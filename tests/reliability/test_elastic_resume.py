"""Resume on another world size through the real app (torchrun, gloo, CPU): a checkpoint written mid-epoch
by 2 ranks resumes on 1 and on 4, and one written by 1 rank resumes on 2; after the resume every optimizer
step reads the sample keys of the uninterrupted run's step (the keys of all ranks in global order, from
sample_keys.jsonl), and the final weights equal the uninterrupted run's to float rounding (the global batch
is kept: each rank's batch becomes the step's samples / the new world size, the contrastive loss gathers
them). A world size that does not divide the step's samples is refused in one line before anything is
loaded. The uninterrupted runs are the suite's references, so only the resumed runs cost time."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from eg_train.checkpoint import step_file_name

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reliability_runs import (
    DDP_OVERRIDES,
    MAX_STEPS,
    MODES,
    base_config,
    checkpoint_dir,
    differences,
    load,
    run_train,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import write_config

RESUME_AT = 3  # mid-epoch in both references (2 steps an epoch on 1 rank, 5 on 2)
ATOL = 1e-5  # the weights after 5 more steps (measured: <= 1.2e-7 but for the attention key biases)
KEY_BIAS_ATOL = 1e-4


def step_keys(workdir: Path) -> dict[int, list[str]]:
    """{step: that step's sample keys, all ranks in global order} from the run's sample_keys.jsonl."""
    lines = (workdir / "outputs" / "tiny" / "sample_keys.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    return {row["step"]: row["keys"] for row in rows}


def resume_on(reference: Path, config: dict, workdir: Path, nproc: int) -> tuple[str, str, int]:
    """Continue `reference`'s step-RESUME_AT checkpoint in `workdir` on `nproc` ranks (the same config);
    returns (stdout, stderr, return code)."""
    folder = checkpoint_dir(workdir)
    folder.mkdir(parents=True)
    shutil.copy(checkpoint_dir(reference) / step_file_name(RESUME_AT), folder / "checkpoint_latest.pt")
    done = run_train(write_config(workdir, config), workdir, nproc=nproc)
    return done.stdout, done.stderr, done.returncode


def assert_continues(reference: Path, workdir: Path, written: int, nproc: int, out: str) -> None:
    """The resumed run said the change in one line, read the reference's keys at every later step, and
    ended on the reference's weights."""
    said = [line for line in out.splitlines() if line.startswith("eg-train: resuming a ")]
    assert len(said) == 1 and f"checkpoint of {written} rank(s) on {nproc}: the global batch stays" in said[0]
    want, got = step_keys(reference), step_keys(workdir)
    assert sorted(got) == list(range(RESUME_AT + 1, MAX_STEPS + 1))
    for step in got:
        assert got[step] == want[step], f"step {step}: {got[step][:6]}... != {want[step][:6]}..."
    final, ref = (
        load(checkpoint_dir(workdir) / "checkpoint_latest.pt"),
        load(checkpoint_dir(reference) / "checkpoint_latest.pt"),
    )
    assert final["step"] == ref["step"] == MAX_STEPS and final["world_size"] == nproc
    assert final["data_order"]["num_streams"] == ref["data_order"]["num_streams"] == written
    assert sorted(final["model"]) == sorted(ref["model"])
    for name, value in ref["model"].items():
        if not (isinstance(value, torch.Tensor) and value.is_floating_point()):  # extra state, counters
            assert not differences(final["model"][name], value), name
            continue
        diff = (final["model"][name] - value).abs()
        if name.endswith("in_proj_bias"):  # (3E,) query, key, value biases of an nn.MultiheadAttention
            # The key bias adds a constant to every logit of a softmax row: its true gradient is 0, so
            # AdamW turns float rounding (~1e-10) into steps of up to lr. Measured: <= 3e-5 after 5 steps.
            width = value.shape[0] // 3
            worst_key = diff[width : 2 * width].max().item()
            assert worst_key <= KEY_BIAS_ATOL, (
                f"{name} (key bias): max |resumed - uninterrupted| = {worst_key:.3g}"
            )
            diff = torch.cat([diff[:width], diff[2 * width :]])
        worst = diff.max().item()
        assert worst <= ATOL, f"{name}: max |resumed - uninterrupted| = {worst:.3g}"


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [1, 4])
def test_two_rank_checkpoint_resumes_on_another_world_size(
    nproc: int, ddp_reference: Path, suite_root: Path, tmp_path: Path
) -> None:
    """2 ranks x batch 4 (8 samples a step, MRL drawing 2 of 3 dims, text dropout 0.3) resumed at step 3 on
    1 rank (batch 8) and on 4 ranks (batch 2)."""
    out, err, rc = resume_on(ddp_reference, base_config(suite_root, **DDP_OVERRIDES), tmp_path, nproc)
    assert rc == 0, err[-3000:]
    assert_continues(ddp_reference, tmp_path, written=2, nproc=nproc, out=out)


@pytest.mark.slow
def test_one_rank_checkpoint_resumes_on_two(
    reference: Callable[[str], Path], suite_root: Path, tmp_path: Path
) -> None:
    """1 rank x batch 16 (all MRL dims, one loader worker) resumed at step 3 on 2 ranks (batch 8 each)."""
    ref = reference("all_dims")
    out, err, rc = resume_on(ref, base_config(suite_root, **MODES["all_dims"]), tmp_path, nproc=2)
    assert rc == 0, err[-3000:]
    assert_continues(ref, tmp_path, written=1, nproc=2, out=out)


@pytest.mark.slow
def test_world_size_that_splits_no_step_is_refused(
    ddp_reference: Path, suite_root: Path, tmp_path: Path
) -> None:
    """8 samples a step do not split over 3 ranks: each rank refuses in our one line (exit 2) before the
    checkpoint is restored, and nothing of the run is written."""
    latest = checkpoint_dir(tmp_path) / "checkpoint_latest.pt"
    _, err, rc = resume_on(ddp_reference, base_config(suite_root, **DDP_OVERRIDES), tmp_path, nproc=3)
    line = (
        "error: checkpoints/tiny/checkpoint_latest.pt: a resume on 3 rank(s) cannot keep the run's sample "
        "order: each micro-step reads 8 samples (2 rank(s) x batch_size 4), which do not split over 3; "
        "resume on 1, 2, 4, 8 rank(s) or set resume=never"
    )
    assert rc != 0 and err.count(line) == 3, err[-3000:]
    assert "exitcode  : 2" in err  # torchrun's summary of the ranks' exit status
    assert "TrainError" not in err  # no traceback of ours
    assert sorted(p.name for p in latest.parent.iterdir()) == ["checkpoint_latest.pt", "run.lock"]
    assert load(latest)["step"] == RESUME_AT
    assert not (tmp_path / "outputs" / "tiny" / "metrics.csv").exists()
