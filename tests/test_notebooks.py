"""Notebooks run top to bottom in a real Jupyter kernel (nbclient), with a small budget.

The only change made before running is the budget: the lines ``TOTAL_STEPS = ...`` and
``SEEDS = ...`` that every notebook starts with are set to small values.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
SMALL = {"TOTAL_STEPS": "20_480", "SEEDS": "3"}
# autorl compiles about fifteen programs (PBT, successive halving's rungs, evolution strategies,
# three Acrobot runs, a randomized run and its evaluation): ~200 s of the default run's ~20 minutes
# on 2 cores, so it runs in the slow suite; each API it calls has its own tests in the default run
# (test_pbt, test_hpo, test_meta, test_randomize, test_evaluate)
SLOW_NOTEBOOKS = {"autorl"}


def shrink(notebook: nbformat.NotebookNode) -> set[str]:
    """Set every budget line in the notebook's code cells to its small value; returns the
    names that were found (each must appear exactly once)."""
    found: list[str] = []
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        for name, value in SMALL.items():
            cell.source, count = re.subn(rf"^{name} = .*$", f"{name} = {value}", cell.source, flags=re.M)
            found += [name] * count
    assert len(found) == len(set(found)), f"a budget variable is set twice: {found}"
    return set(found)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.slow) if p.stem in SLOW_NOTEBOOKS else p
                                  for p in NOTEBOOKS], ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path):
    notebook = nbformat.read(path, as_version=4)
    assert shrink(notebook) == set(SMALL), "every notebook sets TOTAL_STEPS and SEEDS once, near the top"
    client = NotebookClient(notebook, timeout=540, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the traceback, if any cell fails
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors


def test_there_are_notebooks():
    assert NOTEBOOKS
