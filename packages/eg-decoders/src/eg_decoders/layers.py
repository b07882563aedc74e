"""Transformer pieces shared by the tiny decoders: RMSNorm, causal self-attention, SwiGLU, a block, masks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize the last dimension of x."""
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def causal_attention_mask(valid: torch.Tensor) -> torch.Tensor:
    """Boolean SDPA mask (B, 1, L, L): query i sees valid keys j <= i, and always itself.

    Seeing itself keeps padded query rows finite (a left-padded row would otherwise see no key at all and
    softmax to NaN); those rows are never read, and real rows never see a padded key.
    """
    length = valid.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=valid.device).tril()  # (L, L)
    mask = causal[None] & valid.bool()[:, None, :]  # (B, L, L)
    mask = mask | torch.eye(length, dtype=torch.bool, device=valid.device)[None]
    return mask[:, None]  # (B, 1, L, L)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention through scaled_dot_product_attention with an explicit mask."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        assert dim % num_heads == 0, f"hidden_size {dim} must be divisible by num_heads {num_heads}"
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), mask (B, 1, L, L) -> (B, L, D)."""
        b, length, d = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, L, D/H)
        return self.out(y.transpose(1, 2).reshape(b, length, d))


class SwiGLU(nn.Module):
    """Gated MLP (as in LLaMA, HRM and TRM)."""

    def __init__(self, dim: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (B, L, D)."""
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    """Attention + SwiGLU with residuals; pre-norm, or post-norm as in TRM (keeps a recurrent state bounded)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, dropout: float, post_norm: bool) -> None:
        super().__init__()
        self.post_norm = post_norm
        self.norm1, self.norm2 = RMSNorm(dim), RMSNorm(dim)
        self.attn = CausalSelfAttention(dim, num_heads, dropout)
        self.mlp = SwiGLU(dim, mlp_ratio)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (B, L, D)."""
        if self.post_norm:
            x = self.norm1(x + self.drop(self.attn(x, mask)))
            return self.norm2(x + self.drop(self.mlp(x)))
        x = x + self.drop(self.attn(self.norm1(x), mask))
        return x + self.drop(self.mlp(self.norm2(x)))
