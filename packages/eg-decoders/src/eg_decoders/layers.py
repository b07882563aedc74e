"""Transformer pieces shared by the tiny decoders: RMSNorm, causal self-attention, SwiGLU, a block, masks,
and the key/value cache of incremental generation."""

from __future__ import annotations

from collections.abc import Hashable

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


class KVCache:
    """Keys and values of every attention call site, for incremental decoding of a batch.

    Positions 0..length-1 are cached. A call site (`site`: any hashable, e.g. (step, cycle, update,
    layer) for TRM) owns a (B, H, capacity, Dh) buffer for keys and one for values, allocated when first
    written. `valid` (B, capacity) marks real (not padded) positions. The decoder writes a chunk's valid
    mask at `length`, runs its trunk through `attend`, then advances `length` by the chunk.
    """

    def __init__(self, batch: int, capacity: int, device: torch.device) -> None:
        self.capacity = capacity
        self.length = 0
        self.valid = torch.zeros(batch, capacity, dtype=torch.bool, device=device)  # (B, C)
        self.keys: dict[Hashable, torch.Tensor] = {}
        self.values: dict[Hashable, torch.Tensor] = {}

    def num_valid(self) -> torch.Tensor:
        """(B,) count of valid cached positions per row."""
        return self.valid[:, : self.length].sum(-1)

    def chunk_mask(self, start: int, size: int) -> torch.Tensor:
        """Boolean SDPA mask (B, 1, size, start + size) of chunk rows start..start+size-1 over keys 0..end.

        Equal to those rows of `causal_attention_mask(valid[:, :start + size])`: valid keys up to the
        query's own position, and always the query itself.
        """
        end = start + size
        if end > self.capacity:
            raise ValueError(f"KV cache holds {self.capacity} positions, {end} requested")
        keys = torch.arange(end, device=self.valid.device)  # (E,)
        queries = torch.arange(start, end, device=self.valid.device)  # (S,)
        mask = (keys[None, :] <= queries[:, None])[None] & self.valid[:, None, :end]  # (B, S, E)
        mask = mask | (keys[None, :] == queries[:, None])[None]
        return mask[:, None]  # (B, 1, S, E)

    def attend(
        self,
        site: Hashable,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        start: int,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """Write k, v (B, H, S, Dh) at positions start..start+S of `site`; attend q over positions 0..start+S."""
        end = start + k.shape[2]
        if site not in self.keys:
            b, h, _, d = k.shape
            self.keys[site] = k.new_zeros(b, h, self.capacity, d)
            self.values[site] = v.new_zeros(b, h, self.capacity, d)
        keys, values = self.keys[site], self.values[site]
        keys[:, :, start:end] = k
        values[:, :, start:end] = v
        return F.scaled_dot_product_attention(q, keys[:, :, :end], values[:, :, :end], attn_mask=mask)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention through scaled_dot_product_attention with an explicit mask.

    With a `cache`, x holds positions start..start+S-1 only and attends to the cached ones before them.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        assert dim % num_heads == 0, f"hidden_size {dim} must be divisible by num_heads {num_heads}"
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.dropout = dropout

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        cache: KVCache | None = None,
        site: Hashable = None,
        start: int = 0,
    ) -> torch.Tensor:
        """x (B, L, D), mask (B, 1, L, L) -> (B, L, D); with a cache, mask is (B, 1, L, start + L)."""
        b, length, d = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        if cache is not None:
            y = cache.attend(site, q, k, v, start, mask)  # (B, H, L, D/H)
        else:
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

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        cache: KVCache | None = None,
        site: Hashable = None,
        start: int = 0,
    ) -> torch.Tensor:
        """(B, L, D) -> (B, L, D); `cache`, `site`, `start` as in CausalSelfAttention."""
        if self.post_norm:
            x = self.norm1(x + self.drop(self.attn(x, mask, cache, site, start)))
            return self.norm2(x + self.drop(self.mlp(x)))
        x = x + self.drop(self.attn(self.norm1(x), mask, cache, site, start))
        return x + self.drop(self.mlp(self.norm2(x)))
