"""The one exception type eg-decoders raises for errors a user can cause (config, paths, batches)."""

from typing import Any

MISSING = "???"  # omegaconf.MISSING: a value a YAML must still fill in; its checks wait until it is set


class DecoderError(ValueError):
    """A bad decoder config value, model path, saved directory or batch; the message says what to fix.

    Config messages start with the key as written in the config dataclass; the application that nests
    the config adds the path in front.
    """


def is_missing(value: Any) -> bool:
    """True for omegaconf's MISSING marker ("???"), which config checks skip."""
    return isinstance(value, str) and value == MISSING
