"""TRPO: its pieces (conjugate gradient, Fisher-vector products, the line search) against
explicit computations; probes solved; seed i of a vmapped batch equals a single run; a run split
over devices takes the same steps as on one device; bad configs fail before compiling.
(Learning on CartPole: the slow suite of test_learning.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import jaxrl
from jaxrl.algos import ppo, trpo
from jaxrl.config import ConfigError
from jaxrl.core import Context, Transition
from jaxrl import loop
from jaxrl.envs import probes
from jaxrl.rollout import make_rollout
from tests.conftest import context, on_every_probe, probe_obs, xla_flags

TINY = dict(hidden=[3], total_steps=64, num_envs=4, num_steps=16, value_minibatches=2)


def _ctx(**options) -> Context:
    return context(jaxrl.make_train(jaxrl.load_config("trpo_cartpole", **{**TINY, **options})))


def test_conjugate_gradient_solves_a_small_spd_system():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(6, 6))
    a = m @ m.T + 0.5 * np.eye(6)  # symmetric positive definite
    b = rng.normal(size=6)
    x = trpo.conjugate_gradient(lambda v: jnp.asarray(a, jnp.float32) @ v, jnp.asarray(b, jnp.float32), iters=12)
    np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=1e-3, atol=1e-4)
    # a solved system stays solved: further steps (zero residual) change nothing and make no NaN
    x = trpo.conjugate_gradient(lambda v: 2.0 * v, jnp.ones(3), iters=5)
    np.testing.assert_allclose(x, 0.5 * np.ones(3), rtol=1e-6)


def _explicit_kl(discrete: bool):
    """The mean KL[old, new] over a batch written out from the network's outputs (not distrax's)."""
    if discrete:
        def kl(old_logits, new_logits):
            old, new = jax.nn.log_softmax(old_logits), jax.nn.log_softmax(new_logits)
            return (jnp.exp(old) * (old - new)).sum(-1).mean()
    else:
        def kl(old, new):  # (mean, log_std) of diagonal Gaussians
            (m0, s0), (m1, s1) = old, new
            return (s1 - s0 + (jnp.exp(2 * s0) + (m0 - m1) ** 2) / (2 * jnp.exp(2 * s1)) - 0.5).sum(-1).mean()
    return kl


@pytest.mark.parametrize("env", ["CartPole-v1", "Pendulum-v1"], ids=["discrete", "continuous"])
def test_fisher_vector_product_is_the_kl_hessian_times_a_vector(env):
    ctx = _ctx(env=env)
    params = jax.jit(lambda key: ppo.init_params(ctx, key))(jax.random.key(0))
    obs = jax.random.normal(jax.random.key(1), (5, *ctx.spec.obs_shape))
    flat, unravel = ravel_pytree(params)
    net = ppo.network(ctx)

    def outputs(x):
        p = unravel(x)
        out = net.apply(p, obs, method=lambda m, o: m.actor_out(m.actor(o)))
        return out if ctx.spec.discrete else (out, jnp.broadcast_to(p["params"]["log_std"], out.shape))

    kl = _explicit_kl(ctx.spec.discrete)
    v = jax.random.normal(jax.random.key(2), flat.shape)
    hessian, fvp = jax.jit(lambda v: (jax.hessian(lambda x: kl(jax.lax.stop_gradient(outputs(flat)), outputs(x)))(flat),
                                      trpo.fisher_product(ctx, params, {"obs": obs})(v)))(v)
    assert np.abs(hessian @ v).max() > 1e-3  # a real curvature
    np.testing.assert_allclose(fvp, hessian @ v, rtol=1e-4, atol=1e-6)
    # the value function's parameters have no curvature (they do not change the policy)
    critic = ravel_pytree({"params": {name: jax.tree.map(lambda x: jnp.full(x.shape, name.startswith("critic")), part)
                                      for name, part in params["params"].items()}})[0].astype(bool)
    assert critic.any() and (np.asarray(fvp)[critic] == 0).all()


def _line_search_case(surrogate, kl, step, max_kl=0.1):
    fractions = 0.5 ** jnp.arange(8, dtype=jnp.float32)
    return trpo.line_search(lambda x: (surrogate(x), kl(x)), jnp.zeros(2), jnp.asarray(step, jnp.float32),
                            jnp.float32(max_kl), fractions)


def test_line_search_accepts_the_first_improving_step_within_the_kl_bound():
    # the surrogate improves along the whole step; the KL grows quadratically and exceeds 0.1 for
    # fractions 1, 1/2, 1/4 of the step (KL 4, 1, 0.25), first within it at 1/8 (0.0625)
    x, taken, gain, kl = _line_search_case(lambda x: x.sum(), lambda x: (x ** 2).sum(), [2.0, 0.0])
    assert taken == 0.125 and kl == pytest.approx(0.0625) and kl <= 0.1
    np.testing.assert_allclose(x, [0.25, 0.0])
    assert gain == pytest.approx(0.25)
    # a larger step only moves the first acceptable fraction further back, or past the last one
    # (100 / 2^7 still has KL 0.6): never over the bound
    for size, fraction in ((1.0, 0.25), (3.0, 0.0625), (10.0, 2.0 ** -5), (100.0, 0.0)):
        x, taken, _, kl = _line_search_case(lambda x: x.sum(), lambda x: (x ** 2).sum(), [size, 0.0])
        assert taken == fraction and (x ** 2).sum() <= 0.1 and kl <= 0.1
    # every fraction violates the bound (KL > 0.1 however small the step): the old params stay
    x, taken, gain, kl = _line_search_case(lambda x: x.sum(), lambda x: 1.0 + (x ** 2).sum(), [1.0, 0.0])
    assert taken == 0.0 and gain == 0.0 and kl == 0.0
    np.testing.assert_array_equal(x, [0.0, 0.0])


def test_line_search_keeps_the_old_params_when_nothing_improves():
    x, taken, gain, kl = _line_search_case(lambda x: -(x ** 2).sum(), lambda x: 0.0 * x.sum(), [1.0, -1.0])
    assert taken == 0.0 and gain == 0.0
    np.testing.assert_array_equal(x, [0.0, 0.0])
    # a non-finite step (a broken curvature) is not taken either
    x, taken, _, _ = _line_search_case(lambda x: x.sum(), lambda x: 0.0 * x.sum(), [jnp.nan, 1.0])
    assert taken == 0.0
    np.testing.assert_array_equal(x, [0.0, 0.0])


def _random_batch(ctx, key, n=64):
    k = jax.random.split(key, 3)
    obs = jax.random.normal(k[0], (n, *ctx.spec.obs_shape))
    params = jax.jit(lambda key: ppo.init_params(ctx, key))(k[1])
    pi = ppo.network(ctx).apply(params, obs, method=ppo.ActorCritic.policy)
    action = pi.sample(seed=k[2])
    return params, obs, action, pi.log_prob(action)


def test_policy_step_respects_the_trust_region_and_keeps_params_when_advantages_are_zero():
    # a Gaussian policy, advantages favouring actions near its mean: the step shrinks the standard
    # deviation, whose KL grows faster than the quadratic model says, so the line search backtracks
    ctx = _ctx(env="Pendulum-v1")
    params, obs, action, log_prob = _random_batch(ctx, jax.random.key(0))
    net = ppo.network(ctx)
    old = net.apply(params, obs, method=ppo.ActorCritic.policy)
    advantage = 1.0 - jnp.square(action - old.mean()).sum(-1)
    data = {"obs": obs, "action": action, "log_prob": log_prob}
    step = jax.jit(lambda a, kl: trpo.policy_step(ctx._replace(hp={**ctx.hp, "max_kl": kl}), params, data, a))
    for max_kl in (0.01, 1.0):
        new, metrics = step(advantage, jnp.float32(max_kl))
        new_pi = net.apply(new, obs, method=ppo.ActorCritic.policy)
        true_kl = old.kl_divergence(new_pi).mean()
        assert metrics["accepted"] == 1.0 and metrics["step_fraction"] < 1.0 and metrics["surrogate_gain"] > 0
        assert true_kl <= max_kl and metrics["policy_kl"] == pytest.approx(true_kl, rel=1e-4)
        assert (new_pi.stddev() < old.stddev()).all()
    new, metrics = step(jnp.zeros_like(advantage), jnp.float32(0.01))  # no direction improves
    assert metrics["accepted"] == 0.0 and metrics["step_fraction"] == 0.0
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)


def test_recurrent_trpo_steps_the_memory_in_the_trust_region_and_fits_only_the_critic():
    """``recurrent: gru``: on a rollout of the masked CartPole (episode starts mid-stream), the
    policy step's surrogate and KL replay the env streams from their start carry (the acting
    log-probabilities exactly); the step moves the embedding and the cell with the actor and keeps
    the true mean KL of the replayed policies within ``max_kl``; the value fit then changes the
    critic alone (the cell is shared with the policy, whose step it must not undo)."""
    config = jaxrl.load_config("trpo_cartpole", env="CartPole-v1-masked", recurrent="gru", rnn_size=8, hidden=[8],
                               num_envs=4, num_steps=32, value_minibatches=4, total_steps=256)
    train = jaxrl.make_train(config)
    ctx = context(train)
    state = jax.jit(train.init)(jax.random.key(0))
    env, env_params = loop.make_env(config)
    rollout = make_rollout(env, config.num_envs, config.num_steps)
    initial = jax.tree.map(lambda x: jnp.broadcast_to(x, (config.num_envs,) + x.shape), trpo.init_carry(ctx))
    agent = state.agent

    def act(carry, obs, key):
        carry, pi = ppo.step_policy(ctx, agent.params, carry, obs)
        action = pi.sample(seed=key)
        return action, carry, {"log_prob": pi.log_prob(action)}

    @jax.jit
    def run(side):
        _, traj, _ = rollout(side, initial, act, jax.random.key(1), env_params)
        data = ppo.rollout_data(ctx, agent.params, traj)
        stepped, metrics = trpo.policy_step(ctx, agent.params, data, ppo.normalized(ctx, data["advantage"]))
        kl = ppo.forward(ctx, agent.params, data, critic=False)[0].kl_divergence(
            ppo.forward(ctx, stepped, data, critic=False)[0]).mean()
        learned, _ = trpo.learn(ctx, agent, traj.replace(extras={}), jax.random.key(2))
        return traj, data, stepped, metrics, kl, learned

    traj, data, stepped, metrics, kl, learned = run(state.env)
    assert traj.first[1:].any()  # episodes start inside the streams
    np.testing.assert_allclose(data["log_prob"], traj.extras["log_prob"], rtol=1e-5, atol=1e-5)
    assert metrics["accepted"] == 1.0 and 0 < kl <= config.max_kl
    assert metrics["policy_kl"] == pytest.approx(float(kl), rel=1e-4)
    moved = lambda a, b: any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))  # noqa: E731
    before, after, fitted = (p["params"] for p in (agent.params, stepped, learned.params))
    assert moved(before["embedding"], after["embedding"]) and moved(before["core"], after["core"])
    for name in after:
        assert moved(after[name], fitted[name]) == name.startswith("critic"), name


@pytest.mark.slow  # ~16 s of CPU each: in the slow suite, with the learning tests
@pytest.mark.parametrize("continuous", [False, True], ids=["discrete", "continuous"])
def test_trpo_solves_every_probe(continuous):
    gamma = 0.9
    env = "probe/constant" + ("-continuous" if continuous else "")
    config = jaxrl.load_config("trpo_cartpole", env=env, total_steps=12_288, num_envs=16, num_steps=8, gamma=gamma,
                               max_kl=0.05, value_lr=3e-3, hidden=[32, 32])
    train, agent = on_every_probe(config)
    for i, kind in enumerate(probes.PROBES):
        obs = probe_obs(kind)
        pi, value = ppo.network(context(train)).apply(agent(i).params, obs)
        np.testing.assert_allclose(value, probes.optimal_value(kind, obs, gamma), atol=0.1, err_msg=kind)
        if kind in ("action", "obs-action"):
            best = np.asarray(probes.optimal_action(kind, obs, continuous)).reshape(-1)
            if continuous:
                np.testing.assert_allclose(pi.mean()[:, 0], best, atol=0.1, err_msg=kind)
            else:
                np.testing.assert_array_equal(pi.mode(), best, err_msg=kind)
                assert np.all(pi.probs.max(-1) > 0.9), kind


@pytest.mark.slow  # ~25 s of CPU (two programs to compile): in the slow suite
def test_seed_i_in_vmapped_batch_equals_single_run():
    config = jaxrl.load_config("trpo_cartpole", total_steps=4 * 128, num_envs=4, num_steps=32, hidden=[16])
    train = jaxrl.make_train(config)
    batched = jax.jit(jax.vmap(train))(jaxrl.seed_keys(0, 2))
    single = jax.jit(train)(jax.random.key(1))
    np.testing.assert_array_equal(batched.metrics["accepted"][1], single.metrics["accepted"])
    assert single.metrics["accepted"].sum() >= 1  # the policy moved
    for a, b in zip(jax.tree.leaves(jax.tree.map(lambda x: x[1], batched.state.agent)),
                    jax.tree.leaves(single.state.agent)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert not np.allclose(batched.state.agent.params["params"]["actor_out"]["kernel"][0],
                           batched.state.agent.params["params"]["actor_out"]["kernel"][1])  # seeds differ


D = 4
PARALLEL = textwrap.dedent("""
    import functools, json
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import PartitionSpec as P
    import jaxrl
    from jaxrl import parallel
    from jaxrl.algos import ppo, trpo
    from jaxrl.core import Context, Spec, Transition
    from jaxrl.envs import Discrete

    config = jaxrl.load_config("trpo_cartpole", num_envs=8, num_steps=16, total_steps=1024, hidden=[16],
                               value_epochs=2, value_minibatches=1, max_kl=0.05)
    ctx = Context(config, Spec((4,), Discrete(2)), config.hparams(), jnp.int32(0))  # CartPole's
    agent = jax.jit(lambda key: trpo.init(ctx, key))(jax.random.key(0))
    k = jax.random.split(jax.random.key(1), 6)
    T, N = config.num_steps, config.num_envs
    obs = jax.random.normal(k[0], (T, N, 4))
    # device 0's envs (the first two) earn rewards for action 0, the others for action 1: the
    # devices' own surrogates disagree, only their mean decides
    action = jax.random.randint(k[1], (T, N), 0, 2)
    reward = jnp.where(jnp.arange(N) < 2, action == 0, action == 1).astype(jnp.float32) * 3.0
    traj = Transition(obs, action, reward, jax.random.uniform(k[2], (T, N)) < 0.05, jnp.zeros((T, N), bool),
                      obs + 0.1, jnp.zeros((T, N), bool), {})
    hp = {**ctx.hp, "max_kl": jnp.float32(0.05)}

    def learn(agent, traj, axis=None):
        return trpo.learn(ctx._replace(hp=hp, axis=axis), agent, traj, jax.random.key(2))

    whole = jax.jit(learn)(agent, traj)
    split = jax.jit(jax.shard_map(functools.partial(learn, axis="data"), mesh=parallel.make_mesh(%d),
                                  in_specs=(P(), P(None, "data")), out_specs=P()))(agent, traj)
    diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in
               zip(jax.tree.leaves(whole), jax.tree.leaves(split)))

    @jax.jit
    def device_gains(old, new):  # each device's own surrogate gain at the step taken
        data = ppo.rollout_data(ctx, old, traj)
        adv = ppo.normalized(ctx, data["advantage"]).reshape(T, N)
        pi = lambda p: ppo.network(ctx).apply(p, obs, method=ppo.ActorCritic.policy)  # noqa: E731
        gain = (jnp.exp(pi(new).log_prob(action) - pi(old).log_prob(action)) - 1.0) * adv
        return gain.reshape(T, %d, -1).mean((0, 2))

    report = {"diff": diff, "whole": {n: float(v) for n, v in whole[1].items()},
              "split": {n: float(v) for n, v in split[1].items()},
              "device_gains": device_gains(agent.params, whole[0].params).tolist()}
    print("REPORT " + json.dumps(report))
