"""Every notebook runs top to bottom in a fresh kernel of the project's interpreter and shows its figures and tables."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

pytestmark = pytest.mark.integration

NOTEBOOKS = sorted((Path(__file__).parents[2] / "notebooks").glob("*.ipynb"))
# Enough leads for every chart to have positives on the holdout, few enough to run in well under a minute.
SMALL_NOTEBOOK_LEADS = "4000"
CELL_TIMEOUT_SECONDS = 300
# Words a notebook's main table must hold: the figures its reader comes for.
TABLE_WORDS = {
    "model_report.ipynb": ("roc_auc", "capture_top10"),
    "threshold_tuning.ipynb": ("weekly_leads", "past_sla_weekly", "expected SQLs/week"),
}


def _kernel_manager() -> AsyncKernelManager:
    """A python3 kernel of this interpreter, whatever kernelspecs the user or system has installed.

    With no kernel directories to search, jupyter_client falls back to ipykernel's built-in spec, whose command is
    sys.executable: the kernel imports the project's packages from the same environment as the test.
    """
    specs = KernelSpecManager(kernel_dirs=[])
    return AsyncKernelManager(kernel_name="python3", kernel_spec_manager=specs)


def _outputs(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [output for cell in nb.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]


def test_there_are_notebooks_to_run() -> None:
    assert NOTEBOOKS, "no notebooks/*.ipynb found"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_and_shows_figures_and_metrics(path: Path, tmp_path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    stored = [c for c in nb.cells if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not stored, f"{path.name} is stored with outputs; clear them so diffs stay small"
    # A last cell, run only here: which interpreter the kernel is.
    nb.cells.append(nbformat.v4.new_code_cell("import sys\nsys.executable"))
    client = NotebookClient(
        nb, km=_kernel_manager(), timeout=CELL_TIMEOUT_SECONDS, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute(env={**os.environ, "LEADSCORE_NOTEBOOK_LEADS": SMALL_NOTEBOOK_LEADS})

    outputs = _outputs(nb)
    errors = [o for o in outputs if o.output_type == "error" or (o.output_type == "stream" and o.name == "stderr")]
    assert not errors, f"{path.name} wrote errors or warnings: {errors}"
    assert nb.cells[-1].outputs[0].data["text/plain"] == repr(sys.executable)
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{path.name} shows no figure"
    tables = "".join(o.data["text/html"] for o in outputs if "text/html" in o.get("data", {}))
    words = TABLE_WORDS.get(path.name, ())
    assert "<table" in tables and all(w in tables for w in words), f"{path.name} shows no table with {words}"
    assert list(tmp_path.iterdir()) == [], f"{path.name} left files in its working directory"
