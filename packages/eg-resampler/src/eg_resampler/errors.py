"""The one exception type eg-resampler raises for mistakes a user can make (config values, input shapes)."""

from typing import Any

MISSING = "???"  # omegaconf.MISSING: a value a YAML must still fill in; its checks wait until it is set


class ResamplerError(ValueError):
    """A bad resampler configuration or input; the message names the key or argument and the fix.

    Config messages start with the key as written in the config dataclass (`dim must be >= 1`); the
    application that nests the config adds the path in front.
    """


def is_missing(value: Any) -> bool:
    """True for omegaconf's MISSING marker ("???"), which config checks skip."""
    return isinstance(value, str) and value == MISSING