""" % (D, D))


def test_data_parallel_learn_equals_one_device_learn(tmp_path):
    """One TRPO update on a rollout split over 4 devices equals the update on one device: the
    gradient, Fisher products, surrogate and KL are means over all devices' transitions, so the
    accept decision is the one-device decision (shard_map's replicated outputs also prove it is
    the same on every device: a device-varying value could not be returned as replicated)."""
    env = {**os.environ, "XLA_FLAGS": xla_flags(D), "JAX_PLATFORMS": "cpu",
           "JAXRL_NO_COMPILE_CACHE": "1"}
    proc = subprocess.run([sys.executable, "-c", PARALLEL], capture_output=True, text=True, env=env, timeout=600,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT "))[len("REPORT "):])
    gains = report["device_gains"]
    assert gains[0] < 0 < min(gains[1:]), gains  # device 0 alone would have refused the step
    assert report["whole"]["accepted"] == 1.0 == report["split"]["accepted"], report
    assert report["diff"] < 1e-5, report
    for name, value in report["whole"].items():
        assert report["split"][name] == pytest.approx(value, rel=1e-4, abs=1e-6), name


@pytest.mark.parametrize("changes, message", [
    (dict(max_kl=0.0), "max_kl must be > 0"),
    (dict(cg_damping=0.0), "cg_damping must be > 0"),
    (dict(backtrack_ratio=1.0), "backtrack_ratio must be in"),
    (dict(cg_iters=0), "cg_iters must be >= 1"),
    (dict(line_search_steps=0), "line_search_steps must be >= 1"),
    (dict(value_minibatches=3), "does not divide into value_minibatches = 3"),
    (dict(gae_lambda=1.5), "gae_lambda must be in"),
    (dict(clip_eps=0.2), "unknown config key 'clip_eps'"),
])
def test_bad_configs_fail_before_compiling(changes, message):
    with pytest.raises(ConfigError, match=message):
        jaxrl.make_train(jaxrl.load_config("trpo_cartpole", **changes))


def test_value_minibatches_must_divide_each_devices_share():
    config = jaxrl.load_config("trpo_cartpole", num_envs=4, num_steps=6, value_minibatches=8)
    with pytest.raises(ConfigError, match="each of 4 devices fits the value function on .* = 6 transitions"):
        trpo.check(config, jaxrl.make_train(config).spec, 4)
