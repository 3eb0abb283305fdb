"""Replay buffer, n-step targets from it, and running statistics, against plain NumPy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl import replay, returns
from jaxrl.normalize import RewardScaler, RunningStats


def test_ring_buffer_keeps_each_envs_steps_in_time_order_and_samples_only_filled():
    buf = replay.create({"x": jnp.zeros(2), "t": jnp.int32(0)}, num_envs=2, capacity=5)
    steps = jnp.arange(3)[:, None] * 10 + jnp.arange(2)  # (T=3, envs=2): step * 10 + env
    buf = replay.add(buf, {"x": jnp.zeros((3, 2, 2)), "t": steps})
    assert int(buf.size) == 3 and int(buf.pos) == 3
    drawn = replay.sample(buf, jax.random.key(0), 400)
    assert set(np.asarray(drawn["t"]).tolist()) == {0, 1, 10, 11, 20, 21}  # every stored step, nothing else
    buf = replay.add(buf, {"x": jnp.zeros((4, 2, 2)), "t": 100 + steps[:1].repeat(4, 0) + 10 * jnp.arange(4)[:, None]})
    assert int(buf.size) == 5 and int(buf.pos) == 2
    np.testing.assert_array_equal(buf.data["t"][0], [120, 130, 20, 100, 110])  # the two oldest overwritten
    # windows: consecutive steps of one env, never across the write position (oldest = slot 2)
    windows = np.asarray(replay.sample_windows(buf, jax.random.key(1), 300, 3)["t"])
    starts = {tuple(w) for w in windows}
    env0 = [(20, 100, 110), (100, 110, 120), (110, 120, 130)]
    assert starts == set(env0) | {tuple(x + 1 for x in w) for w in env0}


def _nstep_reference(rewards, terminated, truncated, gamma):
    g, m = 0.0, 0
    for k in range(len(rewards)):
        g += gamma**k * rewards[k]
        m = k + 1
        if terminated[k] or truncated[k]:
            break
    return g, gamma**m * (0.0 if terminated[m - 1] else 1.0), m - 1


@pytest.mark.parametrize("n", [1, 3, 5])
def test_nstep_window_matches_numpy_across_terminations_and_truncations(n):
    rng = np.random.default_rng(n)
    rewards = rng.normal(size=(n, 64)).astype(np.float32)
    terminated = rng.random((n, 64)) < 0.2
    truncated = (rng.random((n, 64)) < 0.2) & ~terminated
    g, discount, last = returns.nstep_window(rewards, terminated, truncated, 0.9)
    for b in range(64):
        ref = _nstep_reference(rewards[:, b], terminated[:, b], truncated[:, b], 0.9)
        np.testing.assert_allclose([g[b], discount[b]], ref[:2], rtol=1e-5, atol=1e-6)
        assert int(last[b]) == ref[2]
    assert (np.asarray(discount) == 0).any() and (np.asarray(last) < n - 1).any() or n == 1


def test_sample_nstep_bootstraps_from_the_right_observation():
    """A stored stream with a truncation and a termination: each sampled target equals the
    NumPy n-step return of its window, bootstrapping from the final observation at the cut."""
    T, n, gamma = 12, 3, 0.5
    t = np.arange(T)
    terminated, truncated = t == 8, t == 4
    items = {"obs": jnp.asarray(t, jnp.float32)[:, None, None], "action": jnp.asarray(t)[:, None],
             "reward": jnp.asarray(t + 1.0)[:, None], "terminated": jnp.asarray(terminated)[:, None],
             "truncated": jnp.asarray(truncated)[:, None], "next_obs": jnp.asarray(100.0 + t)[:, None, None]}
    buf = replay.add(replay.create(jax.tree.map(lambda x: x[0, 0], items), 1, 16), items)
    b = jax.device_get(replay.sample_nstep(buf, jax.random.key(0), 200, n, jnp.float32(gamma)))
    assert set(b["action"].tolist()) == set(range(T - n + 1))  # every window that fits
    for i, start in enumerate(b["action"]):
        window = slice(start, start + n)
        g, discount, last = _nstep_reference(t[window] + 1.0, terminated[window], truncated[window], gamma)
        np.testing.assert_allclose(b["reward"][i], g)
        np.testing.assert_allclose(b["discount"][i], discount)
        assert b["next_obs"][i, 0] == 100.0 + start + last and b["obs"][i, 0] == start


def test_running_stats_match_numpy():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=(50, 3)) for _ in range(4)]
    stats = RunningStats.create((3,))
    for b in batches:
        stats = stats.update(jnp.asarray(b))
    data = np.concatenate(batches)
    np.testing.assert_allclose(stats.mean, data.mean(0), rtol=1e-4)
    np.testing.assert_allclose(stats.var, data.var(0), rtol=1e-3)


def test_reward_scaler_divides_by_std_of_discounted_returns():
    rewards = jnp.ones((6, 2))
    dones = jnp.zeros((6, 2)).at[2, 0].set(1.0)
    scaler, scaled = RewardScaler.create(2).scale(rewards, dones, 0.5)
    ret = np.zeros(2); returns = []
    for t in range(6):
        ret = ret * 0.5 + 1.0
        returns.append(ret.copy())
        ret = ret * (1 - np.asarray(dones[t]))
    np.testing.assert_allclose(scaler.ret, ret, rtol=1e-6)
    expected_var = np.var(np.concatenate(returns))
    np.testing.assert_allclose(scaler.stats.var, expected_var, rtol=1e-3)
    np.testing.assert_allclose(scaled, rewards / np.sqrt(expected_var), rtol=1e-3)
