"""Validation pass (loss and named parts averaged over samples and ranks) and best-metric tracking."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from eg_train.data import batch_size, move_to_device, split_output
from eg_train.distributed import all_gather_objects
from eg_train.precision import autocast

EvaluateFn = Callable[[nn.Module, int], dict[str, float]]


@torch.no_grad()
def run_validation(
    model: nn.Module,
    val_data: Iterable | None,
    evaluate_fn: EvaluateFn | None,
    step: int,
    precision: str,
    device: torch.device,
) -> dict[str, float]:
    """`val/loss`, `val/<part>` and the evaluate_fn metrics (prefixed `val/`).

    A metric no batch produced is absent from the result: a validation without loss never reads 0.0.
    """
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    try:
        if val_data is not None:
            for batch in val_data:
                batch = move_to_device(batch, device)
                n = batch_size(batch)
                with autocast(precision, device):
                    out = model(batch)
                loss, parts = split_output(out)
                values = dict(parts)
                if loss is not None:
                    values["loss"] = loss.detach().float()
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + float(v) * n
                    counts[k] = counts.get(k, 0) + n
        # ranks may see different keys (e.g. a modality absent from one shard): merge by name
        merged_sums: dict[str, float] = {}
        merged_counts: dict[str, int] = {}
        for rank_sums, rank_counts in all_gather_objects((sums, counts)):
            for k, v in rank_sums.items():
                merged_sums[k] = merged_sums.get(k, 0.0) + v
                merged_counts[k] = merged_counts.get(k, 0) + rank_counts[k]
        metrics = {
            f"val/{k}": merged_sums[k] / merged_counts[k] for k in sorted(merged_sums) if merged_counts[k] > 0
        }
        if evaluate_fn is not None:
            for k, v in evaluate_fn(model, step).items():
                metrics[k if k.startswith("val/") else f"val/{k}"] = float(v)
    finally:
        model.train(was_training)
    return metrics


class BestTracker:
    """Remembers the best value of one metric ("min" or "max"); NaN/absent values never count."""

    def __init__(self, metric: str, mode: str) -> None:
        self.metric = metric
        self.mode = mode
        self.value: float | None = None
        self.step: int = -1
        self._warned = False

    def lookup(self, metrics: dict[str, float]) -> float | None:
        """The tracked metric's value in `metrics` (name with or without the `val/` prefix)."""
        for key in (self.metric, f"val/{self.metric}"):
            if key in metrics:
                return metrics[key]
        return None

    def warn_if_untracked(self, metrics: dict[str, float]) -> None:
        """Warn once when the tracked metric is not among the validation metrics (no best checkpoint)."""
        if self.lookup(metrics) is None and not self._warned:
            self._warned = True
            warnings.warn(
                f"best_metric={self.metric!r} is not among the validation metrics "
                f"{sorted(metrics)}; checkpoint_best.pt is not written",
                stacklevel=4,
            )

    def update(self, metrics: dict[str, float], step: int) -> bool:
        """Record `metrics` at `step`; True when the tracked metric improved."""
        value = self.lookup(metrics)
        if value is None or not math.isfinite(value):
            return False
        if self.value is not None:
            better = value < self.value if self.mode == "min" else value > self.value
            if not better:
                return False
        self.value, self.step = float(value), step
        return True

    def state_dict(self) -> dict[str, Any]:
        """Plain-typed state for checkpoints."""
        return {"best_metric": self.metric, "best_value": self.value, "best_step": self.step}

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        """Restore from a checkpoint (only when it tracked the same metric)."""
        if ckpt.get("best_metric") == self.metric:
            self.value, self.step = ckpt.get("best_value"), int(ckpt.get("best_step", -1))
