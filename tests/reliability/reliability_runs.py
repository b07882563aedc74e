"""Helpers of the reliability suite: small shard splits cut from the demo data, stage-1 runs of the real
app in a subprocess (to the end, or SIGKILLed once its checkpoint shows a given step), and exact
comparisons of checkpoints (every value torch.load gives, tensors with torch.equal) and metrics rows."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from eg_train.metrics import TIME_COLUMNS  # metrics.csv columns that measure time: the rest match exactly

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))  # --import-mode=importlib: make the root conftest's helpers importable
from conftest import TRAIN_SCRIPT, app_env, tiny_config

NAME = "tiny"  # experiment_name of tiny_config: outputs/tiny, checkpoints/tiny
MAX_STEPS = 8


def sample_record(raw: dict[str, Any]) -> dict[str, Any]:
    """A raw sample from `read_all` as ShardWriter input (same bytes, same caption, same json)."""
    record: dict[str, Any] = {"key": raw["__key__"]}
    for ext in ("png", "jpg", "webp"):
        if ext in raw:
            record.update(image=raw[ext], image_ext=ext)
    for ext in ("flac", "wav"):
        if ext in raw:
            record.update(audio=raw[ext], audio_ext=ext)
    if "txt" in raw:
        record["text"] = raw["txt"].decode("utf-8")
    if "json" in raw:
        record["json"] = json.loads(raw["json"])
    return record


def write_split(out: Path, records: list[dict[str, Any]], per_shard: int) -> Path:
    """Write `records` as shards of `per_shard` samples (plus shards.json) into `out`."""
    from eg_data import ShardWriter

    with ShardWriter(out, max_samples_per_shard=per_shard) as writer:
        for record in records:
            writer.write(record)
    return out


def base_config(root: Path, **overrides: Any) -> dict[str, Any]:
    """The suite's tiny stage-1 run: `root/data/{train,val,test}`, models shared in `root/models`.

    8 steps of 16 over a 40-sample train split (2 batches an epoch: 4 epoch boundaries), a checkpoint
    every step (all kept), a metrics row every 3 steps (a resume lands inside a logging window),
    validation at step 4 and at the end, text dropout 0.3, the sample keys of every step logged.
    """
    cfg = tiny_config(
        root,
        root / "data",
        **{
            "train.max_steps": MAX_STEPS,
            "train.save_every": 1,
            "train.keep_last_n": MAX_STEPS,
            "train.log_every": 3,
            "train.val_every": 4,
            "train.val_at_epoch_end": False,
            "train.plots": False,
            "data.train.text_dropout": 0.3,
            "train.log_sample_keys": True,  # sample_keys.jsonl: the keys of every step (test_elastic_resume)
        },
    )
    for dotted, value in overrides.items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return cfg


def checkpoint_dir(workdir: Path, name: str = NAME) -> Path:
    return workdir / "checkpoints" / name


def metrics_path(workdir: Path, name: str = NAME) -> Path:
    return workdir / "outputs" / name / "metrics.csv"


def train_command(config: Path, nproc: int = 1) -> list[str]:
    """`apps/train --config config`, under `torchrun --standalone --nproc_per_node nproc` when nproc > 1."""
    if nproc == 1:
        return [sys.executable, str(TRAIN_SCRIPT), "--config", str(config)]
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    return [
        torchrun,
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        str(TRAIN_SCRIPT),
        "--config",
        str(config),
    ]


def run_train(
    config: Path, workdir: Path, timeout: float = 300, env: dict[str, str] | None = None, nproc: int = 1
) -> subprocess.CompletedProcess:
    """Run the train app to its end in `workdir` (on `nproc` gloo ranks); returns the completed process."""
    return subprocess.run(
        train_command(config, nproc),
        check=False,
        cwd=workdir,
        env=env or app_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def checkpoint_step(path: Path) -> int:
    """The step of a checkpoint file; -1 when absent or unreadable (e.g. caught mid-replace)."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["step"])
    except Exception:  # noqa: BLE001 (absent, truncated, being replaced: all mean "not yet")
        return -1


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (Linux /proc): torchrun starts each rank in a session of its own, so
    killing torchrun's process group would leave the ranks running."""
    try:
        children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return [d for c in children for d in (c, *descendants(c))]


