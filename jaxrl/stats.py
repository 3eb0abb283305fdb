"""Aggregate evaluation statistics over runs and tasks, with bootstrap confidence intervals.

The protocol of Agarwal et al. (2021), "Deep RL at the Edge of the Statistical Precipice": report
robust aggregates (interquartile mean, median, mean, optimality gap) of a ``(runs, tasks)`` score
matrix with stratified bootstrap confidence intervals, score-distribution performance profiles and
probability of improvement, instead of a mean over a handful of seeds.

NumPy only: these run on the host, on the results of training. Score matrices have shape
``(runs, tasks)`` (runs are seeds; a 1-D array is one task) and must not contain NaN.

Statistic kernels (the ``_iqm`` family, and any callable passed as ``statistic``) are *batched*:
they take an array ``(..., runs, tasks)`` and reduce the last two axes, so a whole chunk of
bootstrap replicates is evaluated in one call instead of a Python loop over replicates.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

import numpy as np

Statistic = Callable[[np.ndarray], np.ndarray]
StatisticLike = Union[str, Statistic]

# Elements of resampled (or intermediate) data per bootstrap chunk: bounds memory to ~128 MiB.
_CHUNK_ELEMENTS = 1 << 24


# ----------------------------------------------------------------------------- validation


def as_scores(scores: Any, name: str = "scores") -> np.ndarray:
    """``scores`` as a float64 ``(runs, tasks)`` matrix; raises ``ValueError`` if empty or NaN."""
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (runs, tasks) or (runs,), got {x.shape}")
    _check_values(x, name)
    return x


def _check_values(x: np.ndarray, name: str) -> None:
    if x.size == 0:
        raise ValueError(f"{name} is empty (shape {x.shape}): need at least one run and one task")
    nans = int(np.isnan(x).sum())
    if nans:
        raise ValueError(
            f"{name} contains {nans} NaN value(s) out of {x.size}; "
            "drop or fill failed runs before aggregating"
        )


def _check_bootstrap(reps: int, confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if int(reps) != reps or reps < 1:
        raise ValueError(f"reps must be a positive integer, got {reps}")


def _same_tasks(named: Mapping[str, np.ndarray]) -> None:
    tasks = {name: x.shape[-1] for name, x in named.items()}
    if len(set(tasks.values())) > 1:
        raise ValueError(f"all score matrices must have the same number of tasks, got {tasks}")


def _result(x: np.ndarray) -> float | np.ndarray:
    x = np.asarray(x)
    return float(x) if x.ndim == 0 else x


# ----------------------------------------------------------------------------- point estimates


def _pool(x: np.ndarray) -> np.ndarray:
    """Flatten the trailing ``(runs, tasks)`` axes (or the only axis of a 1-D array) into one."""
    return x.reshape(x.shape[:-2] + (-1,)) if x.ndim >= 2 else x.reshape(-1)


@functools.lru_cache(maxsize=64)
def _iqm_weights(n: int) -> np.ndarray:
    """Weight of each order statistic in the 25%-trimmed mean of ``n`` values.

    Order statistic ``i`` covers ``[i, i + 1)`` of the sorted sample; its weight is the length of
    the overlap with the middle half ``[n/4, 3n/4]``, divided by ``n/2``. Values straddling a
    quartile thus count fractionally, so the estimate is exact for any ``n`` (``scipy``'s
    ``trim_mean`` instead drops ``floor(n/4)`` whole values per side; the two agree when ``4 | n``).
    """
    i = np.arange(n)
    lo, hi = n / 4, 3 * n / 4
    w = np.clip(np.minimum(i + 1, hi) - np.maximum(i, lo), 0.0, None) / (hi - lo)
    w.flags.writeable = False
    return w


def _iqm(x: np.ndarray) -> np.ndarray:
    pooled = np.sort(_pool(x), axis=-1)
    return pooled @ _iqm_weights(pooled.shape[-1])


def _mean(x: np.ndarray) -> np.ndarray:
    return _pool(x).mean(-1)


def _median(x: np.ndarray) -> np.ndarray:
    return np.median(_pool(x), -1)


def _optimality_gap(x: np.ndarray, threshold: float = 1.0) -> np.ndarray:
    return np.maximum(threshold - _pool(x), 0.0).mean(-1)


def _point(kernel: Statistic, name: str, doc: str) -> Callable[..., float | np.ndarray]:
    """Public form of a kernel: validates the input, returns a float for a single matrix."""

    def statistic(scores: Any, *args: Any, **kwargs: Any) -> float | np.ndarray:
        x = np.asarray(scores, dtype=np.float64)
        _check_values(x, "scores")
        return _result(kernel(x, *args, **kwargs))

    statistic.__name__ = statistic.__qualname__ = name
    statistic.__doc__ = doc
    return statistic


iqm = _point(
    _iqm,
    "iqm",
    """Interquartile mean of all run × task scores pooled: the 25%-trimmed mean.

    Robust to outlier runs yet uses half the data, unlike the median. Uses the fractional-weight
    definition (values straddling a quartile count in proportion), exact for any number of scores.
    Accepts ``(runs, tasks)``, ``(runs,)`` or batches ``(..., runs, tasks)``.
    """,
)
mean = _point(_mean, "mean", "Mean of all run × task scores pooled (batched like ``iqm``).")
median = _point(_median, "median", "Median of all run × task scores pooled (batched like ``iqm``).")
optimality_gap = _point(
    _optimality_gap,
    "optimality_gap",
    """Mean shortfall ``max(threshold - score, 0)`` of the pooled scores (``threshold=1.0``).

    How far the scores are from ``threshold`` (1.0 = e.g. human level after ``normalize``), ignoring
    by how much runs exceed it. Lower is better.
    """,
)

#: Named statistics accepted wherever a ``statistic`` or ``metrics`` entry is a string.
STATISTICS: dict[str, Statistic] = {
    "iqm": _iqm,
    "mean": _mean,
    "median": _median,
    "optimality_gap": _optimality_gap,
}


def _statistic(statistic: StatisticLike) -> tuple[str, Statistic]:
    """``(name, batched kernel)`` for a statistic given by name or as a callable."""
    if callable(statistic):
        return getattr(statistic, "__name__", repr(statistic)), statistic
    if statistic not in STATISTICS:
        raise ValueError(f"unknown statistic {statistic!r}; choose from {sorted(STATISTICS)}")
    return statistic, STATISTICS[statistic]


# ----------------------------------------------------------------------------- bootstrap


def _resample(rng: np.random.Generator, x: np.ndarray, n: int, stratified: bool) -> np.ndarray:
    """``n`` bootstrap replicates of ``x`` ``(runs, tasks)``, shape ``(n, runs, tasks)``.

    Stratified: runs are drawn with replacement independently within each task, so every replicate
    keeps every task. Otherwise whole runs (rows) are drawn, keeping a run's tasks together.
    """
    runs, tasks = x.shape
    if stratified:
        return x[rng.integers(0, runs, size=(n, runs, tasks)), np.arange(tasks)]
    return x[rng.integers(0, runs, size=(n, runs))]


def _bootstrap(
    samples: Sequence[np.ndarray],
    fn: Callable[..., np.ndarray],
    reps: int,
    seed: int,
    stratified: bool,
    per_rep: int | None = None,
) -> np.ndarray:
    """Bootstrap distribution ``(reps, ...)`` of ``fn`` applied to resampled ``samples``.

    Each sample is resampled independently. Replicates are evaluated in chunks of at most
    ``_CHUNK_ELEMENTS`` elements (``per_rep`` per replicate, by default the resampled data), so
    memory stays bounded while the work is vectorised within a chunk.
    """
    rng = np.random.default_rng(seed)
    per_rep = per_rep or sum(s.size for s in samples)
    chunk = max(1, _CHUNK_ELEMENTS // per_rep)
    parts = []
    for start in range(0, reps, chunk):
        n = min(chunk, reps - start)
        parts.append(np.asarray(fn(*(_resample(rng, s, n, stratified) for s in samples))))
    return np.concatenate(parts, axis=0)


def _interval(
    point: np.ndarray, distribution: np.ndarray, confidence: float
) -> tuple[float | np.ndarray, float | np.ndarray, float | np.ndarray]:
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(distribution, [alpha, 1.0 - alpha], axis=0)
    return _result(point), _result(low), _result(high)


def bootstrap_ci(
    scores: Any,
    statistic: StatisticLike,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    stratified: bool = True,
) -> tuple[Any, Any, Any]:
    """``(point, low, high)``: ``statistic`` of ``scores`` and its percentile bootstrap interval.

    ``statistic`` is a name from ``STATISTICS`` or a batched callable ``(..., runs, tasks) ->
    (...)`` (the public ``iqm``, ``mean``, ... qualify; it may also return a vector per
    replicate, giving vector bounds). ``stratified`` resamples runs within each task (the default,
    as with few runs per task), otherwise whole runs. Deterministic for a given ``seed``.
    """
    x = as_scores(scores)
    _check_bootstrap(reps, confidence)
    _, fn = _statistic(statistic)
    return _interval(fn(x), _bootstrap([x], fn, reps, seed, stratified), confidence)


def aggregate(
    score_dict: Mapping[str, Any],
    metrics: Sequence[StatisticLike] = ("iqm", "mean", "median"),
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    stratified: bool = True,
    as_frame: bool | None = None,
) -> Any:
    """Point estimates and bootstrap intervals of several ``metrics`` for each algorithm.

    ``score_dict`` maps algorithm names to ``(runs, tasks)`` matrices with the same tasks. All
    metrics of an algorithm share the same bootstrap replicates. Returns tidy rows with keys
    ``algorithm, metric, point, low, high``: a pandas DataFrame when pandas is importable (or
    ``as_frame=True``), else a list of dicts (``as_frame=False`` forces the list).
    """
    if not score_dict:
        raise ValueError("score_dict is empty: need at least one algorithm")
    if not metrics:
        raise ValueError("metrics is empty: need at least one statistic")
    _check_bootstrap(reps, confidence)
    matrices = {algo: as_scores(s, f"scores of {algo!r}") for algo, s in score_dict.items()}
    _same_tasks(matrices)
    named = [_statistic(m) for m in metrics]

    def stacked(x: np.ndarray) -> np.ndarray:
        return np.stack([np.asarray(fn(x)) for _, fn in named], axis=-1)

    rows = []
    for algo, x in matrices.items():
        dist = _bootstrap([x], stacked, reps, seed, stratified)
        points, lows, highs = (np.atleast_1d(v) for v in _interval(stacked(x), dist, confidence))
        for (name, _), p, lo, hi in zip(named, points, lows, highs):
            rows.append(
                {"algorithm": algo, "metric": name, "point": float(p), "low": float(lo),
                 "high": float(hi)}
            )
    if as_frame is False:
        return rows
    try:
        import pandas as pd
    except ImportError:
        if as_frame:
            raise
        return rows
    return pd.DataFrame(rows, columns=["algorithm", "metric", "point", "low", "high"])


# ----------------------------------------------------------------------------- profiles & comparisons


def _taus(taus: Any) -> np.ndarray:
    t = np.atleast_1d(np.asarray(taus, dtype=np.float64))
    if t.ndim != 1 or t.size == 0 or np.isnan(t).any():
        raise ValueError(f"taus must be a non-empty 1-D array without NaN, got shape {t.shape}")
    return t


def _profile(x: np.ndarray, taus: np.ndarray) -> np.ndarray:
    return (_pool(x)[..., None] > taus).mean(-2)


def performance_profile(scores: Any, taus: Any) -> np.ndarray:
    """Fraction of all run × task scores strictly above each threshold in ``taus``.

    The score distribution of Agarwal et al.: a whole curve instead of one number, non-increasing
    in ``tau``. Returns an array shaped like ``taus`` (1-D).
    """
    return _profile(as_scores(scores), _taus(taus))


def performance_profile_ci(
    scores: Any,
    taus: Any,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    stratified: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(profile, low, high)`` arrays over ``taus``: ``performance_profile`` with bootstrap bands."""
    x, t = as_scores(scores), _taus(taus)
    _check_bootstrap(reps, confidence)
    fn = functools.partial(_profile, taus=t)
    dist = _bootstrap([x], fn, reps, seed, stratified, per_rep=x.size * (t.size + 1))
    return _interval(fn(x), dist, confidence)


