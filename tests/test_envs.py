"""Tests for jaxrl.envs: spaces, wrappers, gymnax/brax adapters, probes and the registry.

Kept fast: each compiled function is jitted once, batches are small, and brax is exercised on
one small env.
"""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from jaxrl import envs
from jaxrl.envs import (
    AutoReset,
    Box,
    ClipAction,
    Discrete,
    Environment,
    EpisodeStats,
    FlattenObservation,
    RescaleAction,
    ResetToFirst,
    TimeLimit,
    make,
    register,
    registered,
    wrap_for_training,
)
from jaxrl.envs import gymnax_env, probes, registry


# --------------------------------------------------------------------------- helpers


@struct.dataclass
class CountdownParams:
    length: int = 3


@struct.dataclass
class CountdownState:
    start: jax.Array
    t: jax.Array


class Countdown(Environment):
    """obs = [start, t]; reward = t at step t; terminates at t == length.

    `start` ~ U(0, 1) from the reset key, so distinct resets are distinguishable. Stepping past
    termination poisons obs and reward with NaN, like brax.
    """

    @property
    def default_params(self) -> CountdownParams:
        return CountdownParams()

    def reset(self, key, params):
        start = jax.random.uniform(key)
        return jnp.stack([start, 0.0]), CountdownState(start, jnp.zeros((), jnp.int32))

    def step(self, key, state, action, params):
        t = state.t + 1
        poison = jnp.where(state.t >= params.length, jnp.nan, 0.0)
        obs = jnp.stack([state.start, t.astype(jnp.float32)]) + poison
        reward = t.astype(jnp.float32) + poison
        terminated = t >= params.length
        return obs, CountdownState(state.start, t), reward, terminated, jnp.bool_(False), {}

    def observation_space(self, params):
        return Box(0.0, jnp.inf, (2,))

    def action_space(self, params):
        return Discrete(2)


class Echo(Environment):
    """Observes the action it was given, as shape (1, 2); never ends."""

    def reset(self, key, params):
        return jnp.zeros((1, 2)), jnp.zeros(())

    def step(self, key, state, action, params):
        obs = jnp.asarray(action, jnp.float32).reshape(1, 2)
        return obs, state, jnp.float32(0.0), jnp.bool_(False), jnp.bool_(False), {}

    def observation_space(self, params):
        return Box(-jnp.inf, jnp.inf, (1, 2))

    def action_space(self, params):
        return Box(np.array([-2.0, 0.0]), np.array([2.0, 10.0]))


def rollout(env, params, key, num_envs, num_steps, policy=None):
    """Jitted vmapped scan of `env`; returns (initial obs, per-step outputs), time-major."""
    space = env.action_space(params)
    policy = policy or (lambda k, obs: space.sample(k))

    def run(key):
        key_reset, key_scan = jax.random.split(key)
        obs, state = jax.vmap(env.reset, (0, None))(jax.random.split(key_reset, num_envs), params)

        def body(carry, k):
            obs, state = carry
            key_act, key_step = jax.random.split(k)
            action = jax.vmap(policy)(jax.random.split(key_act, num_envs), obs)
            out = jax.vmap(env.step, (0, 0, 0, None))(
                jax.random.split(key_step, num_envs), state, action, params
            )
            return (out[0], out[1]), (out[0], out[2], out[3], out[4], out[5])

        _, outs = jax.lax.scan(body, (obs, state), jax.random.split(key_scan, num_steps))
        return obs, outs

    return jax.jit(run)(key)


# --------------------------------------------------------------------------- spaces


def test_discrete_space():
    space = Discrete(3)
    assert (space.n, space.shape, space.dtype) == (3, (), jnp.int32)
    samples = jax.vmap(space.sample)(jax.random.split(jax.random.key(0), 200))
    assert samples.dtype == jnp.int32
    assert set(np.unique(samples)) == {0, 1, 2}
    assert bool(space.contains(2)) and not bool(space.contains(3))
    assert not bool(space.contains(-1)) and not bool(space.contains(jnp.zeros(2, jnp.int32)))


