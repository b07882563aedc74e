"""Pooling of a masked token sequence (B, N, D) into one vector (B, D): cls, masked mean, attention, or none.

Attention pooling uses learnable queries (one or more) that cross-attend over the valid tokens with
multi-head attention; the per-query outputs are averaged into the pooled vector, so every query drives
the result and receives gradient. Padding tokens (mask False) never contribute to any pooling type.
`type: none` builds no module at all: the encoder then returns tokens only (`EncoderOutput.pooled` is
None), for a model that reads the tokens with something else (e.g. a Perceiver resampler).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from eg_encoders.common import EncoderError, check_choice, check_int, is_missing

POOLING_TYPES = ("cls", "mean", "attention", "none")


@dataclass
class PoolingConfig:
    """How an encoder pools its tokens; checked when constructed (EncoderError naming the key)."""

    type: str = "mean"
    """cls (first token), mean (mean of valid tokens), attention (learnable queries) or none (no pooling: the
    encoder returns tokens and `pooled=None`)."""
    num_queries: int = 1
    """Attention pooling only: learnable queries; their outputs are averaged into the pooled vector."""
    num_heads: int = 8
    """Attention pooling only: heads; the token width must divide by it (checked when built)."""

    def __post_init__(self) -> None:
        """Raise EncoderError naming the first bad key (values still omegaconf.MISSING are skipped)."""
        check_choice(self.type, POOLING_TYPES, "type")
        check_int(self.num_queries, "num_queries", 1)
        check_int(self.num_heads, "num_heads", 1)

    def build(self, dim: int) -> nn.Module | None:
        """The pooling module for tokens of width `dim`, or None for type "none"."""
        if self.type == "none":
            return None
        if self.type == "cls":
            return ClsPooling()
        if self.type == "mean":
            return MeanPooling()
        if not is_missing(self.num_heads) and dim % self.num_heads != 0:
            raise EncoderError(
                f"num_heads={self.num_heads} must divide the token width {dim}; pick a divisor of {dim}"
            )
        return AttentionPooling(dim, self.num_queries, self.num_heads)


class ClsPooling(nn.Module):
    """Takes the first token: the class token of ViTs and BERT; the first frame for Whisper."""

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """tokens (B, N, D), mask (B, N) -> (B, D)."""
        return tokens[:, 0]


class MeanPooling(nn.Module):
    """Mean of the valid tokens only."""

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """tokens (B, N, D), mask (B, N) -> (B, D)."""
        weights = mask.to(tokens.dtype).unsqueeze(-1)  # (B, N, 1)
        count = weights.sum(dim=1).clamp_min(1.0)  # (B, 1)
        return (tokens * weights).sum(dim=1) / count


class AttentionPooling(nn.Module):
    """Learnable queries cross-attend over the valid tokens; the query outputs are averaged.

    `forward_queries` gives the per-query outputs (B, Q, D) for callers that want several vectors.
    """

    def __init__(self, dim: int, num_queries: int = 1, num_heads: int = 8) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_queries, dim) * dim**-0.5)  # (Q, D)
        self.norm_tokens = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm_out = nn.LayerNorm(dim)

    def forward_queries(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """tokens (B, N, D), mask (B, N) -> (B, Q, D), one output per query."""
        keys = self.norm_tokens(tokens)  # (B, N, D)
        queries = self.queries.unsqueeze(0).expand(tokens.shape[0], -1, -1).to(keys.dtype)  # (B, Q, D)
        out, _ = self.attention(queries, keys, keys, key_padding_mask=~mask, need_weights=False)
        return self.norm_out(out)  # (B, Q, D)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """tokens (B, N, D), mask (B, N) -> (B, D)."""
        return self.forward_queries(tokens, mask).mean(dim=1)
