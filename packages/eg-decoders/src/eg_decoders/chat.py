"""Multi-turn conversations as decoder input: token ids, which of them are supervised (every assistant turn
and only those: its text and the token that ends it), and where the media prefix goes.

Messages are chat messages, `[{"role": "user" | "assistant", "content": str}, ...]`, alternating from a
user turn; `media_turn` is the index of the message whose content the media prefix precedes. Two
renderings:

- the plain role format of the byte-level decoders (TRM, the tiny baseline), one for every conversation:
  `<bos>user: {content}\\nassistant: {content}<eos>user: ...`; the prefix goes after `user: ` of the
  media turn, and a generation prompt ends with `assistant: `;
- a tokenizer's chat template (Qwen): the conversation rendered by `apply_chat_template`, with marks put
  around each assistant content and at the media turn's content before rendering and taken out after; the
  text between marks is tokenized piece by piece (as LLaVA tokenizes around `<image>`), so the supervised
  tokens are exactly the assistant contents and the template's end-of-turn token after each.

`build_chat_batch` pads rows on the right for training (labels: the supervised ids, the rest
IGNORE_INDEX; a row longer than max_length loses its end, as LLaVA truncates), `build_chat_prompts` on the
left for generation; both return `prefix_at` (B,), the text position of the prefix.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from eg_decoders.errors import DecoderError
from eg_decoders.labels import IGNORE_INDEX

MEDIA_MARK, START_MARK, END_MARK = "\ue000", "\ue001", "\ue002"  # private-use characters, never in data
_MARKS = re.compile(f"([{MEDIA_MARK}{START_MARK}{END_MARK}])")
ROLE_NAMES = ("user", "assistant")


@dataclass
class ChatTokens:
    """One rendered conversation: ids, a supervised flag per id, and `media_at`, the ids before the prefix."""

    ids: list[int] = field(default_factory=list)
    supervised: list[bool] = field(default_factory=list)
    media_at: int = 0

    def add(self, ids: Sequence[int], supervised: bool = False) -> None:
        """Append ids, all supervised or none."""
        self.ids += list(ids)
        self.supervised += [supervised] * len(ids)


def check_messages(messages: Sequence[Any], media_turn: int, generation: bool) -> None:
    """DecoderError unless `messages` alternate user, assistant, ... from a user turn, each with a string
    content, and end with a user turn (`generation`: the one to answer) or an assistant turn (training);
    `media_turn` must index a user message."""
    if not messages:
        raise DecoderError("a conversation needs at least one message")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise DecoderError(f"message {i} is not a {{'role', 'content': str}} object")
        expected = ROLE_NAMES[i % 2]
        if message.get("role") != expected:
            raise DecoderError(
                f"message {i} has role {message.get('role')!r} where {expected!r} was due: messages alternate "
                "user, assistant, ... from a user message"
            )
        if any(mark in message["content"] for mark in (MEDIA_MARK, START_MARK, END_MARK)):
            raise DecoderError(f"message {i} holds a private-use character U+E000..U+E002, which marks turns")
    last = "user" if generation else "assistant"
    if messages[-1]["role"] != last:
        what = "a generation prompt ends with the user message to answer" if generation else "training"
        raise DecoderError(f"the last message must be from {last} ({what}), got {messages[-1]['role']!r}")
    if not 0 <= media_turn < len(messages) or messages[media_turn]["role"] != "user":
        raise DecoderError(f"media_turn {media_turn} is not the index of a user message")


def plain_chat_tokens(
    encode: Callable[[str], list[int]],
    bos: Sequence[int],
    eos_id: int,
    messages: Sequence[dict[str, Any]],
    media_turn: int = 0,
    generation: bool = False,
) -> ChatTokens:
    """The plain role format: bos, `user: {content}\\n`, `assistant: {content}` + eos, ...; with
    `generation`, after the last user message, `assistant: `."""
    check_messages(messages, media_turn, generation)
    out = ChatTokens()
    out.add(bos)
    for i, message in enumerate(messages):
        if message["role"] == "user":
            out.add(encode("user: "))
            if i == media_turn:
                out.media_at = len(out.ids)
            out.add(encode(message["content"] + "\n"))
        else:
            out.add(encode("assistant: "))
            out.add(encode(message["content"]) + [eos_id], supervised=True)
    if generation:
        out.add(encode("assistant: "))
    return out


def template_chat_tokens(
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    media_turn: int = 0,
    generation: bool = False,
    system_prompt: str | None = None,
) -> ChatTokens:
    """A Hugging Face tokenizer's chat template: marks around each assistant content and at the media turn,
    the rendered text cut at the marks and tokenized piece by piece; each assistant content and the
    template's eos after it are supervised. DecoderError when the template does not end an assistant turn
    with the tokenizer's eos (the model would never learn to stop)."""
    check_messages(messages, media_turn, generation)
    marked = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for i, message in enumerate(messages):
        content = message["content"]
        if i == media_turn:
            content = MEDIA_MARK + content
        if message["role"] == "assistant":
            content = START_MARK + content + END_MARK
        marked.append({"role": message["role"], "content": content})
    text = tokenizer.apply_chat_template(marked, tokenize=False, add_generation_prompt=generation)
    out, inside, closed = ChatTokens(), False, False
    for piece in _MARKS.split(text):
        if piece == MEDIA_MARK:
            out.media_at = len(out.ids)
        elif piece in (START_MARK, END_MARK):
            inside, closed = piece == START_MARK, piece == END_MARK
        elif piece:
            ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
            if closed:
                if not ids or ids[0] != tokenizer.eos_token_id:
                    raise DecoderError(
                        "the tokenizer's chat template does not end an assistant turn with its eos token "
                        f"{tokenizer.eos_token!r}; set use_chat_template: false to use the plain role format"
                    )
                out.add(ids[:1], supervised=True)
                ids, closed = ids[1:], False
            out.add(ids, supervised=inside)
    if closed:  # the template ends right after the last assistant content: the eos is not in the text
        raise DecoderError(
            "the tokenizer's chat template does not end an assistant turn with its eos token; "
            "set use_chat_template: false to use the plain role format"
        )
    return out


