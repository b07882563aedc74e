"""Matryoshka representation learning (MRL): one pairwise loss applied at several nested prefix widths.

The first d coordinates of an embedding are trained to work on their own, for each d in `dims`: both
batches are truncated to d, re-normalized, and handed to the wrapped loss. The total is the weighted
sum over the dims used this step: all of them, one drawn at random (`sample_single_mrl_dim`), or k
drawn at random (`num_sampled_dims`). Draws come from the module's own seeded generator, whose state
is part of the module's state_dict, so a resumed run draws the same dims as an uninterrupted one and
every rank (same seed, same number of steps) draws the same dims.

Wrapping a `ContrastiveLoss`, the dims are scored in one fused pass (`ContrastiveLoss.nested_losses`: one
gather, logits built up block by block over the width), equal to the per-dim loop to float rounding; any
other loss gets the per-dim loop. `losses_at` scores any set of dims, so an application that also uses the
full-width loss on its own (CLIP's term beside MRL's) takes it from the same pass.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from eg_losses.contrastive import ContrastiveLoss
from eg_losses.errors import LossError, is_missing

DEFAULT_MRL_DIMS = [128, 256, 512, 1024, 2048, 4096]


@dataclass
class MatryoshkaLossConfig:
    """Settings of `MatryoshkaLoss`; checked when constructed (LossError naming the key).

    What depends on the embedding width (dims above it, defaults below it, one weight per default dim,
    num_sampled_dims against the default dims) is checked by `build` / `resolve_mrl_dims`.
    """

    dims: list[int] | None = None
    """Nested prefix widths scored, increasing; None = DEFAULT_MRL_DIMS below the embedding width, then the
    width."""
    weights: list[float] | None = None
    """One weight per dim; None = 1.0 each."""
    sample_single_mrl_dim: bool = False
    """Score one dim per step, drawn at random, instead of all of them."""
    num_sampled_dims: int = 0
    """k > 0: k dims per step, drawn at random; 0 = every dim (or one, with sample_single_mrl_dim)."""
    seed: int = 0
    """Seed of the module's generator that draws the dims (its state is saved in the state_dict)."""

    def __post_init__(self) -> None:
        """Raise LossError naming the first bad key (values still omegaconf.MISSING are skipped)."""
        if self.dims is not None and not is_missing(self.dims):
            check_mrl_dims(self.dims)
        num_dims = None if self.dims is None or is_missing(self.dims) else len(self.dims)
        if self.weights is not None and not is_missing(self.weights):
            check_mrl_weights(self.weights, num_dims)
        k = self.num_sampled_dims
        if is_missing(k):
            return
        if k < 0:
            raise LossError(f"num_sampled_dims must be >= 0 (0 = every dim), got {k}")
        if num_dims is not None and k > num_dims:
            raise LossError(f"num_sampled_dims must be within 0..{num_dims} (the number of dims), got {k}")
        if self.sample_single_mrl_dim is True and k not in (0, 1):
            raise LossError(
                f"num_sampled_dims is {k} and sample_single_mrl_dim is set; choose one of the two"
            )

    def build(self, loss: Callable[..., torch.Tensor], embed_dim: int) -> MatryoshkaLoss:
        """Return a MatryoshkaLoss applying `loss` at these nested dims of `embed_dim`-wide embeddings."""
        return MatryoshkaLoss(loss, embed_dim, self)


def check_mrl_dims(dims: list[int]) -> None:
    """Raise LossError unless `dims` is a non-empty increasing list of distinct integers >= 1."""
    dims = list(dims)
    if not dims:
        raise LossError("dims is empty; list at least one dim, or leave it unset (null) for the defaults")
    if any(not isinstance(d, int) or isinstance(d, bool) or d < 1 for d in dims):
        raise LossError(f"dims must all be integers >= 1, got {dims}")
    if any(b <= a for a, b in itertools.pairwise(dims)):
        raise LossError(f"dims must be increasing, each dim listed once; got {dims}")


def check_mrl_weights(weights: list[float], num_dims: int | None) -> None:
    """Raise LossError unless every weight is >= 0 and (when known) there is one per dim."""
    weights = list(weights)
    if any(not w >= 0 for w in weights):
        raise LossError(f"weights must all be >= 0, got {weights}")
    if num_dims is not None and len(weights) != num_dims:
        raise LossError(f"weights has {len(weights)} entries for {num_dims} dims; give one weight per dim")


