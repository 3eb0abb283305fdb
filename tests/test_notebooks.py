"""Notebooks run top to bottom (code cells executed in order, with a small budget)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib
import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, monkeypatch, tmp_path):
    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    cells = json.loads(path.read_text())["cells"]
    namespace: dict = {}
    for cell in cells:
        if cell["cell_type"] == "code":
            source = re.sub(r"^TOTAL_STEPS = .*$", "TOTAL_STEPS = 20_480", "".join(cell["source"]), flags=re.M)
            source = re.sub(r"^SEEDS = .*$", "SEEDS = 3", source, flags=re.M)
            exec(compile(source, f"{path.name}", "exec"), namespace)
    assert namespace["SEEDS"] == 3 and namespace["TOTAL_STEPS"] == 20_480  # the small budget was used


def test_there_are_notebooks():
    assert NOTEBOOKS
