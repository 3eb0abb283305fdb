"""Plots of training results and evaluation statistics (matplotlib, imported on first use).

Every function draws on ``ax`` when given (returning its figure) or on a new figure, and returns
the ``matplotlib.figure.Figure``. On a Linux machine without a display, and when no backend was
chosen (``MPLBACKEND`` or an earlier ``import matplotlib.pyplot``), the Agg backend is selected so
plotting works headless.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from jaxrl import stats

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def pyplot() -> Any:
    """``matplotlib.pyplot``, imported on first use; the Agg backend on a Linux machine with no display."""
    headless = sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )
    if headless and "MPLBACKEND" not in os.environ and "matplotlib.pyplot" not in sys.modules:
        import matplotlib

        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _axes(ax: Axes | None, **subplots: Any) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    return pyplot().subplots(**subplots)


# ----------------------------------------------------------------------------- learning curves


def _smoothed_returns(values: np.ndarray, episodes: np.ndarray | None, window: int) -> np.ndarray:
    """Per-seed curve ``(seeds, iterations)`` without gaps, from per-iteration episode means.

    The value at iteration ``t`` is the mean return of the episodes that finished in the trailing
    ``window`` iterations ``(t - window, t]``, weighted by their number (``episodes``; without it,
    every non-NaN iteration counts once). Where no episode finished in the window the last value
    is carried forward; before the first finished episode it stays NaN.
    """
    weights = np.isfinite(values).astype(np.float64)
    if episodes is not None:
        weights *= np.asarray(episodes, dtype=np.float64)
    weighted = np.where(weights > 0, np.nan_to_num(values) * weights, 0.0)

    def trailing_sum(a: np.ndarray) -> np.ndarray:
        c = np.cumsum(a, axis=-1)
        c[..., window:] = c[..., window:] - c[..., :-window]
        return c

    total, count = trailing_sum(weighted), trailing_sum(weights)
    with np.errstate(invalid="ignore", divide="ignore"):
        curve = np.where(count > 0, total / count, np.nan)
    # Forward fill: index of the latest finite value at or before each iteration.
    idx = np.where(np.isfinite(curve), np.arange(curve.shape[-1]), 0)
    idx = np.maximum.accumulate(idx, axis=-1)
    filled = np.take_along_axis(curve, idx, axis=-1)
    seen = np.maximum.accumulate(np.isfinite(curve), axis=-1)
    return np.where(seen, filled, np.nan)


def learning_curves(
    metrics_by_label: Mapping[str, Mapping[str, Any]],
    x: str = "env_steps",
    y: str = "episode_return",
    ax: Axes | None = None,
    ci: float | None = 0.95,
    statistic: str = "iqm",
    smooth: int = 1,
    reps: int = 1000,
    seed: int = 0,
) -> Figure:
    """One line per label: ``statistic`` over seeds of ``y`` against ``x``, with a bootstrap band.

    Each value of ``metrics_by_label`` is a dict of ``(seeds, iterations)`` arrays, as jaxrl's
    training metrics (1-D arrays are one seed). ``y`` may be NaN in iterations where no episode
    finished; it is smoothed per seed over a trailing window of ``smooth`` iterations, weighted by
    the ``episodes`` array when present, and gaps are forward-filled (see ``_smoothed_returns``).
    The aggregate is drawn from the first iteration where every seed has a value. The band is a
    ``ci`` percentile bootstrap over seeds (whole curves resampled; ``None`` or one seed: no band).
    ``x`` missing from the metrics means the iteration index.
    """
    if not metrics_by_label:
        raise ValueError("metrics_by_label is empty: need at least one curve")
    if int(smooth) != smooth or smooth < 1:
        raise ValueError(f"smooth must be a positive integer number of iterations, got {smooth}")
    _, kernel = stats._statistic(statistic)

    def per_iteration(v: np.ndarray) -> np.ndarray:
        # (..., seeds, iterations) -> (..., iterations): the statistic over seeds at each iteration.
        return kernel(np.swapaxes(v, -1, -2)[..., None])

    fig, ax = _axes(ax, figsize=(6, 4))
    for label, metrics in metrics_by_label.items():
        if y not in metrics:
            raise ValueError(f"{label!r} has no metric {y!r}; it has {sorted(metrics)}")
        values = np.atleast_2d(np.asarray(metrics[y], dtype=np.float64))
        episodes = metrics.get("episodes")
        if episodes is not None:
            episodes = np.atleast_2d(np.asarray(episodes, dtype=np.float64))
        curve = _smoothed_returns(values, episodes, int(smooth))
        xs = (
            np.atleast_2d(np.asarray(metrics[x], dtype=np.float64)).mean(0)
            if x in metrics
            else np.arange(curve.shape[-1], dtype=np.float64)
        )
        valid = np.isfinite(curve).all(0)
        if not valid.any():
            raise ValueError(f"{label!r}: no iteration where every seed has a finite {y!r}")
        data = curve[:, valid]
        (line,) = ax.plot(xs[valid], per_iteration(data), label=label)
        if ci is not None and data.shape[0] > 1:
            _, low, high = stats.bootstrap_ci(
                data, per_iteration, reps=reps, confidence=ci, seed=seed, stratified=False
            )
            ax.fill_between(xs[valid], low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    has_x = all(x in m for m in metrics_by_label.values())
    ax.set_xlabel(x if has_x else "iteration")
    ax.set_ylabel(f"{y} ({statistic} over seeds)")
    ax.legend()
    return fig


# ----------------------------------------------------------------------------- aggregate statistics


def _rows(aggregate_result: Any) -> list[dict[str, Any]]:
    """Rows of ``stats.aggregate``'s result, whether a DataFrame or a list of dicts."""
    if hasattr(aggregate_result, "to_dict"):
        return aggregate_result.to_dict("records")
    return list(aggregate_result)


