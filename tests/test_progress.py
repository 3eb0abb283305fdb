"""Progress between chunks: a tqdm bar with env steps/s and mean return, or plain lines."""

from __future__ import annotations

import io
import sys

import numpy as np
import tqdm.std

from jaxrl import runner

CHUNK = {"episode_return": np.array([[1.0, np.nan], [3.0, 5.0]])}  # 2 seeds x 2 iterations


def test_bar_shows_steps_per_second_and_mean_return(monkeypatch, capsys):
    monkeypatch.setattr(runner, "_tqdm", lambda: tqdm.std.tqdm)
    bar = runner.ProgressBar(total=10, done=2, num_seeds=2, steps_per_iteration=100)
    bar.update(5, CHUNK, run_seconds=1.0)
    bar.close()
    err = capsys.readouterr().err
    # 2 seeds x 500 steps in 1 s; latest returns 1 (seed 0) and 5 (seed 1)
    assert "5/10" in err and "env steps/s=1,000" in err and "return=3.00" in err


def test_plain_lines_without_a_terminal(capsys):
    assert runner._tqdm() is None  # pytest captures stderr: not a terminal, not a notebook
    bar = runner.ProgressBar(total=10, done=0, num_seeds=2, steps_per_iteration=100)
    bar.update(5, CHUNK, run_seconds=1.0)
    bar.update(10, {"episode_return": np.full((2, 2), np.nan)}, run_seconds=2.0)
    bar.close()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["iter", "5/10", "env", "steps", "500/seed", "1,000", "steps/s", "return", "3.00"]
    assert lines[1].split()[-1] == "nan"


def test_bar_needs_tqdm_and_a_terminal(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    assert runner._tqdm() is not None
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # as if tqdm were not installed
    assert runner._tqdm() is None
