"""Replay buffer and running statistics against plain NumPy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl import replay
from jaxrl.normalize import RewardScaler, RunningStats


def test_ring_buffer_overwrites_oldest_and_samples_only_filled():
    buf = replay.create({"x": jnp.zeros(2), "a": jnp.int32(0)}, capacity=5)
    buf = replay.add(buf, {"x": jnp.arange(6.0).reshape(3, 2), "a": jnp.arange(3)})
    assert int(buf.size) == 3 and int(buf.pos) == 3
    drawn = replay.sample(buf, jax.random.key(0), 200)
    assert set(np.asarray(drawn["a"]).tolist()) == {0, 1, 2}
    buf = replay.add(buf, {"x": jnp.zeros((4, 2)), "a": jnp.arange(10, 14)})
    assert int(buf.size) == 5 and int(buf.pos) == 2
    np.testing.assert_array_equal(buf.data["a"], [12, 13, 2, 10, 11])  # 0 and 1 overwritten


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
