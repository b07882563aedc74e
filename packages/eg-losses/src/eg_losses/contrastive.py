"""Symmetric InfoNCE (the CLIP loss) between two batches of paired embeddings.

Row i of `a` and row i of `b` are a positive pair; every other row of the other batch is a negative.
The temperature is learnable (kept as a log logit scale, as in CLIP) or fixed. Rows marked invalid
(e.g. a caption removed by text dropout) are neither positives nor anyone's negatives.

Under torch.distributed the embeddings of every rank are gathered with gradients, so negatives come
from the global batch. Two modes give the same loss and gradients as one process holding the whole
batch, once DDP averages gradients across ranks:
- full (default): every rank computes the full global x global logits and the global loss;
- local_loss: each rank computes only its rows against the global batch (memory linear in the global
  batch), and returns its share of the loss, scaled so that the mean over ranks is the global loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from eg_losses.distributed import distributed_world, gather_with_grad
from eg_losses.errors import LossError, is_missing


@dataclass
class ContrastiveLossConfig:
    """Settings of `ContrastiveLoss`; checked when constructed (LossError naming the key)."""

    temperature: float = 0.07
    """Initial (or fixed) softmax temperature; logit scale = 1 / temperature."""
    learnable_temperature: bool = True
    """Learn the temperature (as CLIP's log logit scale); false keeps it fixed."""
    max_logit_scale: float = 100.0
    """The logit scale never exceeds this (CLIP's clamp)."""
    gather_distributed: bool = True
    """Under torch.distributed, use every rank's rows as negatives (gathered with gradients)."""
    local_loss: bool = False
    """Each rank scores only its own rows against the global batch (memory linear in the global batch, same
    loss and gradients) instead of global x global logits."""

    def __post_init__(self) -> None:
        """Raise LossError naming the first bad key (values still omegaconf.MISSING are skipped)."""
        temperature, cap = self.temperature, self.max_logit_scale
        if not is_missing(temperature) and not temperature > 0:
            raise LossError(f"temperature must be > 0, got {float(temperature)}")
        if not is_missing(cap) and not cap > 0:
            raise LossError(f"max_logit_scale must be > 0, got {float(cap)}")
        if not is_missing(temperature) and not is_missing(cap) and 1.0 / temperature > cap:
            raise LossError(
                f"temperature {float(temperature)} gives a logit scale of {1.0 / temperature:g}, above "
                f"max_logit_scale {float(cap)}; raise the temperature or the cap"
            )

    def build(self) -> ContrastiveLoss:
        """Return a ContrastiveLoss with these settings."""
        return ContrastiveLoss(self)


class ContrastiveLoss(nn.Module):
    """Symmetric InfoNCE with a learnable (or fixed) temperature and optional distributed negatives."""

    def __init__(self, config: ContrastiveLossConfig | None = None) -> None:
        super().__init__()
        self.config = config or ContrastiveLossConfig()
        log_scale = torch.tensor(math.log(1.0 / self.config.temperature))
        if self.config.learnable_temperature:
            self.log_logit_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_logit_scale", log_scale)

    @property
    def logit_scale(self) -> torch.Tensor:
        """The current logit scale (1 / temperature), capped at `max_logit_scale`, as a 0-d tensor."""
        return self.log_logit_scale.exp().clamp(max=self.config.max_logit_scale)

    def forward(self, a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Return the scalar symmetric InfoNCE loss of pairs (a[i], b[i]).

        a, b: (B, D) embeddings (normalized here). valid: optional (B,) bool, False rows are excluded
        from positives and negatives. The mean runs over valid rows of the global batch; with no valid
        row anywhere the loss is a zero that still reaches every input (so DDP sees all parameters).
        """
        if a.ndim != 2 or a.shape != b.shape:
            raise LossError(
                f"contrastive loss needs two (B, D) batches of one shape, got {tuple(a.shape)} "
                f"and {tuple(b.shape)}"
            )
        if valid is None:
            valid = torch.ones(a.shape[0], dtype=torch.bool, device=a.device)
        elif valid.shape != (a.shape[0],) or valid.dtype != torch.bool:
            raise LossError(
                f"contrastive loss `valid` must be a bool tensor of shape ({a.shape[0]},), "
                f"got {valid.dtype} {tuple(valid.shape)}"
            )
        if self.config.learnable_temperature:
            # Clamp the parameter itself (as CLIP does after each step) rather than the value in the
            # graph, so the gradient never dies at the cap. `.data` keeps autograd's version counter
            # untouched, which matters when one forward calls this loss several times (Matryoshka).
            self.log_logit_scale.data.clamp_(max=math.log(self.config.max_logit_scale))
        scale = self.log_logit_scale.exp()  # no clamp in the graph: it would zero the gradient at the cap

        a = F.normalize(a, dim=-1)  # (B, D)
        b = F.normalize(b, dim=-1)  # (B, D)
        _, world = distributed_world()
        if self.config.gather_distributed and world > 1:
            all_a, all_valid, offset = gather_with_grad(a, valid)  # (N, D), (N,)
            all_b, _, _ = gather_with_grad(b, valid)  # (N, D)
        else:
            all_a, all_b, all_valid, offset, world = a, b, valid, 0, 1
        num_valid = all_valid.sum().clamp(min=1)

        if self.config.local_loss and world > 1:
            rows_a, rows_b, row_valid = a, b, valid  # (B, D), (B, D), (B,)
            labels = offset + torch.arange(a.shape[0], device=a.device)  # (B,)
            norm = world / (2 * num_valid)
        else:
            rows_a, rows_b, row_valid = all_a, all_b, all_valid  # (N, D), (N, D), (N,)
            labels = torch.arange(all_a.shape[0], device=a.device)  # (N,)
            norm = 1 / (2 * num_valid)

        col_mask = ~all_valid[None, :]  # (1, N)
        logits_ab = (scale * rows_a @ all_b.T).masked_fill(col_mask, float("-inf"))  # (R, N)
        logits_ba = (scale * rows_b @ all_a.T).masked_fill(col_mask, float("-inf"))  # (R, N)
        # Invalid rows are dropped before the softmax: their own column is masked, so they have no
        # finite positive and would give inf.
        loss_ab = F.cross_entropy(logits_ab[row_valid], labels[row_valid], reduction="sum")
        loss_ba = F.cross_entropy(logits_ba[row_valid], labels[row_valid], reduction="sum")
        return (loss_ab + loss_ba) * norm
