"""Shared machinery of the byte-level tiny decoders (TRM and the baseline): embeddings, generation, saving.

Generation is incremental by default: the prompt (with the prefix) is run once into a KV cache, then each
new token is run alone against the cached keys and values, so the cost of a token grows linearly with the
sequence instead of recomputing it (quadratic). `use_cache=False` keeps the full recompute, which gives
the same tokens (the tests compare both).
"""

from __future__ import annotations

import abc
import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from eg_decoders.base import CONFIG_FILE, Decoder, DecoderOutput, select_next_token
from eg_decoders.chat import ChatTokens, plain_chat_tokens
from eg_decoders.checks import check_choice, check_int, check_range
from eg_decoders.errors import DecoderError, is_missing
from eg_decoders.layers import KVCache, causal_attention_mask
from eg_decoders.prefix import splice_prefix, text_only
from eg_decoders.projector import PROJECTOR_KINDS
from eg_decoders.tokenizer import ByteTokenizer

WEIGHTS_FILE = "model.pt"


def check_small(config: Any) -> None:
    """Checks shared by the byte-level tiny decoders (TRM and the baseline)."""
    for key in ("hidden_size", "num_layers", "num_heads"):
        check_int(config, key, 1)
    check_int(config, "max_seq_len", 2)
    check_int(config, "prefix_dim", 0)
    size, heads = config.hidden_size, config.num_heads
    if not is_missing(size) and not is_missing(heads) and size % heads:
        raise DecoderError(f"hidden_size {size} must be divisible by num_heads {heads}")
    if not is_missing(config.mlp_ratio) and not config.mlp_ratio > 0:
        raise DecoderError(f"mlp_ratio must be > 0, got {config.mlp_ratio}")
    check_range(config, "dropout", 0.0, 1.0, high_open=True)
    check_choice(config, "projector", PROJECTOR_KINDS)


