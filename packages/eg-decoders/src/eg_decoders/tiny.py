"""TinyDecoderConfig and TinyDecoder: a plain pre-norm causal transformer, the baseline TRM is compared against."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from eg_decoders.base import DecoderOutput
from eg_decoders.checks import check_type
from eg_decoders.labels import answer_loss
from eg_decoders.layers import Block, KVCache, RMSNorm
from eg_decoders.prefix import take_text
from eg_decoders.small import SmallDecoder, check_small


@dataclass
class TinyDecoderConfig:
    """Plain pre-norm causal transformer baseline with the same tokenizer and interface as TRM."""

    type: str = "tiny"
    """The decoder kind, always tiny (names it in YAML and in a saved decoder_config.json)."""
    hidden_size: int = 256
    """Width of the token embeddings and of every block."""
    num_layers: int = 2
    """Transformer blocks (causal, pre-norm, SwiGLU feed-forward)."""
    num_heads: int = 4
    """Attention heads; hidden_size must divide by it."""
    mlp_ratio: float = 4.0
    """SwiGLU hidden width = int(hidden_size * mlp_ratio)."""
    max_seq_len: int = 512
    """Positions (prefix + question + answer) of the learned position embedding; longer sequences are refused.
    """
    dropout: float = 0.0
    """Dropout on the attention weights and after the attention and feed-forward sublayers (training only)."""
    prefix_dim: int = 0
    """Width of the prefix embeddings, projected to hidden_size by a `projector`; 0 = they already have
    hidden_size (no projector)."""
    projector: str = "mlp"
    """Kind of prefix projector: linear, or mlp (LLaVA-1.5 style: Linear, GELU, Linear)."""

    def __post_init__(self) -> None:
        """Raise DecoderError naming the first bad key."""
        check_type(self, "tiny")
        check_small(self)

    def build(self) -> TinyDecoder:
        """A fresh (randomly initialized) TinyDecoder with these settings."""
        return TinyDecoder(self)


class TinyDecoder(SmallDecoder):
    """num_layers pre-norm blocks applied once; same tokenizer, prefix handling and interface as TRM."""

    def __init__(self, config: TinyDecoderConfig) -> None:
        super().__init__(config)
        self.blocks = nn.ModuleList(
            Block(config.hidden_size, config.num_heads, config.mlp_ratio, config.dropout, post_norm=False)
            for _ in range(config.num_layers)
        )
        self.norm = RMSNorm(config.hidden_size)

    def _hidden(
        self, x: torch.Tensor, mask: torch.Tensor, cache: KVCache | None = None, start: int = 0
    ) -> torch.Tensor:
        for layer, block in enumerate(self.blocks):
            x = block(x, mask, cache, layer, start)
        return self.norm(x)  # (B, L, D)

    def _run(
        self, x: torch.Tensor, mask: torch.Tensor, text_index: torch.Tensor, labels: torch.Tensor | None
    ) -> DecoderOutput:
        logits = self.lm_head(take_text(self._hidden(x, mask), text_index))  # (B, T, V)
        if labels is None:
            return DecoderOutput(loss=None, logits=logits)
        loss = answer_loss(logits, labels)
        return DecoderOutput(loss=loss, logits=logits, step_losses=[loss], parts={"answer_ce": loss.detach()})

    def _last_logits(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self._hidden(x, mask)[:, -1])  # (B, V)

    def _cached_last_logits(
        self, x: torch.Tensor, mask: torch.Tensor, cache: KVCache, start: int
    ) -> torch.Tensor:
        return self.lm_head(self._hidden(x, mask, cache, start)[:, -1])  # (B, V)
