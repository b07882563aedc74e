"""The README's `## Example` runs: its python block(s), executed in order in one namespace in a temp folder.

The README is read from the source tree when these tests run there, else from the installed package's
metadata (pyproject `readme = "README.md"` makes it the long description of every build), so the
standalone CI run, which copies tests/ out of the tree and installs the package non-editable, runs the
example of the README that the package ships.
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest

PACKAGE = "eg-data"


def readme() -> str:
    """The README: the source tree's when reachable, else the installed distribution's."""
    local = Path(__file__).resolve().parents[1] / "README.md"
    if local.is_file() and local.read_text().startswith(f"# {PACKAGE}\n"):
        return local.read_text()
    text = importlib.metadata.metadata(PACKAGE).get_payload()
    assert text and text.startswith(f"# {PACKAGE}\n"), f"{PACKAGE}'s metadata carries no README"
    return text


def example_blocks(text: str) -> list[str]:
    """The ```python blocks of the `## Example` section."""
    assert "\n## Example\n" in text, "the README has no '## Example' section"
    section = text.split("\n## Example\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def test_readme_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = example_blocks(readme())
    assert blocks, "the README's '## Example' section has no python block"
    monkeypatch.chdir(tmp_path)  # anything the example writes lands here
    namespace: dict = {"__name__": "readme_example"}
    for i, block in enumerate(blocks):
        code = compile(block, f"{PACKAGE} README.md, example block {i + 1}", "exec")
        exec(code, namespace)  # noqa: S102 - running the README's own example is the point


def test_readme_links_its_changelog() -> None:
    """The README links CHANGELOG.md; in the source tree that file exists and is this package's."""
    assert "[CHANGELOG.md](CHANGELOG.md)" in readme()
    changelog = Path(__file__).resolve().parents[1] / "CHANGELOG.md"
    if changelog.parent.joinpath("README.md").is_file():  # the source tree, not the standalone copy
        assert changelog.read_text().startswith(f"# Changelog: {PACKAGE}\n")