class SmallDecoder(Decoder):
    """Byte tokenizer, token + learned position embeddings, prefix projector; subclasses supply the trunk."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config  # checked by its own __post_init__
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

    def chat_tokens(
        self, messages: Sequence[dict[str, Any]], media_turn: int = 0, generation: bool = False
    ) -> ChatTokens:
        """The plain role format (chat.py), in bytes."""
        tok = self.tokenizer
        return plain_chat_tokens(tok.encode, [tok.bos_id], tok.eos_id, messages, media_turn, generation)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def num_parameters(self) -> int:
        """Total parameter count (projector included)."""
        return sum(p.numel() for p in self.parameters())

    def _embed_valid(
        self,
        prefix: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        prefix_mask: torch.Tensor | None,
        num_before: torch.Tensor | None = None,
        prefix_at: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token + position embeddings of the sequence, the prefix spliced in at `prefix_at` (B,) (None:
        before the text): x (B, L, D), valid (B, L) bool, text_index (B, T) (see prefix.py).

        num_before (B,): valid positions already in a KV cache before this chunk (None: none).
        """
        x = self.tok_emb(input_ids)  # (B, T, D)
        if prefix is None:
            x, valid, text_index = text_only(x, attention_mask)
        else:
            if prefix_mask is None:
                prefix_mask = torch.ones(prefix.shape[:2], dtype=torch.bool, device=prefix.device)
            x, valid, text_index = splice_prefix(prefix, prefix_mask, x, attention_mask, prefix_at)
        # positions count valid tokens, so a left-padded prompt gets the same positions as an unpadded one
        # and a masked prefix token is removed in effect
        counts = valid.long().cumsum(-1)  # (B, L)
        if num_before is not None:
            counts = counts + num_before[:, None]
        positions = (counts - 1).clamp(min=0)  # (B, L)
        if int(positions.max()) >= self.config.max_seq_len:
            raise DecoderError(
                f"sequence of {int(positions.max()) + 1} positions exceeds max_seq_len "
                f"{self.config.max_seq_len}; raise max_seq_len or shorten prefix/question/answer"
            )
        return x + self.pos_emb(positions), valid, text_index

    def _embed(
        self,
        prefix: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        prefix_mask: torch.Tensor | None,
        prefix_at: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token + position embeddings of the sequence: x (B, L, D), attention mask (B, 1, L, L),
        text_index (B, T)."""
        x, valid, text_index = self._embed_valid(
            prefix, input_ids, attention_mask, prefix_mask, prefix_at=prefix_at
        )
        return x, causal_attention_mask(valid), text_index

    @abc.abstractmethod
    def _run(
        self, x: torch.Tensor, mask: torch.Tensor, text_index: torch.Tensor, labels: torch.Tensor | None
    ) -> DecoderOutput:
        """The trunk: embedded sequence (B, L, D) -> logits (B, T, V) at the text positions `text_index`
        (and losses when labels are given)."""

    @abc.abstractmethod
    def _last_logits(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, V) at the last position of the whole sequence x (no cache)."""

    @abc.abstractmethod
    def _cached_last_logits(
        self, x: torch.Tensor, mask: torch.Tensor, cache: KVCache, start: int
    ) -> torch.Tensor:
        """Next-token logits (B, V) at the last position of chunk x (positions start.., mask (B, 1, S,
        start + S)), attending to the cache and writing the chunk's keys and values into it."""

    def _new_cache(self, batch: int, capacity: int, device: torch.device) -> KVCache:
        """An empty cache for `capacity` positions (TRM keeps more state in a subclass)."""
        return KVCache(batch, capacity, device)

    def _extend(
        self,
        cache: KVCache,
        prefix: torch.Tensor | None,
        ids: torch.Tensor,
        mask: torch.Tensor,
        prefix_mask: torch.Tensor | None = None,
        prefix_at: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run a chunk (ids (B, S), the prefix spliced in at prefix_at) after the cached positions; return
        the next-token logits."""
        start = cache.length
        x, valid, _ = self._embed_valid(prefix, ids, mask, prefix_mask, cache.num_valid(), prefix_at)
        cache.valid[:, start : start + x.shape[1]] = valid
        logits = self._cached_last_logits(x, cache.chunk_mask(start, x.shape[1]), cache, start)
        cache.length = start + x.shape[1]
        return logits

    def forward(
        self,
        prefix_embeds: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        prefix_mask: torch.Tensor | None = None,
        prefix_at: torch.Tensor | None = None,
    ) -> DecoderOutput:
        """prefix_embeds (B, P, prefix_dim) or None, input_ids/attention_mask/labels (B, T) -> DecoderOutput.

        prefix_mask (B, P): False removes a prefix token; prefix_at (B,): text tokens before the prefix
        (None: the prefix comes first)."""
        x, mask, text_index = self._embed(
            self.project_prefix(prefix_embeds), input_ids, attention_mask, prefix_mask, prefix_at
        )
        return self._run(x, mask, text_index, labels)

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
        use_cache: bool = True,
        prefix_mask: torch.Tensor | None = None,
        prefix_at: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """New tokens (B, N <= max_new_tokens) after left-padded prompts; pad after each row's eos.

        prefix_mask (B, P) and prefix_at (B,) as in forward: rows with different prefix lengths (a masked
        tail) or prefix places batch together. use_cache=True runs the prompt once into a KV cache and then one position per token (cost linear
        in the length); False recomputes the whole sequence for every token (same tokens, for checks).
        """
        batch = prompt_ids.shape[0]
        if max_new_tokens < 1:
            return prompt_ids.new_zeros((batch, 0))
        was_training = self.training
        self.eval()
        prefix = self.project_prefix(prefix_embeds)
        ids = prompt_ids
        mask = torch.ones_like(prompt_ids) if prompt_mask is None else prompt_mask.long()
        cache: KVCache | None = None
        if use_cache:
            num_prefix = 0 if prefix is None else prefix.shape[1]
            cache = self._new_cache(batch, num_prefix + ids.shape[1] + max_new_tokens, ids.device)
            logits = self._extend(cache, prefix, ids, mask, prefix_mask, prefix_at)  # (B, V)
        else:
            logits = self._last_logits(*self._embed(prefix, ids, mask, prefix_mask, prefix_at)[:2])  # (B, V)
        finished = torch.zeros(batch, dtype=torch.bool, device=ids.device)
        new_tokens = []
        for step in range(max_new_tokens):
            token = select_next_token(logits, do_sample, temperature, top_k, top_p, generator)
            token = token.masked_fill(finished, self.pad_id)
            new_tokens.append(token)
            finished |= token == self.eos_id
            if bool(finished.all()) or step == max_new_tokens - 1:
                break
            ones = torch.ones_like(token[:, None])
            if cache is not None:
                logits = self._extend(cache, None, token[:, None], ones)
            else:
                ids, mask = torch.cat([ids, token[:, None]], dim=1), torch.cat([mask, ones], dim=1)
                logits = self._last_logits(*self._embed(prefix, ids, mask, prefix_mask, prefix_at)[:2])
        self.train(was_training)
        return self._finish_generation(torch.stack(new_tokens, dim=1))

    def save(self, path: str) -> None:
        """Write decoder_config.json and model.pt (the full state dict) into directory path."""
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, CONFIG_FILE), "w") as f:
            json.dump(dataclasses.asdict(self.config), f, indent=2)
        torch.save(self.state_dict(), os.path.join(path, WEIGHTS_FILE))

    def load_weights(self, path: str) -> None:
        """Load the model.pt that save() wrote into directory path."""
        file = os.path.join(path, WEIGHTS_FILE)
        if not os.path.isfile(file):
            raise DecoderError(f"{file} not found; point at a directory written by decoder.save()")
        self.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