def test_box_space():
    space = Box(-1.0, np.array([1.0, 2.0]), (2,))
    assert isinstance(space.low, np.ndarray) and space.low.shape == (2,)
    np.testing.assert_array_equal(space.high, [1.0, 2.0])
    samples = jax.vmap(space.sample)(jax.random.split(jax.random.key(0), 100))
    assert samples.shape == (100, 2) and samples.dtype == jnp.float32
    assert bool(jax.vmap(space.contains)(samples).all())
    assert not bool(space.contains(jnp.array([0.0, 2.5])))
    assert not bool(space.contains(jnp.zeros(3)))
    unbounded = Box(-jnp.inf, jnp.inf, (4,))
    assert bool(jnp.isfinite(unbounded.sample(jax.random.key(1))).all())
    assert Box(np.zeros((2, 1)), np.ones(3)).shape == (2, 3)


# --------------------------------------------------------------------------- wrappers


def test_auto_reset_resets_fresh_and_keeps_final_obs():
    env = AutoReset(Countdown())
    params = CountdownParams(length=3)
    first_obs, (obs, reward, terminated, truncated, info) = rollout(
        env, params, jax.random.key(0), num_envs=2, num_steps=9
    )
    final_obs = info["final_obs"]
    assert bool(jnp.isfinite(obs).all()) and bool(jnp.isfinite(reward).all())
    np.testing.assert_array_equal(terminated[:, 0], [False, False, True] * 3)
    np.testing.assert_array_equal(final_obs[:, 0, 1], [1, 2, 3] * 3)  # what the step produced
    np.testing.assert_array_equal(obs[:, 0, 1], [1, 2, 0] * 3)  # reset obs on done steps
    not_done = ~terminated
    np.testing.assert_array_equal(obs[not_done], final_obs[not_done])
    # Each episode starts from a fresh draw: the starts of all episodes are distinct.
    starts = np.concatenate([first_obs[None, :, 0], obs[terminated][:, 0].reshape(3, 2)])
    assert len(np.unique(starts)) == starts.size


def test_reset_to_first_replays_each_envs_first_state_and_keeps_final_obs():
    """`episode_start: first` (brax's AutoResetWrapper): after a done step each env is back at the
    state its first reset drew (envs differ from each other, episodes of one env do not);
    `final_obs` holds what the step produced; a time limit restarts from the first state too."""
    params = CountdownParams(length=3)
    first_obs, (obs, _, terminated, _, info) = rollout(
        ResetToFirst(Countdown()), params, jax.random.key(0), num_envs=2, num_steps=9
    )
    np.testing.assert_array_equal(terminated[:, 0], [False, False, True] * 3)
    np.testing.assert_array_equal(info["final_obs"][:, 0, 1], [1, 2, 3] * 3)
    np.testing.assert_array_equal(obs[terminated].reshape(3, 2, 2), np.broadcast_to(first_obs, (3, 2, 2)))
    np.testing.assert_array_equal(obs[:, :, 0], np.broadcast_to(first_obs[:, 0], (9, 2)))  # the same start
    assert first_obs[0, 0] != first_obs[1, 0]
    _, (obs, _, _, truncated, _) = rollout(
        ResetToFirst(TimeLimit(Countdown(), 2)), CountdownParams(length=5), jax.random.key(1), 1, 6
    )
    np.testing.assert_array_equal(truncated[:, 0], [False, True] * 3)
    np.testing.assert_array_equal(obs[:, 0, 1], [1, 0] * 3)  # the time limit's counter restarts
    assert isinstance(wrap_for_training(Countdown(), episode_start="first").env, ResetToFirst)
    with pytest.raises(ValueError, match="per-episode draws"):
        wrap_for_training(Countdown(), {"length": (2, 4)}, episode_start="first")
    with pytest.raises(ValueError, match="episode_start must be one of fresh, first"):
        wrap_for_training(Countdown(), episode_start="cached")
    from jaxrl.config import EPISODE_STARTS  # the config checks the same names without importing envs
    from jaxrl.envs.wrappers import EPISODE_STARTS as known
    assert EPISODE_STARTS == known


