"""The training loop: determinism, vmapped == single, chunked == whole, traced hyperparameters."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrl
from jaxrl.runner import train_seeds

SMALL = {
    "ppo": dict(name="ppo_cartpole", total_steps=20 * 512),
    "dqn": dict(name="dqn_cartpole", total_steps=3000, learning_starts=1000, num_steps=10),
    # Batched and unbatched matmuls round differently on CPU (ulp-level, 3e-8 after one
    # iteration); Adam and the Gaussian policy amplify that chaotically over many iterations,
    # so this case compares after 2 iterations, where any real difference would still show.
    "ppo-continuous": dict(name="ppo_pendulum", total_steps=2 * 2048),
}


def _config(kind, **extra):
    spec = dict(SMALL[kind])
    return jaxrl.load_config(spec.pop("name"), **spec, **extra)


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.mark.parametrize("kind", list(SMALL))
def test_seed_i_in_vmapped_batch_equals_single_run(kind):
    config = _config(kind)
    train = jaxrl.make_train(config)
    keys = jaxrl.seed_keys(config.seed, 2)  # 2 seeds: test_chunked_run_equals_whole_program's program
    batched = jax.jit(jax.vmap(train))(keys)
    for i in (0, 1):
        single = jax.jit(train)(jax.random.key(config.seed + i))
        _assert_trees_close(jax.tree.map(lambda x: x[i], batched.state.agent.params), single.state.agent.params)
        _assert_trees_close(jax.tree.map(lambda x: x[i], batched.metrics), single.metrics, rtol=1e-4, atol=1e-5)
    # and different seeds really differ
    assert not np.allclose(batched.metrics["episode_return"][0], batched.metrics["episode_return"][1], equal_nan=True)


@pytest.mark.parametrize("kind", ["ppo", "dqn"])
def test_chunked_run_equals_whole_program(kind):
    config = _config(kind)
    whole = jax.jit(jax.vmap(jaxrl.make_train(config)))(jaxrl.seed_keys(config.seed, 2))
    chunked = train_seeds(config, num_seeds=2, chunk_size=7)  # 7 does not divide the iterations
    assert chunked.metrics["env_steps"].shape == whole.metrics["env_steps"].shape
    _assert_trees_close(chunked.state.agent.params, whole.state.agent.params)
    _assert_trees_close(chunked.metrics, jax.device_get(whole.metrics), rtol=1e-4, atol=1e-5)


def test_metrics_are_one_small_row_per_iteration():
    config = _config("ppo")
    out = jax.jit(jaxrl.make_train(config))(jax.random.key(0))
    expected = {"env_steps", "episodes", "episode_return", "episode_length", "loss", "policy_loss",
                "value_loss", "entropy", "approx_kl", "clip_fraction", "grad_norm", "lr"}
    assert expected <= set(out.metrics)
    assert all(v.shape == (config.num_iterations,) for v in out.metrics.values())
    np.testing.assert_array_equal(out.metrics["env_steps"], 512 * np.arange(1, 21))
    lr = np.asarray(out.metrics["lr"])
    np.testing.assert_allclose(lr, config.lr * (1 - np.arange(20) / 20), rtol=1e-5)  # annealed


def test_traced_hyperparameters_are_used():
    # one vmapped sweep over lr: lr 0 leaves the parameters as initialised, and lr 1e-3 equals a run
    # of the config with that lr baked in (over 2 iterations: batched and unbatched programs round
    # differently, and training amplifies that over a run)
    config = _config("ppo")
    config = config.replace(total_steps=2 * config.steps_per_iteration)
    train = jaxrl.make_train(config)
    key = jax.random.key(0)
    swept = jax.jit(jax.vmap(train, in_axes=(None, 0)))(key, {"lr": jnp.array([0.0, 1e-3])})
    row = lambda i: jax.tree.map(lambda x: x[i], swept.state.agent.params)  # noqa: E731
    _assert_trees_close(row(0), jax.jit(train.init)(key).agent.params, rtol=0, atol=0)
    alone = jax.jit(jaxrl.make_train(config.replace(lr=1e-3)))(key)
    _assert_trees_close(row(1), alone.state.agent.params)
    moved = [np.abs(np.asarray(p[1]) - np.asarray(p[0])).max() for p in jax.tree.leaves(swept.state.agent.params)]
    assert max(moved) > 1e-3  # the rows really trained with different learning rates


def test_observation_normalization_statistics():
    config = _config("ppo-continuous")  # normalize_obs and normalize_reward are on
    out = jax.jit(jaxrl.make_train(config))(jax.random.key(0))
    stats = out.state.obs_stats
    assert float(stats.count) == pytest.approx(config.total_steps, rel=1e-3)  # every obs seen once
    # Pendulum observations are (cos, sin, angular velocity): bounded means, positive variances
    assert np.all(np.abs(stats.mean[:2]) <= 1.0) and np.all(stats.var > 0)
    assert np.isfinite(out.metrics["loss"]).all()


@pytest.mark.parametrize("env, algo", [
    ("Breakout-MinAtar", "ppo_cartpole"),  # (10, 10, 4) image observations, flattened by the MLP
    ("Breakout-MinAtar", "dqn_cartpole"),
    ("brax/inverted_pendulum", "ppo_pendulum"),  # brax physics, continuous actions
])
def test_other_observation_and_action_spaces_train(env, algo):
    # (dqn_cartpole's straight-line threefry compiles MinAtar's many draws slower: off here, same bits)
    extra = ({"learning_starts": 64, "buffer_size": 256, "straight_rng": False} if algo.startswith("dqn")
             else {"num_minibatches": 2})
    config = jaxrl.load_config(algo, env=env, num_envs=4, num_steps=16, total_steps=4 * 16 * 3, **extra)
    out = jax.jit(jaxrl.make_train(config))(jax.random.key(0))
    assert np.isfinite(np.asarray(out.metrics["loss"])[-1])
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(out.state.agent.params))


def test_iteration_index_stays_unbatched_under_vmap():
    """The iteration index is not part of the vmapped state, so conditionals on it (DQN's replay
    warm-up) stay real branches in a batch of seeds instead of running both sides."""
    train = jaxrl.make_train(jaxrl.load_config("dqn_cartpole", total_steps=20_000))
    jaxpr = str(jax.make_jaxpr(jax.vmap(train))(jaxrl.seed_keys(0, 2)))
    assert " cond[" in jaxpr


def test_compiler_options(monkeypatch):
    """On CPU jaxrl compiles with XLA's backend optimisation level 1 (faster compiles, same speed:
    README, Speed); nothing changes elsewhere, and JAXRL_XLA_DEFAULTS=1 restores XLA's defaults."""
    monkeypatch.delenv("JAXRL_XLA_DEFAULTS", raising=False)
    assert jaxrl.compiler_options("cpu") == {"xla_backend_optimization_level": 1}
    assert jaxrl.compiler_options("gpu") == {} and jaxrl.compiler_options("tpu") == {}
    monkeypatch.setenv("JAXRL_XLA_DEFAULTS", "1")
    assert jaxrl.compiler_options("cpu") == {}
