"""TinyDecoder: a plain pre-norm causal transformer, the baseline TRM is compared against."""

from __future__ import annotations

import torch
from torch import nn

from eg_decoders.base import DecoderOutput
from eg_decoders.config import TinyDecoderConfig
from eg_decoders.labels import answer_loss
from eg_decoders.layers import Block, KVCache, RMSNorm
from eg_decoders.small import SmallDecoder


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
        self, x: torch.Tensor, mask: torch.Tensor, num_prefix: int, labels: torch.Tensor | None
    ) -> DecoderOutput:
        logits = self.lm_head(self._hidden(x, mask)[:, num_prefix:])  # (B, T, V)
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
