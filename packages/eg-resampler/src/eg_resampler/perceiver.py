"""Perceiver Resampler (Flamingo): a variable-length, masked token sequence -> a fixed number of latents.

A set of learned latent vectors reads the input through `depth` layers. In each layer the latents
(pre-normed) attend to the concatenation [inputs; latents] (keys and values), then pass through a
feed-forward; both are residual. Padded input positions are removed with a key-padding mask, so a
sequence padded with anything gives exactly the output of the unpadded sequence. Inputs of a width
other than `dim` are projected first. Optional learned media (time/frame) embeddings tell up to
`max_num_media` images or frames apart when the input is (B, M, T, D_in).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from eg_resampler.errors import ResamplerError, is_missing


@dataclass
class PerceiverResamplerConfig:
    """Settings of `PerceiverResampler`; checked when constructed (ResamplerError naming the key)."""

    dim: int = 512
    """Width of the latents and of the output."""
    depth: int = 2
    """Number of (attention, feed-forward) layers."""
    num_latents: int = 64
    """Output tokens per sample."""
    heads: int = 8
    """Attention heads."""
    dim_head: int = 64
    """Width of each attention head (the attention's inner width is heads * dim_head)."""
    ff_mult: int = 4
    """Feed-forward hidden width = ff_mult * dim."""
    input_dim: int | None = None
    """Width of the inputs, projected to dim first when it differs; None = dim (no projection)."""
    max_num_media: int | None = None
    """Learned media/frame embeddings for inputs of up to this many images or frames, (B, M, T, D); None =
    none."""
    dropout: float = 0.0
    """Dropout on the attention weights and the feed-forward hidden layer."""

    def __post_init__(self) -> None:
        """Raise ResamplerError naming the first bad key (values still omegaconf.MISSING are skipped)."""
        for key in (
            "dim",
            "depth",
            "num_latents",
            "heads",
            "dim_head",
            "ff_mult",
            "input_dim",
            "max_num_media",
        ):
            value = getattr(self, key)
            if value is None and key in ("input_dim", "max_num_media"):
                continue
            if is_missing(value):
                continue
            if not isinstance(value, int) or isinstance(value, bool):
                raise ResamplerError(f"{key} must be an integer, got {value!r}")
            if value < 1:
                raise ResamplerError(f"{key} must be >= 1, got {value}")
        if not is_missing(self.dropout) and not 0.0 <= self.dropout < 1.0:
            raise ResamplerError(f"dropout must be in [0, 1), got {self.dropout}")

    def build(self) -> PerceiverResampler:
        """Return a PerceiverResampler with these settings."""
        return PerceiverResampler(self)


class PerceiverAttention(nn.Module):
    """Latents attend to [inputs; latents]; the input part of the keys is masked where padded."""

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.dropout = dropout
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, N, D), latents (B, L, D), mask (B, N) bool True=valid -> update for latents (B, L, D)."""
        x = self.norm_media(x)
        latents = self.norm_latents(latents)
        b, num_latents, _ = latents.shape
        q = self.to_q(latents)  # (B, L, H*Dh)
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)  # (B, N+L, H*Dh) each

        def split_heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, t.shape[1], self.heads, -1).transpose(1, 2)  # (B, H, S, Dh)

        # Latent keys are always valid, so no query row is fully masked (no NaN from the softmax).
        key_mask = torch.cat([mask, mask.new_ones(b, num_latents)], dim=1)  # (B, N+L)
        out = F.scaled_dot_product_attention(
            split_heads(q),
            split_heads(k),
            split_heads(v),
            attn_mask=key_mask[:, None, None, :],  # (B, 1, 1, N+L)
            dropout_p=self.dropout if self.training else 0.0,
        )  # (B, H, L, Dh)
        return self.to_out(out.transpose(1, 2).reshape(b, num_latents, -1))  # (B, L, D)


class FeedForward(nn.Module):
    """Pre-norm GELU MLP."""

    def __init__(self, dim: int, mult: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, mult * dim, bias=False),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(mult * dim, dim, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, L, D) -> (B, L, D)."""
        return self.net(x)


class PerceiverResampler(nn.Module):
    """Resample (B, T, D_in) or (B, M, T, D_in) inputs with a key-padding mask to (B, num_latents, dim)."""

    def __init__(self, config: PerceiverResamplerConfig) -> None:
        super().__init__()
        self.config = config
        dim, dropout = config.dim, config.dropout
        self.input_dim = config.input_dim or dim
        self.input_proj = nn.Linear(self.input_dim, dim) if self.input_dim != dim else nn.Identity()
        self.latents = nn.Parameter(torch.randn(config.num_latents, dim) * 0.02)  # (L, D)
        self.media_embed = (
            nn.Parameter(torch.randn(config.max_num_media, dim) * 0.02) if config.max_num_media else None
        )  # (M, D)
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    PerceiverAttention(dim, config.heads, config.dim_head, dropout),
                    FeedForward(dim, config.ff_mult, dropout),
                ]
            )
            for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Return the latents (B, num_latents, dim) after reading x.

        x: (B, T, D_in), or (B, M, T, D_in) for M media/frames of T tokens each.
        mask: bool of x's shape without the last axis, True on valid tokens; None: all valid.
        """
        if x.ndim not in (3, 4) or x.shape[-1] != self.input_dim:
            raise ResamplerError(
                f"resampler input must be (B, T, {self.input_dim}) or (B, M, T, {self.input_dim}), "
                f"got {tuple(x.shape)}; set the config's input_dim to the input width"
            )
        if mask is None:
            mask = torch.ones(x.shape[:-1], dtype=torch.bool, device=x.device)
        if mask.shape != x.shape[:-1] or mask.dtype != torch.bool:
            raise ResamplerError(
                f"resampler mask must be bool of shape {tuple(x.shape[:-1])}, "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )
        if x.ndim == 3:
            x, mask = x[:, None], mask[:, None]  # (B, 1, T, D_in), (B, 1, T)
        b, num_media = x.shape[:2]
        x = self.input_proj(x)  # (B, M, T, D)
        if self.media_embed is not None:
            if num_media > self.media_embed.shape[0]:
                raise ResamplerError(
                    f"resampler got {num_media} media per sample, above its "
                    f"max_num_media={self.media_embed.shape[0]}"
                )
            x = x + self.media_embed[:num_media, None, :]  # (M, 1, D) broadcast over tokens
        x = x.flatten(1, 2)  # (B, M*T, D)
        mask = mask.flatten(1, 2)  # (B, M*T)

        latents = self.latents.expand(b, -1, -1)  # (B, L, D)
        for attention, feed_forward in self.layers:
            latents = latents + attention(x, latents, mask)
            latents = latents + feed_forward(latents)
        return self.norm(latents)  # (B, L, D)
