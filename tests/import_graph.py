"""The import graph of a tree of Python modules, read with `ast` (nothing is imported), and its circles.

Every import statement counts, wherever it sits: module level, inside a function (a lazy import is still
a dependency) and under `if TYPE_CHECKING:` (a type-only import still ties the two modules together).
`from pkg import sub` counts as importing pkg.sub when sub is a module of the tree, else as importing pkg
(its __init__). Shared by tests/test_apps_layout.py (apps/) and tests/test_package_imports.py (the six
packages); each package's own tests carry a copy of the same walk, since they may import nothing outside
the package.
"""

from __future__ import annotations

import ast
from pathlib import Path


def module_name(path: Path, root: Path) -> str:
    """Dotted name of the module at `path`, `root` being the top package's folder (apps/, src/eg_x)."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path, skip: tuple[str, ...] = ()) -> dict[str, set[str]]:
    """{module under root: the modules under root it imports}; files whose name contains a `skip` entry are
    left out (apps' `__main__.py` entry points)."""
    modules = {
        module_name(p, root): p
        for p in sorted(root.rglob("*.py"))
        if not any(s in p.name for s in skip) and "__pycache__" not in p.parts
    }
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    targets.append(sub if sub in modules else node.module)
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of graph as [a, b, ..., a] (depth-first, modules and edges in sorted order), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done (no circle through it)

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt, stack + [nxt])
                if found:
                    return found
        state[node] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            found = visit(module, [module])
            if found:
                return found
    return None