def test_episode_stats_exact_inside_and_outside_auto_reset():
    params = CountdownParams(length=4)
    for env in (EpisodeStats(AutoReset(Countdown())), AutoReset(EpisodeStats(Countdown()))):
        _, (_, reward, terminated, _, info) = rollout(
            env, params, jax.random.key(1), num_envs=1, num_steps=12
        )
        done = info["episode_done"][:, 0]
        np.testing.assert_array_equal(done, terminated[:, 0])
        np.testing.assert_array_equal(done, [False, False, False, True] * 3)
        assert info["episode_return"].dtype == jnp.float32
        assert info["episode_length"].dtype == jnp.int32
        np.testing.assert_array_equal(info["episode_return"][done, 0], [10.0] * 3)
        np.testing.assert_array_equal(info["episode_length"][done, 0], [4] * 3)
    assert isinstance(wrap_for_training(Countdown()), EpisodeStats)
    assert isinstance(wrap_for_training(Countdown()).env, AutoReset)


def test_time_limit_truncates_exactly_and_terminated_wins():
    params = CountdownParams(length=5)
    _, (_, _, terminated, truncated, _) = rollout(
        AutoReset(TimeLimit(Countdown(), 3)), params, jax.random.key(2), 1, 9
    )
    np.testing.assert_array_equal(truncated[:, 0], [False, False, True] * 3)
    assert not bool(terminated.any())
    # A limit equal to the episode length: the last step terminates, never truncates.
    _, (_, _, terminated, truncated, _) = rollout(
        AutoReset(TimeLimit(Countdown(), 5)), params, jax.random.key(3), 1, 10
    )
    np.testing.assert_array_equal(terminated[:, 0], [False] * 4 + [True] + [False] * 4 + [True])
    assert not bool(truncated.any())
    with pytest.raises(ValueError):
        TimeLimit(Countdown(), 0)


def test_clip_and_rescale_action():
    params = envs.EmptyParams()
    key = jax.random.key(0)
    _, state = Echo().reset(key, params)
    clipped = ClipAction(Echo()).step(key, state, jnp.array([5.0, -3.0]), params)[0]
    np.testing.assert_allclose(clipped, [[2.0, 0.0]])
    unclipped = ClipAction(Echo()).step(key, state, jnp.array([-1.5, 4.0]), params)[0]
    np.testing.assert_allclose(unclipped, [[-1.5, 4.0]])

    rescaled = RescaleAction(Echo())
    space = rescaled.action_space(params)
    np.testing.assert_array_equal(space.low, [-1.0, -1.0])
    np.testing.assert_array_equal(space.high, [1.0, 1.0])
    for action, inner in [([-1.0, -1.0], [-2.0, 0.0]), ([1.0, 1.0], [2.0, 10.0]),
                          ([0.0, 0.5], [0.0, 7.5])]:
        out = rescaled.step(key, state, jnp.array(action), params)[0]
        np.testing.assert_allclose(out, [inner], rtol=1e-6)
    unit = RescaleAction(Echo(), low=0.0, high=1.0)
    np.testing.assert_allclose(unit.step(key, state, jnp.array([0.25, 0.1]), params)[0],
                               [[-1.0, 1.0]], rtol=1e-6)
    with pytest.raises(TypeError):
        ClipAction(Countdown())
    with pytest.raises(ValueError):
        RescaleAction(Echo(), low=1.0, high=1.0)


