"""The off-policy actor-critic algorithms solve every probe: learned values (from the critics)
and greedy actions match the optimum. One compiled program per algorithm plays all five probes:
the probe's kind is an env param (``env.kind``), vmapped."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrl
from jaxrl.algos import sac, td3
from jaxrl.envs import probes
from tests.conftest import context, on_every_probe, probe_obs

GAMMA = 0.9
SETTINGS = dict(total_steps=12_288, num_envs=16, num_steps=4, updates_per_iteration=4, buffer_size=4096,
                batch_size=64, learning_starts=256, hidden=[32, 32], actor_lr=3e-3, critic_lr=3e-3, tau=0.05,
                gamma=GAMMA)
VARIANTS = {  # algorithm module, config, options
    "td3": (td3, "td3_pendulum", {}),
    "ddpg": (td3, "ddpg_pendulum", {}),
    "sac": (sac, "sac_pendulum", dict(autotune=False, alpha=0.01)),
    "tqc": (sac, "tqc_pendulum", dict(autotune=False, alpha=0.01, num_critics=2, quantiles=5, drop_quantiles=1)),
}


def _values_and_actions(module, ctx, agent, obs):
    """(V(obs) as the critics see it under the greedy action, the greedy action)."""
    action, _ = module.policy(ctx, agent, (), obs, jax.random.key(0), True)
    if ctx.spec.discrete:
        q = module.critic_net(ctx).apply(agent.critic, obs).min(0)  # (batch, actions)
        return q.max(-1), action
    q = module.critic_net(ctx).apply(agent.critic, obs, action)
    q = q.min(0) if q.ndim == 2 else q.mean((0, 2))  # (TQC: the mean of all quantiles)
    return q, action


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_continuous_actor_critic_solves_every_probe(variant):
    module, name, options = VARIANTS[variant]
    config = jaxrl.load_config(name, env="probe/constant-continuous", **SETTINGS, **options)
    train, agent_on = on_every_probe(config)
    ctx = context(train)
    for i, kind in enumerate(probes.PROBES):
        obs, agent = probe_obs(kind), agent_on(i)
        value, action = _values_and_actions(module, ctx, agent, obs)
        np.testing.assert_allclose(value, probes.optimal_value(kind, obs, GAMMA), atol=0.1, err_msg=kind)
        if kind in ("action", "obs-action"):
            best = probes.optimal_action(kind, obs, True)
            np.testing.assert_allclose(action, best, atol=0.1, err_msg=kind)


def test_discrete_sac_solves_every_probe():
    config = jaxrl.load_config("sac_discrete_cartpole", env="probe/constant", autotune=False, alpha=0.01,
                               **SETTINGS)
    train, agent_on = on_every_probe(config)
    ctx = context(train)
    for i, kind in enumerate(probes.PROBES):
        obs, agent = probe_obs(kind), agent_on(i)
        value, action = _values_and_actions(sac, ctx, agent, obs)
        np.testing.assert_allclose(value, probes.optimal_value(kind, obs, GAMMA), atol=0.1, err_msg=kind)
        if kind in ("action", "obs-action"):
            np.testing.assert_array_equal(action, probes.optimal_action(kind, obs, False), err_msg=kind)
            pi = sac.actor_net(ctx).apply(agent.actor, obs)
            assert (pi.probs.max(-1) > 0.9).all(), kind  # the policy has settled on it
