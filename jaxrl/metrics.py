"""Host-side views of the per-iteration metrics a training run returns (NumPy, no jax)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np


def final_return(metrics: Mapping[str, Any], window: float = 0.05) -> np.ndarray:
    """Mean return of the episodes that finished in the last ``window`` fraction of iterations.

    Weighted by the number of episodes per iteration (iterations where none finished count for
    nothing). ``metrics`` arrays are ``(..., iterations)``; trailing NaN rows (padding of
    shorter runs in a sweep) are not iterations. The result has shape ``(...)`` and is NaN where
    no episode finished in the window.
    """
    returns = np.asarray(metrics["episode_return"], np.float64)
    counts = np.asarray(metrics["episodes"], np.float64)
    valid = ~np.isnan(counts)
    n_valid = valid.sum(-1, keepdims=True)
    size = np.maximum(1, np.ceil(n_valid * window))
    in_window = valid & (np.arange(counts.shape[-1]) >= n_valid - size)
    weights = np.where(in_window, np.nan_to_num(counts), 0.0)
    total = (np.nan_to_num(returns) * weights).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weights.sum(-1) > 0, total / weights.sum(-1), np.nan)


def latest(values: np.ndarray) -> np.ndarray:
    """The last non-NaN value along the last axis (NaN if there is none)."""
    values = np.asarray(values, np.float64)
    valid = ~np.isnan(values)
    idx = np.where(valid.any(-1), values.shape[-1] - 1 - np.argmax(valid[..., ::-1], -1), 0)
    out = np.take_along_axis(values, idx[..., None], -1)[..., 0]
    return np.where(valid.any(-1), out, np.nan)


def rows(metrics: Mapping[str, Any], first_iteration: int = 0) -> Iterator[dict[str, Any]]:
    """One JSON-able row per iteration of ``(seeds, iterations)`` metrics: per-seed lists."""
    arrays = {k: np.asarray(v) for k, v in metrics.items()}
    n = next(iter(arrays.values())).shape[-1]
    for i in range(n):
        row: dict[str, Any] = {"iteration": first_iteration + i}
        for k, v in arrays.items():
            row[k] = [None if math.isnan(x) else x for x in v[..., i].astype(float).ravel().tolist()]
        yield row


def write_jsonl(path: str, rows_: Iterator[dict[str, Any]], mode: str = "a") -> None:
    with open(path, mode) as f:
        for row in rows_:
            f.write(json.dumps(row) + "\n")


def read_jsonl(path: str | Path) -> dict[str, np.ndarray]:
    """The metrics of a run folder's ``metrics.jsonl`` as ``(seeds, iterations)`` arrays (null -> NaN)."""
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    if not records:
        raise ValueError(f"{path} holds no metrics rows")
    names = [k for k in records[0] if k != "iteration"]
    return {k: np.array([[np.nan if x is None else x for x in r[k]] for r in records], np.float64).T for k in names}
