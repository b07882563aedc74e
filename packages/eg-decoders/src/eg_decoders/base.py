"""The decoder interface every kind implements (TRM, tiny baseline, Qwen), plus token selection for generation.

Sequence layout for every kind: [prefix (P positions) | text (T positions)] for a QA pair, and for a
conversation the prefix spliced in at `prefix_at` (the start of the turn that holds the media; see
prefix.py). Logits and labels cover the text positions only; the prefix is conditioning, never a target.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from eg_decoders.chat import ChatTokens, build_chat_batch, build_chat_prompts
from eg_decoders.errors import DecoderError
from eg_decoders.labels import build_answer_only_batch, build_prompt_batch
from eg_decoders.projector import PrefixProjector

CONFIG_FILE = "decoder_config.json"  # what save() writes and load_decoder() reads: the config as a dict


@dataclass
class DecoderOutput:
    """What forward returns: loss (None without labels), text logits (B, T, V), per-step losses, named parts."""

    loss: torch.Tensor | None
    logits: torch.Tensor
    step_losses: list[torch.Tensor] = field(default_factory=list)
    parts: dict[str, torch.Tensor] = field(default_factory=dict)


def select_next_token(
    logits: torch.Tensor,
    do_sample: bool,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row from logits (B, V): argmax, or sampling with temperature / top-k / top-p."""
    if not do_sample:
        return logits.argmax(-1)
    if temperature <= 0:
        raise DecoderError(f"temperature must be > 0 when sampling, got {temperature}")
    logits = logits.float() / temperature
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative - sorted_logits.softmax(-1) > top_p  # keep the smallest set reaching top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class Decoder(nn.Module, abc.ABC):
    """A causal decoder conditioned on prefix embeddings, with its own tokenizer and answer-only loss."""

    projector: PrefixProjector | None

    def _build_projector(self, prefix_dim: int, kind: str) -> PrefixProjector | None:
        """A PrefixProjector from prefix_dim to hidden_size, or None when prefix_dim is 0 (already projected)."""
        return PrefixProjector(prefix_dim, self.hidden_size, kind) if prefix_dim > 0 else None

    @property
    @abc.abstractmethod
    def hidden_size(self) -> int:
        """Width of the decoder's token embeddings: the prefix projector's output size."""

    @property
    @abc.abstractmethod
    def pad_id(self) -> int:
        """Token id used for padding."""

    @property
    @abc.abstractmethod
    def eos_id(self) -> int:
        """Token id that ends an answer (generation stops there)."""

    @abc.abstractmethod
    def prompt_ids(self, question: str) -> list[int]:
        """Token ids of the prompt that precedes an answer (chat template where the decoder has one)."""

    @abc.abstractmethod
    def answer_ids(self, answer: str) -> list[int]:
        """Token ids of an answer, ending with eos."""

    @abc.abstractmethod
    def chat_tokens(
        self, messages: Sequence[dict[str, Any]], media_turn: int = 0, generation: bool = False
    ) -> ChatTokens:
        """A conversation rendered for this decoder (chat template, or the plain role format): ids, which
        are supervised (the assistant turns), where the media prefix goes (see chat.py)."""

    @abc.abstractmethod
    def decode(self, ids: list[int]) -> str:
        """Text of generated ids, stopping at eos and dropping special tokens."""

    @abc.abstractmethod
    def save(self, path: str) -> None:
        """Write everything needed to rebuild this decoder with `load_decoder(path)`."""

    @abc.abstractmethod
    def load_weights(self, path: str) -> None:
        """Load the weights save() wrote into path (load_decoder builds from the saved config, then this)."""

    @property
    def max_length(self) -> int:
        """Longest text (question + answer tokens) a training batch keeps."""
        return 512

    def project_prefix(self, prefix_embeds: torch.Tensor | None) -> torch.Tensor | None:
        """(B, P, prefix_dim) -> (B, P, hidden_size) through the projector; None passes through."""
        if prefix_embeds is None:
            return None
        if self.projector is not None:
            return self.projector(prefix_embeds)
        if prefix_embeds.shape[-1] != self.hidden_size:
            raise DecoderError(
                f"prefix_embeds width {prefix_embeds.shape[-1]} != decoder hidden size {self.hidden_size}; "
                "set the decoder's prefix_dim to the encoder width to add a projector"
            )
        return prefix_embeds

    def encode_qa(self, questions: list[str], answers: list[str]) -> dict[str, torch.Tensor]:
        """Tokenize QA pairs into a right-padded training batch with answer-only labels."""
        return build_answer_only_batch(
            [self.prompt_ids(q) for q in questions],
            [self.answer_ids(a) for a in answers],
            self.pad_id,
            self.max_length,
        )

    def encode_prompts(self, questions: list[str]) -> dict[str, torch.Tensor]:
        """Tokenize questions into a left-padded generation batch (input_ids, attention_mask)."""
        return build_prompt_batch([self.prompt_ids(q) for q in questions], self.pad_id)

    def encode_chats(
        self, conversations: Sequence[Sequence[dict[str, Any]]], media_turns: Sequence[int]
    ) -> dict[str, torch.Tensor]:
        """Conversations (each ending with an assistant message) as a right-padded training batch:
        input_ids, attention_mask, labels on every assistant turn and only there, prefix_at (B,)."""
        rows = [self.chat_tokens(m, t) for m, t in zip(conversations, media_turns, strict=True)]
        return build_chat_batch(rows, self.pad_id, self.max_length)

    def encode_chat_prompts(
        self, conversations: Sequence[Sequence[dict[str, Any]]], media_turns: Sequence[int]
    ) -> dict[str, torch.Tensor]:
        """Conversations (each ending with the user message to answer) as left-padded generation prompts
        (input_ids, attention_mask, prefix_at)."""
        rows = [
            self.chat_tokens(m, t, generation=True) for m, t in zip(conversations, media_turns, strict=True)
        ]
        return build_chat_prompts(rows, self.pad_id)

    def batch_decode(self, ids: torch.Tensor) -> list[str]:
        """Decode each row of generated ids (B, N)."""
        return [self.decode(row.tolist()) for row in ids]

    def _finish_generation(self, new_tokens: torch.Tensor) -> torch.Tensor:
        """Replace everything after each row's first eos by pad: (B, N) -> (B, N)."""
        is_eos = new_tokens == self.eos_id
        after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
        return new_tokens.masked_fill(after_eos, self.pad_id)


def count_trainable(module: nn.Module) -> int:
    """Number of trainable parameters of module."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
