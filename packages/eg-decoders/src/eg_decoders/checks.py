"""Value checks the decoder configs run in `__post_init__`; each raises DecoderError naming the key.

A message starts with the key as the dataclass names it (`hidden_size 30 must be divisible by num_heads
4`), without a prefix: the application that nests the config adds its path. Values equal to omegaconf's
MISSING ("???") are left unchecked until they are set. This module imports no decoder: every config
module (trm, tiny, qwen) imports it, never the other way round.
"""

from __future__ import annotations

from typing import Any

from eg_decoders.errors import DecoderError, is_missing


def check_type(config: Any, kind: str) -> None:
    """The config's `type` must be `kind` (the dataclass's own kind) unless still MISSING."""
    if not is_missing(config.type) and config.type != kind:
        raise DecoderError(f"type must be '{kind}' for {type(config).__name__}, got {config.type!r}")


def check_int(config: Any, key: str, minimum: int) -> None:
    """`config.<key>` must be an integer (not a bool) >= minimum."""
    value = getattr(config, key)
    if is_missing(value):
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise DecoderError(f"{key} must be an integer, got {value!r}")
    if value < minimum:
        raise DecoderError(f"{key} must be >= {minimum}, got {value}")


def check_range(config: Any, key: str, low: float, high: float, high_open: bool) -> None:
    """`config.<key>` must lie in [low, high] (or [low, high) when high_open)."""
    value = getattr(config, key)
    if is_missing(value):
        return
    inside = low <= value < high if high_open else low <= value <= high
    if not inside:
        raise DecoderError(f"{key} must be in [{low}, {high}{')' if high_open else ']'}, got {value}")


def check_choice(config: Any, key: str, choices: tuple[str, ...]) -> None:
    """`config.<key>` must be one of choices."""
    value = getattr(config, key)
    if not is_missing(value) and value not in choices:
        raise DecoderError(f"{key} {value!r} is unknown; use one of {list(choices)}")
