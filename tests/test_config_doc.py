"""docs/configs.md is generated from the config dataclasses and must match them; every field has a meaning;
the docs cite existing keys; the docs index lists every page."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from apps.common import config_doc
from apps.common.config import load_config

DOC = Path(__file__).resolve().parents[1] / "docs" / "configs.md"


def test_configs_md_is_up_to_date() -> None:
    expected = config_doc.render()
    current = DOC.read_text() if DOC.is_file() else ""
    assert current == expected, (
        config_doc.diff(current, expected, "docs/configs.md")
        + f"\ndocs/configs.md is out of date; run: {config_doc.COMMAND}"
    )


def test_every_field_has_a_meaning() -> None:
    missing = config_doc.missing_meanings()
    assert not missing, (
        "config fields without a meaning (add an attribute docstring, the string right below the field):\n"
        + "\n".join(missing)
    )


@dataclasses.dataclass
class _Inner:
    """Inner settings."""

    width: int = 4
    """How wide."""


@dataclasses.dataclass
class _Outer:
    """Outer settings.

    More text that is not the summary.
    """

    name: str = "???"
    """Required name | with a bar."""
    ratios: list[float] = dataclasses.field(default_factory=lambda: [0.5, 0.25])
    inner: _Inner = dataclasses.field(default_factory=lambda: _Inner(width=8))
    """The inner part."""
    extra: _Inner | None = None  # a comment is not a meaning
    """Optional part."""


def test_sections_rows_from_a_hand_written_tree() -> None:
    """Paths, types, defaults (the parent's default instance wins over the class default) and meanings."""
    got = [
        (s.path, s.optional, [(r.key, r.type, r.default, r.meaning) for r in s.rows])
        for s in config_doc.sections(_Outer)
    ]
    assert got == [
        (
            "",
            False,
            [
                ("name", "str", "required", "Required name | with a bar."),
                ("ratios", "list[float]", "[0.5, 0.25]", ""),
                ("inner", "section", "(below)", "The inner part."),
                ("extra", "section or null", "null", "Optional part."),
            ],
        ),
        ("inner", False, [("inner.width", "int", "8", "How wide.")]),
        ("extra", True, [("extra.width", "int", "4", "How wide.")]),
    ]
    assert config_doc.class_summary(_Outer) == "Outer settings.\n\nMore text that is not the summary."


@dataclasses.dataclass
class _Choice:
    """A `type`-picked variant."""

    type: str = "???"
    """Which."""
    small: _Inner | None = None
    """The small one."""


def test_a_section_beside_a_type_key_is_a_variant() -> None:
    got = {s.path: (s.optional, s.variant) for s in config_doc.sections(_Choice, "model.choice")}
    assert got == {"model.choice": (False, ""), "model.choice.small": (True, "small")}
    outer = {s.path: s.variant for s in config_doc.sections(_Outer)}
    assert outer["extra"] == ""  # optional, but no `type` key beside it


def test_documented_keys_and_defaults_are_what_the_loader_takes() -> None:
    """Every leaf key of the stage-2 tree (the TRM variant), set with --set to its documented default, is
    accepted (an unknown key is refused), and every resolved value equals the documented default."""
    schema = config_doc.load_root("apps.qa.config:QAConfig")
    required = ["stage1.checkpoint=ck.pt", "model.decoder.type=trm", "model.decoder.trm={}"]
    rows = [
        row
        for section in config_doc.sections(schema)
        if not section.optional or section.path == "model.decoder.trm"
        for row in section.rows
        if row.default != "required" and "section" not in row.type
    ]
    assert len(rows) > 60
    for overrides in ([], [f"{row.key}={row.default}" for row in rows]):
        cfg = load_config(schema, None, [*required, *overrides])  # --set fills required keys too
        assert cfg.stage1.checkpoint == "ck.pt"
        for row in rows:
            value = cfg
            for part in row.key.split("."):
                value = getattr(value, part)
            if row.key not in ("train.output_dir", "train.checkpoint_dir"):  # the stage names them
                assert config_doc.yaml_value(value) == row.default, row.key


def test_keys_cited_in_the_docs_exist() -> None:
    """Every `a.b.c` key path that docs/troubleshooting.md cites in backticks (`key`, `key: value`,
    `--set key=value`) is a key of a stage config."""
    keys = {row.key.replace("[]", "") for _, section in config_doc.all_sections() for row in section.rows}
    roots = {key.split(".")[0] for key in keys if "." in key}
    text = (DOC.parent / "troubleshooting.md").read_text()
    cited = set()
    for span in re.findall(r"`([^`\n]+)`", text):
        for token in re.split(r"[\s,]+", span):
            token = token.removeprefix("--set=").split("=")[0].rstrip(":")
            if re.fullmatch(r"[a-z_0-9]+(\.[a-z_0-9]+)+", token) and token.split(".")[0] in roots:
                cited.add(token)
    assert len(cited) > 30, sorted(cited)  # the pattern finds them
    unknown = sorted(cited - keys)
    assert not unknown, f"docs/troubleshooting.md cites keys no config has: {unknown}"


def test_docs_index_links_every_page_and_its_links_resolve() -> None:
    """docs/index.md links every docs/*.md page (a new page must be listed) and every relative link there
    points at a file that exists."""
    docs = DOC.parent
    text = (docs / "index.md").read_text()
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    relative = [t for t in targets if "://" not in t]
    missing = [t for t in relative if not (docs / t).resolve().exists()]
    assert not missing, f"docs/index.md links files that do not exist: {missing}"
    linked = {(docs / t).resolve() for t in relative}
    unlisted = sorted(p.name for p in docs.glob("*.md") if p.name != "index.md" and p.resolve() not in linked)
    assert not unlisted, f"docs/index.md does not list: {unlisted}"
