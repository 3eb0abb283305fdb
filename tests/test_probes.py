"""Every probe environment solved by PPO, DQN (and DQN's variants) and PQN: learned values and
actions match the optimum.

Probes isolate one piece of a learner each (value fitting, use of observations, discounting,
policy improvement, conditioning on observations), so a failure here points at the broken piece.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrl
from jaxrl.algos import dqn, ppo, pqn
from jaxrl.envs import probes
from tests.conftest import context, on_every_probe, probe_obs, run

GAMMA = 0.9  # so probe/discount's V(0) = 0.9 differs visibly from 1
_obs = probe_obs


@pytest.mark.parametrize("continuous", [False, True], ids=["discrete", "continuous"])
def test_ppo_solves_every_probe(continuous):
    env = "probe/constant" + ("-continuous" if continuous else "")
    config = jaxrl.load_config("ppo_cartpole", env=env, total_steps=24_576, num_envs=16, num_steps=8,
                               lr=3e-3, gamma=GAMMA, ent_coef=0.0, anneal_lr=False)
    train, agent = on_every_probe(config)
    for i, kind in enumerate(probes.PROBES):
        pi, value = ppo.network(context(train)).apply(agent(i).params, _obs(kind))
        np.testing.assert_allclose(value, probes.optimal_value(kind, _obs(kind), GAMMA), atol=0.1, err_msg=kind)
        if kind in ("action", "obs-action"):
            best = probes.optimal_action(kind, _obs(kind), continuous)
            if continuous:
                np.testing.assert_allclose(pi.mean()[:, 0], np.asarray(best).reshape(-1), atol=0.1, err_msg=kind)
            else:
                np.testing.assert_array_equal(pi.mode(), np.asarray(best).reshape(-1), err_msg=kind)
                assert np.all(pi.probs.max(-1) > 0.9), kind


def _dqn_probe_config(kind: str, **options):
    # eps_end stays high so the wrong action keeps being sampled and its value is learned too
    settings = dict(env=f"probe/{kind}", total_steps=20_000, num_envs=16, num_steps=4, updates_per_iteration=4,
                    buffer_size=4096, learning_starts=512, target_update_interval=20, eps_fraction=0.3,
                    eps_end=0.3, lr=3e-3, anneal_lr=False, gamma=GAMMA,
                    straight_rng=False)  # the variants compile faster with JAX's own (same bits: test_rng.py)
    return jaxrl.load_config("dqn_cartpole", **{**settings, **options})


@pytest.mark.parametrize("options", [
    {}, {"dueling": True}, {"double": False, "tau": 0.05, "target_update_interval": 1},
    # lr 1e-2: in the probes that show obs [0] only the output layer's bias learns (ReLU's gradient
    # is 0 at 0), and C51's logits, dueling quantiles and Munchausen's -1.9 need more movement
    {"distributional": "c51", "v_min": -2.0, "v_max": 2.0, "lr": 1e-2},
    {"distributional": "qr", "dueling": True, "lr": 1e-2},
    {"distributional": "iqn", "num_taus": 8, "num_target_taus": 8, "num_acting_taus": 8, "num_cosines": 16,
     "hidden": [64, 64]},  # a smaller network: the costliest probe of the default run
    {"munchausen": True, "double": False, "lr": 1e-2},
    # Rainbow: the values and actions are the mean network's (no noise); epsilon stays the probes'
    {"distributional": "c51", "v_min": -2.0, "v_max": 2.0, "lr": 1e-2, "dueling": True, "n_step": 3,
     "prioritized": True, "noisy": True, "num_atoms": 11, "hidden": [32]},
], ids=["double", "dueling", "polyak-single", "c51", "qr-dueling", "iqn", "munchausen", "rainbow"])
def test_dqn_solves_every_probe(options):
    train, agent = on_every_probe(_dqn_probe_config("constant", **options))
    # Munchausen's bonus alpha * clip(tau log pi(a|s), l0, 0) is about 0 for the greedy action
    # and l0 (clipped) for the other one, whose value is therefore -1 + alpha * l0
    config = train.config
    wrong = -1.0 + (config.munchausen_alpha * config.log_policy_clip if config.munchausen else 0.0)
    for i, kind in enumerate(probes.PROBES):
        q = dqn.q_values(context(train), agent(i).params, _obs(kind), jax.random.key(1), noise=False)
        np.testing.assert_allclose(q.max(-1), probes.optimal_value(kind, _obs(kind), GAMMA), atol=0.1, err_msg=kind)
        if kind == "discount":  # V(first step) = gamma: closer than the 1 - gamma a learner ignoring gamma is off by
            np.testing.assert_allclose(q.max(-1)[0], GAMMA, atol=0.05)
        if kind in ("action", "obs-action"):
            best = np.asarray(probes.optimal_action(kind, _obs(kind), False)).reshape(-1)
            np.testing.assert_array_equal(q.argmax(-1), best, err_msg=kind)
            np.testing.assert_allclose(q.min(-1), wrong, atol=0.1, err_msg=kind)  # the wrong action's value
        if config.noisy and kind == "obs-action":  # noise by key when acting; the greedy policy is the mean
            # network's (one probe: eager calls cost seconds each)
            ctx, keys = context(train), jax.random.split(jax.random.key(2), 2)
            noisy = [dqn.q_values(ctx, agent(i).params, _obs(kind), k) for k in keys]
            assert not np.allclose(noisy[0], noisy[1], atol=1e-4), kind
            greedy = [dqn.policy(ctx, agent(i), (), _obs(kind), k, deterministic=True)[0] for k in keys]
            np.testing.assert_array_equal(greedy[0], greedy[1], err_msg=kind)
            np.testing.assert_array_equal(greedy[0], q.argmax(-1), err_msg=kind)


def _pqn_probe_config(kind: str, **options):
    # eps_end stays high so the wrong action keeps being sampled and its value is learned too;
    # lr 1e-2: in the probes that show obs [0] only the output layer's bias learns (LayerNorm of
    # a zero vector is zero, and ReLU's gradient is 0 at 0)
    settings = dict(env=f"probe/{kind}", total_steps=16 * 8 * 64, num_envs=16, num_steps=8, update_epochs=4,
                    num_minibatches=2, hidden=[32, 32], eps_fraction=0.3, eps_end=0.3, lr=1e-2, anneal_lr=False,
                    gamma=GAMMA)
    return jaxrl.load_config("pqn_cartpole", **{**settings, **options})


def test_pqn_solves_every_probe():
    train, agent = on_every_probe(_pqn_probe_config("constant"))
    for i, kind in enumerate(probes.PROBES):
        q = pqn.network(context(train)).apply(agent(i).params, _obs(kind))
        np.testing.assert_allclose(q.max(-1), probes.optimal_value(kind, _obs(kind), GAMMA), atol=0.1, err_msg=kind)
        if kind == "discount":  # V(first step) = gamma: closer than the 1 - gamma a learner ignoring gamma is off by
            np.testing.assert_allclose(q.max(-1)[0], GAMMA, atol=0.05)
        if kind in ("action", "obs-action"):
            best = np.asarray(probes.optimal_action(kind, _obs(kind), False)).reshape(-1)
            np.testing.assert_array_equal(q.argmax(-1), best, err_msg=kind)
            np.testing.assert_allclose(q.min(-1), -1.0, atol=0.1, err_msg=kind)  # the wrong action's value


def jax_first(tree):
    """Seed 0 of a vmapped pytree."""
    import jax

    return jax.tree.map(lambda x: x[0], tree)


# Time-limited probe: never terminates, truncated every 5 steps, +1 per step, obs always [0] (so
# the time left is hidden). Bootstrapping through truncations learns V = 1/(1-γ) = 10; a learner
# that treated truncation as termination would learn about 2.8 (PPO) or 3.6 (DQN), measured by
# turning the probe's truncations into terminations.
TRUNCATED = {"max_steps": 5, "constant_obs": True}


def _truncated_value() -> np.ndarray:
    return np.asarray(probes.optimal_value("constant", _obs("constant"), GAMMA, **TRUNCATED))


def test_ppo_bootstraps_through_truncations():
    config = jaxrl.load_config("ppo_cartpole", env="probe/constant", env_kwargs=TRUNCATED, total_steps=8192,
                               num_envs=16, num_steps=8, lr=3e-3, gamma=GAMMA, ent_coef=0.0, anneal_lr=False,
                               hidden=[16])
    train, out = run(config)
    _, value = ppo.network(context(train)).apply(jax_first(out.state.agent.params), _obs("constant"))
    np.testing.assert_allclose(_truncated_value(), 1 / (1 - GAMMA), rtol=1e-6)
    np.testing.assert_allclose(value, _truncated_value(), atol=0.5)


def test_dqn_bootstraps_through_truncations():
    # lr 3e-2: Adam moves Q by about lr per gradient step, and Q has to climb to 10
    config = _dqn_probe_config("constant", env_kwargs=TRUNCATED, total_steps=12_288, target_update_interval=8,
                               lr=3e-2, hidden=[16])
    train, out = run(config)
    q = dqn.network(context(train)).apply(jax_first(out.state.agent.params), _obs("constant"))
    np.testing.assert_allclose(q.max(-1), _truncated_value(), atol=0.5)


def test_pqn_bootstraps_through_truncations():
    config = _pqn_probe_config("constant", env_kwargs=TRUNCATED, hidden=[16], lr=1e-1)
    train, out = run(config)
    q = pqn.network(context(train)).apply(jax_first(out.state.agent.params), _obs("constant"))
    np.testing.assert_allclose(q.max(-1), _truncated_value(), atol=0.5)
