"""Safe checkpoint loading: no `torch.load` call in the repository's Python files without
`weights_only=True`, found by parsing (a call split over lines, an alias `import torch as t`, `from torch
import load` and a `**kwargs` call are all seen)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SKIP_DIRS = {".venv", ".git", "node_modules", "build", "dist", "__pycache__"}


def python_files() -> list[Path]:
    """Every .py file of the repository outside virtual environments, caches and hidden folders."""
    return sorted(
        p
        for p in REPO.rglob("*.py")
        if not any(part in SKIP_DIRS or part.startswith(".") for part in p.relative_to(REPO).parts[:-1])
    )


def unsafe_torch_loads(source: str) -> list[int]:
    """Line numbers of torch.load calls that do not pass the literal weights_only=True."""
    tree = ast.parse(source)
    torch_names = {"torch"}
    load_names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            torch_names |= {a.asname or a.name for a in node.names if a.name == "torch"}
        elif isinstance(node, ast.ImportFrom) and node.module == "torch":
            load_names |= {a.asname or a.name for a in node.names if a.name == "load"}
    bad = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        is_load = (
            isinstance(func, ast.Attribute)
            and func.attr == "load"
            and isinstance(func.value, ast.Name)
            and func.value.id in torch_names
        ) or (isinstance(func, ast.Name) and func.id in load_names)
        if not is_load:
            continue
        safe = any(
            kw.arg == "weights_only" and isinstance(kw.value, ast.Constant) and kw.value.value is True
            for kw in node.keywords
        )
        if not safe:
            bad.append(node.lineno)
    return bad


def test_checker_sees_what_a_grep_would_miss() -> None:
    """Guarantee (of the checker itself): multi-line calls, aliases, `from torch import load`, a
    `weights_only=False` and a `**kwargs` call are caught; a safe call is not."""
    source = (
        "import torch\nimport torch as t\nfrom torch import load as tl\n"
        "torch.load(\n    'a.pt',\n    map_location='cpu',\n)\n"  # line 4
        "t.load('b.pt', weights_only=False)\n"  # line 8
        "tl('c.pt')\n"  # line 9
        "torch.load('d.pt', **opts)\n"  # line 10
        "torch.load('e.pt',\n           weights_only=True)\n"  # safe
        "torch.save({}, 'f.pt')\n"
    )
    assert unsafe_torch_loads(source) == [4, 8, 9, 10]


def test_no_torch_load_without_weights_only() -> None:
    """Guarantee: every torch.load in apps/, packages/ (sources and tests), benchmarks/, tests/ and any
    other Python file of the repository passes weights_only=True, so loading a checkpoint or a
    downloaded file never unpickles arbitrary objects."""
    files = python_files()
    assert any("apps" in p.parts for p in files) and any("packages" in p.parts for p in files)
    offenders = [
        f"{path.relative_to(REPO)}:{line}"
        for path in files
        for line in unsafe_torch_loads(path.read_text(encoding="utf-8"))
    ]
    assert not offenders, f"torch.load without weights_only=True: {offenders}"
