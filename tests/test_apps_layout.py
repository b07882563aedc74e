"""apps/ is laid out by stage with no import circle: common/ is shared and imports no stage, stage 1
(alignment/) never imports stage 2 (qa/), and the module graph under apps/ has no cycle (imports inside
functions count too: a lazy import is still a dependency)."""

from __future__ import annotations

import ast
from pathlib import Path

APPS = Path(__file__).resolve().parents[1] / "apps"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(APPS.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{apps module: the apps modules it imports}; `from pkg import sub` counts as importing pkg.sub."""
    modules = {_module_name(p): p for p in APPS.rglob("*.py") if "__main__" not in p.name}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    targets.append(sub if sub in modules else node.module)
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def test_no_import_circle_under_apps() -> None:
    graph = import_graph()
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt] if nxt in stack else [node, nxt]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_layers_common_below_stages() -> None:
    graph = import_graph()
    for module, deps in graph.items():
        if module.startswith("apps.common"):
            assert not [d for d in deps if d.startswith(("apps.alignment", "apps.qa"))], module
        if module.startswith("apps.alignment"):
            assert not [d for d in deps if d.startswith("apps.qa")], module


def test_graph_sees_real_edges() -> None:
    """The checker itself: it finds the edges that exist (a checker that sees nothing proves nothing)."""
    graph = import_graph()
    assert "apps.common.config" in graph["apps.common.cli"]
    assert "apps.alignment.model" in graph["apps.alignment.build"]


def test_entry_points_are_thin() -> None:
    for entry in ("train", "evaluate", "data"):
        text = (APPS / entry / "__main__.py").read_text()
        assert len(text.splitlines()) < 20, entry
