"""TRMConfig and TRMDecoder: "Less is More: Recursive Reasoning with Tiny Networks" (Jolicoeur-Martineau,
2025), causal.

The paper's symbols, per token position t of the sequence [prefix | question | answer]:
- x_t: the input embedding (projected prefix or token embedding, plus position).
- y_t: the current answer state; the output head reads the prediction of token t+1 from it.
- z_t: the latent reasoning state.
One tiny network f (num_layers causal blocks) does both updates:
    repeat n times:  z <- f(z + x + y)        (refine the latent from input, answer and latent)
    then once:       y <- f(y + z)            (refine the answer from the latent)
That is one cycle; a supervision step runs T cycles, the first T-1 under no_grad, so gradients flow
through the last cycle only. Deep supervision runs num_supervision_steps steps, each scored by the
answer loss, with (y, z) detached between them, so each step learns to improve the previous answer.
Every f call attends causally, and y, z start from position-independent vectors, so by induction y_t
and z_t depend only on x_1..x_t: training is teacher-forced and generation is left-to-right.
The halting head reads y_t and is trained (BCE) on whether the current prediction of token t+1 is
right; at generation a row stops refining the next token once its halting probability passes
halt_threshold (the paper's ACT-style early stop, per generated token).

Incremental generation (TRMCache): because every f call is causal, the states of positions 1..t at every
f call of the recursion are the same whatever follows t. So each f call (supervision step s, cycle c,
update u, layer l) is a call site with its own keys and values, and a new token runs its own recursion
alone, attending at each call site to the cached keys and values of the earlier positions at the same
site: exactly what recomputing the whole sequence gives for that position. Halting may stop a token
after fewer supervision steps than an earlier one needed, or need more than the earlier positions have:
the cache keeps every position at the same number of steps (the most any token needed so far); when a
token needs a step the cached positions lack, they are brought to it first from their stored (x, y, z)
("catch-up"), and a token that halted early still runs the steps the others have. Memory: keys and values
of num_supervision_steps * n_cycles * (n_latent_steps + 1) * num_layers call sites, each (B, L, D) twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from eg_decoders.base import DecoderOutput
from eg_decoders.checks import check_int, check_range, check_type
from eg_decoders.errors import DecoderError, is_missing
from eg_decoders.labels import IGNORE_INDEX, answer_loss
from eg_decoders.layers import Block, KVCache, causal_attention_mask
from eg_decoders.prefix import take_text
from eg_decoders.small import SmallDecoder, check_small


@dataclass
class TRMConfig:
    """Tiny Recursive Model decoder (Jolicoeur-Martineau, 2025), adapted to causal decoding.

    n_latent_steps is the paper's n, n_cycles its T, num_supervision_steps its N_sup.
    """

    type: str = "trm"
    """The decoder kind, always trm (names it in YAML and in a saved decoder_config.json)."""
    hidden_size: int = 256
    """Width of the token embeddings and of every block."""
    num_layers: int = 2
    """Causal blocks of the one tiny network f that does every recursion update."""
    num_heads: int = 4
    """Attention heads; hidden_size must divide by it."""
    mlp_ratio: float = 4.0
    """SwiGLU hidden width = int(hidden_size * mlp_ratio)."""
    n_latent_steps: int = 6
    """The paper's n: latent updates z <- f(z + x + y) per cycle, before the answer update y <- f(y + z)."""
    n_cycles: int = 3
    """The paper's T: cycles per supervision step; the first T-1 run without gradients."""
    num_supervision_steps: int = 3
    """The paper's N_sup: deep supervision steps, each scored by the answer loss, with (y, z) detached between
    them."""
    halting: bool = True
    """Add the halting head, trained (BCE) on whether the current prediction of the next token is right."""
    halt_loss_weight: float = 0.5
    """Weight of the halting BCE added to each supervision step's answer loss."""
    halt_threshold: float = 0.5
    """At generation, a row stops refining the next token once its halting probability passes this."""
    halt_at_inference: bool = True
    """Use the halting head to stop early at generation (false: always run every supervision step)."""
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
        check_type(self, "trm")
        check_small(self)
        for key in ("n_latent_steps", "n_cycles", "num_supervision_steps"):
            check_int(self, key, 1)
        if not is_missing(self.halt_loss_weight) and not self.halt_loss_weight >= 0:
            raise DecoderError(f"halt_loss_weight must be >= 0, got {self.halt_loss_weight}")
        check_range(self, "halt_threshold", 0.0, 1.0, high_open=False)

    def build(self) -> TRMDecoder:
        """A fresh (randomly initialized) TRMDecoder with these settings."""
        return TRMDecoder(self)


