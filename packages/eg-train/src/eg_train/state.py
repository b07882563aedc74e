"""The run state a checkpoint carries: everything that decides the future of the run, captured without
knowing the model.

- model: trainable parameters (or all of them), every buffer and every module's `_extra_state`
  (`get_extra_state`, e.g. a loss's sampler);
- optimizer, lr schedule position, GradScaler;
- per rank: python/numpy/torch/CUDA RNG now and at the epoch's start, every `torch.Generator` a module
  holds as an attribute, and the data report counts reached in the current epoch;
- the run's counters (`RunState`: data position, step counters, wandb run id), the best metric and the
  logging window (the sums the next metrics row averages);
- `data_order`: the data's training order (`order_state()`, None for data without one), which a resume on
  another world size keeps (elastic.py).

State flows one way: the trainer owns these objects and hands them over as `StateParts`; `capture` reads
them, `restore` calls their `load_state_dict`. This module never imports the trainer. Loading is strict: a
checkpoint lacking any piece is refused with one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eg_train import checkpoint as ck
from eg_train.config import TrainerConfig
from eg_train.datareport import DataReporter
from eg_train.distributed import DistInfo, all_gather_objects, broadcast_object, seed_everything
from eg_train.elastic import has_order, order_of
from eg_train.errors import TrainError
from eg_train.metrics import LogWindow
from eg_train.validation import BestTracker


@dataclass
class RunState:
    """Where the run stands (torchtitan's TrainState): the counters a checkpoint holds at its top level.

    `epoch_start_rng` is this rank's RNG state at the current epoch's start (what replays a loader that
    cannot seek); it is saved in the rank's own part (`ranks[r]`), not with the counters.
    """

    step: int = 0
    """Optimizer steps taken."""
    epoch: int = 0
    """The epoch being read (0-based)."""
    batch_in_epoch: int = 0
    """Batches of this epoch consumed on each rank (the data position)."""
    samples_seen: int = 0
    """Samples consumed, summed over ranks."""
    num_skipped_steps: int = 0
    """Optimizer steps skipped for a non-finite loss or gradient norm."""
    consecutive_nonfinite: int = 0
    """Non-finite steps in a row up to now (training stops at max_consecutive_nonfinite)."""
    wandb_run_id: str | None = None
    """The wandb run a resume continues (None without wandb)."""
    epoch_start_rng: dict[str, Any] | None = field(default=None, repr=False)
    """This rank's RNG state when the current epoch began (None before the first epoch opens)."""

    def state_dict(self) -> dict[str, Any]:
        """The counters as plain values (the rank-local `epoch_start_rng` left out)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "epoch_start_rng"}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from the counters of `state_dict` (a checkpoint's top level)."""
        for name in self.state_dict():
            setattr(self, name, state[name])


COUNTER_KEYS = tuple(RunState().state_dict())
RUN_KEYS = (
    *COUNTER_KEYS,
    "world_size",
    "model",
    "model_state_kind",
    "optimizer",
    "scheduler",
    "scaler",
    "ranks",
    "log_window",
    "best_metric",
    "best_value",
    "best_step",
)
RANK_KEYS = ("rng", "epoch_start_rng", "generators", "data_report")


@dataclass
class StateParts:
    """The objects whose state a checkpoint holds, owned by the trainer and handed to `capture`/`restore`."""

    run: RunState
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    window: LogWindow
    best: BestTracker
    reporter: DataReporter
    dist: DistInfo
    config: TrainerConfig
    run_config: dict[str, Any]
    data_positioned: bool  # the data seeks by itself, so it counts its data report from the resume point
    data: Any = None  # the training data (its order_state, when it has one, goes into the checkpoint)


def module_generators(model: nn.Module) -> dict[str, torch.Generator]:
    """Every torch.Generator held as a module attribute, by `module.path.attribute`."""
    found: dict[str, torch.Generator] = {}
    for name, module in model.named_modules():
        for attr, value in vars(module).items():
            if isinstance(value, torch.Generator):
                found[f"{name}.{attr}" if name else attr] = value
    return found


def capture_rank_state(p: StateParts) -> dict[str, Any]:
    """This rank's part of the run state."""
    return {
        "rng": ck.capture_rng_state(p.dist.device),
        "epoch_start_rng": p.run.epoch_start_rng,
        "generators": {k: g.get_state() for k, g in module_generators(p.model).items()},
        "data_report": p.reporter.local() if p.run.batch_in_epoch > 0 else None,
    }


def capture(p: StateParts) -> dict[str, Any] | None:
    """The checkpoint contents on rank 0 (None on other ranks). A collective: every rank calls it."""
    ranks = all_gather_objects(capture_rank_state(p))
    if not p.dist.is_main:
        return None
    sched = p.scheduler.state_dict()
    sched["lr_lambdas"] = [None] * len(sched["lr_lambdas"])  # the schedule is rebuilt from the config
    trainable_only = p.config.save_trainable_only
    return {
        "format": ck.FORMAT,
        **p.run.state_dict(),
        "world_size": p.dist.world_size,
        "model": ck.model_state(p.model, trainable_only),
        "model_state_kind": "trainable" if trainable_only else "full",
        "optimizer": p.optimizer.state_dict(),
        "scheduler": sched,
        "scaler": p.scaler.state_dict(),
        "ranks": ranks,
        "log_window": p.window.state_dict(),
        "data_order": order_of(p.data),
        **p.best.state_dict(),
        "config": p.config.to_dict(),
        "run_config": p.run_config,
    }


def find_resume(resume: str, checkpoint_dir: Path, is_main: bool) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint a run continues from per the config's `resume` (auto: the newest readable one in
    `checkpoint_dir`; never; or a file or folder), chosen on rank 0 and read on every rank; None: start."""
    if resume == "never":
        return None
    folder = checkpoint_dir if resume == "auto" else Path(resume)
    path = ck.select_resume_path(folder, explicit=resume != "auto") if is_main else None
    path = broadcast_object(path)
    return None if path is None else (Path(path), ck.load_checkpoint(path))


def _require(c: dict[str, Any], keys: tuple[str, ...], where: str, path: Path) -> None:
    missing = [k for k in keys if k not in c]
    if missing:
        raise TrainError(
            f"{path}: {where} lacks {missing[0]!r}; it was not written by this eg-train "
            f"(delete it or set resume=never)"
        )


def _restore_generators(model: nn.Module, saved: dict[str, torch.Tensor], path: Path) -> None:
    own = module_generators(model)
    for name in own:
        if name not in saved:
            raise TrainError(
                f"{path}: the generator {name} of the model is missing from the checkpoint; "
                f"the model differs from the saved run's"
            )
    for name, state in saved.items():
        if name not in own:
            raise TrainError(f"{path}: the checkpoint has a generator {name} that the model lacks")
        own[name].set_state(state)


def restore(p: StateParts, path: Path, c: dict[str, Any]) -> str | None:
    """Put the run state of checkpoint `c` (read from `path`) into the parts, on every rank.

    Returns a line for the user when the resume is not exact (another world size), else None."""
    _require(c, RUN_KEYS, "the checkpoint", path)
    for i, rank_state in enumerate(c["ranks"]):
        _require(rank_state, RANK_KEYS, f"rank {i}'s state", path)
    ck.load_model_state(p.model, c["model"], c["model_state_kind"], str(path))
    try:
        p.optimizer.load_state_dict(c["optimizer"])
    except (ValueError, KeyError) as e:
        raise TrainError(
            f"{path}: optimizer state does not match the param groups ({e}); "
            f"keep the same param groups or set resume=never"
        ) from None
    p.scheduler.load_state_dict(c["scheduler"])
    if c["scaler"]:
        p.scaler.load_state_dict(c["scaler"])
    p.run.load_state_dict(c)
    p.best.load_state_dict(c)
    p.window.load_state_dict(c["log_window"])
    if c["world_size"] != p.dist.world_size:
        return _restore_other_world_size(p, path, c)
    mine = c["ranks"][p.dist.rank]
    ck.restore_rng_state(mine["rng"], p.dist.device)
    p.run.epoch_start_rng = mine["epoch_start_rng"]
    _restore_generators(p.model, mine["generators"], path)
    p.reporter.base = mine["data_report"] if p.data_positioned else None
    return None


def _restore_other_world_size(p: StateParts, path: Path, c: dict[str, Any]) -> str:
    """The per-rank pieces of a checkpoint written by another number of ranks: model, optimizer and counters
    are already restored; each rank reseeds, and the module generators take rank 0's state (e.g. a sampler
    seeded alike on all ranks). Returns the line that says what does not resume exactly."""
    seed_everything(p.config.seed + p.dist.rank + p.run.step)
    _restore_generators(p.model, c["ranks"][0]["generators"], path)
    if has_order(p.data) and c.get("data_order"):  # elastic.keep_order set the data to the run's order
        return (
            f"{path.name} was written by {c['world_size']} ranks, this run has {p.dist.world_size}: model, "
            f"optimizer, schedule and the sample order resume exactly; RNG and the epoch's data report counts "
            f"do not"
        )
    return (
        f"{path.name} was written by {c['world_size']} ranks, this run has {p.dist.world_size}: model, "
        f"optimizer and schedule resume exactly; data order, RNG and the epoch's data report counts do not"
    )