def test_flatten_observation_and_delegation():
    env = FlattenObservation(AutoReset(Echo()))
    params = env.default_params
    assert env.observation_space(params).shape == (2,)
    obs, state = env.reset(jax.random.key(0), params)
    assert obs.shape == (2,)
    obs, _, _, _, _, info = env.step(jax.random.key(1), state, jnp.array([1.0, 2.0]), params)
    np.testing.assert_array_equal(obs, [1.0, 2.0])
    assert info["final_obs"].shape == (2,)
    # Wrappers forward unknown attributes and report the innermost env.
    assert TimeLimit(Countdown(), 7).env.default_params.length == 3
    assert ClipAction(TimeLimit(Echo(), 7)).max_steps == 7
    assert isinstance(ClipAction(TimeLimit(Echo(), 7)).unwrapped, Echo)


# --------------------------------------------------------------------------- gymnax

GYMNAX_RUNNABLE = [n for n in gymnax_env.GYMNAX_ENVS if n != "MNISTBandit-bsuite"]


@pytest.mark.parametrize("name", GYMNAX_RUNNABLE)
def test_every_gymnax_env_resets_and_steps_under_jit_vmap(name):
    env, params = make(name)
    obs_space, act_space = env.observation_space(params), env.action_space(params)
    assert isinstance(act_space, (Discrete, Box))
    num_envs = 3

    @jax.jit
    def run(key):
        keys = jax.random.split(key, num_envs)
        obs, state = jax.vmap(env.reset, (0, None))(keys, params)
        actions = jax.vmap(act_space.sample)(keys)
        step = jax.vmap(env.step, (0, 0, 0, None))(keys, state, actions, params)
        in_space = jax.vmap(obs_space.contains)(obs) & jax.vmap(obs_space.contains)(step[0])
        return obs, step, in_space

    obs, (next_obs, _, reward, terminated, truncated, info), in_space = run(jax.random.key(0))
    for o in (obs, next_obs):
        assert o.dtype == jnp.float32 and o.shape == (num_envs, *obs_space.shape)
    assert bool(in_space.all()), f"{name}: observation outside {obs_space}"
    assert reward.dtype == jnp.float32 and reward.shape == (num_envs,)
    assert terminated.dtype == jnp.bool_ and truncated.dtype == jnp.bool_
    assert not bool((terminated & truncated).any())
    assert all(v.shape[0] == num_envs for v in info.values())


def test_all_gymnax_envs_registered():
    import gymnax

    assert set(gymnax.registered_envs) <= set(registered())


def test_cartpole_truncation_vs_termination_and_episode_stats():
    env, params = make("CartPole-v1", max_steps_in_episode=10)
    assert params.max_steps_in_episode == 10
    _, (obs, reward, terminated, truncated, info) = rollout(
        wrap_for_training(env), params, jax.random.key(0), num_envs=4, num_steps=60
    )
    reward, terminated, truncated = map(np.asarray, (reward, terminated, truncated))
    assert truncated.any(), "a 10-step limit must truncate random CartPole episodes"
    assert not (terminated & truncated).any()
    # Manual per-env episode bookkeeping in Python against EpisodeStats.
    ep_return, ep_length = np.zeros(4), np.zeros(4, int)
    for t in range(reward.shape[0]):
        ep_return += reward[t]
        ep_length += 1
        done = terminated[t] | truncated[t]
        np.testing.assert_array_equal(info["episode_done"][t], done)
        for i in np.flatnonzero(done):
            assert info["episode_return"][t, i] == ep_return[i]
            assert info["episode_length"][t, i] == ep_length[i]
            assert ep_length[i] == 10 if truncated[t, i] else ep_length[i] <= 10
        ep_return[done], ep_length[done] = 0.0, 0
    # At truncations the final obs (to bootstrap from) is kept apart from the reset obs.
    assert not np.allclose(info["final_obs"][truncated], obs[truncated])


def test_cartpole_consecutive_episodes_start_differently():
    env, params = make("CartPole-v1")
    first_obs, (obs, _, terminated, truncated, info) = rollout(
        AutoReset(env), params, jax.random.key(3), num_envs=4, num_steps=100
    )
    done = np.asarray(terminated | truncated)
    starts = np.concatenate([first_obs, obs[done]])
    assert len(starts) >= 8
    assert len({tuple(s) for s in starts.tolist()}) == len(starts)  # never a cached state
    assert np.abs(starts).max() <= 0.05  # CartPole's reset distribution, not a mid-episode obs
    # The final obs of a terminated episode is the failed state (gymnax's step_env, not its
    # auto-resetting step): the cart left the track or the pole fell past 12 degrees.
    failed = np.asarray(info["final_obs"])[np.asarray(terminated)]
    assert len(failed) and ((np.abs(failed[:, 0]) > 2.4) | (np.abs(failed[:, 2]) > 0.2094)).all()


