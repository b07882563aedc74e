"""The tutorial notebooks (notebooks/*.ipynb) run top to bottom at CI sizes in this venv's kernel, write only
into their working folder, and are stored without outputs.

Each notebook's `parameters` cell holds its tutorial sizes; the test adds a cell after it with CI sizes (as
papermill injects parameters), executes the notebook with nbclient in the `python3` kernel, which
jupyter_client starts with this interpreter, and fails on the first failing cell. The notebooks check their
own numbers as they go (the text search's top-1 digit against eval.json's label@1, the hand-computed
answer-only loss against eg-decoders'), so a wrong number fails a cell too.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbclient
import nbformat
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # --import-mode=importlib: the conftest helpers
from conftest import REPO, app_env

NOTEBOOKS = REPO / "notebooks"
# CI sizes: a few steps on small batches, every 15th held-out sample (12 of 180)
CI_PARAMETERS = {
    "01_alignment.ipynb": "MAX_STEPS = 4\nBATCH_SIZE = 16\nVAL_EVERY = 4\nNUM_WORKERS = 0\nHELDOUT_EVERY = 15",
    "02_qa.ipynb": (
        "MAX_STEPS = 6\nBATCH_SIZE = 16\nVAL_EVERY = 6\nNUM_WORKERS = 0\nHELDOUT_EVERY = 15\nSWEEP_SAMPLES = 12"
    ),
}
KERNEL_CHECK = "import sys\nprint(sys.executable)"


def run_notebook(name: str, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Execute notebooks/`name` at CI sizes with EG_NOTEBOOK_WORKDIR=`workdir`; the executed notebook."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    (at,) = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", [])]
    injected = nbformat.v4.new_code_cell(CI_PARAMETERS[name], metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(at + 1, injected)
    nb.cells.insert(0, nbformat.v4.new_code_cell(KERNEL_CHECK))
    for key, value in {**app_env(), "EG_NOTEBOOK_WORKDIR": str(workdir)}.items():
        monkeypatch.setenv(key, value)  # the kernel inherits this process's environment
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    try:
        client.execute()  # CellExecutionError on the first failing cell
    finally:
        nbformat.write(nb, workdir / name)  # executed, with outputs: to look at after a failure
    return nb


def text_of(cell: Any) -> str:
    """The stdout/stderr text a code cell printed."""
    return "".join(out.get("text", "") for out in cell.outputs if out.output_type == "stream")


def written_in_repo(experiment: str) -> list[Path]:
    """Folders of `experiment` in the repository's own outputs/ and checkpoints/ (a notebook that did not
    change into its working folder would write there)."""
    return [
        REPO / top / experiment for top in ("outputs", "checkpoints") if (REPO / top / experiment).exists()
    ]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, demo_data: Path) -> Path:
    """The notebooks' working folder, with the session's demo dataset in place of a fresh build."""
    work = tmp_path_factory.mktemp("notebooks")
    (work / "data").mkdir()
    (work / "data" / "demo").symlink_to(demo_data, target_is_directory=True)
    return work


def test_notebooks_are_stored_without_outputs() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "*.ipynb"], cwd=NOTEBOOKS, capture_output=True, text=True, check=False
    )
    if tracked.returncode == 0:  # every notebook in git is one the suite runs (an executed copy is not)
        assert sorted(Path(p).name for p in tracked.stdout.split()) == sorted(CI_PARAMETERS)
    for path in [NOTEBOOKS / name for name in sorted(CI_PARAMETERS)]:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert nb.metadata.kernelspec.name == "python3", path.name
        assert [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])], (
            f"{path.name}: no parameters"
        )
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, (
                    f"{path.name}: {cell.source[:60]!r}"
                )


@pytest.mark.slow
def test_alignment_notebook_runs(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nb = run_notebook("01_alignment.ipynb", workdir, monkeypatch)
    assert Path(text_of(nb.cells[0]).strip()).resolve() == Path(sys.executable).resolve()  # the venv's kernel
    printed = "".join(text_of(c) for c in nb.cells if c.cell_type == "code")
    assert f"working folder: {workdir.resolve()}" in printed
    assert "held-out retrieval (test, 12 samples" in printed
    for dim in (32, 64, 128):
        assert f"dim {dim:>3}: text -> image top-1 is the same digit" in printed
    images = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})
    ]
    assert len(images) >= 7  # samples, 2 curves, retrieval plot, 2 embedding views, search results
    checkpoint = workdir / "checkpoints" / "nb_alignment" / "checkpoint_best.pt"
    assert checkpoint.is_file() and (workdir / "outputs" / "nb_alignment" / "eval.json").is_file()
    assert not written_in_repo("nb_alignment")


@pytest.mark.slow
def test_qa_notebook_runs(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not (workdir / "checkpoints" / "nb_alignment" / "checkpoint_best.pt").is_file():
        run_notebook("01_alignment.ipynb", workdir, monkeypatch)  # run alone (-k): stage 1 first
    nb = run_notebook("02_qa.ipynb", workdir, monkeypatch)
    printed = "".join(text_of(c) for c in nb.cells if c.cell_type == "code")
    assert "held-out QA (test_every15, 12 samples, 72 question-answer pairs)" in printed
    assert "answer tokens are" in printed and "<- trained" in printed
    # the sweep's trained setting, on a reloaded checkpoint, answers the rows eval.json kept as the run did
    same = re.search(r"(\d+) of (\d+) rows also in eval.json answered the same", printed)
    assert same and same[1] == same[2] and int(same[2]) > 0, same
    assert (workdir / "outputs" / "nb_qa" / "eval.json").is_file()
    assert not written_in_repo("nb_qa")
