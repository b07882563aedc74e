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

`nested_losses` gives the loss at several prefix widths of the same embeddings (what Matryoshka needs) from
one gather and one pass over the width: the raw dot products at width d_k are those at d_(k-1) plus the
block d_(k-1)..d_k's, divided by the prefix norms, so the whole set costs about one full-width matmul
instead of one per width. `forward` is its one-width case. In the default full mode the b->a logits are the
a->b ones transposed (one matmul, softmax over rows and over columns), and invalid rows are removed before
the matmul (masking their columns with -inf and dropping their rows gives the same loss).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from eg_losses.distributed import distributed_world, gather_with_grad
from eg_losses.errors import LossError, is_missing

_EPS = 1e-12  # F.normalize's default eps: a norm below it divides as eps


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
        return self.nested_losses(a, b, [a.shape[-1]], valid)[0]

    def _scale(self) -> torch.Tensor:
        """The logit scale as it enters the graph (0-d), after clamping the parameter at the cap."""
        if self.config.learnable_temperature:
            # Clamp the parameter itself (as CLIP does after each step) rather than the value in the
            # graph, so the gradient never dies at the cap. `.data` keeps autograd's version counter
            # untouched, which matters when one forward calls this loss several times (Matryoshka).
            self.log_logit_scale.data.clamp_(max=math.log(self.config.max_logit_scale))
        return self.log_logit_scale.exp()  # no clamp in the graph: it would zero the gradient at the cap

    def nested_losses(
        self, a: torch.Tensor, b: torch.Tensor, dims: list[int], valid: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Return the loss at each prefix width d of `dims`: forward(a[:, :d], b[:, :d], valid) for each.

        a, b: (B, D); dims increasing within 1..D. One gather of the full-width rows (with gradients),
        then the logits of each width from the previous width's raw dot products plus one block's,
        scaled by running squared norms (the per-width normalization), so the set costs one matmul of the
        width dims[-1] (in the default full mode the b->a logits are the transpose of the a->b ones).
        Rows marked invalid are left out before the matmuls, which is what masking them does.
        """
        valid = _check_pair(a, b, valid)
        width = a.shape[1]
        if not dims or any(d < 1 for d in dims) or dims[-1] > width or sorted(set(dims)) != list(dims):
            raise LossError(f"nested_losses needs increasing dims within 1..{width}, got {list(dims)}")
        scale = self._scale()
        _, world = distributed_world()
        if self.config.gather_distributed and world > 1:
            both, all_valid, offset = gather_with_grad(torch.cat([a, b], dim=1), valid)  # (N, 2D), (N,)
            all_a, all_b = both[:, :width], both[:, width:]  # (N, D) each
        else:
            all_a, all_b, all_valid, offset, world = a, b, valid, 0, 1
        local = self.config.local_loss and world > 1
        # Normalizers as forward's: the valid rows of the whole global batch, both directions.
        norm = (world if local else 1) / (2 * all_valid.sum().clamp(min=1))
        if not bool(all_valid.all()):
            all_a, all_b = all_a[all_valid], all_b[all_valid]  # (Nv, D): columns (and rows) that take part
        if local:
            # this rank's valid rows, as positions among the kept columns (= their labels)
            position = all_valid.cumsum(0) - 1  # (N,)
            labels = position[offset : offset + a.shape[0]][valid]  # (Bv,)
            rows_a, rows_b = all_a[labels], all_b[labels]  # (Bv, D)
        sizes = [hi - lo for lo, hi in zip([0, *dims[:-1]], dims)]
        inv_a = _inverse_prefix_norms(all_a, dims)  # (Nv, K): 1 / |a[:, :d_k]|, as F.normalize clamps it
        inv_b = _inverse_prefix_norms(all_b, dims)  # (Nv, K)
        if local:
            pairs = [(rows_a, all_b, inv_a[labels], inv_b), (rows_b, all_a, inv_b[labels], inv_a)]
        else:  # the b->a logits are the a->b ones transposed: one matrix, softmax over rows and columns
            pairs = [(all_a, all_b, inv_a, inv_b)]
            labels = None
        dots: list[torch.Tensor | None] = [None] * len(pairs)
        totals = [torch.zeros((), device=a.device) for _ in dims]
        for side, (rows, cols, inv_rows, inv_cols) in enumerate(pairs):
            row_blocks, col_blocks = rows[:, : dims[-1]].split(sizes, 1), cols[:, : dims[-1]].split(sizes, 1)
            for k, (row_block, col_block) in enumerate(zip(row_blocks, col_blocks)):
                # raw dot products at width d_k: those at d_(k-1) plus this block's (fp32 sums)
                dots[side] = _add_dots(dots[side], row_block, col_block)  # (R, C)
                totals[k] = totals[k] + _ScaledInfoNCE.apply(
                    dots[side], scale * inv_rows[:, k], inv_cols[:, k], labels
                )
        return [total * norm for total in totals]


class _ScaledInfoNCE(torch.autograd.Function):
    """Summed cross-entropy of logits = row_scale[i] * dots[i, j] * col_scale[j], targets at `labels`.

    labels None (a square matrix): the targets are the diagonal and both directions are scored, over rows
    (a->b) and over columns (b->a). Written out because autograd's version keeps three (R, C) tensors per
    width and makes about twice the passes over them; this keeps the logits and recomputes the softmax.
    """

    @staticmethod
    def forward(ctx, dots, row_scale, col_scale, labels):  # (R, C), (R,), (C,), (R,) or None
        logits = dots * row_scale[:, None]
        logits.mul_(col_scale[None, :])  # (R, C)
        lse_rows = logits.logsumexp(1)  # (R,)
        if labels is None:
            lse_cols = logits.logsumexp(0)  # (C,)
            total = lse_rows.sum() + lse_cols.sum() - 2 * logits.diagonal().sum()
        else:
            lse_cols = None
            total = lse_rows.sum() - logits.gather(1, labels[:, None]).sum()
        ctx.save_for_backward(logits, row_scale, col_scale, lse_rows, lse_cols, labels)
        return total

    @staticmethod
    def backward(ctx, grad):  # grad: 0-d
        logits, row_scale, col_scale, lse_rows, lse_cols, labels = ctx.saved_tensors
        g = (logits - lse_rows[:, None]).exp_()  # (R, C) softmax over each row
        if labels is None:
            g.add_((logits - lse_cols[None, :]).exp_())  # + softmax over each column
            g.diagonal().sub_(2.0)
        else:
            g[torch.arange(g.shape[0], device=g.device), labels] -= 1.0
        weighted = (g * logits).mul_(grad)  # (R, C): d total / d log(row_scale[i] * col_scale[j])
        grad_row = weighted.sum(1).div_(row_scale)  # (R,)
        grad_col = weighted.sum(0).div_(col_scale)  # (C,)
        grad_dots = g.mul_((grad * row_scale)[:, None]).mul_(col_scale[None, :])  # (R, C)
        return grad_dots, grad_row, grad_col, None


def _add_dots(dots: torch.Tensor | None, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """dots + rows @ cols.T in float32 (rows (R, w), cols (C, w)); the first block alone when dots is None."""
    if dots is None:
        return (rows @ cols.T).float()
    if rows.dtype == torch.float32 and not torch.is_autocast_enabled(rows.device.type):
        return torch.addmm(dots, rows, cols.T)  # the sum inside the matmul: one pass less
    return dots + (rows @ cols.T).float()  # under autocast the block's matmul runs in its dtype


def _inverse_prefix_norms(x: torch.Tensor, dims: list[int]) -> torch.Tensor:
    """(N, K): 1 / max(|x[n, :d_k]|, eps) for each d_k of `dims`, what F.normalize divides by."""
    sizes = [hi - lo for lo, hi in zip([0, *dims[:-1]], dims)]
    squares = x[:, : dims[-1]].float().square()  # (N, d_K), float32 whatever the autocast dtype
    per_block = torch.stack([block.sum(1) for block in squares.split(sizes, 1)], 1)  # (N, K)
    return per_block.cumsum(1).clamp(min=_EPS**2).rsqrt()


def _check_pair(a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Raise LossError unless a, b are two (B, D) batches of one shape; return `valid` as (B,) bool."""
    if a.ndim != 2 or a.shape != b.shape:
        raise LossError(
            f"contrastive loss needs two (B, D) batches of one shape, got {tuple(a.shape)} "
            f"and {tuple(b.shape)}"
        )
    if valid is None:
        return torch.ones(a.shape[0], dtype=torch.bool, device=a.device)
    if valid.shape != (a.shape[0],) or valid.dtype != torch.bool:
        raise LossError(
            f"contrastive loss `valid` must be a bool tensor of shape ({a.shape[0]},), "
            f"got {valid.dtype} {tuple(valid.shape)}"
        )
    return valid