def test_vmapped_params_and_traced_action_bounds():
    env, params = make("Pendulum-v1")
    assert isinstance(env, ClipAction)
    batch = jax.tree.map(lambda x: jnp.stack([x, x]), params).replace(
        max_torque=jnp.array([1.0, 1.5])
    )
    key = jax.random.key(0)
    _, state = env.reset(key, params)

    @jax.jit
    def step_all(batch_params, action):
        return jax.vmap(env.step, (None, None, None, 0))(key, state, action, batch_params)[2]

    rewards = step_all(batch, jnp.array([5.0]))
    for i, torque in enumerate([1.0, 1.5]):
        p = params.replace(max_torque=torque)
        expected = env.unwrapped.step(key, state, jnp.array([torque]), p)[2]
        np.testing.assert_allclose(rewards[i], expected, rtol=1e-5)


def test_mnist_bandit_fails_clearly():
    with pytest.raises(ValueError, match="download"):
        make("MNISTBandit-bsuite")


def test_make_errors_and_overrides():
    with pytest.raises(ValueError, match="CartPole-v1"):
        make("CartPole-v2")
    with pytest.raises(ValueError, match="max_steps_in_episode"):
        make("CartPole-v1", max_stepz=3)
    with pytest.raises(ValueError):
        make("probe/constant", foo=1)
    env, params = make("DeepSea-bsuite", size=5, max_steps_in_episode=7)
    assert env.observation_space(params).shape == (5, 5) and params.max_steps_in_episode == 7
    env, params = make("FrozenLake-misc")  # categorical obs become one-hot vectors
    assert env.observation_space(params).shape == (16,)
    with pytest.raises(ValueError, match="generalized"):
        make("brax/swimmer", backend="spring")
    with pytest.raises(ValueError, match="backend"):
        make("brax/ant", backend="warp")


