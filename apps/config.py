"""Typed experiment configs: YAML files loaded into trees of dataclasses, with dotted `--set` overrides.

Each component owns a small dataclass (eg-train's `TrainerConfig`, eg-encoders' `VisionEncoderConfig`, ...);
the apps nest them into one tree. OmegaConf structured configs do the merging and the type checking, so an
unknown key, a wrong type or a missing required value is caught before anything runs. Every failure a user can
cause becomes one `ConfigError` line naming the file and the key path; the apps print it and exit 2.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file, key or override that cannot be used; the message is one line naming the key and file."""


def _describe(exc: OmegaConfBaseException) -> str:
    """One line from an OmegaConf error: its message without the multi-line context OmegaConf appends."""
    msg = str(getattr(exc, "msg", None) or exc).strip().splitlines()[0]
    return msg.rstrip(".")


def _key_of(exc: OmegaConfBaseException) -> str:
    return str(getattr(exc, "full_key", "") or "")


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise ConfigError(f"{path}: not valid YAML{line}: {getattr(exc, 'problem', exc)}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(raw).__name__}")
    return raw


def _parse_override(item: str) -> tuple[str, Any]:
    """`a.b.c=value` -> ("a.b.c", value); the value is read as YAML so lists and numbers work."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.lr=1e-4")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return key, value


def _apply_override(cfg: DictConfig, key: str, value: Any, item: str) -> None:
    parent_key, _, leaf = key.rpartition(".")
    try:
        parent = OmegaConf.select(cfg, parent_key, throw_on_missing=False) if parent_key else cfg
    except OmegaConfBaseException as exc:
        raise ConfigError(f"--set {item}: key '{key}': {_describe(exc)}") from None
    if not isinstance(parent, DictConfig) or leaf not in parent:
        raise ConfigError(f"--set {item}: unknown key '{key}'")
    try:
        OmegaConf.update(cfg, key, value, merge=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"--set {item}: key '{key}': {_describe(exc)}") from None


def load_config(schema: type[T], path: str | Path, overrides: Sequence[str] = ()) -> T:
    """Load `path` (YAML) into an instance of the dataclass `schema`, then apply `KEY=VALUE` overrides.

    Raises ConfigError, with the file and the dotted key in its one-line message, for a missing or unreadable
    file, an unknown key, a value of the wrong type, a bad override, a required value left unset, or a value
    that the dataclass's own validation (`__post_init__`) rejects.
    """
    path = Path(path)
    raw = _read_yaml(path)
    cfg = OmegaConf.structured(schema)
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.create(raw))
    except OmegaConfBaseException as exc:
        key = _key_of(exc)
        raise ConfigError(
            f"{path}: key '{key}': {_describe(exc)}" if key else f"{path}: {_describe(exc)}"
        ) from None
    for item in overrides:
        _apply_override(cfg, *_parse_override(item), item)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(
            f"{path}: required key '{missing[0]}' has no value (set it in the file or with --set)"
        )
    try:
        return OmegaConf.to_object(cfg)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{path}: key '{_key_of(exc)}': {_describe(exc)}") from None
    except ValueError as exc:  # a component's own validation in __post_init__
        raise ConfigError(f"{path}: {str(exc).splitlines()[0]}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config tree as plain dicts/lists/scalars (for checkpoints and logs)."""
    if dataclasses.is_dataclass(cfg):
        return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]
    return OmegaConf.to_container(OmegaConf.create(cfg), resolve=True)  # type: ignore[return-value]


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML, loadable again with `load_config`."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
