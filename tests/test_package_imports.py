"""No import circle between the modules of any of the six packages: imports inside functions (lazy ones)
and under `if TYPE_CHECKING:` count as edges, as in apps/ (tests/test_apps_layout.py)."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from import_graph import find_circle, import_graph

PACKAGES = Path(__file__).resolve().parents[1] / "packages"
NAMES = ["eg_data", "eg_decoders", "eg_encoders", "eg_losses", "eg_resampler", "eg_train"]


def _source(name: str) -> Path:
    return PACKAGES / name.replace("_", "-") / "src" / name


def test_every_package_is_walked() -> None:
    assert sorted(p.name for p in PACKAGES.glob("eg-*/src/eg_*")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_no_import_circle_inside_a_package(name: str) -> None:
    circle = find_circle(import_graph(_source(name)))
    assert circle is None, f"{name}: import circle " + " -> ".join(circle or [])


def test_lazy_and_type_checking_imports_are_edges(tmp_path: Path) -> None:
    """The walker itself: an import inside a function and one under TYPE_CHECKING close a circle."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from pkg.b import g\n    return g\n")
    (pkg / "b.py").write_text(
        textwrap.dedent(
            """
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from pkg import a
            def g(): ...
            """
        )
    )
    (pkg / "c.py").write_text("import pkg.a\n")
    graph = import_graph(pkg)
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}, "pkg.c": {"pkg.a"}}
    assert find_circle(graph) == ["pkg.a", "pkg.b", "pkg.a"]
    (pkg / "b.py").write_text("def g(): ...\n")  # the type-only import gone: one way
    assert find_circle(import_graph(pkg)) is None


def test_graph_sees_real_edges() -> None:
    """Edges that exist in the packages: module-level ones and a lazy one (inside a function)."""
    decoders = import_graph(_source("eg_decoders"))
    assert {"eg_decoders.trm", "eg_decoders.tiny", "eg_decoders.qwen"} <= decoders["eg_decoders.load"]
    encoders = import_graph(_source("eg_encoders"))
    assert "eg_encoders.open_clip_models" in encoders["eg_encoders.vision"]
    assert "eg_encoders.text" in encoders["eg_encoders.debug"]  # imported inside write_sentence_transformer
    assert "eg_encoders.debug" not in encoders["eg_encoders"]
