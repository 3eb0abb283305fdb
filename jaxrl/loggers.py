"""Loggers for the host driver: console, JSONL, CSV, TensorBoard and Weights & Biases.

Each receives, between compiled chunks, the new per-iteration rows of metrics with a leading
seed axis, ``{name: array (seeds, iterations)}``, and logs both the per-seed series and their
aggregate (mean over seeds, ignoring NaN). Optional back ends (tensorboardX, wandb) that are not
installed are skipped with a one-line note instead of an error.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from jaxrl.metrics import rows

Chunk = Mapping[str, np.ndarray]  # name -> (seeds, iterations)


class Logger(Protocol):
    def log(self, first_iteration: int, chunk: Chunk) -> None: ...

    def close(self) -> None: ...


def _aggregate(values: np.ndarray) -> float:
    values = np.asarray(values, np.float64)
    return float(np.nanmean(values)) if np.isfinite(values).any() else math.nan


class JsonlLogger:
    """One JSON object per iteration: ``{"iteration", name: [per seed], ...}`` (NaN -> null)."""

    def __init__(self, path: str | Path):
        self.file = open(path, "a")

    def log(self, first_iteration: int, chunk: Chunk) -> None:
        for row in rows(chunk, first_iteration):
            self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class CsvLogger:
    """Long format: one row per (iteration, seed) plus a ``seed = mean`` row per iteration."""

    def __init__(self, path: str | Path):
        self.path, self.file, self.writer = Path(path), None, None

    def log(self, first_iteration: int, chunk: Chunk) -> None:
        names = sorted(chunk)
        if self.writer is None:
            new = not self.path.exists() or self.path.stat().st_size == 0
            self.file = open(self.path, "a", newline="")
            self.writer = csv.writer(self.file)
            if new:
                self.writer.writerow(["iteration", "seed", *names])
        seeds, n = next(iter(chunk.values())).shape
        for i in range(n):
            for s in range(seeds):
                self.writer.writerow([first_iteration + i, s, *(float(chunk[k][s, i]) for k in names)])
            self.writer.writerow([first_iteration + i, "mean", *(_aggregate(chunk[k][:, i]) for k in names)])
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class TensorBoardLogger:
    """Scalars ``mean/NAME`` and ``seed_S/NAME`` against env steps (tensorboardX event files)."""

    def __init__(self, log_dir: str | Path):
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))

    def log(self, first_iteration: int, chunk: Chunk) -> None:
        steps = chunk.get("env_steps")
        seeds, n = next(iter(chunk.values())).shape
        for i in range(n):
            step = int(np.nanmax(steps[:, i])) if steps is not None else first_iteration + i
            for name, values in chunk.items():
                mean = _aggregate(values[:, i])
                if not math.isnan(mean):
                    self.writer.add_scalar(f"mean/{name}", mean, step)
                for s in range(seeds):
                    if not math.isnan(values[s, i]):
                        self.writer.add_scalar(f"seed_{s}/{name}", float(values[s, i]), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    """Logs ``mean/NAME`` and ``seed_S/NAME`` to a Weights & Biases run."""

    def __init__(self, config: Mapping[str, Any], project: str = "jaxrl", **init_kwargs: Any):
        import wandb

        self.run = wandb.init(project=project, config=dict(config), **init_kwargs)

    def log(self, first_iteration: int, chunk: Chunk) -> None:
        seeds, n = next(iter(chunk.values())).shape
        for i in range(n):
            row: dict[str, float] = {}
            for name, values in chunk.items():
                row[f"mean/{name}"] = _aggregate(values[:, i])
                row.update({f"seed_{s}/{name}": float(values[s, i]) for s in range(seeds)})
            self.run.log(row, step=first_iteration + i)

    def close(self) -> None:
        self.run.finish()


def make_loggers(names: Sequence[str], run_dir: str | Path, config: Mapping[str, Any] | None = None) -> list[Logger]:
    """Loggers by name (``jsonl``, ``csv``, ``tensorboard``, ``wandb``) writing under ``run_dir``.

    A back end whose package is missing is left out with a one-line note on stderr.
    """
    run_dir = Path(run_dir)
    makers = {
        "jsonl": lambda: JsonlLogger(run_dir / "metrics.jsonl"),
        "csv": lambda: CsvLogger(run_dir / "metrics.csv"),
        "tensorboard": lambda: TensorBoardLogger(run_dir / "tensorboard"),
        "wandb": lambda: WandbLogger(config or {}, name=run_dir.name, dir=str(run_dir)),
    }
    loggers: list[Logger] = []
    for name in names:
        if name not in makers:
            raise ValueError(f"unknown logger {name!r}; available: {', '.join(makers)}")
        try:
            loggers.append(makers[name]())
        except ImportError as err:
            print(f"note: {name} logging is off ({err.name} is not installed)", file=sys.stderr)
    return loggers


def log_all(loggers: Sequence[Logger], first_iteration: int, chunk: Chunk) -> None:
    for logger in loggers:
        try:
            logger.log(first_iteration, chunk)
        except Exception as err:  # a failing logger must not lose the training run
            warnings.warn(f"{type(logger).__name__} failed and is skipped: {err}", stacklevel=2)