def test_register_custom_env(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register("test/countdown", lambda length=3: TimeLimit(Countdown(), length))
    assert "test/countdown" in registered()
    env, params = make("test/countdown", length=2)
    assert env.max_steps == 2 and params == CountdownParams()
    with pytest.raises(ValueError, match="already registered"):
        register("test/countdown", Countdown)
    register("test/countdown", Countdown, overwrite=True)
    assert isinstance(make("test/countdown")[0], Countdown)


def test_registry_contents_and_light_import():
    names = registered()
    for expected in ["CartPole-v1", "Breakout-MinAtar", "brax/ant", "brax/humanoid",
                     "probe/obs-action", "probe/obs-action-continuous"]:
        assert expected in names
    code = "import sys, jaxrl.envs; print('gymnax' in sys.modules, 'brax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# --------------------------------------------------------------------------- brax


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # brax's own jaxopt/mujoco usage
def test_brax_inverted_pendulum_no_nan_across_termination():
    from jaxrl.envs import brax_env

    brax_envs = brax_env.import_brax_envs()
    assert set(brax_env.BRAX_ENVS) == set(brax_envs._envs) - {"fast"}

    env, params = make("brax/inverted_pendulum", episode_length=30)
    assert isinstance(env, ClipAction) and env.max_steps == 30
    assert env.action_space(params).shape == (1,)
    obs_shape = env.observation_space(params).shape

    def policy(key, obs):  # out-of-range pushes, clipped by ClipAction, topple the pole fast
        return jax.random.uniform(key, (1,), minval=-3.0, maxval=3.0)

    first_obs, (obs, reward, terminated, truncated, info) = rollout(
        wrap_for_training(env), params, jax.random.key(0), num_envs=3, num_steps=40,
        policy=policy,
    )
    assert first_obs.shape == (3, *obs_shape) and obs.dtype == jnp.float32
    assert terminated.any(), "random pushes must topple the pendulum"
    for x in (obs, reward, info["final_obs"], info["episode_return"]):
        assert bool(jnp.isfinite(x).all())
    assert not bool((terminated & truncated).any())
    # Where an episode ended, the returned obs is a fresh reset (near-upright, near-still).
    assert float(jnp.abs(obs[terminated]).max()) <= 0.011
    # Reward is +1 per step, so each finished episode's return equals its length.
    done = info["episode_done"]
    np.testing.assert_array_equal(info["episode_return"][done], info["episode_length"][done])


# --------------------------------------------------------------------------- probes


@pytest.mark.parametrize("name", probes.probe_names())
def test_probe_optimal_values(name):
    env, params = make(name)
    kind = env.kind
    gamma = 0.9
    assert env.observation_space(params).shape == (1,)
    space = env.action_space(params)
    assert isinstance(space, Box if name.endswith("-continuous") else Discrete)

    for seed in range(4):  # both signs of the random-obs probes
        key = jax.random.key(seed)
        obs, state = env.reset(key, params)
        assert obs.dtype == jnp.float32 and obs.shape == (1,)
        value = float(probes.optimal_value(kind, obs, gamma))
        ret, discount, done, t = 0.0, 1.0, False, 0
        while not done:
            if kind in ("action", "obs-action"):
                action = probes.optimal_action(kind, obs, env.continuous)
            else:
                action = space.sample(key)
            if t == 1:
                assert float(probes.optimal_value(kind, obs, gamma)) == 1.0  # V(1) = 1
            obs, state, reward, terminated, truncated, _ = env.step(key, state, action, params)
            assert reward.dtype == jnp.float32 and not bool(truncated)
            ret += discount * float(reward)
            discount *= gamma
            done, t = bool(terminated), t + 1
        assert t == (2 if kind == "discount" else 1)
        np.testing.assert_allclose(ret, value, rtol=1e-6)

    if kind in ("action", "obs-action"):  # any other action does worse
        obs, state = env.reset(jax.random.key(0), params)
        best = probes.optimal_action(kind, obs, env.continuous)
        worse = -best if env.continuous else 1 - best
        reward = float(env.step(key, state, worse, params)[2])
        assert reward == (1.0 - (2 * 0.5) ** 2 if env.continuous else -1.0)


@pytest.mark.parametrize("name", probes.probe_names())
def test_probe_time_limit_and_constant_obs(name):
    """With `max_steps` a probe never terminates, is truncated exactly at the limit, and its
    discounted return approaches the infinite-horizon `optimal_value`; `constant_obs` shows [0]
    and its V*([0]) is the mean over the hidden sign."""
    gamma, limit = 0.9, 100  # 0.9**100 ~ 3e-5: the return is the infinite-horizon value to 1e-4
    kind, continuous = probes.make_probe(name).kind, name.endswith("-continuous")
    for constant_obs in (False, True):
        options = {"max_steps": limit, "constant_obs": constant_obs}
        env, params = make(name, **options)
        if kind == "discount" and constant_obs:  # the hidden step decides the value
            with pytest.raises(ValueError, match="hidden step"):
                probes.optimal_value(kind, jnp.zeros((1,)), gamma, **options)
        if kind == "obs-action" and constant_obs and not continuous:
            with pytest.raises(ValueError, match="equally good"):
                probes.optimal_action(kind, jnp.zeros((1,)), False, **options)

        def policy(obs):
            if kind not in ("action", "obs-action") or (kind == "obs-action" and constant_obs and not continuous):
                return jnp.ones((1,)) * 0.5 if continuous else jnp.int32(1)
            return probes.optimal_action(kind, obs, continuous, **options)

        @jax.jit
        def episode(key):
            obs, state = env.reset(key, params)

            def one_step(carry, t):
                obs, state = carry
                obs, state, reward, terminated, truncated, _ = env.step(key, state, policy(obs), params)
                return (obs, state), (obs, reward * gamma**t, terminated, truncated)

            _, (observed, rewards, terminated, truncated) = jax.lax.scan(one_step, (obs, state), jnp.arange(limit))
            return obs, state.obs, observed, rewards.sum(), terminated, truncated

        returns_by_sign = {}
        for seed in range(8):
            first_obs, hidden, observed, ret, terminated, truncated = episode(jax.random.key(seed))
            assert not terminated.any()
            np.testing.assert_array_equal(truncated, np.arange(1, limit + 1) == limit)
            if constant_obs:
                assert not first_obs.any() and not observed.any()
            else:
                np.testing.assert_allclose(ret, probes.optimal_value(kind, first_obs, gamma, **options), rtol=1e-4)
            returns_by_sign.setdefault(float(hidden[0]), []).append(float(ret))
        if constant_obs and kind != "discount":
            mean = np.mean([np.mean(r) for r in returns_by_sign.values()])  # signs equally likely
            expected = probes.optimal_value(kind, first_obs, gamma, continuous=continuous, **options)
            np.testing.assert_allclose(mean, expected, rtol=1e-4, atol=1e-4)
            if kind in ("obs", "obs-action"):
                assert len(returns_by_sign) == 2  # both hidden signs were seen


def test_probe_option_errors():
    with pytest.raises(ValueError, match=r"only the keyword arguments \['max_steps', 'constant_obs'\]"):
        make("probe/constant", max_step=5)
    for bad in (0, 2.5, True, "5"):
        with pytest.raises(ValueError, match="max_steps must be an integer >= 1"):
            make("probe/constant", max_steps=bad)
    with pytest.raises(ValueError, match="constant_obs must be true or false"):
        make("probe/obs", constant_obs=1)
    with pytest.raises(ValueError, match="infinite-horizon"):
        probes.optimal_value("constant", jnp.zeros((1,)), 1.0, max_steps=5)


@pytest.mark.parametrize("name, value, kind", [
    ("max_steps_in_episode", "x", "an integer"), ("max_steps_in_episode", 2.5, "an integer"),
    ("max_steps_in_episode", True, "an integer"), ("gravity", "strong", "a number"), ("gravity", None, "a number"),
])
def test_env_param_of_the_wrong_kind_is_refused_when_the_env_is_made(name, value, kind):
    with pytest.raises(ValueError, match=f"CartPole-v1: {name}=.* must be {kind}"):
        envs.make("CartPole-v1", **{name: value})
    envs.make("CartPole-v1", max_steps_in_episode=200, gravity=9)  # an int where a float is expected is fine


# --------------------------------------------------------------------------- partial observability


def test_mask_observation_keeps_the_chosen_entries_of_any_env():
    full, params = make("CartPole-v1")
    masked, masked_params = make("CartPole-v1-masked")  # positions x and theta; velocities hidden
    assert masked_params == params and isinstance(masked, envs.MaskObservation)
    space, full_space = masked.observation_space(params), full.observation_space(params)
    assert space.shape == (2,)
    np.testing.assert_array_equal(space.low, full_space.low[[0, 2]])
    np.testing.assert_array_equal(space.high, full_space.high[[0, 2]])
    key = jax.random.key(0)
    # same keys, same dynamics: the masked env's observations are entries 0 and 2 of the full ones,
    # final_obs included (a 10-step limit and random actions end episodes inside the rollout)
    first_full, (obs_full, _, term, trunc, info_full) = rollout(
        wrap_for_training(make("CartPole-v1", max_steps_in_episode=10)[0]), params.replace(max_steps_in_episode=10),
        key, num_envs=3, num_steps=30)
    first, (obs, _, term_m, trunc_m, info) = rollout(
        wrap_for_training(make("CartPole-v1-masked", max_steps_in_episode=10)[0]),
        params.replace(max_steps_in_episode=10), key, num_envs=3, num_steps=30)
    assert np.asarray(term | trunc).any()
    np.testing.assert_array_equal(term, term_m)
    np.testing.assert_array_equal(first, first_full[..., [0, 2]])
    np.testing.assert_array_equal(obs, obs_full[..., [0, 2]])
    np.testing.assert_array_equal(info["final_obs"], info_full["final_obs"][..., [0, 2]])
    # every env takes obs_mask (its indices in the given order), e.g. Acrobot's 6 entries
    acrobot, acrobot_params = make("Acrobot-v1", obs_mask=[5, 0])
    obs_a, _ = acrobot.reset(key, acrobot_params)
    obs_b, _ = make("Acrobot-v1")[0].reset(key, acrobot_params)
    np.testing.assert_array_equal(obs_a, obs_b[jnp.array([5, 0])])
    assert acrobot.observation_space(acrobot_params).shape == (2,)


@pytest.mark.parametrize("mask, message", [
    ([], "non-empty list"), ([0.5], "integers"), ([True], "integers"), ("02", "non-empty list"),
    ([4], r"distinct indices in \[0, 4\)"), ([1, 1], "distinct"), ([-1], r"\[0, 4\)"),
])
def test_bad_obs_mask_is_refused_when_the_env_is_made(mask, message):
    with pytest.raises(ValueError, match=message):
        make("CartPole-v1", obs_mask=mask)


def test_memory_chain_by_name_with_its_memory_length():
    """bsuite's MemoryChain (one context bit): the context shows in the first observations only,
    the query step's observation does not show it, and the reward (+1 or -1) comes at the end of
    an episode of memory_length + 1 steps."""
    env, params = make("MemoryChain-bsuite", memory_length=8)
    assert params.memory_length == 8 and env.action_space(params).n == 2
    first, (obs, reward, terminated, truncated, _) = rollout(
        wrap_for_training(env), params, jax.random.key(0), num_envs=4, num_steps=18)
    terminated = np.asarray(terminated)
    assert terminated[8].all() and terminated[17].all() and terminated.sum() == 8  # every 9 steps
    reward = np.asarray(reward)
    assert set(np.unique(reward[[8, 17]])) <= {-1.0, 1.0} and (np.delete(reward, [8, 17], axis=0) == 0).all()
    context = np.asarray(first)[:, 2]  # +-1 at the start, 0 at the query step
    assert (np.abs(context) == 1).all() and (np.asarray(obs)[7, :, 2] == 0).all()


@pytest.mark.parametrize("episode_start", ["fresh", "first"])
def test_rollout_next_obs_is_the_next_obs_inside_episodes(episode_start):
    """The contract `returns.next_values` (PPO's and PQN's bootstrap values) builds on: in the
    loop's rollout, `next_obs[t]` is `obs[t + 1]` unless the episode ended at `t`, where it is the
    final observation (the next obs being a reset one)."""
    from jaxrl.rollout import EnvSide, make_rollout

    env, params = envs.make("CartPole-v1")
    env = wrap_for_training(TimeLimit(env, 15), episode_start=episode_start)  # truncations, and terminations
    n = 8
    obs, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(jax.random.key(0), n), params)
    side = EnvSide(state, obs, jnp.ones(n, bool), ())
    act = lambda carry, o, key: (jax.random.randint(key, (o.shape[0],), 0, 2), carry, {})  # noqa: E731
    _, traj, _ = jax.jit(lambda s: make_rollout(env, n, 60)(s, (), act, jax.random.key(1), params))(side)
    done = np.asarray(traj.terminated | traj.truncated)[:-1]
    obs, next_obs = np.asarray(traj.obs), np.asarray(traj.next_obs)
    assert np.asarray(traj.truncated).any() and np.asarray(traj.terminated).any() and (~done).any()
    np.testing.assert_array_equal(next_obs[:-1][~done], obs[1:][~done])
    assert (np.abs(next_obs[:-1][done] - obs[1:][done]).max(-1) > 0).all()
