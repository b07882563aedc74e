"""apps/ is laid out by stage with no import circle: common/ is shared and imports no stage, stage 1
(alignment/) never imports stage 2 (qa/), and the module graph under apps/ has no cycle (imports inside
functions count too: a lazy import is still a dependency)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from import_graph import find_circle
from import_graph import import_graph as walk

APPS = Path(__file__).resolve().parents[1] / "apps"


def import_graph() -> dict[str, set[str]]:
    """{apps module: the apps modules it imports} (entry points `__main__.py` left out)."""
    return walk(APPS, skip=("__main__",))


def test_no_import_circle_under_apps() -> None:
    circle = find_circle(import_graph())
    assert circle is None, "import circle: " + " -> ".join(circle or [])


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
