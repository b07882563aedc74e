"""The stage-2 VLM: frozen stage-1 towers -> one PrefixProjector per modality -> a decoder (TRM, tiny, Qwen).

The decoder sees `[image tokens][audio tokens][question][answer]` and is scored on the answer tokens only
(eg-decoders' answer-only labels). The modality tokens are a tower's resampler latents, or its encoder's
tokens where it has no resampler (`ModalityTower.tokens`).

With `cache_tokens`, the frozen towers run once per training sample (each sample alone, so the values do
not depend on the batch, and a resumed run sees the same ones); validation and evaluation always run them.

A sample contributes the tokens of the modalities it has and keeps: in training, modality dropout removes
a modality from a sample with a configured probability, through the prefix mask, which the decoders treat
as removal (masked tokens are neither attended to nor counted in positions). `generate` puts only the kept
tokens in the prefix, so evaluating "image only", "audio only" or "none" (blind) sees exactly what
training with that modality dropped saw.

`forward(batch)` follows eg-train's contract: `{"loss", <named parts>}`; for TRM the parts are each
supervision step's answer loss and halting loss (`step_k/answer_ce`, `step_k/halt_bce`), so eg-train's
loss_components.png shows them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from eg_decoders import Decoder, PrefixProjector
from torch import nn

from apps.qa.config import BATCH_KEY, PREFIX_ORDER, QAModelConfig


class QAModel(nn.Module):
    """Prefix-conditioned QA over the stage-1 towers named in `config.modalities` (frozen, see the switch)."""

    def __init__(self, config: QAModelConfig, towers: nn.ModuleDict, decoder: Decoder) -> None:
        super().__init__()
        self.config = config
        self.modalities = [m for m in PREFIX_ORDER if m in config.modalities]
        self.towers = nn.ModuleDict({m: towers[m] for m in self.modalities})
        self.decoder = decoder
        kind = config.decoder.variant().projector
        self.projectors = nn.ModuleDict(
            {m: PrefixProjector(self.towers[m].token_dim, decoder.hidden_size, kind) for m in self.modalities}
        )
        self.towers.requires_grad_(False)
        self.train_resampler = config.train_resampler
        if self.train_resampler:
            for tower in self.towers.values():
                if tower.resampler is not None:
                    tower.resampler.requires_grad_(True)
        self.drop_prob = torch.tensor([float(getattr(config.modality_dropout, m)) for m in self.modalities])
        # training samples' frozen tower tokens, {modality: {key: (n, D)}}; see model.cache_tokens
        self._token_cache: dict[str, dict[str, torch.Tensor]] = {}

    def train(self, mode: bool = True) -> QAModel:
        """Frozen towers stay in eval mode (no dropout); a trainable resampler follows `mode`."""
        super().train(mode)
        for tower in self.towers.values():
            tower.eval()
            if self.train_resampler and tower.resampler is not None:
                tower.resampler.train(mode)
        return self

    # ---- prefix -----------------------------------------------------------------------------
    def present(self, batch: dict[str, Any], size: int, device: torch.device) -> torch.Tensor:
        """(M, B) bool: which samples carry each modality (all of them without presence flags)."""
        rows = []
        for m in self.modalities:
            flag = batch.get(f"{BATCH_KEY[m]}_present")
            rows.append(
                torch.ones(size, dtype=torch.bool)
                if flag is None
                else torch.as_tensor(flag, dtype=torch.bool)
            )
        return torch.stack(rows).to(device)

    def drop_modalities(self, present: torch.Tensor) -> torch.Tensor:
        """(M, B) kept modalities after dropout: each present one is dropped with its probability.

        Unless `modality_dropout.allow_none`, a sample that would lose all its modalities gets one of
        them back, picked uniformly. Draws from the global torch RNG (two draws per call, whatever the
        outcome), which eg-train checkpoints per rank, so a resumed run drops the same modalities.
        """
        drop_u = torch.rand(present.shape)  # (M, B)
        pick_u = torch.rand(present.shape)
        keep = present & (drop_u >= self.drop_prob[:, None]).to(present.device)
        if not self.config.modality_dropout.allow_none:
            lost_all = ~keep.any(0) & present.any(0)  # (B,)
            score = pick_u.to(present.device).masked_fill(~present, -1.0)
            back = torch.zeros_like(keep).scatter_(0, score.argmax(0, keepdim=True), True)
            keep = keep | (back & lost_all[None])
        return keep

    def modality_tokens(
        self, batch: dict[str, Any], names: Sequence[str]
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{modality: (projected tokens (B, N_m, H), token mask (B, N_m) bool)} for `names`."""
        grad = self.training and self.train_resampler
        out = {}
        for m in names:
            if self.training and self.config.cache_tokens:
                tokens, mask = self._cached_tokens(batch, m)
            else:
                with contextlib.nullcontext() if grad else torch.no_grad():
                    tokens, mask = self.towers[m].tokens(batch)  # (B, N, D), (B, N)
            out[m] = (self.projectors[m](tokens.float()), mask.bool())  # (B, N, H)
        return out

    @torch.no_grad()
    def _cached_tokens(self, batch: dict[str, Any], modality: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen tower's tokens of each training sample, computed once per sample key, alone.

        Computing each sample by itself makes its tokens independent of the batch it first came in, so a
        resumed run (empty cache) trains on the very same values as an uninterrupted one.
        """
        cache = self._token_cache.setdefault(modality, {})
        keys = list(batch["key"])
        size = len(keys)
        for i, key in enumerate(keys):
            if key not in cache:
                one = {k: v[i : i + 1] if _per_sample(v, size) else v for k, v in batch.items()}
                tokens, mask = self.towers[modality].tokens(one)  # (1, N, D), (1, N)
                cache[key] = tokens[0][mask[0].bool()].float()  # (n, D): valid tokens only
        rows = [cache[k] for k in keys]
        length = max(r.shape[0] for r in rows)
        tokens = rows[0].new_zeros(size, length, rows[0].shape[-1])  # (B, N, D)
        mask = torch.zeros(size, length, dtype=torch.bool, device=tokens.device)
        for i, r in enumerate(rows):
            tokens[i, : r.shape[0]] = r
            mask[i, : r.shape[0]] = True
        return tokens, mask

    def prefix(
        self, tokens: dict[str, tuple[torch.Tensor, torch.Tensor]], keep: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[image tokens][audio tokens] (B, P, H) and the prefix mask (B, P): token valid and modality kept."""
        parts = [tokens[m][0] for m in self.modalities]
        masks = [tokens[m][1] & keep[i][:, None] for i, m in enumerate(self.modalities)]
        return torch.cat(parts, dim=1), torch.cat(masks, dim=1)

    # ---- training ---------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Batch dict -> {"loss": answer-only loss, <decoder parts>}; rows without a QA pair are left out."""
        device = self._device()
        size = len(batch["question"])
        rows = self._qa_rows(batch, size)
        present = self.present(batch, size, device)
        keep = self.drop_modalities(present) if self.training else present
        prefix, prefix_mask = self.prefix(self.modality_tokens(batch, self.modalities), keep)
        questions = [batch["question"][i] for i in rows]
        answers = [batch["answer"][i] for i in rows]
        index = torch.tensor(rows, dtype=torch.long, device=device)
        text = {k: v.to(device) for k, v in self.decoder.encode_qa(questions, answers).items()}
        out = self.decoder(prefix[index], prefix_mask=prefix_mask[index], **text)
        return {"loss": out.loss, **out.parts}

    # ---- generation -------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self, batch: dict[str, Any], prefix_modalities: Sequence[str], max_new_tokens: int = 16
    ) -> list[str]:
        """Greedy answers to `batch["question"]` with the prefix built from `prefix_modalities` only.

        `prefix_modalities`: any subset of the model's modalities; empty = blind (no prefix at all). A
        sample lacking one of them simply has fewer prefix tokens. Rows are generated in groups of equal
        prefix length, since the decoders' generate takes no prefix mask.
        """
        unknown = [m for m in prefix_modalities if m not in self.modalities]
        assert not unknown, f"prefix modalities {unknown} are not among the model's {self.modalities}"
        names = [m for m in self.modalities if m in prefix_modalities]
        was_training = self.training
        self.eval()
        try:
            size, device = len(batch["question"]), self._device()
            tokens = self.modality_tokens(batch, names)
            present = self.present(batch, size, device)
            prefixes: list[torch.Tensor | None] = []
            for i in range(size):
                pieces = [
                    tokens[m][0][i][tokens[m][1][i]]
                    for m in names
                    if bool(present[self.modalities.index(m), i])
                ]  # (N_m, H) each
                prefixes.append(torch.cat(pieces) if pieces else None)
            answers = [""] * size
            groups: dict[int, list[int]] = {}
            for i, p in enumerate(prefixes):
                groups.setdefault(0 if p is None else p.shape[0], []).append(i)
            for length, rows in sorted(groups.items()):
                prefix = torch.stack([prefixes[i] for i in rows]) if length else None  # (G, P, H)
                prompts = self.decoder.encode_prompts([batch["question"][i] for i in rows])
                ids = self.decoder.generate(
                    prefix,
                    prompts["input_ids"].to(device),
                    prompts["attention_mask"].to(device),
                    max_new_tokens=max_new_tokens,
                )
                for i, text in zip(rows, self.decoder.batch_decode(ids)):
                    answers[i] = text
        finally:
            self.train(was_training)
        return answers

    # ---- helpers ----------------------------------------------------------------------------
    def _device(self) -> torch.device:
        return next(self.projectors.parameters()).device

    @staticmethod
    def _qa_rows(batch: dict[str, Any], size: int) -> list[int]:
        flag = batch.get("qa_present")
        if flag is None:
            return list(range(size))
        return [i for i, has in enumerate(torch.as_tensor(flag).tolist()) if has]

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """AdamW groups of the trainable weights: matrices with weight decay, biases/norms/1-D without."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups = [
            {"params": decay, "lr": lr, "name": "trainable"},
            {"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": "trainable.no_decay"},
        ]
        return [g for g in groups if g["params"]]

    def num_trainable(self) -> int:
        """Number of trainable parameters (decoder or its LoRA, projectors, an unfrozen resampler)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def _per_sample(value: Any, size: int) -> bool:
    """Whether a batch entry holds one item per sample (a (B, ...) tensor or a list of B values)."""
    if torch.is_tensor(value):
        return value.ndim > 0 and value.shape[0] == size
    return isinstance(value, list) and len(value) == size
