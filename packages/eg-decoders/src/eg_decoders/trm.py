"""TRMDecoder: "Less is More: Recursive Reasoning with Tiny Networks" (Jolicoeur-Martineau, 2025), causal.

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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from eg_decoders.base import DecoderOutput
from eg_decoders.config import TRMConfig
from eg_decoders.errors import DecoderError
from eg_decoders.labels import IGNORE_INDEX, answer_loss
from eg_decoders.layers import Block
from eg_decoders.small import SmallDecoder


class TRMDecoder(SmallDecoder):
    """One tiny post-norm network applied recursively to (x, y, z); see the module docstring for the mapping."""

    def __init__(self, config: TRMConfig) -> None:
        for key in ("n_latent_steps", "n_cycles", "num_supervision_steps", "num_layers"):
            if getattr(config, key) < 1:
                raise DecoderError(f"decoder.{key} must be >= 1, got {getattr(config, key)}")
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

    def net(self, h: torch.Tensor, injection: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The tiny network f: (B, L, D) state plus injected (B, L, D) -> new (B, L, D) state."""
        h = h + injection
        for block in self.blocks:
            h = block(h, mask)
        return h

    def cycle(
        self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One cycle: z refined n times from (x, y, z), then y once from (y, z)."""
        for _ in range(self.config.n_latent_steps):
            z = self.net(z, x + y, mask)
        y = self.net(y, z, mask)
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
        num_prefix: int,
        labels: torch.Tensor | None,
        n_cycles: int | None = None,
    ) -> DecoderOutput:
        y, z = self.initial_state(x)
        step_losses: list[torch.Tensor] = []
        parts: dict[str, torch.Tensor] = {}
        logits = x.new_zeros(0)
        for step in range(self.config.num_supervision_steps):
            y, z = self.recurse(x, y, z, mask, n_cycles)
            logits = self.lm_head(y[:, num_prefix:])  # (B, T, V)
            if labels is not None:
                ce = answer_loss(logits, labels)
                loss = ce
                parts[f"step_{step + 1}/answer_ce"] = ce.detach()
                if self.halt_head is not None:
                    halt = self._halt_loss(y[:, num_prefix:], logits, labels)
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
        x, mask, num_prefix = self._embed(self.project_prefix(prefix_embeds), input_ids, attention_mask, None)
        return self._run(x, mask, num_prefix, labels, n_cycles)

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
