"""The config reference (docs/configs.md), generated from the config dataclasses.

`uv run python -m apps.common.config_doc --write docs/configs.md` rewrites it; `--check` exits 1 when
the file differs. One table per section (a nested dataclass): every YAML key path, its type, its default
and its meaning. A field's meaning is its attribute docstring, the string literal right below the field
(the convention Sphinx autodoc, griffe and editors' hovers read):

    lr: float = -1.0
    \"\"\"Learning rate of this tower's trainable weights; -1 = train.lr.\"\"\"

The stages are imported lazily (apps.common sits below them); the trees documented are `ROOTS`.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import importlib
import inspect
import json
import sys
import textwrap
import types
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

MISSING = "???"  # omegaconf.MISSING: a required value
COMMAND = "uv run python -m apps.common.config_doc --write docs/configs.md"

# (title, "module:Class", how it is used); the order of docs/configs.md.
ROOTS = (
    (
        "Stage 1: alignment",
        "apps.alignment.config:AlignmentConfig",
        "`stage: alignment` (the default), run by `uv run apps/train --config FILE`; e.g. configs/demo.yaml.",
    ),
    (
        "Stage 2: question answering",
        "apps.qa.config:QAConfig",
        "`stage: qa`, run by `uv run apps/train --config FILE`; e.g. configs/demo_qa_trm.yaml.",
    ),
    (
        "apps/data demo",
        "apps.common.data_cli:DemoDataConfig",
        "`uv run apps/data demo [--config FILE] [--set KEY=VALUE]`.",
    ),
    (
        "apps/data urls",
        "eg_data:DownloadConfig",
        "`uv run apps/data urls --input LIST --out DIR [--config FILE] [--set KEY=VALUE]`.",
    ),
    (
        "apps/data speak",
        "eg_data:SpeakConfig",
        "`uv run apps/data speak --input DIR --out DIR [--config FILE] [--set KEY=VALUE]`.",
    ),
    (
        "apps/data audio-captions",
        "eg_data:AudioCaptionsConfig",
        (
            "`uv run apps/data audio-captions --input TABLE --audio-dir DIR --out DIR [--config FILE] "
            "[--set KEY=VALUE]`."
        ),
    ),
)


@dataclass
class Row:
    """One key of a section: its full YAML path, type, default (as YAML) and meaning."""

    key: str
    type: str
    default: str
    meaning: str


@dataclass
class Section:
    """One dataclass at one place in a tree: its key path ("" = the top level), class and rows."""

    path: str
    cls: type
    optional: bool
    rows: list[Row]
    variant: str = ""  # set when a sibling `type` key picks this section (e.g. model.decoder.trm)


@cache
def field_docs(cls: type) -> dict[str, str]:
    """{field name: its attribute docstring, whitespace-normalized} for the dataclass `cls` (and its bases)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        node = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0]
        assert isinstance(node, ast.ClassDef)
        for stmt, after in zip(node.body, node.body[1:]):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[stmt.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return docs


def class_summary(cls: type) -> str:
    """A class docstring, each paragraph on one line, paragraphs separated by a blank line."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    return "\n\n".join(" ".join(para.split()) for para in doc.split("\n\n") if para.strip())


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def type_name(tp: Any) -> str:
    """`int`, `list[float]`, `dict[str, float]`, `str or null`, `section`, ..."""
    inner, optional = _strip_optional(tp)
    if dataclasses.is_dataclass(inner):
        name = "section"
    elif typing.get_origin(inner) is list and dataclasses.is_dataclass(typing.get_args(inner)[0]):
        name = "list of sections"
    elif typing.get_origin(inner) in (list, dict, tuple):
        name = (
            f"{typing.get_origin(inner).__name__}[{', '.join(type_name(a) for a in typing.get_args(inner))}]"
        )
    else:
        name = getattr(inner, "__name__", str(inner))
    return f"{name} or null" if optional else name


def yaml_value(value: Any) -> str:
    """A default as it is written in YAML (flow style); MISSING is shown as required."""
    if isinstance(value, str) and value == MISSING:
        return "required"
    if dataclasses.is_dataclass(value):
        return "(below)"
    if isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
        return f"({len(value)} items, below)"
    return json.dumps(value)


def _default(f: dataclasses.Field, owner: Any) -> Any:
    if owner is not None:
        return getattr(owner, f.name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return MISSING


def sections(
    cls: type, path: str = "", owner: Any = None, optional: bool = False, variant: str = ""
) -> Iterator[Section]:
    """Depth first: the section of `cls` at `path` (its defaults from `owner`, an instance, where the
    parent's default holds one), then its nested sections, in field order. An optional section beside a
    `type` key is a variant: it applies when `type` names it."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    has_type = "type" in {f.name for f in dataclasses.fields(cls)}
    rows: list[Row] = []
    nested: list[tuple[str, type, Any, bool]] = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key = f"{path}.{f.name}" if path else f.name
        value = _default(f, owner)
        inner, is_optional = _strip_optional(hints[f.name])
        rows.append(Row(key, type_name(hints[f.name]), yaml_value(value), docs.get(f.name, "")))
        if dataclasses.is_dataclass(inner):
            nested.append((key, inner, value if dataclasses.is_dataclass(value) else None, is_optional))
        elif typing.get_origin(inner) is list and dataclasses.is_dataclass(typing.get_args(inner)[0]):
            nested.append((f"{key}[]", typing.get_args(inner)[0], None, True))
    yield Section(path, cls, optional, rows, variant)
    for key, inner, value, is_optional in nested:
        name = key.rsplit(".", 1)[-1]
        yield from sections(inner, key, value, is_optional, name if has_type and is_optional else "")


def load_root(spec: str) -> type:
    """`"module:Class"` -> the class."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def all_sections() -> Iterator[tuple[str, Section]]:
    """(root title, section) for every section of every root."""
    for title, spec, _ in ROOTS:
        for section in sections(load_root(spec)):
            yield title, section


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render() -> str:
    """The whole of docs/configs.md."""
    out = [
        "# Config reference",
        "",
        f"Generated from the config dataclasses by `{COMMAND}`; do not edit it by hand",
        "(tests/test_config_doc.py fails when it is out of date). A meaning is the field's attribute",
        "docstring in the code (the string right below the field); the dataclass named above each table",
        "is where to read more.",
        "",
        "Keys are YAML paths: `model.vision.encoder.pooling.type` is `type:` under `pooling:` under",
        "`encoder:` ... in the file, and the same path is what `--set KEY=VALUE` takes. `required`: no",
        "default, the file must set it. A section whose default is `null` is absent until the file sets",
        "it (`resampler: {}` takes the defaults listed); `sources[]` is each item of that list. Unknown",
        "keys, wrong types and bad values are refused when the config loads, with one line naming the key.",
        "",
    ]
    for title, spec, usage in ROOTS:
        out += [f"- [{title}](#{_anchor(title)}): {usage}"]
    for title, spec, usage in ROOTS:
        out += ["", f"## {title}", "", usage]
        for section in sections(load_root(spec)):
            where = f"`{section.path}`" if section.path else "top level"
            if section.variant:
                type_key = section.path.rsplit(".", 1)[0] + ".type"
                when = f" (when `{type_key}` is {section.variant})"
            else:
                when = " (when set)" if section.optional else ""
            out += ["", f"### {title}: {where}{when}", ""]
            summary = class_summary(section.cls)
            out += [f"{section.cls.__name__}: {summary}" if summary else section.cls.__name__, ""]
            out += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
            for row in section.rows:
                out.append(
                    f"| `{row.key}` | {_cell(row.type)} | `{_cell(row.default)}` | {_cell(row.meaning)} |"
                )
    return "\n".join(out) + "\n"


def _anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    kept = "".join(c for c in title.lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


def missing_meanings() -> list[str]:
    """`Class.field (at path)` for every field of the documented trees that has no attribute docstring."""
    seen: set[tuple[type, str]] = set()
    missing = []
    for _, section in all_sections():
        for row in section.rows:
            name = row.key.rsplit(".", 1)[-1]
            if not row.meaning and (section.cls, name) not in seen:
                seen.add((section.cls, name))
                missing.append(f"{section.cls.__module__}.{section.cls.__name__}.{name} (at {row.key})")
    return missing


def diff(current: str, expected: str, name: str) -> str:
    """A unified diff from the file as it is to the file as it should be."""
    lines = difflib.unified_diff(
        current.splitlines(keepends=True), expected.splitlines(keepends=True), name, f"{name} (generated)"
    )
    return "".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """`--write FILE` rewrites FILE; `--check FILE` prints a diff and exits 1 when it differs; else stdout."""
    parser = argparse.ArgumentParser(
        prog="python -m apps.common.config_doc", description=__doc__.splitlines()[0]
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", metavar="FILE", help="write the reference to FILE")
    group.add_argument("--check", metavar="FILE", help="exit 1 (printing a diff) when FILE is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        Path(args.write).write_text(text)
    elif args.check:
        path = Path(args.check)
        current = path.read_text() if path.is_file() else ""
        if current != text:
            print(diff(current, text, args.check) + f"\n{args.check} is out of date; run: {COMMAND}")
            return 1
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