def build_chat_batch(rows: Sequence[ChatTokens], pad_id: int, max_length: int) -> dict[str, torch.Tensor]:
    """Right-padded training batch: input_ids (B, T), attention_mask (B, T) long, labels (B, T) (the
    supervised ids, else IGNORE_INDEX), prefix_at (B,). A row longer than max_length keeps its first
    max_length ids."""
    if not rows:
        raise DecoderError("no conversations to encode")
    kept = [(r.ids[:max_length], r.supervised[:max_length], min(r.media_at, max_length)) for r in rows]
    length = max(len(ids) for ids, _, _ in kept)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    for i, (ids, supervised, _) in enumerate(kept):
        row = torch.tensor(ids, dtype=torch.long)
        input_ids[i, : len(ids)] = row
        attention_mask[i, : len(ids)] = 1
        labels[i, : len(ids)] = row.masked_fill(~torch.tensor(supervised, dtype=torch.bool), IGNORE_INDEX)
    prefix_at = torch.tensor([at for _, _, at in kept], dtype=torch.long)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "prefix_at": prefix_at,
    }


def build_chat_prompts(rows: Sequence[ChatTokens], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded generation prompts: input_ids (B, T), attention_mask (B, T) long, prefix_at (B,) (the
    padding counted)."""
    if not rows or any(not r.ids for r in rows):
        raise DecoderError("every prompt needs at least one token; got no prompt or an empty one")
    length = max(len(r.ids) for r in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    prefix_at = torch.zeros(len(rows), dtype=torch.long)
    for i, r in enumerate(rows):
        pad = length - len(r.ids)
        input_ids[i, pad:] = torch.tensor(r.ids, dtype=torch.long)
        attention_mask[i, pad:] = 1
        prefix_at[i] = pad + r.media_at
    return {"input_ids": input_ids, "attention_mask": attention_mask, "prefix_at": prefix_at}
