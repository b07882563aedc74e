"""PrefixProjector: maps encoder tokens (B, P, D_enc) to decoder-width prefix embeddings (B, P, D_dec)."""

from __future__ import annotations

import torch
from torch import nn

from eg_decoders.errors import DecoderError

PROJECTOR_KINDS = ("linear", "mlp")  # the `projector` choices of every decoder config


class PrefixProjector(nn.Module):
    """Linear layer, or the LLaVA-1.5 style 2-layer MLP (Linear, GELU, Linear), from in_dim to out_dim."""

    def __init__(self, in_dim: int, out_dim: int, kind: str = "mlp") -> None:
        super().__init__()
        if kind not in PROJECTOR_KINDS:
            raise DecoderError(f"projector '{kind}' is unknown; use one of {list(PROJECTOR_KINDS)}")
        if in_dim <= 0 or out_dim <= 0:
            raise DecoderError(f"prefix_dim must be positive to build a projector, got {in_dim}")
        self.in_dim, self.out_dim, self.kind = in_dim, out_dim, kind
        if kind == "linear":
            self.net: nn.Module = nn.Linear(in_dim, out_dim)
        else:
            self.net = nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project (B, P, in_dim) -> (B, P, out_dim)."""
        if x.shape[-1] != self.in_dim:
            raise DecoderError(
                f"prefix_embeds width {x.shape[-1]} != the projector's prefix_dim {self.in_dim}; "
                "set prefix_dim to the encoder width"
            )
        return self.net(x)
