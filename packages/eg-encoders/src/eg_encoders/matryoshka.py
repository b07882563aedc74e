"""Matryoshka projection head: encoder width -> the largest Matryoshka (MRL) dim, nested prefixes.

`embed(x, dim)` keeps the first `dim` features and L2-normalizes them, so one projection serves every
Matryoshka dimension (the losses train each prefix to be a usable embedding on its own).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from eg_encoders.common import EncoderError, check_int, is_missing

MAX_MATRYOSHKA_DIM = 4096


@dataclass
class MatryoshkaConfig:
    """The Matryoshka projection head: pooled features to a max_dim embedding whose prefixes are embeddings
    too.

    Checked when constructed (EncoderError naming the key).
    """

    max_dim: int = 1024
    """The top Matryoshka dim, the width of the shared embedding space (1..4096)."""
    hidden_dim: int = 0
    """0 = one linear layer; > 0 = a 2-layer MLP (Linear, GELU, Linear) with this hidden width."""
    identity: bool = False
    """No head at all: the encoder's pooled vector is the embedding as it is, so its width must be max_dim
    (for encoders that project by themselves, e.g. CLIP's own image and text projections: how a CLIP model
    trains exactly as CLIP). Needs hidden_dim 0."""

    def __post_init__(self) -> None:
        """Raise EncoderError naming the first bad key (values still omegaconf.MISSING are skipped)."""
        check_int(self.max_dim, "max_dim", 1)
        if not is_missing(self.max_dim) and self.max_dim > MAX_MATRYOSHKA_DIM:
            raise EncoderError(f"max_dim must be in 1..{MAX_MATRYOSHKA_DIM}, got {self.max_dim}")
        check_int(self.hidden_dim, "hidden_dim", 0)
        if self.identity is True and not is_missing(self.hidden_dim) and self.hidden_dim:
            raise EncoderError(f"hidden_dim={self.hidden_dim}: identity has no head; set hidden_dim 0")

    def build(self, in_dim: int) -> MatryoshkaProjection:
        """A MatryoshkaProjection for inputs of width `in_dim`."""
        return MatryoshkaProjection(self, in_dim)


class MatryoshkaProjection(nn.Module):
    """Projects (B, in_dim) features to (B, max_dim) (or passes them through: identity); `embed` truncates and
    normalizes."""

    def __init__(self, config: MatryoshkaConfig, in_dim: int) -> None:
        super().__init__()
        if in_dim < 1:
            raise EncoderError(f"the projection's input width must be >= 1, got {in_dim}")
        self.config = config
        self.in_dim = in_dim
        self.max_dim = config.max_dim
        if config.identity:
            if in_dim != config.max_dim:
                raise EncoderError(
                    f"max_dim={config.max_dim} differs from the encoder's output width {in_dim}; with identity "
                    f"(no head) set max_dim to {in_dim}"
                )
            self.proj = nn.Identity()
        elif config.hidden_dim > 0:
            self.proj: nn.Module = nn.Sequential(
                nn.Linear(in_dim, config.hidden_dim), nn.GELU(), nn.Linear(config.hidden_dim, config.max_dim)
            )
        else:
            self.proj = nn.Linear(in_dim, config.max_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, in_dim) -> (B, max_dim), not normalized."""
        return self.proj(x)

    def embed(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """x (B, in_dim) -> (B, dim): the first `dim` projected features, L2-normalized."""
        return truncate_normalize(self.forward(x), dim)


def truncate_normalize(z: torch.Tensor, dim: int) -> torch.Tensor:
    """z (B, max_dim) -> (B, dim) L2-normalized prefix; use it to reuse one projection for several dims."""
    if not 1 <= dim <= z.shape[-1]:
        raise EncoderError(f"matryoshka dim {dim} must be in 1..{z.shape[-1]} (the projection's max_dim)")
    return F.normalize(z[..., :dim], dim=-1)