def kill_job(proc: subprocess.Popen) -> None:
    """SIGKILL `proc`'s process group and every descendant (ranks, loader workers) at once: a lost node."""
    victims = descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def run_and_kill(
    config: Path, workdir: Path, at_step: int, timeout: float = 300, nproc: int = 1, name: str = NAME
) -> int:
    """Start the train app (on `nproc` ranks), SIGKILL it with every process it started as soon as
    checkpoints/<name>/checkpoint_latest.pt shows step >= `at_step`; returns the step of the checkpoint
    left behind."""
    latest = checkpoint_dir(workdir, name) / "checkpoint_latest.pt"
    log = (workdir / f"killed_at_{at_step}.log").open("w")
    proc = subprocess.Popen(
        train_command(config, nproc),
        cwd=workdir,
        env=app_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the kill takes the loader workers too
    )
    try:
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            if checkpoint_step(latest) >= at_step:
                break
            time.sleep(0.02)
        alive = proc.poll() is None
        if alive:
            kill_job(proc)
    finally:
        if proc.poll() is None:
            kill_job(proc)
        proc.wait()
        log.close()
    output = (workdir / f"killed_at_{at_step}.log").read_text()[-3000:]
    assert alive, f"the run ended (rc {proc.returncode}) before step {at_step} could be killed:\n{output}"
    return checkpoint_step(latest)


def differences(a: Any, b: Any, where: str = "") -> list[str]:
    """Paths where two torch.load results differ: tensors by torch.equal (and dtype), containers
    recursively, other values by ==. Empty when equal."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a, b)
        )
        return [] if same else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{where} keys {sorted(map(str, set(a) ^ set(b)))}"]
        return [d for k in a for d in differences(a[k], b[k], f"{where}/{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b) or type(a) is not type(b):
            return [f"{where} length/type"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    both_nan = isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
    same = a == b or both_nan
    return [] if same else [f"{where}: {a!r} != {b!r}"]


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_checkpoints_equal(reference: Path, other: Path) -> None:
    """The same checkpoint files in both folders, each equal in every value torch.load gives."""
    names = sorted(p.name for p in reference.glob("checkpoint_*.pt"))
    assert names == sorted(p.name for p in other.glob("checkpoint_*.pt"))
    for name in names:
        diff = differences(load(reference / name), load(other / name))
        assert not diff, f"{name}: {len(diff)} values differ, the first at {diff[0]} (then {diff[1:5]})"


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_rows_equal(reference: Path, other: Path) -> None:
    """The same metrics.csv rows (same steps, same columns), every non-time value equal as written."""
    ref, got = read_rows(reference), read_rows(other)
    assert [r["step"] for r in got] == [r["step"] for r in ref]
    for want, have in zip(ref, got):
        assert set(have) == set(want), f"step {want['step']}: columns {sorted(set(have) ^ set(want))}"
        diff = {k: (want[k], have[k]) for k in want if k not in TIME_COLUMNS and want[k] != have[k]}
        assert not diff, (
            f"step {want['step']}: {len(diff)} values differ, e.g. {dict(list(diff.items())[:4])}"
        )


# A frozen text tower runs in eval mode: no dropout, so stage 1 draws nothing from a rank's torch RNG and its
# weights do not depend on how a step's samples are split over ranks (test_elastic_resume compares them
# across world sizes; the other modes keep the text tower's dropout).
NO_MODEL_RNG: dict[str, Any] = {"model.text.encoder.trainable": False}

# The MRL modes of the exact-resume guarantee (text dropout 0.3 in all of them). "all_dims" also reads
# through one loader worker, so a kill lands while the worker has batches read ahead.
MODES: dict[str, dict[str, Any]] = {
    "all_dims": {"data.train.num_workers": 1, **NO_MODEL_RNG},
    "single_dim": {"losses.sample_single_mrl_dim": True},
    "two_of_three": {"losses.num_sampled_mrl_dims": 2},
}

# The 2-rank runs: each rank reads 20 of the 40 training samples in batches of 4 (5 steps an epoch), so the
# 8 steps cross an epoch boundary and a kill lands mid-epoch; MRL draws 2 of 3 dims from the loss's generator;
# the text tower is frozen (NO_MODEL_RNG; stage 2 on this checkpoint draws modality dropout from each rank's RNG).
DDP_OVERRIDES: dict[str, Any] = {**MODES["two_of_three"], "data.train.batch_size": 4, **NO_MODEL_RNG}