class TRMCache(KVCache):
    """A KVCache plus what catch-up needs: x, y, z (B, C, D) of the cached positions after `num_steps`
    supervision steps (every cached position has run exactly that many)."""

    def __init__(self, batch: int, capacity: int, device: torch.device) -> None:
        super().__init__(batch, capacity, device)
        self.num_steps = 0
        self.num_catch_ups = 0  # steps run again over the cached positions (reported by tests/benchmarks)
        self.states: dict[str, torch.Tensor] = {}  # "x", "y", "z": (B, C, D)

    def store(self, start: int, **chunk: torch.Tensor) -> None:
        """Write x, y, z (B, S, D) of positions start..start+S."""
        for name, value in chunk.items():
            if name not in self.states:
                self.states[name] = value.new_zeros(value.shape[0], self.capacity, value.shape[-1])
            self.states[name][:, start : start + value.shape[1]] = value


class TRMDecoder(SmallDecoder):
    """One tiny post-norm network applied recursively to (x, y, z); see the module docstring for the mapping."""

    def __init__(self, config: TRMConfig) -> None:
        super().__init__(config)
        self.blocks = nn.ModuleList(
            Block(config.hidden_size, config.num_heads, config.mlp_ratio, config.dropout, post_norm=True)
            for _ in range(config.num_layers)
        )
        # fixed random starting states, as in the paper's code (truncated normal buffers, not learned)
        self.register_buffer("y_init", nn.init.trunc_normal_(torch.empty(config.hidden_size), std=1.0))
        self.register_buffer("z_init", nn.init.trunc_normal_(torch.empty(config.hidden_size), std=1.0))
        self.halt_head: nn.Linear | None = None
        if config.halting:
            self.halt_head = nn.Linear(config.hidden_size, 1)
            nn.init.zeros_(self.halt_head.weight)
            nn.init.constant_(self.halt_head.bias, -5.0)  # start by never halting, as the paper's q head

    def net(
        self,
        h: torch.Tensor,
        injection: torch.Tensor,
        mask: torch.Tensor,
        cache: KVCache | None = None,
        site: tuple[int, ...] = (),
        start: int = 0,
    ) -> torch.Tensor:
        """The tiny network f: (B, L, D) state plus injected (B, L, D) -> new (B, L, D) state.

        With a cache, `site` names this f call and the chunk holds positions start.. (see the module).
        """
        h = h + injection
        for layer, block in enumerate(self.blocks):
            h = block(h, mask, cache, (*site, layer), start)
        return h

    def cycle(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        z: torch.Tensor,
        mask: torch.Tensor,
        cache: KVCache | None = None,
        site: tuple[int, ...] = (),
        start: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One cycle: z refined n times from (x, y, z), then y once from (y, z)."""
        n = self.config.n_latent_steps
        for update in range(n):
            z = self.net(z, x + y, mask, cache, (*site, update), start)
        y = self.net(y, z, mask, cache, (*site, n), start)
        return y, z

    def recurse(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        z: torch.Tensor,
        mask: torch.Tensor,
        n_cycles: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One supervision step: T cycles, the first T-1 without gradients (the paper's deep recursion)."""
        n_cycles = self.config.n_cycles if n_cycles is None else n_cycles
        with torch.no_grad():
            for _ in range(n_cycles - 1):
                y, z = self.cycle(x, y, z, mask)
        return self.cycle(x, y, z, mask)

    def initial_state(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Starting (y, z), each (B, L, D), the same vector at every position."""
        return self.y_init.expand_as(x).to(x.dtype), self.z_init.expand_as(x).to(x.dtype)

    def _halt_loss(self, y_text: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """BCE of the halting logit at t against "argmax at t equals answer token t+1", answer tokens only."""
        assert self.halt_head is not None
        q = self.halt_head(y_text).squeeze(-1)[:, :-1]  # (B, T-1)
        targets = labels[:, 1:]
        valid = targets != IGNORE_INDEX
        correct = (logits[:, :-1].argmax(-1) == targets).to(q.dtype)
        return F.binary_cross_entropy_with_logits(q[valid].float(), correct[valid].float())

    def _run(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        text_index: torch.Tensor,
        labels: torch.Tensor | None,
        n_cycles: int | None = None,
    ) -> DecoderOutput:
        y, z = self.initial_state(x)
        step_losses: list[torch.Tensor] = []
        parts: dict[str, torch.Tensor] = {}
        logits = x.new_zeros(0)
        for step in range(self.config.num_supervision_steps):
            y, z = self.recurse(x, y, z, mask, n_cycles)
            y_text = take_text(y, text_index)  # (B, T, D)
            logits = self.lm_head(y_text)  # (B, T, V)
            if labels is not None:
                ce = answer_loss(logits, labels)
                loss = ce
                parts[f"step_{step + 1}/answer_ce"] = ce.detach()
                if self.halt_head is not None:
                    halt = self._halt_loss(y_text, logits, labels)
                    loss = ce + self.config.halt_loss_weight * halt
                    parts[f"step_{step + 1}/halt_bce"] = halt.detach()
                step_losses.append(loss)
            # the next supervision step starts from this answer, but its gradient stops here
            y, z = y.detach(), z.detach()
        if labels is None:
            return DecoderOutput(loss=None, logits=logits)
        # the state is detached between steps, so the mean's gradient equals accumulating each step's own
        # gradient (the paper takes an optimizer step per supervision step; here the trainer takes one)
        loss = torch.stack(step_losses).mean()
        parts["answer_ce"] = parts[f"step_{len(step_losses)}/answer_ce"]
        return DecoderOutput(loss=loss, logits=logits, step_losses=step_losses, parts=parts)

    def forward_with_cycles(
        self,
        prefix_embeds: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        n_cycles: int,
        labels: torch.Tensor | None = None,
    ) -> DecoderOutput:
        """forward() with T overridden (more or fewer cycles than trained, e.g. for test-time scaling)."""
        x, mask, text_index = self._embed(self.project_prefix(prefix_embeds), input_ids, attention_mask, None)
        return self._run(x, mask, text_index, labels, n_cycles)

    def _last_logits(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y, z = self.initial_state(x)
        result: torch.Tensor | None = None
        done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(self.config.num_supervision_steps):
            y, z = self.recurse(x, y, z, mask)
            logits = self.lm_head(y[:, -1])  # (B, V)
            # rows that already halted keep the prediction they halted with
            result = logits if result is None else torch.where(done[:, None], result, logits)
            if self.halt_head is not None and self.config.halt_at_inference:
                done |= torch.sigmoid(self.halt_head(y[:, -1]).squeeze(-1)) > self.config.halt_threshold
                if bool(done.all()):
                    break
        assert result is not None
        return result

    def _new_cache(self, batch: int, capacity: int, device: torch.device) -> TRMCache:
        return TRMCache(batch, capacity, device)

    def _cached_step(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        z: torch.Tensor,
        mask: torch.Tensor,
        cache: TRMCache,
        step: int,
        start: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Supervision step `step` (its T cycles) of positions start.. through the cache's call sites."""
        for cycle in range(self.config.n_cycles):
            y, z = self.cycle(x, y, z, mask, cache, (step, cycle), start)
        return y, z

    def _catch_up(self, cache: TRMCache, step: int, end: int) -> None:
        """Run supervision step `step` over cached positions 0..end-1 (which have run `step` steps)."""
        states = cache.states
        x, y, z = states["x"][:, :end], states["y"][:, :end], states["z"][:, :end]
        mask = causal_attention_mask(cache.valid[:, :end])  # (B, 1, E, E)
        y, z = self._cached_step(x, y, z, mask, cache, step, 0)
        cache.store(0, y=y, z=z)
        cache.num_catch_ups += 1

    def _cached_last_logits(
        self, x: torch.Tensor, mask: torch.Tensor, cache: KVCache, start: int
    ) -> torch.Tensor:
        assert isinstance(cache, TRMCache)
        y, z = self.initial_state(x)
        result: torch.Tensor | None = None
        done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        steps_run = 0
        for step in range(self.config.num_supervision_steps):
            if step >= cache.num_steps:  # the cached positions lack this step: bring them to it first
                if start > 0:
                    self._catch_up(cache, step, start)
                cache.num_steps = step + 1
            y, z = self._cached_step(x, y, z, mask, cache, step, start)
            steps_run = step + 1
            logits = self.lm_head(y[:, -1])  # (B, V)
            # rows that already halted keep the prediction they halted with (as in _last_logits)
            result = logits if result is None else torch.where(done[:, None], result, logits)
            if self.halt_head is not None and self.config.halt_at_inference:
                done |= torch.sigmoid(self.halt_head(y[:, -1]).squeeze(-1)) > self.config.halt_threshold
                if bool(done.all()):
                    break
        for step in range(steps_run, cache.num_steps):  # keep every cached position at num_steps
            y, z = self._cached_step(x, y, z, mask, cache, step, start)
        cache.store(start, x=x, y=y, z=z)
        assert result is not None
        return result
