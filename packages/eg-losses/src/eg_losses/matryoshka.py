"""Matryoshka representation learning (MRL): one pairwise loss applied at several nested prefix widths.

The first d coordinates of an embedding are trained to work on their own, for each d in `dims`: both
batches are truncated to d, re-normalized, and handed to the wrapped loss. The total is the weighted
sum over the dims used this step: all of them, one drawn at random (`sample_single_mrl_dim`), or k
drawn at random (`num_sampled_dims`). Draws come from the module's own seeded generator, whose state
is part of the module's state_dict, so a resumed run draws the same dims as an uninterrupted one and
every rank (same seed, same number of steps) draws the same dims.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from eg_losses.errors import LossError

DEFAULT_MRL_DIMS = [128, 256, 512, 1024, 2048, 4096]


@dataclass
class MatryoshkaLossConfig:
    """Settings of `MatryoshkaLoss`."""

    dims: list[int] | None = None  # None: DEFAULT_MRL_DIMS below the embedding dim, then the embedding dim
    weights: list[float] | None = None  # one per dim; None: 1.0 each
    sample_single_mrl_dim: bool = False  # one random dim per step
    num_sampled_dims: int = 0  # k > 0: k random dims per step; 0: every dim (or one, see above)
    seed: int = 0  # seed of the generator that draws the dims


def resolve_mrl_dims(dims: list[int] | None, embed_dim: int) -> list[int]:
    """Return the validated nested dims for an embedding of width `embed_dim` (see MatryoshkaLossConfig)."""
    if embed_dim < 1:
        raise LossError(f"matryoshka embed_dim must be >= 1, got {embed_dim}")
    if dims is None:
        return [d for d in DEFAULT_MRL_DIMS if d < embed_dim] + [embed_dim]
    dims = list(dims)
    if not dims:
        raise LossError("matryoshka.dims is empty; list at least one dim, or leave it unset for the defaults")
    if any(d < 1 for d in dims):
        raise LossError(f"matryoshka.dims must all be >= 1, got {dims}")
    if len(set(dims)) != len(dims):
        raise LossError(f"matryoshka.dims has duplicates: {dims}; list each dim once")
    if dims != sorted(dims):
        raise LossError(f"matryoshka.dims must be in increasing order, got {dims}")
    if dims[-1] > embed_dim:
        raise LossError(
            f"matryoshka.dims {dims} go above the embedding dim {embed_dim}; drop the larger ones"
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
        if len(weights) != len(self.dims):
            raise LossError(
                f"matryoshka.weights has {len(weights)} entries for {len(self.dims)} dims "
                f"{self.dims}; give one weight per dim"
            )
        if any(w < 0 for w in weights):
            raise LossError(f"matryoshka.weights must be >= 0, got {list(weights)}")
        self.weights = [float(w) for w in weights]
        k = self.config.num_sampled_dims
        if self.config.sample_single_mrl_dim and k not in (0, 1):
            raise LossError(
                f"matryoshka.sample_single_mrl_dim is set and matryoshka.num_sampled_dims is {k}; "
                "choose one of the two"
            )
        if not 0 <= k <= len(self.dims):
            raise LossError(
                f"matryoshka.num_sampled_dims must be within 0..{len(self.dims)} "
                f"(the number of dims), got {k}"
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
        if a.shape[-1] != self.embed_dim or b.shape[-1] != self.embed_dim:
            raise LossError(
                f"matryoshka loss was built for embed_dim {self.embed_dim}, got embeddings of width "
                f"{a.shape[-1]} and {b.shape[-1]}"
            )
        weight_of = dict(zip(self.dims, self.weights))
        parts: dict[int, torch.Tensor] = {}
        total = a.new_zeros(())
        for d in self.select_dims():
            a_d = F.normalize(a[..., :d], dim=-1)  # (B, d)
            b_d = F.normalize(b[..., :d], dim=-1)  # (B, d)
            parts[d] = self.loss(a_d, b_d, **kwargs)
            total = total + weight_of[d] * parts[d]
        return total, parts

    def forward(self, a: torch.Tensor, b: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Return the weighted sum of the wrapped loss over this step's dims (a scalar)."""
        return self.forward_with_parts(a, b, **kwargs)[0]

    def get_extra_state(self) -> dict[str, torch.Tensor]:
        """Save the dim-drawing generator with the module, for exact resume."""
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the generator saved by `get_extra_state`."""
        self.generator.set_state(state["generator"])
