"""Typed experiment configs: YAML files loaded into trees of dataclasses, with dotted `--set` overrides.

Each component owns a small dataclass (eg-train's `TrainerConfig`, eg-encoders' `VisionEncoderConfig`, ...);
the stages nest them into one tree. OmegaConf structured configs do the merging and the type checking, so an
unknown key, a wrong type or a missing required value is caught before anything runs. The tree is then
built bottom-up by `_build`, which knows where each dataclass sits in the YAML: a component's own validation
(its `__post_init__`) names the key relative to itself (`temperature must be > 0`), and the path is added here
(`losses.infonce.temperature must be > 0`). The packages never learn where they are nested. Every failure a
user can cause becomes one `ConfigError` line naming the file and the key path; the apps print it and exit 2.
"""

from __future__ import annotations

import dataclasses
import types
import typing
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


def read_yaml(path: Path) -> dict[str, Any]:
    """The YAML mapping in `path` (an empty file is {}); ConfigError for a missing file or bad YAML."""
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
    if parent is None and parent_key:  # an unset optional section (e.g. model.decoder.trm): its defaults
        try:
            OmegaConf.update(cfg, parent_key, {}, merge=True)
            parent = OmegaConf.select(cfg, parent_key, throw_on_missing=False)
        except OmegaConfBaseException:
            parent = None  # not a section (an unknown key, or a plain optional value)
    # keys(), not `in`: a DictConfig says a required (MISSING) key is not in it, and --set must fill one
    if not isinstance(parent, DictConfig) or leaf not in parent.keys():  # noqa: SIM118
        raise ConfigError(f"--set {item}: unknown key '{key}'")
    try:
        OmegaConf.update(cfg, key, value, merge=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"--set {item}: key '{key}': {_describe(exc)}") from None


def load_config(schema: type[T], path: str | Path | None, overrides: Sequence[str] = ()) -> T:
    """Load `path` (YAML; None = the schema's defaults) into an instance of the dataclass `schema`, then
    apply `KEY=VALUE` overrides.

    Raises ConfigError, with the file and the dotted key in its one-line message, for a missing or unreadable
    file, an unknown key, a value of the wrong type, a bad override, a required value left unset, or a value
    that the dataclass's own validation (`__post_init__`) rejects.
    """
    raw = read_yaml(Path(path)) if path is not None else {}
    path = Path(path) if path is not None else Path("--set")
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
    return _build(schema, OmegaConf.to_container(cfg, resolve=True), "", path)


def build_config(schema: type[T], raw: dict[str, Any], source: str | Path) -> T:
    """Validate a plain dict (e.g. the config stored in a checkpoint) as `schema`, as `load_config` does."""
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.create(raw))
    except OmegaConfBaseException as exc:
        key = _key_of(exc)
        raise ConfigError(
            f"{source}: key '{key}': {_describe(exc)}" if key else f"{source}: {_describe(exc)}"
        ) from None
    return _build(schema, OmegaConf.to_container(cfg, resolve=True), "", Path(str(source)))


def _build(tp: Any, value: Any, key: str, path: Path) -> Any:
    """Instantiate `value` (plain containers) as type `tp`, dataclasses bottom-up, adding `key` to errors."""
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(tp) if arg is not type(None)]
        tp = options[0] if len(options) == 1 else Any
        origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        hints = typing.get_type_hints(tp)
        kwargs = {
            f.name: _build(hints[f.name], value[f.name], f"{key}.{f.name}" if key else f.name, path)
            for f in dataclasses.fields(tp)
            if f.init and f.name in value
        }
        try:
            return tp(**kwargs)
        except ValueError as exc:  # the component's own validation, naming keys relative to itself
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"{path}: {key}.{message}" if key else f"{path}: {message}") from None
    if origin is list and isinstance(value, list):
        (item,) = typing.get_args(tp) or (Any,)
        return [_build(item, v, f"{key}[{i}]", path) for i, v in enumerate(value)]
    if origin is dict and isinstance(value, dict):
        item = (typing.get_args(tp) or (Any, Any))[1]
        return {k: _build(item, v, f"{key}.{k}", path) for k, v in value.items()}
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config tree as plain dicts/lists/scalars (for checkpoints and logs)."""
    if dataclasses.is_dataclass(cfg):
        return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]
    return OmegaConf.to_container(OmegaConf.create(cfg), resolve=True)  # type: ignore[return-value]


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML, loadable again with `load_config`."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
