"""The v2 algorithm interface: a per-env carry owned by the loop (reset where an episode starts,
seen by ``act`` and by evaluation), ``Transition.first``, the offline path (``traj=None``) and
``inputs`` reaching ``ctx`` without being copied per seed or checkpointed."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrl
from jaxrl.algos import algo_module
from jaxrl.checkpoint import Checkpointer
from jaxrl.config import ConfigError, build
from jaxrl.runner import train_seeds


def _config(algo: str, **values):
    return build(algo_module(algo).Config, {"algo": algo, **values})


def test_the_loop_resets_each_envs_carry_where_an_episode_starts():
    config = _config("tests.algo_episode_counter", env="CartPole-v1", num_envs=6, num_steps=50, total_steps=6 * 50 * 8,
                     eval_every=4, eval_episodes=3)
    out = jax.jit(jax.vmap(jaxrl.make_train(config)))(jaxrl.seed_keys(0, 2))
    assert (np.asarray(out.metrics["carry_errors"]) == 0).all()
    starts = np.asarray(out.metrics["episode_starts"])
    assert (starts[:, 0] > 6).all()  # every env starts an episode at once, then again after each reset
    # the carry persists across iterations (a CartPole episode under random actions spans rollouts
    # rarely, but the counter keeps counting across them: errors would show above), and evaluation
    # plays with the carry too (its policy alternates actions by the carry)
    assert np.isfinite(np.asarray(out.metrics["eval_return"])[:, 3]).all()
    assert out.state.env.carry.shape == (2, 6)


def test_offline_algorithm_learns_from_inputs_without_env_steps(tmp_path):
    config = _config("tests.algo_offline_mean", env="CartPole-v1", updates=300, eval_every=100, eval_episodes=2)
    data = {"obs": jnp.array([1.0, -2.0, 0.5, 3.0]) + jax.random.normal(jax.random.key(0), (2000, 4))}
    train = jaxrl.make_train(config)
    out = jax.jit(jax.vmap(train, in_axes=(0, None, None)))(jaxrl.seed_keys(0, 3), None, data)
    np.testing.assert_allclose(np.asarray(out.state.agent.mean), np.tile(data["obs"].mean(0), (3, 1)), atol=0.15)
    assert (np.asarray(out.metrics["env_steps"]) == 0).all() and "episode_return" not in out.metrics
    assert np.isfinite(np.asarray(out.metrics["eval_return"])[:, 99]).all()  # evaluation still plays episodes
    # the dataset is an input of the program, shared by every seed: not part of any seed's state
    assert all(2000 not in np.shape(x) for x in jax.tree.leaves(out.state))

    # checkpoints record what the inputs were, not the data; a resume needs the same inputs
    run = train_seeds(config, num_seeds=2, chunk_size=100, inputs=data, checkpoint_dir=tmp_path)
    with Checkpointer(tmp_path, read_only=True) as ckpt:
        meta = ckpt.meta()
    assert meta["inputs"]["leaves"] == [[[2000, 4], "float32"]] and len(meta["inputs"]["sha256"]) == 64
    for step in tmp_path.iterdir():  # no copy of the data (32 KB) in any checkpoint
        assert sum(f.stat().st_size for f in step.rglob("*") if f.is_file()) < 2000 * 4 * 4, step
    again = train_seeds(config, num_seeds=2, inputs=data, checkpoint_dir=tmp_path, resume=True)
    np.testing.assert_array_equal(np.asarray(again.state.agent.mean), np.asarray(run.state.agent.mean))
    with pytest.raises(ValueError, match="inputs differ"):
        train_seeds(config, num_seeds=2, inputs={"obs": data["obs"] + 1}, checkpoint_dir=tmp_path, resume=True)


def test_offline_configs_take_no_env_steps_and_algorithms_are_found_by_import_path():
    with pytest.raises(ConfigError, match="num_steps must be 0"):
        _config("tests.algo_offline_mean", num_steps=5)
    with pytest.raises(ConfigError, match="cannot be imported"):
        algo_module("tests.no_such_algorithm")
    with pytest.raises(ConfigError, match="does not define Config, init, act, learn"):
        algo_module("tests.conftest")
