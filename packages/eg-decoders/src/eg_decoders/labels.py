"""Answer-only supervision: build padded (input_ids, attention_mask, labels) and the masked next-token loss.

Labels carry the target token at its own position (Hugging Face convention); the loss shifts by one,
so logits at position t are scored against labels[t + 1]. Prefix, question and padding are IGNORE_INDEX.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from eg_decoders.errors import DecoderError

IGNORE_INDEX = -100


def build_answer_only_batch(
    prompts: list[list[int]], answers: list[list[int]], pad_id: int, max_length: int
) -> dict[str, torch.Tensor]:
    """Right-padded training batch from token id lists; only answer tokens get labels.

    A pair longer than max_length loses the start of its prompt first (the answer is what is scored),
    then the end of its answer. Returns input_ids (B, T), attention_mask (B, T) long, labels (B, T).
    """
    if len(prompts) != len(answers):
        raise DecoderError(
            f"got {len(prompts)} questions but {len(answers)} answers; pass one answer per question"
        )
    if max_length < 2:
        raise DecoderError(f"max_length must be at least 2, got {max_length}")
    rows = []
    for prompt, answer in zip(prompts, answers):
        answer = answer[: max_length - 1]  # keep at least one prompt token to predict the first answer token
        prompt = prompt[max(0, len(prompt) - (max_length - len(answer))) :]
        rows.append((prompt, answer))
    length = max(len(p) + len(a) for p, a in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    for i, (prompt, answer) in enumerate(rows):
        n_p, n = len(prompt), len(prompt) + len(answer)
        input_ids[i, :n] = torch.tensor(prompt + answer, dtype=torch.long)
        attention_mask[i, :n] = 1
        labels[i, n_p:n] = torch.tensor(answer, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def build_prompt_batch(prompts: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded prompts for generation, so every row's next token is appended at the same column."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise DecoderError(
            "every prompt needs at least one token; got an empty prompt list or an empty prompt"
        )
    length = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for i, p in enumerate(prompts):
        input_ids[i, length - len(p) :] = torch.tensor(p, dtype=torch.long)
        attention_mask[i, length - len(p) :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over answer tokens; logits (B, T, V) at the positions of labels (B, T).

    A batch with no answer token is a DecoderError, never a silent 0 loss: it means the data lost its answers.
    """
    assert logits.shape[:2] == labels.shape, (logits.shape, labels.shape)
    targets = labels[:, 1:]  # (B, T-1)
    if not bool((targets != IGNORE_INDEX).any()):
        raise DecoderError(
            "batch has no answer tokens (every label is -100); drop samples without an answer before the decoder"
        )
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=IGNORE_INDEX
    )