def resolve_mrl_dims(dims: list[int] | None, embed_dim: int) -> list[int]:
    """Return the nested dims for embeddings of width `embed_dim`, or raise LossError.

    `dims` None gives DEFAULT_MRL_DIMS below `embed_dim`, then `embed_dim`. A given list must be
    increasing, distinct, >= 1 and at most `embed_dim` (the message starts with "dims"). Pure: an
    application can call it at config load to check its dims against its projection width.
    """
    if embed_dim < 1:
        raise LossError(f"embed_dim must be >= 1, got {embed_dim}")
    if dims is None:
        return [d for d in DEFAULT_MRL_DIMS if d < embed_dim] + [embed_dim]
    dims = list(dims)
    check_mrl_dims(dims)
    if dims[-1] > embed_dim:
        raise LossError(
            f"dims {dims} go above the embedding dim {embed_dim}; drop the larger ones or widen the embedding"
        )
    return dims


class MatryoshkaLoss(nn.Module):
    """Apply a pairwise loss `loss(a, b, **kwargs) -> scalar` at nested prefix widths of the embeddings."""

    def __init__(
        self,
        loss: Callable[..., torch.Tensor],
        embed_dim: int,
        config: MatryoshkaLossConfig | None = None,
    ) -> None:
        super().__init__()
        self.config = config or MatryoshkaLossConfig()
        self.loss = loss  # an nn.Module (e.g. ContrastiveLoss) is registered, so its temperature trains
        self.embed_dim = embed_dim
        self.dims = resolve_mrl_dims(self.config.dims, embed_dim)
        weights = self.config.weights
        if weights is None:
            weights = [1.0] * len(self.dims)
        check_mrl_weights(weights, len(self.dims))
        self.weights = [float(w) for w in weights]
        k = self.config.num_sampled_dims
        if k > len(self.dims):
            raise LossError(
                f"num_sampled_dims must be within 0..{len(self.dims)} (the number of dims "
                f"{self.dims}), got {k}"
            )
        self.generator = torch.Generator().manual_seed(self.config.seed)

    def select_dims(self) -> list[int]:
        """Return the dims to use this step (increasing), advancing the generator in the sampling modes."""
        k = 1 if self.config.sample_single_mrl_dim else self.config.num_sampled_dims
        if k == 0:
            return list(self.dims)
        picked = torch.randperm(len(self.dims), generator=self.generator)[:k]
        return [self.dims[i] for i in sorted(picked.tolist())]

    def forward_with_parts(
        self, a: torch.Tensor, b: torch.Tensor, **kwargs: Any
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Return (weighted total loss, {dim: unweighted loss at that dim}) for this step's dims.

        a, b: (B, embed_dim). kwargs (e.g. `valid`) go to the wrapped loss unchanged.
        """
        parts = self.losses_at(a, b, self.select_dims(), **kwargs)
        return self.weighted_sum(parts), parts

    def weighted_sum(self, parts: dict[int, torch.Tensor]) -> torch.Tensor:
        """Sum of weight(d) * parts[d] over the dims of `parts` (each one of `dims`), in increasing order."""
        weight_of = dict(zip(self.dims, self.weights))
        total = next(iter(parts.values())).new_zeros(())
        for d in sorted(parts):
            total = total + weight_of[d] * parts[d]
        return total

    def losses_at(
        self, a: torch.Tensor, b: torch.Tensor, dims: list[int], **kwargs: Any
    ) -> dict[int, torch.Tensor]:
        """Return {d: unweighted wrapped loss at prefix width d} for each d of `dims` (any widths 1..embed_dim).

        a, b: (B, embed_dim). A wrapped ContrastiveLoss scores all of them in one fused pass; any other loss
        is called once per dim on the re-normalized prefixes. Draws nothing from the generator.
        """
        if a.shape[-1] != self.embed_dim or b.shape[-1] != self.embed_dim:
            raise LossError(
                f"matryoshka loss was built for embed_dim {self.embed_dim}, got embeddings of width "
                f"{a.shape[-1]} and {b.shape[-1]}"
            )
        dims = sorted(set(dims))
        if isinstance(self.loss, ContrastiveLoss):
            return dict(zip(dims, self.loss.nested_losses(a, b, dims, **kwargs)))
        parts: dict[int, torch.Tensor] = {}
        for d in dims:
            a_d = F.normalize(a[..., :d], dim=-1)  # (B, d)
            b_d = F.normalize(b[..., :d], dim=-1)  # (B, d)
            parts[d] = self.loss(a_d, b_d, **kwargs)
        return parts

    def forward(self, a: torch.Tensor, b: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Return the weighted sum of the wrapped loss over this step's dims (a scalar)."""
        return self.forward_with_parts(a, b, **kwargs)[0]

    def get_extra_state(self) -> dict[str, torch.Tensor]:
        """Save the dim-drawing generator with the module, for exact resume."""
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the generator saved by `get_extra_state`."""
        self.generator.set_state(state["generator"])
