"""Optimizer with per-group learning rates, and the warmup + cosine/linear/constant lr schedule."""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import nn

from eg_train.config import TrainerConfig
from eg_train.errors import TrainError


class WarmupDecay:
    """lr multiplier: linear warmup to 1, then cosine/linear decay to `min_ratio` at `total_steps`.

    A callable object (not a closure) so LambdaLR's state_dict stays plain data.
    """

    def __init__(self, warmup_steps: int, total_steps: int, schedule: str, min_ratio: float) -> None:
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.schedule = schedule
        self.min_ratio = min_ratio

    def __call__(self, step: int) -> float:
        # LambdaLR passes the number of optimizer steps already taken: step 0 uses lr * 1/warmup.
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        progress = min(max(progress, 0.0), 1.0)
        if self.schedule == "cosine":
            decay = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            decay = 1.0 - progress
        return self.min_ratio + (1.0 - self.min_ratio) * decay


def warmup_steps_for(cfg: TrainerConfig, total_steps: int) -> int:
    """warmup_steps when set, else round(warmup_ratio * total_steps)."""
    if cfg.warmup_steps > 0:
        return cfg.warmup_steps
    return round(cfg.warmup_ratio * total_steps)


def build_optimizer(
    model: nn.Module, cfg: TrainerConfig, param_groups: list[dict[str, Any]] | None
) -> torch.optim.AdamW:
    """AdamW over `param_groups` (dicts with `params` and optional `lr`, `weight_decay`, `name`).

    Without groups: every trainable parameter, weight decay only on matrices (ndim >= 2).
    Parameters with requires_grad=False are dropped; a group whose lr is 0 stays frozen.
    """
    if param_groups is None:
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        param_groups = [
            {"name": "decay", "params": [p for _, p in trainable if p.ndim >= 2]},
            {"name": "no_decay", "params": [p for _, p in trainable if p.ndim < 2], "weight_decay": 0.0},
        ]
    groups = []
    seen: set[int] = set()
    for i, group in enumerate(param_groups):
        if "params" not in group:
            raise TrainError(f"param_groups[{i}] has no 'params' key")
        params = [p for p in group["params"] if p.requires_grad]
        for p in params:
            if id(p) in seen:
                raise TrainError(f"param_groups[{i}] repeats a parameter already in an earlier group")
            seen.add(id(p))
        if not params:
            continue
        g = {k: v for k, v in group.items() if k != "params"}
        g.setdefault("lr", cfg.lr)
        g.setdefault("weight_decay", cfg.weight_decay)
        if g["lr"] < 0:
            raise TrainError(f"param_groups[{i}].lr={g['lr']} must be >= 0")
        groups.append({"params": params, **g})
    if not groups:
        raise TrainError("the model has no trainable parameters (all requires_grad=False)")
    orphans = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    if orphans:
        # they would still receive (never cleared) gradients; freeze them or give them a group with lr 0
        warnings.warn(
            f"{len(orphans)} parameters require grad but are in no param group (e.g. {orphans[0]}); "
            f"they are not trained",
            stacklevel=3,
        )
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainerConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR applying WarmupDecay to every group's own base lr."""
    fn = WarmupDecay(warmup_steps_for(cfg, total_steps), total_steps, cfg.schedule, cfg.min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