def interval_estimates(aggregate_result: Any, axes: Sequence[Axes] | None = None) -> Figure:
    """One panel per metric: each algorithm's interval as a bar and its point estimate as a tick.

    ``aggregate_result`` is what ``stats.aggregate`` returns. ``axes``, if given, holds one Axes
    per metric (in order of first appearance).
    """
    rows = _rows(aggregate_result)
    if not rows:
        raise ValueError("aggregate_result is empty")
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    algorithms = list(dict.fromkeys(r["algorithm"] for r in rows))
    if axes is None:
        fig, axes = pyplot().subplots(
            1, len(metrics), figsize=(3 * len(metrics), 0.5 * len(algorithms) + 1.2),
            sharey=True, squeeze=False,
        )
        axes = list(axes[0])
    else:
        axes = list(axes)
        if len(axes) != len(metrics):
            raise ValueError(f"need one Axes per metric ({len(metrics)}), got {len(axes)}")
        fig = axes[0].figure
    colors = pyplot().rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes, metrics):
        for row in (r for r in rows if r["metric"] == metric):
            i = algorithms.index(row["algorithm"])
            color = colors[i % len(colors)]
            bars = ax.barh(i, row["high"] - row["low"], left=row["low"], height=0.6, color=color,
                           alpha=0.6)
            for bar in bars:  # let autoscaling add a margin beyond the interval ends
                bar.sticky_edges.x.clear()
            ax.plot([row["point"]], [i], marker="|", markersize=14, color="k", linestyle="none")
        ax.set_title(metric)
        ax.set_yticks(range(len(algorithms)), algorithms)
        ax.grid(axis="x", alpha=0.3)
    return fig


