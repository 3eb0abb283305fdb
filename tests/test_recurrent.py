"""Recurrent PPO (``recurrent: gru | lstm``): the hidden state is each env's carry, reset where
an episode starts; learning replays whole env streams from the carry the rollout started with,
so before an update the replay reproduces the acting policy; seeds, resume and evaluation work
as for feed-forward PPO; it solves the probes and a memory probe (MemoryChain, evaluated with
the carry); recurrent IMPALA's V-trace corrects from the acting policy replayed; bad settings
fail before compiling.

The learning thresholds (masked CartPole, MemoryChain) are in the slow suite of test_learning.py.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrl
from jaxrl import envs, loop, networks
from jaxrl.algos import ppo
from jaxrl.checkpoint import Checkpointer
from jaxrl.config import ConfigError
from jaxrl.core import fresh_carry
from jaxrl.envs import probes
from jaxrl.rollout import make_rollout
from jaxrl.runs import abstract_state
from tests.conftest import context, on_every_probe, probe_obs
from tests.test_checkpoint import _raw

# 4 envs x 32 steps: a random CartPole episode lasts ~22 steps, so every rollout holds episode
# starts in the middle of env streams and streams that begin mid-episode. The learning settings
# the tests rely on are given here, not taken from the bundled config's tuning (unscaled rewards:
# the probes compare values with the env's returns).
SMALL = dict(env="CartPole-v1-masked", recurrent="gru", rnn_size=16, hidden=[16], activation="relu", num_envs=4,
             num_steps=32, num_minibatches=2, update_epochs=2, total_steps=4 * 128, normalize_reward=False,
             normalize_obs=False, gamma=0.99, gae_lambda=0.95, clip_eps=0.2, vf_coef=0.5, ent_coef=0.01,
             max_grad_norm=0.5)


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
    step = jax.jit(lambda state, first_t, obs_t: net.apply(params, fresh_carry(first_t, net.initial_carry(), state),
                                                           obs_t))
    state = start
    for t in range(6):
        state, pi, value = step(state, first[t], obs[t])
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
    pi, _, _ = ppo.rollout_outputs(ctx, recorded.agent.params, from_zeros, traj.obs)
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
    pi, _, _ = ppo.rollout_outputs(ctx, params, traj, traj.obs)
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
    pi, values, next_values = ppo.rollout_outputs(ctx, params, traj, traj.obs)
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
    """``policy`` (evaluation) advances the carry exactly as ``act`` does (the loop's evaluation
    threads it through each episode from ``init_carry``: the memory probe's evaluation scores
    what only a policy with memory can, test_memory_probe_seeds_and_resume)."""
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


# LSTM (its carry is a pair of arrays per env) on bsuite's MemoryChain with memory_length 4: the
# context bit shows in an episode's first two observations and is rewarded (+1, else -1) at its
# fifth step, three observations later; a policy without memory scores 0 in expectation
MEMORY_PROBE = dict(env="MemoryChain-bsuite", env_kwargs={"memory_length": 4}, recurrent="lstm", rnn_size=16,
                    hidden=[16], num_envs=16, num_steps=8, num_minibatches=2, update_epochs=2, lr=3e-3,
                    anneal_lr=False, ent_coef=0.0, gamma=0.9, total_steps=64 * 128, eval_every=64,
                    eval_episodes=32, eval_max_steps=16)


def test_memory_probe_seeds_and_resume(tmp_path):
    """Seeds 0 and 1 vmapped through one compiled chunk of two iterations, 32 times (from
    their initial states, made one seed at a time):

    - after the first chunk, seed 1 equals its run alone (the single-seed chunk);
    - a checkpoint after 16 chunks (the hidden states are in the env side of the state) restores
      to a state that continues bit-identically to the end (the runner's resume, the same for
      every algorithm, is tested in test_checkpoint.py: here each program compiles once);
    - both seeds solve the memory probe: the final deterministic evaluation in the loop, which
      carries the memory through each episode, recalls the context in all 32 episodes (where
      in measurements both learned it in ~30 of the 64 iterations), and the values along an
      episode are the optimal ``gamma ** steps_to_the_reward`` (the probe's value check)."""
    config = _config(**MEMORY_PROBE)
    train = jaxrl.make_train(config)
    options = jaxrl.compiler_options()
    init = jax.jit(train.init, compiler_options=options)  # per seed (one program less to compile)
    starts = [init(key) for key in jaxrl.seed_keys(config.seed, 2)]
    state = jax.tree.map(lambda *seeds: jnp.stack(seeds), *starts)
    chunk = functools.partial(train.run_chunk, length=2)
    vmapped = jax.jit(jax.vmap(chunk, in_axes=(0, None, None, None)), compiler_options=options)

    def chunks(state, start, stop):
        for i in range(start, stop, 2):
            state, metrics = vmapped(state, None, jnp.int32(i), None)
        return state, metrics

    first, first_metrics = chunks(state, 0, 2)
    assert [x.shape for x in jax.tree.leaves(first.env.carry)] == [(2, config.num_envs, config.rnn_size)] * 2
    one, one_metrics = jax.jit(chunk, compiler_options=options)(starts[1], None, jnp.int32(0), None)
    for x, y in zip(jax.tree.leaves(first.agent.params), jax.tree.leaves(one.agent.params)):
        np.testing.assert_allclose(np.asarray(x)[1], np.asarray(y), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(first_metrics["loss"])[1], np.asarray(one_metrics["loss"]), rtol=1e-4,
                               atol=1e-5)

    halfway, metrics = chunks(first, 2, 32)
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(halfway, jax.device_get(metrics), config=config.to_dict(), num_seeds=2, chunk_size=2)
        restored = ckpt.restore(abstract_state(config, 2)).state
    full, metrics = chunks(halfway, 32, 64)
    resumed, _ = chunks(restored, 32, 64)
    for x, y in zip(_raw(full), _raw(resumed)):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(np.asarray(metrics["eval_return"])[:, -1], [1.0, 1.0])
    values, actions, contexts = _memory_episodes(context(train), full.agent.params)
    steps_left = config.env_kwargs["memory_length"] - np.arange(values.shape[1])  # to the rewarded step
    np.testing.assert_allclose(values, np.broadcast_to((config.gamma ** steps_left)[:, None], values.shape[1:])
                               [None].repeat(2, 0), atol=0.1)
    np.testing.assert_array_equal(actions[:, -1], np.broadcast_to(contexts > 0, (2, len(contexts))))  # recalled


def _memory_episodes(ctx, params, episodes: int = 16):
    """Whole MemoryChain episodes played greedily from a fresh carry by each seed's ``params``
    (leading seed axis): the values and actions ``(seeds, steps, episodes)`` at each step, and
    each episode's context (+-1; the same episodes for every seed)."""
    env, env_params = envs.make(ctx.config.env, **ctx.config.env_kwargs)
    net = ppo.network(ctx)

    @functools.partial(jax.jit, compiler_options=jaxrl.compiler_options())
    def play(params):
        keys = jax.random.split(jax.random.key(9), episodes)
        obs, state = jax.vmap(env.reset, in_axes=(0, None))(keys, env_params)
        contexts, carry, values, actions = obs[:, 2], _broadcast(ppo.init_carry(ctx), episodes), [], []
        for _ in range(ctx.config.env_kwargs["memory_length"] + 1):
            carry, pi, value = net.apply(params, carry, obs)
            values.append(value)
            actions.append(pi.mode())
            obs, state, *_ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(keys, state, actions[-1], env_params)
        return jnp.stack(values), jnp.stack(actions), contexts

    values, actions, contexts = jax.vmap(play)(params)
    return np.asarray(values), np.asarray(actions), np.asarray(contexts[0])


# the probes: PPO's probe settings (tests/test_probes.py) with a small GRU
PROBE = dict(env="probe/constant", recurrent="gru", rnn_size=16, hidden=[16], total_steps=24_576, num_envs=16,
             num_steps=8, num_minibatches=4, update_epochs=4, lr=3e-3, gamma=0.9, ent_coef=0.0, anneal_lr=False)


@pytest.mark.slow
def test_recurrent_ppo_solves_every_probe():
    """Values and greedy actions from a fresh carry at each probe's observations (probe/discount's
    second observation after its first: the values of one episode replayed) are the optimal ones.
    In the slow suite (one more compiled program, ~16 s of CPU): the default run has the memory
    probe, which checks values and actions through the recurrent network too."""
    train, agent_on = on_every_probe(_config(**PROBE))
    ctx = context(train)
    net = ppo.network(ctx)
    for i, kind in enumerate(probes.PROBES):
        obs, params = probe_obs(kind), agent_on(i).params
        # probe/discount's two observations are one episode's two steps; the others' separate episodes
        sequences = obs[:, None] if kind == "discount" else obs[None]
        carry = _broadcast(ppo.init_carry(ctx), sequences.shape[1])
        first = jnp.zeros(sequences.shape[:2], bool).at[0].set(True)
        _, features = networks.unroll(net, params, carry, sequences, first)
        value = net.apply(params, features, method=networks.RecurrentActorCritic.value).reshape(-1)
        np.testing.assert_allclose(value, probes.optimal_value(kind, obs, 0.9), atol=0.1, err_msg=kind)
        if kind in ("action", "obs-action"):
            pi = net.apply(params, features, method=networks.RecurrentActorCritic.policy)
            np.testing.assert_array_equal(pi.mode().reshape(-1), np.asarray(probes.optimal_action(kind, obs, False))
                                          .reshape(-1), err_msg=kind)
            assert np.all(pi.probs.max(-1) > 0.9), kind


def test_vtrace_behaviour_log_probs_are_the_acting_ones_replayed(recorded, monkeypatch):
    """Recurrent IMPALA (``actor_lag``, ``advantage: vtrace``): the behaviour policy's
    log-probabilities V-trace corrects from are the acting (lagged) parameters' replayed from
    the stored start carry, exactly those the rollout acted with; the learner's own differ."""
    traj, ctx = recorded.traj, recorded.ctx
    config = dataclasses.replace(ctx.config, actor_lag=1, advantage="vtrace")
    ctx = ctx._replace(config=config, hp=config.hparams())
    acting = recorded.agent.params
    learner = jax.tree.map(lambda x: x * 1.1, acting)
    agent = recorded.agent.replace(params=learner, lagged=jax.tree.map(lambda x: x[None], acting))
    seen = {}
    vtrace = ppo.returns.vtrace

    def spy_vtrace(reward, values, next_values, terminated, truncated, log_rho, *args):
        seen["log_rho"] = log_rho
        return vtrace(reward, values, next_values, terminated, truncated, log_rho, *args)

    def spy_epochs(step, agent, data, key, epochs, minibatches, sequences=False):
        seen.update(data)
        return agent, {}

    monkeypatch.setattr(ppo.returns, "vtrace", spy_vtrace)
    monkeypatch.setattr(ppo.batching, "epochs", spy_epochs)
    after, _ = ppo.learn(ctx, agent, traj.replace(extras={}), jax.random.key(3))
    np.testing.assert_allclose(seen["log_prob"] - seen["log_rho"], traj.extras["log_prob"], rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(seen["log_rho"])).max() > 1e-3
    for x, y in zip(jax.tree.leaves(after.lagged), jax.tree.leaves(learner)):  # the ring moved on
        np.testing.assert_array_equal(np.asarray(x)[0], y)


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
