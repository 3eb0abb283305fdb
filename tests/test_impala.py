"""IMPALA as PPO options: the acting policy lags the learner by ``actor_lag`` updates and
``advantage: vtrace`` corrects for it. With no lag and no clipping V-trace is the on-policy
actor-critic; a lag of k acts with the parameters of k updates ago; seed i of a vmapped batch
equals a single run; bad settings fail before compiling. (Learning: test_learning.py's slow suite.)"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrl
from jaxrl import returns
from jaxrl.algos import ppo
from jaxrl.config import ConfigError
from jaxrl.core import Transition
from tests.conftest import context

SMALL = dict(hidden=[16], num_envs=4, num_steps=16, total_steps=64 * 16)


def _setup(**options):
    config = jaxrl.load_config("impala_cartpole", **{**SMALL, **options})
    return config, context(jaxrl.make_train(config))


def _trajectory(key, T=16, N=4):
    """A rollout as auto-reset envs give it: next_obs[t] is obs[t + 1] unless the episode ended."""
    k = jax.random.split(key, 6)
    obs = jax.random.normal(k[0], (T + 1, N, 4))
    terminated, truncated = jax.random.uniform(k[3], (T, N)) < 0.1, jax.random.uniform(k[4], (T, N)) < 0.05
    final = jax.random.normal(k[5], (T, N, 4))
    next_obs = jnp.where((terminated | truncated)[..., None], final, obs[1:])
    return Transition(obs[:-1], jax.random.randint(k[1], (T, N), 0, 2), jax.random.normal(k[2], (T, N)),
                      terminated, truncated, next_obs, jnp.zeros((T, N), bool), {})


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def test_without_lag_and_clipping_vtrace_is_the_on_policy_actor_critic():
    """Lag 0, rho_bar = c_bar = inf, lambda = 1: the V-trace targets are the on-policy returns
    (GAE's with lambda 1) and the advantages GAE's, so the update is the on-policy one (the
    importance weights are exactly 1: the behaviour log-probabilities are the learner's own)."""
    _, ctx_v = _setup(actor_lag=0, gae_lambda=1.0)
    _, ctx_g = _setup(actor_lag=0, gae_lambda=1.0, advantage="gae")
    ctx_v = ctx_v._replace(hp={**ctx_v.hp, "rho_bar": jnp.float32(jnp.inf), "c_bar": jnp.float32(jnp.inf)})
    agent = jax.jit(lambda key: ppo.init(ctx_v, key))(jax.random.key(0))
    assert agent.lagged is None  # lag 0: no ring of old parameters at all
    traj = _trajectory(jax.random.key(1))
    vtrace, gae = jax.jit(lambda p, t: [ppo.rollout_data(ctx, p, t, ctx.config.advantage)
                                        for ctx in (ctx_v, ctx_g)])(agent.params, traj)
    assert np.abs(gae["advantage"]).max() > 0.1
    np.testing.assert_allclose(vtrace["target"], gae["target"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(vtrace["advantage"], gae["advantage"], rtol=1e-5, atol=1e-5)
    # (learn uses nothing of the rollout but these data, so its update is the on-policy one)
    for name in ("obs", "action", "log_prob", "value"):
        np.testing.assert_array_equal(vtrace[name], gae[name])


def test_vtrace_corrects_from_the_acting_parameters():
    """With a lag, the importance weights are pi_learner / pi_acting of the acting parameters."""
    config, ctx = _setup(actor_lag=2)
    traj = _trajectory(jax.random.key(1))
    init = jax.jit(lambda key: ppo.init_params(ctx, key))
    learner, acting = init(jax.random.key(3)), init(jax.random.key(4))
    data = ppo.rollout_data(ctx, learner, traj, "vtrace", acting)
    net = ppo.network(ctx)
    log_rhos = (net.apply(learner, traj.obs, method=ppo.ActorCritic.policy).log_prob(traj.action)
                - net.apply(acting, traj.obs, method=ppo.ActorCritic.policy).log_prob(traj.action))
    values = net.apply(learner, traj.obs, method=ppo.ActorCritic.value)
    next_values = net.apply(learner, traj.next_obs, method=ppo.ActorCritic.value)  # all of them, unlike ppo
    target, adv = returns.vtrace(traj.reward, values, next_values, traj.terminated, traj.truncated, log_rhos,
                                 config.gamma, config.gae_lambda, config.rho_bar, config.c_bar, config.rho_bar)
    assert np.abs(log_rhos).max() > 1e-3
    np.testing.assert_allclose(data["target"], target.reshape(-1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(data["advantage"], adv.reshape(-1), rtol=1e-5, atol=1e-5)


def test_a_lag_of_k_acts_with_the_parameters_of_k_updates_ago():
    lag = 3
    _, ctx = _setup(actor_lag=lag, lr=1e-2)
    agent = jax.jit(lambda key: ppo.init(ctx, key))(jax.random.key(0))
    learn = jax.jit(lambda a, t: ppo.learn(ctx, a, t, jax.random.key(2))[0])
    history = [agent.params]  # the learner's params after 0, 1, 2, ... updates
    for i in range(6):
        agent = learn(agent, _trajectory(jax.random.key(10 + i)))
        history.append(agent.params)
        updates = i + 1
        for j in range(lag):  # the ring: the params of updates - lag, ..., updates - 1 updates (at least 0)
            _assert_trees_close(jax.tree.map(lambda x: x[j], agent.lagged), history[max(updates - lag + j, 0)],
                                rtol=0, atol=0)
        _assert_trees_close(ppo.acting_params(agent), history[max(updates - lag, 0)], rtol=0, atol=0)
    moved = [np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in
             zip(jax.tree.leaves(history[-1]), jax.tree.leaves(history[-1 - lag]))]
    assert max(moved) > 1e-3  # the lagged params really are other params
    # learn corrects from the ring's oldest params: the same learner with another ring learns otherwise
    traj = _trajectory(jax.random.key(20))
    other = agent.replace(lagged=jax.tree.map(lambda x: x[::-1], agent.lagged))
    assert not np.allclose(learn(agent, traj).params["params"]["actor_out"]["kernel"],
                           learn(other, traj).params["params"]["actor_out"]["kernel"], rtol=0, atol=1e-7)
    # act samples from the oldest params of the ring: there action 0 is certain, in the learner's 1
    def certain(params, action):
        bias = jnp.array([10.0, -10.0]) if action == 0 else jnp.array([-10.0, 10.0])
        out = params["params"]["actor_out"]
        return {"params": {**params["params"], "actor_out": {"kernel": 0 * out["kernel"], "bias": bias}}}
    ring = jax.tree.map(lambda *xs: jnp.stack(xs), certain(history[0], 0), *[certain(history[0], 1)] * (lag - 1))
    agent = agent.replace(params=certain(agent.params, 1), lagged=ring)
    obs = jax.random.normal(jax.random.key(5), (64, 4))
    action, _, _ = ppo.act(ctx, agent, (), obs, jax.random.key(6))
    np.testing.assert_array_equal(action, 0)
    evaluated, _ = ppo.policy(ctx, agent, (), obs, jax.random.key(6), True)  # evaluation: the learner's
    np.testing.assert_array_equal(evaluated, 1)


@pytest.mark.slow  # ~22 s of CPU (two programs to compile): in the slow suite
def test_seed_i_in_vmapped_batch_equals_single_run():
    config = jaxrl.load_config("impala_cartpole", **SMALL)
    train = jaxrl.make_train(config)
    batched = jax.jit(jax.vmap(train))(jaxrl.seed_keys(0, 2))
    single = jax.jit(train)(jax.random.key(1))
    _assert_trees_close(jax.tree.map(lambda x: x[1], batched.state.agent), single.state.agent, rtol=1e-4, atol=1e-5)
    assert batched.state.agent.lagged["params"]["actor_out"]["kernel"].shape[:2] == (2, 4)  # seeds, lag
    assert not np.allclose(*batched.state.agent.params["params"]["actor_out"]["kernel"])  # seeds differ
    assert np.isfinite(np.asarray(single.metrics["loss"])).all()


@pytest.mark.parametrize("changes, message", [
    (dict(actor_lag=-1), "actor_lag must be >= 0"),
    (dict(advantage="vtrce"), "advantage must be one of gae, vtrace.*did you mean 'vtrace'"),
    (dict(rho_bar=0.0), "rho_bar must be > 0"),
    (dict(c_bar=-1.0), "c_bar must be > 0"),
    (dict(baseline=False), "baseline: false .* needs advantage: gae"),
])
def test_bad_configs_fail_before_compiling(changes, message):
    with pytest.raises(ConfigError, match=message):
        jaxrl.make_train(jaxrl.load_config("impala_cartpole", **changes))
