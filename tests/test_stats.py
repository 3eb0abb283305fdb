"""Evaluation statistics (jaxrl.stats) against hand-computed values, and the plots built on them."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy.stats import trim_mean  # noqa: E402

from jaxrl import plots, stats  # noqa: E402

RNG = np.random.default_rng(0)
SCORES = RNG.normal(size=(10, 4))


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ----------------------------------------------------------------------------- point estimates


@pytest.mark.parametrize(
    "values, expected",
    [
        ([1, 2, 3, 4], 2.5),  # middle two
        ([5], 5.0),
        ([1, 3], 2.0),  # n < 4: each value half in the middle half
        ([0, 1, 2, 3, 100], (0.75 * 1 + 2 + 0.75 * 3) / 2.5),  # n = 5: quartiles at 1.25, 3.75
        ([10, 0, 1, 2, 3, 100], (0.5 * 1 + 2 + 3 + 0.5 * 10) / 3),  # n = 6, unsorted
        ([-5, 1, 2, 50, 3, 4, 100], (0.25 * 1 + 2 + 3 + 4 + 0.25 * 50) / 3.5),  # n = 7
    ],
)
def test_iqm_hand_computed(values, expected):
    assert stats.iqm(values) == pytest.approx(expected)


def test_iqm_matches_trimmed_mean_when_divisible_by_four_and_pools_tasks():
    x = RNG.normal(size=(6, 2))  # 12 scores
    assert stats.iqm(x) == pytest.approx(trim_mean(x.ravel(), 0.25))
    assert stats.iqm([-100.0, 2.0, 4.0, 100.0]) == pytest.approx(3.0)
    assert stats.iqm([[2.0, 4.0], [2.0, 4.0]]) == pytest.approx(stats.mean([2.0, 4.0]))


def test_mean_median_optimality_gap_and_batching():
    x = np.array([[0.0, 2.0], [1.0, 5.0]])
    assert stats.mean(x) == 2.0
    assert stats.median(x) == 1.5
    assert stats.optimality_gap([0.2, 0.5, 1.3]) == pytest.approx((0.8 + 0.5 + 0) / 3)
    assert stats.optimality_gap([1.0, 3.0], threshold=2.0) == pytest.approx(0.5)
    batch = np.stack([x, x + 1])
    np.testing.assert_allclose(stats.iqm(batch), [stats.iqm(x), stats.iqm(x + 1)])


def test_normalize_per_task():
    x = np.array([[0.0, 10.0], [5.0, 20.0]])
    np.testing.assert_allclose(stats.normalize(x, [0.0, 10.0], [10.0, 20.0]), [[0, 0], [0.5, 1]])
    np.testing.assert_allclose(stats.normalize([1.0, np.nan], 0.0, 2.0), [0.5, np.nan])
    with pytest.raises(ValueError, match="one value per task"):
        stats.normalize(x, [0.0, 1.0, 2.0], 3.0)
    with pytest.raises(ValueError, match=r"high equals low for task\(s\) \[1\]"):
        stats.normalize(x, [0.0, 1.0], [1.0, 1.0])


# ----------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_contains_point_and_is_deterministic():
    point, low, high = stats.bootstrap_ci(SCORES, "iqm", reps=500, seed=3)
    assert point == stats.iqm(SCORES)
    assert low < point < high
    assert stats.bootstrap_ci(SCORES, "iqm", reps=500, seed=3) == (point, low, high)
    assert stats.bootstrap_ci(SCORES, "iqm", reps=500, seed=4) != (point, low, high)
    # A public statistic works as a batched callable too; confidence widens the interval.
    assert stats.bootstrap_ci(SCORES, stats.iqm, reps=500, seed=3) == (point, low, high)
    _, low99, high99 = stats.bootstrap_ci(SCORES, "iqm", reps=500, seed=3, confidence=0.99)
    assert low99 <= low and high99 >= high


def test_bootstrap_ci_narrows_with_more_runs():
    rng = np.random.default_rng(1)
    widths = []
    for runs in (5, 50, 500):
        _, low, high = stats.bootstrap_ci(rng.normal(size=(runs, 3)), "mean", reps=300)
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    # The standard error of the mean shrinks like 1 / sqrt(runs).
    assert widths[1] / widths[2] == pytest.approx(np.sqrt(10), rel=0.3)


def test_stratified_bootstrap_resamples_within_tasks():
    # Task 0 is constant, task 1 varies: drawing runs within each task keeps task 0's scores (and
    # so its mean) fixed in every replicate, whereas pooling scores across tasks would not.
    x = np.stack([np.full(8, 3.0), np.arange(8.0)], axis=1)

    def task_means(v: np.ndarray) -> np.ndarray:
        return v.mean(-2)

    _, low, high = stats.bootstrap_ci(x, task_means, reps=300)
    assert low[0] == high[0] == 3.0
    assert high[1] - low[1] > 1.0


def test_stratified_vs_whole_run_resampling_differ():
    # Tasks are perfectly anti-correlated across runs: resampling whole runs keeps each run's
    # sum constant (zero-width interval), resampling within tasks breaks the pairing.
    x = np.stack([np.arange(6.0), -np.arange(6.0)], axis=1)
    _, low, high = stats.bootstrap_ci(x, "mean", reps=300, stratified=False)
    assert low == pytest.approx(0.0) and high == pytest.approx(0.0)
    _, low, high = stats.bootstrap_ci(x, "mean", reps=300, stratified=True)
    assert high - low > 0.5


def test_bootstrap_chunks_large_inputs(monkeypatch):
    monkeypatch.setattr(stats, "_CHUNK_ELEMENTS", 100)  # forces many chunks of 2 replicates
    point, low, high = stats.bootstrap_ci(SCORES, "median", reps=201)
    assert low < point < high


def test_aggregate_tidy_rows():
    scores = {"a": SCORES, "b": SCORES + 10}
    rows = stats.aggregate(scores, metrics=("iqm", "mean", "optimality_gap"), reps=200, as_frame=False)
    assert [(r["algorithm"], r["metric"]) for r in rows] == [
        (a, m) for a in "ab" for m in ("iqm", "mean", "optimality_gap")
    ]
    by = {(r["algorithm"], r["metric"]): r for r in rows}
    assert by["a", "mean"]["point"] == pytest.approx(SCORES.mean())
    assert by["b", "iqm"]["point"] == pytest.approx(by["a", "iqm"]["point"] + 10)
    assert by["b", "optimality_gap"]["point"] == 0.0
    for r in rows:
        assert r["low"] <= r["point"] <= r["high"]
    # Same result as bootstrapping each metric alone with the same seed.
    assert (by["a", "iqm"]["low"], by["a", "iqm"]["high"]) == stats.bootstrap_ci(SCORES, "iqm", reps=200)[1:]
    frame = stats.aggregate(scores, reps=50)
    assert list(frame.columns) == ["algorithm", "metric", "point", "low", "high"] and len(frame) == 6


# ----------------------------------------------------------------------------- profiles & improvement


def test_performance_profile_exact_and_monotone():
    x = np.array([[0.0, 1.0], [2.0, 3.0]])
    np.testing.assert_allclose(stats.performance_profile(x, [-1, 0, 0.5, 2, 3]), [1, 0.75, 0.75, 0.25, 0])
    taus = np.linspace(-3, 3, 50)
    point, low, high = stats.performance_profile_ci(SCORES, taus, reps=200)
    for curve in (point, low, high):
        assert np.all(np.diff(curve) <= 0)
    assert np.all(low <= point) and np.all(point <= high)


def test_probability_of_improvement():
    x = np.array([[1.0, 5.0], [2.0, 6.0]])
    y = np.array([[0.0, 5.0], [3.0, 7.0], [1.0, 8.0]])
    # Task 0: pairs (1>0, 1<3, 1=1, 2>0, 2<3, 2>1) -> (3 + 0.5) / 6; task 1: (5=5, 6>5) -> 1.5 / 6.
    assert stats.probability_of_improvement(x, y) == pytest.approx((3.5 / 6 + 1.5 / 6) / 2)
    assert stats.probability_of_improvement(SCORES, SCORES) == pytest.approx(0.5)
    point, low, high = stats.probability_of_improvement_ci(SCORES + 1, SCORES, reps=200)
    assert 0.5 < low < point < high <= 1.0


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: stats.iqm([]), "empty"),
        (lambda: stats.bootstrap_ci(np.zeros((0, 3)), "iqm"), "empty"),
        (lambda: stats.bootstrap_ci([1.0, np.nan, np.nan], "iqm"), "2 NaN value"),
        (lambda: stats.mean([[1.0, np.nan]]), "1 NaN value"),
        (lambda: stats.bootstrap_ci(SCORES, "iqm", confidence=1.0), r"confidence must be in \(0, 1\)"),
        (lambda: stats.bootstrap_ci(SCORES, "iqm", confidence=0), "confidence"),
        (lambda: stats.bootstrap_ci(SCORES, "iqm", reps=0), "reps"),
        (lambda: stats.bootstrap_ci(SCORES, "trimmed"), "unknown statistic 'trimmed'"),
        (lambda: stats.bootstrap_ci(np.zeros((2, 2, 2)), "iqm"), "shape"),
        (lambda: stats.aggregate({"a": SCORES, "b": SCORES[:, :3]}), "same number of tasks"),
        (lambda: stats.aggregate({}), "empty"),
        (lambda: stats.probability_of_improvement(SCORES, SCORES[:, :1]), "same number of tasks"),
        (lambda: stats.performance_profile(SCORES, []), "taus"),
    ],
)
def test_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ----------------------------------------------------------------------------- plots


def _training_metrics(seeds: int, iterations: int, offset: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seeds)
    episodes = rng.integers(0, 3, size=(seeds, iterations)).astype(float)
    episodes[:, 0] = 0  # nothing has finished at the first iteration
    returns = np.linspace(0, 100, iterations) + offset + rng.normal(size=(seeds, iterations))
    returns[episodes == 0] = np.nan
    steps = np.broadcast_to(np.arange(1, iterations + 1) * 512.0, (seeds, iterations))
    return {"env_steps": steps, "episodes": episodes, "episode_return": returns}


def test_smoothed_returns_weights_episodes_and_fills_gaps():
    values = np.array([[np.nan, 1.0, np.nan, 4.0, np.nan]])
    episodes = np.array([[0, 1, 0, 3, 0]])
    np.testing.assert_allclose(plots._smoothed_returns(values, episodes, 1), [[np.nan, 1, 1, 4, 4]])
    np.testing.assert_allclose(
        plots._smoothed_returns(values, episodes, 3), [[np.nan, 1, 1, (1 + 12) / 4, 4]]
    )
    np.testing.assert_allclose(plots._smoothed_returns(values, None, 3), [[np.nan, 1, 1, 2.5, 4]])


def test_learning_curves_figure_and_png(tmp_path):
    curves = {"ppo": _training_metrics(4, 30, 0.0), "dqn": _training_metrics(3, 30, 5.0)}
    fig = plots.learning_curves(curves, smooth=3, reps=100)
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 2 and len(ax.collections) == 2  # lines and bands
    xs = ax.get_lines()[0].get_xdata()
    assert np.isfinite(ax.get_lines()[0].get_ydata()).all() and xs[-1] == 30 * 512
    path = plots.save(fig, tmp_path / "sub" / "curves.png")
    assert path.stat().st_size > 1000
    fig, ax = plt.subplots()
    assert plots.learning_curves({"one": {"episode_return": np.arange(5.0)}}, ax=ax, statistic="mean") is fig
    assert len(ax.collections) == 0  # one seed: no band


def test_interval_and_profile_plots(tmp_path):
    scores = {"a": SCORES, "b": SCORES + 1, "c": SCORES * 2}
    fig = plots.interval_estimates(stats.aggregate(scores, metrics=("iqm", "median"), reps=100))
    assert len(fig.axes) == 2
    assert all(len(ax.get_lines()) == 3 and len(ax.patches) == 3 for ax in fig.axes)
    fig = plots.performance_profile_plot(scores, reps=100)
    assert len(fig.axes[0].get_lines()) == 3
    assert plots.save(fig, tmp_path / "profile.png").stat().st_size > 1000


def test_robustness_over_conditions():
    values = [300.0, np.nan, 100.0, 500.0, 200.0]  # NaN: no episode finished there, ignored
    r = stats.robustness(values)
    assert r == {"mean": 275.0, "worst": 100.0, "q0.1": pytest.approx(130.0)}  # numpy's linear quantile
    assert stats.robustness(values, quantile=0.5)["q0.5"] == 250.0
    assert all(np.isnan(v) for v in stats.robustness([np.nan, np.nan]).values())
    with pytest.raises(ValueError, match="quantile"):
        stats.robustness(values, quantile=1.5)
    with pytest.raises(ValueError, match="at least one"):
        stats.robustness([])
