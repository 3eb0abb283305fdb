"""Host-side views of the per-iteration metrics a training run returns (NumPy, no jax)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np


FINAL_EPISODES = 100  # how many of the last finished episodes make a run's final return


def final_return(metrics: Mapping[str, Any], episodes: int = FINAL_EPISODES) -> np.ndarray:
    """A run's final return: the mean return of its last ``episodes`` finished episodes.

    Counted back from the end in whole iterations: the window is the fewest trailing iterations
    that together hold at least ``episodes`` finished episodes (all of the run's episodes when
    fewer finished), and their returns are averaged episode-weighted (each iteration's mean
    return times its number of finished episodes). A window counted in episodes, not
    iterations, is defined whenever any episode has finished, however long the episodes are
    (a good CartPole agent finishes one episode per 500 steps per env), and it always averages
    about the same number of episodes.

    ``metrics`` arrays are ``(..., iterations)`` with ``episode_return`` and ``episodes`` per
    iteration; trailing NaN rows (padding of shorter runs in a sweep) are not iterations. The
    result has shape ``(...)`` and is NaN only where no episode finished at all.

    An offline run takes no env steps, so it has no training episodes: its final return is its
    latest evaluation's ``eval_return`` (NaN without evaluations).
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if "episode_return" not in metrics:
        shape = np.shape(next(iter(metrics.values())))[:-1]
        return latest(metrics["eval_return"]) if "eval_return" in metrics else np.full(shape, np.nan)
    returns = np.asarray(metrics["episode_return"], np.float64)
    counts = np.nan_to_num(np.asarray(metrics["episodes"], np.float64))
    # episodes finished from each iteration to the end (inclusive), and before it (exclusive)
    from_here = np.cumsum(counts[..., ::-1], axis=-1)[..., ::-1]
    after = from_here - counts
    in_window = (counts > 0) & (after < episodes)  # the window's oldest iteration tips it over
    weights = np.where(in_window, counts, 0.0)
    total = np.where(in_window, returns * weights, 0.0).sum(-1)  # a NaN return in the window stays NaN
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
