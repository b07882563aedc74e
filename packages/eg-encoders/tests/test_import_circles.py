"""No import circle between the modules of eg_encoders: every import counts, module-level, inside a function
(lazy) or under `if TYPE_CHECKING:`. Read with ast from the installed package's files, so it runs in the
package's standalone job too (the workspace's tests/test_package_imports.py walks all six packages)."""

from __future__ import annotations

import ast
from pathlib import Path

import eg_encoders

ROOT = Path(eg_encoders.__file__).resolve().parent


def import_graph() -> dict[str, set[str]]:
    """{module: the eg_encoders modules it imports}; `from eg_encoders import sub` counts as eg_encoders.sub."""
    names = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {name: set() for name in names}
    for name, path in names.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                subs = [f"{node.module}.{alias.name}" for alias in node.names]
                targets = [sub if sub in names else node.module for sub in subs]
            graph[name].update(t for t in targets if t in names and t != name)
    return graph


def test_no_import_circle() -> None:
    graph = import_graph()
    done: set[str] = set()

    def visit(node: str, stack: list[str]) -> None:
        for nxt in sorted(graph[node]):
            assert nxt not in stack, "import circle: " + " -> ".join(stack[stack.index(nxt) :] + [nxt])
            if nxt not in done:
                visit(nxt, stack + [nxt])
        done.add(node)

    for module in sorted(graph):
        visit(module, [module])


def test_graph_sees_real_edges() -> None:
    """Both towers' open_clip path is the shared module; debug's lazy import of text is an edge."""
    graph = import_graph()
    assert "eg_encoders.open_clip_models" in graph["eg_encoders.text"] & graph["eg_encoders.vision"]
    assert "eg_encoders.text" in graph["eg_encoders.debug"]  # inside write_sentence_transformer