def performance_profile_plot(
    score_dict: Mapping[str, Any],
    taus: Any | None = None,
    ax: Axes | None = None,
    ci: float | None = 0.95,
    reps: int = 2000,
    seed: int = 0,
    xlabel: str = "score τ",
) -> Figure:
    """Score distributions: fraction of runs × tasks above each ``tau``, one line per algorithm.

    ``taus`` defaults to 101 points spanning all scores. Bands are stratified bootstrap
    ``ci`` intervals (``None``: no band).
    """
    if not score_dict:
        raise ValueError("score_dict is empty: need at least one algorithm")
    matrices = {algo: stats.as_scores(s, f"scores of {algo!r}") for algo, s in score_dict.items()}
    if taus is None:
        pooled = np.concatenate([m.ravel() for m in matrices.values()])
        taus = np.linspace(pooled.min(), pooled.max(), 101)
    taus = np.asarray(taus, dtype=np.float64)
    fig, ax = _axes(ax, figsize=(6, 4))
    for algo, m in matrices.items():
        if ci is None:
            (line,) = ax.plot(taus, stats.performance_profile(m, taus), label=algo)
            continue
        point, low, high = stats.performance_profile_ci(m, taus, reps=reps, confidence=ci, seed=seed)
        (line,) = ax.plot(taus, point, label=algo)
        ax.fill_between(taus, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of runs with score > τ")
    ax.set_ylim(0, 1.02)
    ax.legend()
    return fig


def robustness_map(grid: Mapping[str, Sequence[float]], values: Any, ax: Axes | None = None,
                   label: str = "mean return") -> Figure:
    """A policy's score over a grid of env params: a heat map for two params (``values`` shaped
    ``(len(first), len(second))``, annotated), a line for one."""
    names = list(grid)
    values = np.asarray(values, dtype=np.float64)
    if len(names) not in (1, 2) or values.shape != tuple(len(v) for v in grid.values()):
        raise ValueError(f"need one or two params and values shaped by their grid, got {names} and {values.shape}")
    fig, ax = _axes(ax, figsize=(5, 4))
    if len(names) == 1:
        ax.plot(grid[names[0]], values, marker="o")
        ax.set_xlabel(names[0])
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        return fig
    image = ax.imshow(values, origin="lower", aspect="auto", cmap="viridis")
    ax.set_yticks(range(values.shape[0]), [f"{v:g}" for v in grid[names[0]]])
    ax.set_xticks(range(values.shape[1]), [f"{v:g}" for v in grid[names[1]]])
    ax.set_ylabel(names[0])
    ax.set_xlabel(names[1])
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, "nan" if np.isnan(v) else f"{v:.3g}", ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(image, ax=ax, label=label)
    return fig


def save(fig: Figure, path: str | os.PathLike[str], dpi: int = 150, close: bool = False) -> Path:
    """Write ``fig`` as a PNG at ``path`` (creating parent folders); ``close`` frees it in pyplot."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi, bbox_inches="tight")
    if close:
        pyplot().close(fig)
    return path


# ----------------------------------------------------------------------------- population-based training


def population(
    hparams: Mapping[str, Any],
    ends: Sequence[int],
    returns: Any,
    episodes: Any | None = None,
    log: Sequence[str] = (),
    smooth: int = 10,
) -> Figure:
    """A PBT population over training: one panel per hyperparameter with each member's value
    as a step line (its schedule, as exploit/explore changed it), and a panel of each member's
    episode return.

    ``hparams[name]`` is ``(generations, members)``: the value each member trained with during
    each generation, which ended at iteration ``ends[g]`` (exclusive). ``returns`` and
    ``episodes`` are ``(members, iterations)`` per-iteration metrics, smoothed over a trailing
    window of ``smooth`` iterations as in :func:`learning_curves`. Names in ``log`` get a log axis.
    """
    if not hparams:
        raise ValueError("hparams is empty: need at least one hyperparameter schedule")
    returns = np.atleast_2d(np.asarray(returns, dtype=np.float64))
    if episodes is not None:
        episodes = np.atleast_2d(np.asarray(episodes, dtype=np.float64))
    ends = np.asarray(ends)
    fig, axes = pyplot().subplots(len(hparams) + 1, 1, figsize=(7, 2.2 * (len(hparams) + 1)), sharex=True,
                                  squeeze=False)
    axes = list(axes[:, 0])
    colors = pyplot().rcParams["axes.prop_cycle"].by_key()["color"]
    starts = np.concatenate([[0], ends[:-1]])
    for ax, (name, values) in zip(axes, hparams.items()):
        values = np.asarray(values, dtype=np.float64)
        for m in range(values.shape[1]):  # the last value is repeated so the final step has a width
            ax.step(np.append(starts, ends[-1]), np.append(values[:, m], values[-1, m]), where="post",
                    color=colors[m % len(colors)], alpha=0.7, linewidth=1)
        ax.set_ylabel(name)
        if name in log:
            ax.set_yscale("log")
    curves = _smoothed_returns(returns, episodes, int(smooth))
    for m, curve in enumerate(curves):
        axes[-1].plot(np.arange(curve.shape[-1]), curve, color=colors[m % len(colors)], alpha=0.7, linewidth=1)
    axes[-1].set_ylabel("episode return")
    axes[-1].set_xlabel("iteration")
    return fig


def tuning(result: Any, smooth: int = 10) -> Figure:
    """A hyperparameter search (:class:`jaxrl.hpo.TuneResult`): left, every trial's return over
    training (mean over its tuning seeds, smoothed over ``smooth`` iterations; a candidate
    successive halving stopped ends where it stopped), the chosen one highlighted; right, the
    IQM with its bootstrap interval of the chosen values on the tuning seeds, on the test seeds,
    and of the config as given on the test seeds, each seed's score as a dot."""
    report = result.report()
    fig, (left, right) = pyplot().subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [2, 1]})
    returns, episodes = result.curves["episode_return"], result.curves.get("episodes")
    trained = np.isfinite(result.curves["env_steps"]).all(1)  # (trials, iterations)
    for i in range(returns.shape[0]):
        curve = np.nanmean(_smoothed_returns(returns[i], None if episodes is None else episodes[i], int(smooth)), 0) \
            if np.isfinite(returns[i]).any() else np.full(returns.shape[-1], np.nan)
        curve = np.where(trained[i], curve, np.nan)
        best = i == result.best_trial
        left.plot(np.arange(curve.size), curve, color="C3" if best else "0.5", alpha=1.0 if best else 0.4,
                  linewidth=2 if best else 1, label="chosen" if best else None)
    left.set_xlabel("iteration")
    left.set_ylabel("episode return (tuning seeds)")
    left.set_title(f"{result.method}: {len(result.trials)} trials on seeds {result.tuning_seeds}")
    left.legend()
    groups = [("chosen, tuning seeds", report["tuning"], result.tuning_scores),
              ("chosen, test seeds", report["test"], result.test_scores),
              ("as given, test seeds", report["baseline_test"], result.baseline_scores)]
    for y, (label, summary, scores) in enumerate(groups):
        scores = np.asarray(scores, float)
        right.scatter(scores, np.full(scores.shape, y) + 0.15, s=12, color="0.4")
        if summary["iqm"] is not None:
            right.errorbar([summary["iqm"]], [y], xerr=[[summary["iqm"] - summary["low"]],
                                                       [summary["high"] - summary["iqm"]]],
                           fmt="o", color="C3" if y < 2 else "C0", capsize=4)
    right.set_yticks(range(len(groups)), [g[0] for g in groups])
    right.invert_yaxis()
    right.set_xlabel(f"final return (IQM, {report['confidence']:.0%} CI)")
    fig.tight_layout()
    return fig
