"""The workspace's own rules, checked statically: package layout, versions, and the dependency direction.

No eg-* package may depend on or import another eg-* package or apps/ (architecture: "Dependency
direction"); each has its pyproject, README, CHANGELOG, typed src/ package and its own tests; the
root declares every package once and its README links each package README.
"""

import ast
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(p for p in (ROOT / "packages").glob("eg-*") if p.is_dir())
NAMES = [p.name for p in PACKAGES]


def _module_name(package: Path) -> str:
    return package.name.replace("-", "_")


def _imported_roots(path: Path) -> set[str]:
    """Top-level module names imported by a Python file (absolute imports only)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_the_six_packages_exist():
    assert NAMES == ["eg-data", "eg-decoders", "eg-encoders", "eg-losses", "eg-resampler", "eg-train"]


@pytest.mark.parametrize("package", PACKAGES, ids=NAMES)
def test_package_layout(package):
    module = package / "src" / _module_name(package)
    for required in ("pyproject.toml", "README.md", "CHANGELOG.md"):
        assert (package / required).is_file(), f"{package.name} lacks {required}"
    assert (module / "__init__.py").is_file() and (module / "py.typed").is_file()
    assert list((package / "tests").glob("test_*.py")), f"{package.name} has no tests/test_*.py"


@pytest.mark.parametrize("package", PACKAGES, ids=NAMES)
def test_pyproject_name_version_and_no_eg_dependency(package):
    project = tomllib.loads((package / "pyproject.toml").read_text())["project"]
    assert project["name"] == package.name
    init = (package / "src" / _module_name(package) / "__init__.py").read_text()
    assert re.search(rf'^__version__ = "{re.escape(project["version"])}"$', init, re.MULTILINE), (
        f"{package.name}: __version__ differs from pyproject version {project['version']}"
    )
    requirement_names = {re.split(r"[\s<>=!~;\[]", dep)[0].lower() for dep in project.get("dependencies", [])}
    assert not requirement_names & set(NAMES), f"{package.name} depends on another eg-* package"


@pytest.mark.parametrize("package", PACKAGES, ids=NAMES)
def test_no_imports_across_packages_or_of_apps(package):
    own = _module_name(package)
    forbidden = {_module_name(p) for p in PACKAGES} - {own} | {"apps"}
    if own == "eg_encoders":  # the one allowed edge: towers with a Perceiver Resampler, an optional extra
        extras = tomllib.loads((package / "pyproject.toml").read_text())["project"]["optional-dependencies"]
        assert extras.get("resampler") == ["eg-resampler"], "eg-encoders' resampler extra is eg-resampler"
        forbidden -= {"eg_resampler"}
    for path in sorted([*(package / "src").rglob("*.py"), *(package / "tests").rglob("*.py")]):
        bad = _imported_roots(path) & forbidden
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("package", PACKAGES, ids=NAMES)
def test_every_module_opens_with_a_docstring(package):
    for path in sorted((package / "src").rglob("*.py")):
        assert ast.get_docstring(ast.parse(path.read_text())), (
            f"{path.relative_to(ROOT)} has no module docstring"
        )


@pytest.mark.parametrize("package", PACKAGES, ids=NAMES)
def test_every_package_readme_links_its_changelog(package):
    """The README (whose python blocks the suite runs: the root conftest.py) links CHANGELOG.md, and that
    file is this package's."""
    readme = (package / "README.md").read_text()
    assert readme.startswith(f"# {package.name}\n") and "[CHANGELOG.md](CHANGELOG.md)" in readme
    assert (package / "CHANGELOG.md").read_text().startswith(f"# Changelog: {package.name}\n")
    assert not (package / "tests" / "test_readme.py").exists(), (
        "README blocks run through pytest-markdown-docs"
    )


def test_root_declares_every_package_and_readme_links_them():
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert root["tool"]["uv"]["workspace"]["members"] == ["packages/*"]
    assert set(root["tool"]["uv"]["sources"]) == set(NAMES)
    assert all(root["tool"]["uv"]["sources"][n] == {"workspace": True} for n in NAMES)
    readme = (ROOT / "README.md").read_text()
    for name in NAMES:
        assert f"(packages/{name}/README.md)" in readme, f"README.md does not link packages/{name}/README.md"
    assert "uv run pytest" in readme
