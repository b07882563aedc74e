"""Workspace-wide pytest setup for `uv run pytest` at the repo root (tests/ and every packages/*/tests).

Subprocesses started by the tests (apps, torchrun ranks, killed-and-resumed runs) write bytecode caches into
the venv even where the machine sets PYTHONDONTWRITEBYTECODE: without them each one recompiles torch,
transformers and open_clip (about 9 s of CPU per process on the project's 2-core machine).

Each package README's python code blocks run as tests through pytest-markdown-docs (its own collector and
runner; a block marked `python notest` is shown, not run; `python continuation` keeps the blocks before it),
each in a fresh temporary working directory, so what an example writes (`shards/train`, `out/run`) lands
there. Only package READMEs (their first line `# eg-...`) are collected, without `--markdown-docs`, which
would also import every module of the tree to read its docstrings. CI's standalone job of each package
copies this file beside the package's tests and README, so the same blocks run against the installed
package alone.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


def _is_package_readme(path: Path) -> bool:
    if path.name != "README.md":
        return False
    with path.open(encoding="utf-8") as f:
        return f.readline().startswith("# eg-")


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    """A package README becomes pytest-markdown-docs' test file (once: `--markdown-docs` collects it too)."""
    if parent.config.option.markdowndocs or not _is_package_readme(file_path):
        return None
    from pytest_markdown_docs.plugin import MarkdownTextFile

    return MarkdownTextFile.from_parent(parent, path=file_path)


@pytest.fixture(autouse=True)
def _readme_blocks_in_a_temp_dir(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """README code blocks run in their own empty working directory (other tests are left as they are)."""
    if request.node.get_closest_marker("markdown-docs") is not None:
        request.getfixturevalue("monkeypatch").chdir(tmp_path)
