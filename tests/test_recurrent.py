"""Recurrent PPO (``recurrent: gru | lstm``): the hidden state is each env's carry, reset where
an episode starts; learning replays whole env streams from the carry the rollout started with,
so before an update the replay reproduces the acting policy; seeds, resume and evaluation work
as for feed-forward PPO; bad settings fail before compiling.

The learning thresholds (masked CartPole, MemoryChain) are in the slow suite of test_learning.py.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrl
from jaxrl import loop, networks
from jaxrl.algos import ppo
from jaxrl.checkpoint import Checkpointer
from jaxrl.config import ConfigError
from jaxrl.evaluate import make_play
from jaxrl.rollout import make_rollout
from jaxrl.runs import abstract_state
from tests.conftest import context
from tests.test_checkpoint import _raw

# 4 envs x 32 steps: a random CartPole episode lasts ~22 steps, so every rollout holds episode
# starts in the middle of env streams and streams that begin mid-episode
SMALL = dict(env="CartPole-v1-masked", recurrent="gru", rnn_size=16, hidden=[16], num_envs=4, num_steps=32,
             num_minibatches=2, update_epochs=2, total_steps=4 * 128)


def _config(**overrides):
    return jaxrl.load_config("ppo_gru_cartpole_masked", **{**SMALL, **overrides})


def _broadcast(tree, n):
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (n,) + x.shape), tree)


def _strong_policy(agent):
    """``agent`` with its policy logits scaled up 100x (the initial 0.01-gain head makes them
    nearly equal), so that what the memory changes shows clearly in the policy."""
    params = jax.tree.map(lambda x: x, agent.params)
    params["params"]["actor_out"]["kernel"] = params["params"]["actor_out"]["kernel"] * 100.0
    return agent.replace(params=params)


class Recorded:
    """Two consecutive rollouts of one agent through the loop's rollout (the second starts
    from the carry the first left), recording per step the carry ``act`` got, the log-prob of
    its action and its logits."""

    def __init__(self, cell: str):
        config = _config(recurrent=cell)
        train = jaxrl.make_train(config)
        self.ctx = ctx = context(train)
        state = jax.jit(train.init, compiler_options=jaxrl.compiler_options())(jax.random.key(0))
        self.agent = agent = _strong_policy(state.agent)
        env, params = loop.make_env(config)
        rollout = make_rollout(env, config.num_envs, config.num_steps)
        self.initial = initial = _broadcast(ppo.init_carry(ctx), config.num_envs)

        def act(carry, obs, key):
            new_carry, pi = ppo.step_policy(ctx, agent.params, carry, obs)
            action = pi.sample(seed=key)
            return action, new_carry, {"log_prob": pi.log_prob(action), "logits": pi.logits, "carry_in": carry}

        @functools.partial(jax.jit, compiler_options=jaxrl.compiler_options())
        def two_rollouts(side):
            side, first, _ = rollout(side, initial, act, jax.random.key(1), params)
            _, second, _ = rollout(side, initial, act, jax.random.key(2), params)
            return first, second

        self.first_traj, self.traj = two_rollouts(state.env)


@pytest.mark.parametrize("cell", networks.RNN_CELLS)
def test_unroll_equals_stepping_with_fresh_carries_at_episode_starts(cell):
    """networks.unroll over a sequence equals the network stepped one observation at a time,
    its carry replaced by the initial one where ``first`` is set."""
    net = networks.RecurrentActorCritic(2, True, (8,), "tanh", (3,), cell, 8)
    carry = _broadcast(net.initial_carry(), 2)
    params = networks.init(net, jax.random.key(0), carry, jnp.zeros((2, 3)))
    obs = jax.random.normal(jax.random.key(1), (6, 2, 3))
    first = jnp.zeros((6, 2), bool).at[3, 0].set(True).at[0, 1].set(True)
    start = jax.tree.map(lambda c: c + 0.5, carry)  # memory from before the sequence
    carries, features = jax.jit(lambda p: networks.unroll(net, p, start, obs, first))(params)
    state = start
    for t in range(6):
        state = networks.reset_carry(first[t], state, net.initial_carry())
        state, pi, value = net.apply(params, state, obs[t])
        for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(jax.tree.map(lambda c: c[t], carries))):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        out = net.apply(params, features[t], method=networks.RecurrentActorCritic.policy)
        np.testing.assert_allclose(pi.logits, out.logits, rtol=1e-5, atol=1e-6)
    # the reset matters: from the same start without it, env 0 goes on differently after step 3
    _, leaky = networks.unroll(net, params, start, obs, jnp.zeros_like(first))
    assert np.abs(np.asarray(leaky[3:, 0] - features[3:, 0])).max() > 1e-3
    np.testing.assert_allclose(leaky[:3, 0], features[:3, 0], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def recorded():
    return Recorded("gru")


def test_learn_replays_the_acting_log_probs_before_the_update(recorded, monkeypatch):
    """learn's recomputed log-probabilities (from the recorded start carry, resetting at
    ``first``) equal those the policy acted with, in a rollout that starts mid-episode."""
    traj, ctx = recorded.traj, recorded.ctx
    assert not bool(traj.first[0].all())  # some streams continue the previous rollout's episodes ...
    carry_in = traj.extras["carry_in"]
    for start, first_step in zip(jax.tree.leaves(traj.carry), jax.tree.leaves(carry_in)):
        np.testing.assert_array_equal(start, first_step[0])  # ... from the carry recorded at the start
        assert np.abs(np.asarray(start)).max() > 0.01
    seen = {}

    def spy(step, agent, data, key, epochs, minibatches, sequences=False):
        seen.update(data, sequences=sequences)
        return agent, {}

    monkeypatch.setattr(ppo.batching, "epochs", spy)
    ppo.learn(ctx, recorded.agent, traj.replace(extras={}), jax.random.key(3))
    assert seen["sequences"] and seen["log_prob"].shape == traj.first.shape  # whole streams, time-major
    np.testing.assert_allclose(seen["log_prob"], traj.extras["log_prob"], rtol=1e-5, atol=1e-5)
    # a replay that ignored the start carry would not reproduce them
    from_zeros = traj.replace(carry=recorded.initial)
    pi, _, _ = ppo.rollout_outputs(ctx, recorded.agent.params, from_zeros, traj.obs, traj.next_obs)
    assert np.abs(np.asarray(pi.log_prob(traj.action) - traj.extras["log_prob"])).max() > 1e-3


def test_the_hidden_state_resets_where_an_episode_starts(recorded):
    """At the first step of every later episode, the policy (acting, and replayed by learn) is
    exactly the policy of a fresh carry on that observation: nothing leaks across episodes."""
    traj, ctx, params = recorded.traj, recorded.ctx, recorded.agent.params
    t, n = np.nonzero(np.asarray(traj.first[1:]))
    t = t + 1  # episode starts inside the rollout, after an episode of the same env
    assert len(t) >= 2
    obs = traj.obs[t, n]
    _, fresh = ppo.step_policy(ctx, params, _broadcast(ppo.init_carry(ctx), len(t)), obs)
    np.testing.assert_allclose(traj.extras["logits"][t, n], fresh.logits, rtol=1e-5, atol=1e-5)  # acting
    pi, _, _ = ppo.rollout_outputs(ctx, params, traj, traj.obs, traj.next_obs)
    np.testing.assert_allclose(pi.logits[t, n], fresh.logits, rtol=1e-5, atol=1e-5)  # replayed by learn
    # the test can see a leak: the carry the previous step left gives another policy there
    _, leaked = ppo.step_policy(ctx, params, jax.tree.map(lambda c: c[t - 1, n], _after_each_step(recorded)), obs)
    assert np.abs(np.asarray(leaked.logits - fresh.logits)).max() > 1e-3


def _after_each_step(recorded):
    """The carry each step of the recorded rollout left, (T, N, ...)."""
    traj = recorded.traj
    carries, _ = networks.unroll(ppo.network(recorded.ctx), recorded.agent.params, traj.carry, traj.obs, traj.first)
    return carries


def test_sequence_minibatches_keep_whole_streams_and_the_value_bootstrap_uses_the_memory(recorded):
    traj, ctx, params = recorded.traj, recorded.ctx, recorded.agent.params
    pi, values, next_values = ppo.rollout_outputs(ctx, params, traj, traj.obs, traj.next_obs)
    # within an episode the next observation's value is the next step's value
    same = ~np.asarray(traj.first[1:]) & ~np.asarray(traj.terminated[:-1] | traj.truncated[:-1])
    np.testing.assert_allclose(np.asarray(next_values[:-1])[same], np.asarray(values[1:])[same], rtol=1e-5, atol=1e-5)
    # a minibatch of sequences replays exactly what the whole rollout does for its envs
    data = {"obs": traj.obs, "first": traj.first, "carry": jax.tree.map(lambda x: x[None], traj.carry)}
    envs = jnp.array([2, 0])
    part = jax.tree.map(lambda x: x[:, envs], data)
    sub_pi, sub_values = ppo.forward(ctx, params, part)
    np.testing.assert_allclose(sub_pi.logits, pi.logits[:, envs], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sub_values, values[:, envs], rtol=1e-5, atol=1e-5)


def test_evaluation_acts_with_the_carry_as_the_rollout_does(recorded):
    """``policy`` (evaluation) advances the carry exactly as ``act`` does, and evaluation starts
    every episode from ``init_carry`` (the loop's evaluation threads the carry through an
    episode: test_interface; a trained MemoryChain agent's evaluation score needs it: the slow
    learning test)."""
    ctx, agent = recorded.ctx, recorded.agent
    carry = jax.tree.map(lambda c: c[5, :3], _after_each_step(recorded))  # some mid-rollout memory
    obs = recorded.traj.obs[6, :3]
    action, acted, _ = ppo.act(ctx, agent, carry, obs, jax.random.key(5))
    sampled, evaluated = ppo.policy(ctx, agent, carry, obs, jax.random.key(5), False)
    np.testing.assert_array_equal(action, sampled)
    for a, b, before in zip(jax.tree.leaves(acted), jax.tree.leaves(evaluated), jax.tree.leaves(carry)):
        np.testing.assert_array_equal(a, b)
        assert np.abs(np.asarray(a - before)).max() > 1e-3  # the memory moved on
    _, greedy_carry = ppo.policy(ctx, agent, carry, obs, jax.random.key(5), True)
    for a, b in zip(jax.tree.leaves(acted), jax.tree.leaves(greedy_carry)):
        np.testing.assert_array_equal(a, b)
    play = make_play(ctx.config, ppo, ctx.spec, episodes=2, deterministic=True, env_kwargs={}, max_steps=500)
    assert jax.jit(lambda k: play(ctx, agent, k))(jax.random.key(4)).finished.all()


def test_vmapped_seed_equals_single_run_and_resume_is_bit_identical(tmp_path):
    """Seeds 0 and 1 vmapped, two iterations per compiled chunk: seed 1 matches its run alone;
    a checkpoint after the first chunk (the hidden states are in the env side of the state)
    restores to a state that continues bit-identically. (The runner's resume, the same for
    every algorithm, is tested in test_checkpoint.py: here each program compiles once.) With an
    LSTM, whose carry is a pair of arrays per env."""
    config = _config(recurrent="lstm")
    train = jaxrl.make_train(config)
    chunk = functools.partial(train.run_chunk, length=2)
    keys = jaxrl.seed_keys(config.seed, 2)
    state = jax.jit(jax.vmap(train.init), compiler_options=jaxrl.compiler_options())(keys)
    vmapped = jax.jit(jax.vmap(chunk, in_axes=(0, None, None, None)), compiler_options=jaxrl.compiler_options())
    halfway, first_metrics = vmapped(state, None, jnp.int32(0), None)
    assert [x.shape for x in jax.tree.leaves(halfway.env.carry)] == [(2, config.num_envs, config.rnn_size)] * 2
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(halfway, jax.device_get(first_metrics), config=config.to_dict(), num_seeds=2, chunk_size=2)
        restored = ckpt.restore(abstract_state(config, 2)).state
    full = vmapped(halfway, None, jnp.int32(2), None)
    resumed = vmapped(restored, None, jnp.int32(2), None)
    for x, y in zip(_raw(full), _raw(resumed)):
        np.testing.assert_array_equal(x, y)

    single = jax.jit(chunk, compiler_options=jaxrl.compiler_options())
    one = jax.jit(train.init, compiler_options=jaxrl.compiler_options())(jax.random.key(config.seed + 1))
    one, _ = single(one, None, jnp.int32(0), None)
    one, one_metrics = single(one, None, jnp.int32(2), None)
    for x, y in zip(jax.tree.leaves(full[0].agent.params), jax.tree.leaves(one.agent.params)):
        np.testing.assert_allclose(np.asarray(x)[1], np.asarray(y), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(full[1]["loss"])[1], np.asarray(one_metrics["loss"]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("overrides, message", [
    ({"recurrent": "gruu"}, r"recurrent must be one of none, gru, lstm.*did you mean 'gru'"),
    ({"rnn_size": 0}, "rnn_size must be >= 1"),
    ({"recurrent": "none", "rnn_size": 64}, "rnn_size=64 is used only by a recurrent policy"),
    ({"num_envs": 6, "num_minibatches": 4, "num_steps": 32}, "minibatches are whole env streams"),
    ({"env_kwargs": {"obs_mask": [1, 5]}}, r"obs_mask \[1, 5\] must list distinct indices in \[0, 2\)"),
])
def test_bad_recurrent_configs_fail_before_compiling(overrides, message):
    with pytest.raises(ConfigError, match=message):
        jaxrl.make_train(_config(**overrides))


def test_recurrent_minibatches_must_split_each_devices_envs():
    config = _config(num_envs=4, num_minibatches=4)
    with pytest.raises(ConfigError, match="each of 2 devices splits its num_envs / 2 = 2 env streams"):
        ppo.check(config, jaxrl.make_train(config).spec, devices=2)
