"""The off-policy actor-critic algorithms solve every probe: learned values (from the critics)
and greedy actions match the optimum. One compiled program per algorithm plays all five probes:
the probe's kind is an env param (``env.kind``), vmapped."""

from __future__ import annotations

import jax
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
VARIANTS = {  # algorithm module, config, options (the probe's discrete or continuous twin)
    "td3": (td3, "td3_pendulum", dict(env="probe/constant-continuous")),
    "ddpg": (td3, "ddpg_pendulum", dict(env="probe/constant-continuous")),
    "sac": (sac, "sac_pendulum", dict(env="probe/constant-continuous", autotune=False, alpha=0.01)),
    "tqc": (sac, "tqc_pendulum", dict(env="probe/constant-continuous", autotune=False, alpha=0.01, num_critics=2,
                                      quantiles=5, drop_quantiles=1)),
    "sac-discrete": (sac, "sac_discrete_cartpole", dict(env="probe/constant", autotune=False, alpha=0.01)),
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
def test_actor_critic_solves_every_probe(variant):
    module, name, options = VARIANTS[variant]
    config = jaxrl.load_config(name, **SETTINGS, **options)
    train, agent_on = on_every_probe(config)
    ctx = context(train)
    for i, kind in enumerate(probes.PROBES):
        obs, agent = probe_obs(kind), agent_on(i)
        value, action = _values_and_actions(module, ctx, agent, obs)
        np.testing.assert_allclose(value, probes.optimal_value(kind, obs, GAMMA), atol=0.1, err_msg=kind)
        if kind in ("action", "obs-action"):
            best = probes.optimal_action(kind, obs, not ctx.spec.discrete)
            np.testing.assert_allclose(action, best, atol=0.1, err_msg=kind)
            if ctx.spec.discrete:  # the policy has settled on the best action
                assert (module.actor_net(ctx).apply(agent.actor, obs).probs.max(-1) > 0.9).all(), kind
