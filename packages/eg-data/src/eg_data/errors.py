"""The one exception type eg-data raises for problems a user can cause (paths, config values, data), and
the helpers its configs and optional features share: omegaconf's MISSING marker, and lazy imports of the
libraries that only an extra (`eg-data[demo]`, `eg-data[download]`) installs."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

MISSING = "???"  # omegaconf.MISSING, without importing omegaconf


class DataError(ValueError):
    """A user-fixable data problem: a bad path, config value or dataset; the message is one line."""


def is_missing(value: Any) -> bool:
    """Whether a config value is omegaconf's MISSING ("???"): such values are not checked."""
    return isinstance(value, str) and value == MISSING


def require_extra(module: str, extra: str, feature: str) -> ModuleType:
    """Import `module`, which only the `eg-data[extra]` extra installs; a DataError naming the extra when
    it is not installed. Only a missing `module` itself is translated: other import errors stay loud."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exn:
        if exn.name is None or exn.name.split(".")[0] != module.split(".")[0]:
            raise
        raise DataError(
            f"{feature} needs {module.split('.')[0]}, which is not installed; pip install 'eg-data[{extra}]'"
        ) from exn
