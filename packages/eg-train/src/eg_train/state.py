"""The run state a checkpoint carries: everything that decides the future of the run, captured without
knowing the model.

- model: trainable parameters (or all of them), every buffer and every module's `_extra_state`
  (`get_extra_state`, e.g. a loss's sampler);
- optimizer, lr schedule position, GradScaler;
- per rank: python/numpy/torch/CUDA RNG now and at the epoch's start, every `torch.Generator` a module
  holds as an attribute, and the data report counts reached in the current epoch;
- the data position (epoch, batch_in_epoch), step counters, best metric, the logging window (the sums
  the next metrics row averages), the wandb run id.

Loading is strict: a checkpoint lacking any of these is refused with one line.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from eg_train import checkpoint as ck
from eg_train.distributed import all_gather_objects, seed_everything
from eg_train.errors import TrainError

if TYPE_CHECKING:
    from eg_train.trainer import Trainer

RUN_KEYS = (
    "step",
    "epoch",
    "batch_in_epoch",
    "samples_seen",
    "num_skipped_steps",
    "consecutive_nonfinite",
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
    "wandb_run_id",
)
RANK_KEYS = ("rng", "epoch_start_rng", "generators", "data_report")


def module_generators(model: nn.Module) -> dict[str, torch.Generator]:
    """Every torch.Generator held as a module attribute, by `module.path.attribute`."""
    found: dict[str, torch.Generator] = {}
    for name, module in model.named_modules():
        for attr, value in vars(module).items():
            if isinstance(value, torch.Generator):
                found[f"{name}.{attr}" if name else attr] = value
    return found


def capture_rank_state(t: Trainer) -> dict[str, Any]:
    """This rank's part of the run state."""
    return {
        "rng": ck.capture_rng_state(t.device),
        "epoch_start_rng": t.epoch_start_rng,
        "generators": {k: g.get_state() for k, g in module_generators(t.model).items()},
        "data_report": t.reporter.local() if t.batch_in_epoch > 0 else None,
    }


def capture(t: Trainer) -> dict[str, Any] | None:
    """The checkpoint contents on rank 0 (None on other ranks). A collective: every rank calls it."""
    ranks = all_gather_objects(capture_rank_state(t))
    if not t.dist.is_main:
        return None
    sched = t.scheduler.state_dict()
    sched["lr_lambdas"] = [None] * len(sched["lr_lambdas"])  # the schedule is rebuilt from the config
    return {
        "format": ck.FORMAT,
        "step": t.step,
        "epoch": t.epoch,
        "batch_in_epoch": t.batch_in_epoch,
        "samples_seen": t.samples_seen,
        "num_skipped_steps": t.num_skipped_steps,
        "consecutive_nonfinite": t.consecutive_nonfinite,
        "world_size": t.dist.world_size,
        "model": ck.model_state(t.model, t.cfg.save_trainable_only),
        "model_state_kind": "trainable" if t.cfg.save_trainable_only else "full",
        "optimizer": t.optimizer.state_dict(),
        "scheduler": sched,
        "scaler": t.scaler.state_dict(),
        "ranks": ranks,
        "log_window": t.window.state_dict(),
        **t.best.state(),
        "config": t.cfg.to_dict(),
        "run_config": t.run_config,
        "wandb_run_id": t.wandb_run_id,
    }


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


def restore(t: Trainer, path: Path, c: dict[str, Any]) -> None:
    """Put the run state of checkpoint `c` (read from `path`) into trainer `t`, on every rank."""
    _require(c, RUN_KEYS, "the checkpoint", path)
    for i, rank_state in enumerate(c["ranks"]):
        _require(rank_state, RANK_KEYS, f"rank {i}'s state", path)
    ck.load_model_state(t.model, c["model"], c["model_state_kind"], str(path))
    try:
        t.optimizer.load_state_dict(c["optimizer"])
    except (ValueError, KeyError) as e:
        raise TrainError(
            f"{path}: optimizer state does not match the param groups ({e}); "
            f"keep the same param groups or set resume=never"
        ) from None
    t.scheduler.load_state_dict(c["scheduler"])
    if c["scaler"]:
        t.scaler.load_state_dict(c["scaler"])
    t.step, t.epoch, t.batch_in_epoch = c["step"], c["epoch"], c["batch_in_epoch"]
    t.samples_seen, t.num_skipped_steps = c["samples_seen"], c["num_skipped_steps"]
    t.consecutive_nonfinite = c["consecutive_nonfinite"]
    t.best.load(c)
    t.wandb_run_id = c["wandb_run_id"]
    t.window.load_state_dict(c["log_window"])
    rank, ranks = t.dist.rank, c["ranks"]
    if c["world_size"] == t.dist.world_size:
        mine = ranks[rank]
        ck.restore_rng_state(mine["rng"], t.device)
        t.epoch_start_rng = mine["epoch_start_rng"]
        _restore_generators(t.model, mine["generators"], path)
        t.reporter.base = mine["data_report"] if t.data_positioned else None
        return
    warnings.warn(
        f"{path} was written by {c['world_size']} ranks, this run has {t.dist.world_size}: "
        f"model and optimizer resume exactly, data order, RNG and the data report counts do not",
        stacklevel=3,
    )
    seed_everything(t.cfg.seed + rank + t.step)
    _restore_generators(t.model, ranks[0]["generators"], path)  # e.g. a sampler seeded alike on all ranks
