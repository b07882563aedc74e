"""Shared pieces of the encoders: the error type, the output type, config checks and the freezing rules.

Every encoder in this package returns an `EncoderOutput` and raises `EncoderError` for mistakes a user can
make (a bad config value, a missing file, a malformed input). A config message starts with the key as the
config dataclass names it (`trainable_blocks=-2 ...`), without a prefix: the application that nests the
config puts its own path in front. Freezing follows one rule for all backbones: `trainable_blocks = 0`
freezes the backbone, `-1` trains all of it, `k > 0` trains only its last k blocks and the final norm that
follows them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

MISSING = "???"  # omegaconf.MISSING: a value a YAML must still fill in; its checks wait until it is set


class EncoderError(ValueError):
    """A user-caused error in eg-encoders (config, path or input); the message is one actionable line."""


@dataclass
class EncoderOutput:
    """What every encoder returns.

    tokens: (B, N, D) token features (vision: class token first, then patches; audio: 20 ms frames;
        text: word pieces). mask: (B, N) bool, True where the token is real (not padding).
    pooled: (B, D) one vector per sample; None when the encoder was built with `pooling.type: none`
        (e.g. a resampler reads the tokens instead). The text encoder always pools (its own model's
        sentence embedding).
    """

    tokens: torch.Tensor  # (B, N, D)
    mask: torch.Tensor  # (B, N) bool
    pooled: torch.Tensor | None  # (B, D), or None without pooling


def apply_trainable_blocks(
    backbone: nn.Module,
    blocks: Sequence[nn.Module],
    tail: Sequence[nn.Module],
    trainable_blocks: int,
) -> None:
    """Set `requires_grad` on a backbone: 0 = frozen, -1 = all, k = the last k `blocks` plus `tail` modules.

    `tail` holds what runs after the last block (e.g. the final LayerNorm), which trains with it.
    """
    num_blocks = len(blocks)
    if trainable_blocks < -1 or trainable_blocks > num_blocks:
        raise EncoderError(
            f"trainable_blocks={trainable_blocks} is out of range: use 0 (frozen), -1 (train all) or 1..{num_blocks} "
            f"(train the last k of the {num_blocks} blocks)"
        )
    train_all = trainable_blocks == -1
    for param in backbone.parameters():
        param.requires_grad_(train_all)
    if trainable_blocks > 0:
        for module in [*blocks[num_blocks - trainable_blocks :], *tail]:
            for param in module.parameters():
                param.requires_grad_(True)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def is_missing(value: Any) -> bool:
    """True for omegaconf's MISSING marker ("???"), which config checks skip."""
    return isinstance(value, str) and value == MISSING


def check_choice(value: str, choices: Sequence[str], key: str) -> None:
    """Raise EncoderError naming `key` when `value` is not one of `choices` (MISSING passes)."""
    if not is_missing(value) and value not in choices:
        raise EncoderError(f"{key}={value!r} is not supported; choose one of {list(choices)}")


def check_int(value: Any, key: str, minimum: int) -> None:
    """Raise EncoderError naming `key` unless `value` is an integer >= `minimum` (MISSING passes)."""
    if is_missing(value):
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise EncoderError(f"{key} must be an integer, got {value!r}")
    if value < minimum:
        raise EncoderError(f"{key} must be >= {minimum}, got {value}")


def check_trainable_blocks(value: Any) -> None:
    """The config-time half of the freezing rule: -1, 0 or k >= 1 (k is checked against the backbone later)."""
    if is_missing(value):
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < -1:
        raise EncoderError(
            f"trainable_blocks={value!r} is out of range: use 0 (frozen), -1 (train all) or k >= 1 "
            "(train the last k blocks)"
        )


@contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Turn off transformers' (and huggingface_hub's) tqdm bars for one load or save, then restore them.

    transformers 5 draws a "Loading weights" bar for every `from_pretrained` (and "Writing model shards"
    for `save_pretrained`), so each stage-1 start would print one per Hugging Face backbone. Only the bars
    are silenced, not warnings or errors; if they were already off, they stay off.
    """
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if was_enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
