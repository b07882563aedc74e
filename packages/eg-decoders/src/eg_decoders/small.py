"""Shared machinery of the byte-level tiny decoders (TRM and the baseline): embeddings, generation, saving."""

from __future__ import annotations

import abc
import dataclasses
import json
import os
from typing import Any

import torch
from torch import nn

from eg_decoders.base import Decoder, DecoderOutput, select_next_token
from eg_decoders.errors import DecoderError
from eg_decoders.layers import causal_attention_mask
from eg_decoders.tokenizer import ByteTokenizer

CONFIG_FILE = "decoder_config.json"
WEIGHTS_FILE = "model.pt"


class SmallDecoder(Decoder):
    """Byte tokenizer, token + learned position embeddings, prefix projector; subclasses supply the trunk."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        if config.hidden_size % config.num_heads != 0:
            raise DecoderError(
                f"decoder.hidden_size {config.hidden_size} must be divisible by decoder.num_heads {config.num_heads}"
            )
        self.config = config
        self.tokenizer = ByteTokenizer()
        self.tok_emb = nn.Embedding(self.tokenizer.vocab_size, config.hidden_size)
        self.pos_emb = nn.Embedding(config.max_seq_len, config.hidden_size)
        self.lm_head = nn.Linear(config.hidden_size, self.tokenizer.vocab_size, bias=False)
        self.projector = self._build_projector(config.prefix_dim, config.projector)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_id

    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def max_length(self) -> int:
        return self.config.max_seq_len

    def prompt_ids(self, question: str) -> list[int]:
        return self.tokenizer.prompt_ids(question)

    def answer_ids(self, answer: str) -> list[int]:
        return self.tokenizer.answer_ids(answer)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def num_parameters(self) -> int:
        """Total parameter count (projector included)."""
        return sum(p.numel() for p in self.parameters())

    def _embed(
        self,
        prefix: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        prefix_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Token + position embeddings of [prefix | text]: x (B, L, D), attention mask (B, 1, L, L), P."""
        x = self.tok_emb(input_ids)  # (B, T, D)
        valid = attention_mask.bool()
        num_prefix = 0
        if prefix is not None:
            num_prefix = prefix.shape[1]
            if prefix_mask is None:
                prefix_mask = torch.ones(prefix.shape[:2], dtype=torch.bool, device=prefix.device)
            x = torch.cat([prefix.to(x.dtype), x], dim=1)  # (B, P + T, D)
            valid = torch.cat([prefix_mask.bool(), valid], dim=1)
        # positions count valid tokens, so a left-padded prompt gets the same positions as an unpadded one
        positions = (valid.long().cumsum(-1) - 1).clamp(min=0)  # (B, L)
        if int(positions.max()) >= self.config.max_seq_len:
            raise DecoderError(
                f"sequence of {int(positions.max()) + 1} positions exceeds decoder.max_seq_len "
                f"{self.config.max_seq_len}; raise max_seq_len or shorten prefix/question/answer"
            )
        return x + self.pos_emb(positions), causal_attention_mask(valid), num_prefix

    @abc.abstractmethod
    def _run(
        self, x: torch.Tensor, mask: torch.Tensor, num_prefix: int, labels: torch.Tensor | None
    ) -> DecoderOutput:
        """The trunk: embedded sequence (B, L, D) -> text logits (and losses when labels are given)."""

    @abc.abstractmethod
    def _last_logits(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, V) at the last position, for generation."""

    def forward(
        self,
        prefix_embeds: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        prefix_mask: torch.Tensor | None = None,
    ) -> DecoderOutput:
        """prefix_embeds (B, P, prefix_dim) or None, input_ids/attention_mask/labels (B, T) -> DecoderOutput."""
        x, mask, num_prefix = self._embed(
            self.project_prefix(prefix_embeds), input_ids, attention_mask, prefix_mask
        )
        return self._run(x, mask, num_prefix, labels)

    @torch.no_grad()
    def generate(
        self,
        prefix_embeds: torch.Tensor | None,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor | None = None,
        max_new_tokens: int = 32,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """New tokens (B, N <= max_new_tokens) after left-padded prompts; pad after each row's eos.

        Recomputes the whole sequence every step (no KV cache): TRM's y and z states are re-refined
        at every position anyway, and these models are tiny.
        """
        was_training = self.training
        self.eval()
        prefix = self.project_prefix(prefix_embeds)
        ids = prompt_ids
        mask = torch.ones_like(prompt_ids) if prompt_mask is None else prompt_mask.long()
        finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        new_tokens = []
        for _ in range(max_new_tokens):
            x, attn, _ = self._embed(prefix, ids, mask, None)
            logits = self._last_logits(x, attn)  # (B, V)
            token = select_next_token(logits, do_sample, temperature, top_k, top_p, generator)
            token = token.masked_fill(finished, self.pad_id)
            new_tokens.append(token)
            finished |= token == self.eos_id
            ids = torch.cat([ids, token[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(token[:, None])], dim=1)
            if bool(finished.all()):
                break
        self.train(was_training)
        if not new_tokens:
            return prompt_ids.new_zeros((prompt_ids.shape[0], 0))
        return self._finish_generation(torch.stack(new_tokens, dim=1))

    def save(self, path: str) -> None:
        """Write decoder_config.json and model.pt (the full state dict) into directory path."""
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, CONFIG_FILE), "w") as f:
            json.dump(dataclasses.asdict(self.config), f, indent=2)
        torch.save(self.state_dict(), os.path.join(path, WEIGHTS_FILE))

    @classmethod
    def load(cls, path: str, config: Any) -> SmallDecoder:
        """Rebuild a decoder from config and the model.pt that save() wrote into directory path."""
        file = os.path.join(path, WEIGHTS_FILE)
        if not os.path.isfile(file):
            raise DecoderError(f"{file} not found; point at a directory written by decoder.save()")
        decoder = cls(config)
        decoder.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
        return decoder
