"""Host-side metric views: the final return is defined whenever any episode has finished."""

from __future__ import annotations

import numpy as np
import pytest

from jaxrl.metrics import FINAL_EPISODES, final_return


def _reference(returns: list[float], counts: list[int], episodes: int) -> float:
    """Walk back from the last iteration, taking whole iterations until `episodes` are in."""
    total = weight = 0.0
    for r, c in zip(returns[::-1], counts[::-1]):
        if weight >= episodes:
            break
        if c:
            total, weight = total + r * c, weight + c
    return total / weight if weight else float("nan")


def test_final_return_is_defined_when_no_episode_ends_late_in_the_run():
    # A good CartPole agent: episodes of 500 steps end rarely, none in the last 5% of a short run.
    # (The old definition, "episodes of the last 5% of iterations", was NaN here.)
    counts = np.array([[6, 4, 2, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
    returns = np.where(counts > 0, np.array([[20, 40, 90, 200, 0, 500] + [0] * 16]), np.nan)
    final = final_return({"episode_return": returns, "episodes": counts})
    assert final.shape == (1,) and np.isfinite(final).all()
    assert final[0] == pytest.approx((20 * 6 + 40 * 4 + 90 * 2 + 200 + 500) / 14)  # all 14 < 100 episodes
    assert final_return({"episode_return": returns, "episodes": counts}, episodes=2)[0] == pytest.approx(350.0)


@pytest.mark.parametrize("episodes", [1, 3, 10, FINAL_EPISODES])
def test_final_return_matches_a_plain_reference(episodes):
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 4, size=(5, 40)) * (rng.random((5, 40)) < 0.5)
    returns = np.where(counts > 0, rng.normal(100, 30, size=(5, 40)), np.nan)
    final = final_return({"episode_return": returns, "episodes": counts}, episodes=episodes)
    expected = [_reference(list(r), list(c), episodes) for r, c in zip(returns, counts)]
    np.testing.assert_allclose(final, expected, rtol=1e-12)


def test_final_return_nan_only_without_any_episode_and_ignores_padding():
    returns = np.array([[np.nan, np.nan, np.nan], [5.0, np.nan, np.nan]])
    counts = np.array([[0, 0, 0], [2, 0, np.nan]])  # row 1: one NaN-padded iteration at the end
    final = final_return({"episode_return": returns, "episodes": counts})
    assert np.isnan(final[0]) and final[1] == 5.0


def test_final_return_keeps_a_nan_return_in_its_window():
    returns, counts = np.array([[3.0, np.nan]]), np.array([[1, 1]])  # the last episode's return is NaN
    assert np.isnan(final_return({"episode_return": returns, "episodes": counts})[0])
    with pytest.raises(ValueError, match="episodes must be >= 1"):
        final_return({"episode_return": returns, "episodes": counts}, episodes=0)
