"""The notebooks are stored executed (outputs and figures inline), current with their build
scripts, and they run top to bottom."""

from __future__ import annotations

import runpy
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
BUILD = runpy.run_path(str(ROOT / "notebooks" / "build_notebooks.py"))


def test_every_notebook_has_a_builder():
    assert sorted(BUILD["NOTEBOOKS"]) == sorted(p.name for p in NOTEBOOKS) != []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_stored_notebook_is_current_and_executed(path):
    """Same cells as its build script, every code cell executed in order, no error, and the
    figures stored inline as PNG (so the page shows them without running anything)."""
    nb = nbformat.read(path, as_version=4)
    built = BUILD["NOTEBOOKS"][path.name]()
    assert [(c.cell_type, c.source) for c in nb.cells] == \
        [(c.cell_type, c.source) for c in built.cells], "rerun notebooks/build_notebooks.py"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum(bool(c.outputs) for c in code) >= len(code) - 1  # only the import cell is silent
    assert any("image/png" in o.get("data", {}) for o in outputs), "no inline figure"
    text = "".join(c.source for c in nb.cells)
    assert "savefig" not in text and "circle's sphere" not in text


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