def _improvement(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) + P(X = Y) / 2 per task (Mann-Whitney U / (m n)), averaged over tasks."""
    a, b = x[..., :, None, :], y[..., None, :, :]
    per_task = (a > b).mean((-3, -2)) + 0.5 * (a == b).mean((-3, -2))
    return per_task.mean(-1)


def _pair(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    a, b = as_scores(x, "x"), as_scores(y, "y")
    _same_tasks({"x": a, "y": b})
    return a, b


def probability_of_improvement(x: Any, y: Any) -> float:
    """Probability that a run of ``x`` scores above a run of ``y`` on the same task (ties ½).

    Computed per task from all pairs of runs (the Mann-Whitney statistic normalised to [0, 1]) and
    averaged over tasks. ``x`` and ``y`` may have different numbers of runs but not of tasks.
    """
    return float(_improvement(*_pair(x, y)))


def probability_of_improvement_ci(
    x: Any,
    y: Any,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    stratified: bool = True,
) -> tuple[float, float, float]:
    """``(point, low, high)`` of ``probability_of_improvement``; ``x``, ``y`` resampled independently."""
    a, b = _pair(x, y)
    _check_bootstrap(reps, confidence)
    per_rep = a.shape[0] * b.shape[0] * a.shape[1] * 2
    dist = _bootstrap([a, b], _improvement, reps, seed, stratified, per_rep=per_rep)
    return _interval(_improvement(a, b), dist, confidence)


# ----------------------------------------------------------------------------- normalisation


def normalize(scores: Any, low: Any, high: Any) -> np.ndarray:
    """``(scores - low) / (high - low)`` per task, e.g. random → 0 and human/expert → 1.

    ``low`` and ``high`` are scalars or one value per task (the last axis of ``scores``). NaN
    scores pass through unchanged, so learning curves can be normalised too.
    """
    x = np.asarray(scores, dtype=np.float64)
    tasks = x.shape[-1] if x.ndim >= 2 else 1
    lo, hi = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    for name, v in (("low", lo), ("high", hi)):
        if v.ndim > 1 or (v.ndim == 1 and v.shape[0] != tasks):
            raise ValueError(
                f"{name} must be a scalar or have one value per task ({tasks}), got shape {v.shape}"
            )
    same = np.atleast_1d(hi == lo)
    if same.any():
        bad = np.flatnonzero(same).tolist()
        raise ValueError(f"high equals low for task(s) {bad}: cannot normalise")
    return (x - lo) / (hi - lo)


def robustness(values: Any, quantile: float = 0.1) -> dict[str, float]:
    """Robustness of one policy over a set of conditions (e.g. a grid of env params): the
    ``mean`` of ``values`` (one score per condition), the ``worst`` case and the ``quantile``
    (a low quantile: bad conditions that are not the single worst). NaN scores (no finished
    episode) are ignored; all NaN gives NaN."""
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("robustness needs at least one value")
    x = x[~np.isnan(x)]
    if not x.size:
        return {"mean": float("nan"), "worst": float("nan"), f"q{quantile:g}": float("nan")}
    return {"mean": float(x.mean()), "worst": float(x.min()), f"q{quantile:g}": float(np.quantile(x, quantile))}

