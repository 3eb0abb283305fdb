"""Domain randomization (`env_randomize`, envs.RandomizeParams): every episode draws its own
params within the ranges, the episode runs with them, and bad specs fail before compiling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrl
from jaxrl import envs
from jaxrl.config import ConfigError


def _rollout(env, params, n_envs: int, steps: int, key=jax.random.key(0)):
    """The randomized state after every step of ``n_envs`` auto-reset envs acting at random."""
    env = envs.AutoReset(env)
    reset = jax.vmap(env.reset, in_axes=(0, None))
    step = jax.vmap(env.step, in_axes=(0, 0, 0, None))

    def body(state, key):
        k_act, k_step = jax.random.split(key)
        action = jax.random.randint(k_act, (n_envs,), 0, 2)
        _, state, _, term, trunc, _ = step(jax.random.split(k_step, n_envs), state, action, params)
        return state, (state.params, term | trunc)

    _, state = reset(jax.random.split(key, n_envs), params)
    return jax.lax.scan(body, state, jax.random.split(jax.random.fold_in(key, 1), steps))[1]


def test_params_are_drawn_per_episode_within_ranges():
    base, params = envs.make("CartPole-v1")
    env = envs.RandomizeParams(base, {"gravity": [5.0, 15.0], "max_steps_in_episode": [20, 40]}, params)
    drawn, done = jax.device_get(_rollout(env, params, n_envs=16, steps=400))
    gravity, limit = np.asarray(drawn.gravity), np.asarray(drawn.max_steps_in_episode)  # (steps, envs)
    assert gravity.min() >= 5.0 and gravity.max() <= 15.0
    assert limit.dtype == np.int32 and limit.min() >= 20 and limit.max() <= 40
    assert len(np.unique(gravity[0])) == 16  # every env draws its own
    assert len(np.unique(limit)) > 15  # integers drawn over the whole range
    for e in range(16):  # constant within an episode, redrawn at each end (the state after a done
        changes = np.flatnonzero(np.diff(gravity[:, e]) != 0) + 1  # step is the next episode's)
        assert set(changes) == set(np.flatnonzero(done[1:, e]) + 1), e
        assert len(changes) >= 5
    # the drawn limit is the one the episodes obey
    ends = np.flatnonzero(done[:, 0])
    assert (np.diff(ends) <= limit[ends[:-1], 0]).all()


def test_an_episode_runs_with_its_drawn_params():
    """A degenerate range gives the same episode as the env made with that value."""
    base, params = envs.make("CartPole-v1")
    env = envs.RandomizeParams(base, {"gravity": [20.0, 20.0], "length": [1.0, 1.0]}, params)
    fixed = params.replace(gravity=20.0, length=1.0)
    key = jax.random.key(3)
    obs, state = env.reset(key, params)
    ref_obs, ref_state = base.reset(jax.random.split(key)[1], fixed)
    np.testing.assert_array_equal(obs, ref_obs)
    for t in range(20):
        k = jax.random.key(t)
        obs, state, reward, term, _, _ = env.step(k, state, jnp.int32(t % 2), params)
        ref_obs, ref_state, ref_reward, ref_term, _, _ = base.step(k, ref_state, jnp.int32(t % 2), fixed)
        np.testing.assert_allclose(obs, ref_obs, rtol=1e-6)
    nominal = base.step(jax.random.key(0), base.reset(jax.random.split(key)[1], params)[1], jnp.int32(0), params)[0]
    assert not np.allclose(nominal, env.step(jax.random.key(0), env.reset(key, params)[1], jnp.int32(0), params)[0])


def test_training_with_randomized_params():
    config = jaxrl.load_config("ppo_cartpole", total_steps=2048, env_randomize={"gravity": [5.0, 15.0]})
    out = jax.jit(jaxrl.make_train(config))(jax.random.key(0))
    gravity = np.asarray(out.state.env.env_state.env_state.params.gravity)  # EpisodeStats > AutoReset > Randomize
    assert gravity.shape == (4,) and len(np.unique(gravity)) == 4
    assert ((gravity >= 5.0) & (gravity <= 15.0)).all()
    assert np.isfinite(np.asarray(out.metrics["loss"])).all()


@pytest.mark.parametrize("spec, message", [
    ({"gravty": [5.0, 15.0]}, "no numeric param 'gravty'"),
    ({"gravity": [15.0, 5.0]}, "low <= high"),
    ({"gravity": [5.0]}, "range [low, high]"),
    ({"gravity": "5-15"}, "range [low, high]"),
    ({"gravity": [5.0, float("inf")]}, "finite"),
    ({"max_steps_in_episode": [10.5, 20]}, "integer"),
])
def test_bad_ranges_fail_before_compiling(spec, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        jaxrl.make_train(jaxrl.load_config("ppo_cartpole", env_randomize=spec))


def test_a_param_cannot_be_swept_and_randomized():
    train = jaxrl.make_train(jaxrl.load_config("ppo_cartpole", total_steps=512, env_randomize={"gravity": [5.0, 15.0]}))
    with pytest.raises(ConfigError, match="randomized"):
        jax.eval_shape(train, jax.random.key(0), {"env.gravity": jnp.float32(9.8)})
