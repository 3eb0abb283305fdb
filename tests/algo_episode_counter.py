"""A toy algorithm for the interface tests: its per-env carry counts the steps since the
episode began, so the loop's resets of the carry (where an episode starts) can be checked from
what ``act`` saw. It acts at random and learns nothing; ``learn`` reports how many rollout steps
disagree with ``Transition.first`` (the carry must be 0 exactly at an episode's first step)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxrl import config as cfg
from jaxrl.core import Context


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(cfg.Config):
    algo: str = "tests.algo_episode_counter"


def init(ctx: Context, key: jax.Array) -> dict:
    return {"seen": jnp.zeros((), jnp.float32)}


def init_carry(ctx: Context) -> jax.Array:
    return jnp.int32(0)


def act(ctx, agent, carry, obs, key):
    action = jax.random.randint(key, (obs.shape[0],), 0, ctx.spec.action_dim)
    return action, carry + 1, {"steps_before": carry}


def policy(ctx, agent, carry, obs, key, deterministic):
    return jnp.where(carry % 2 == 0, 0, 1).astype(jnp.int32), carry + 1


def learn(ctx: Context, agent: dict, traj, key: jax.Array):
    steps_before = traj.extras["steps_before"]
    wrong_start = (traj.first & (steps_before != 0)).sum()
    previous = jnp.concatenate([steps_before[:1] - 1, steps_before[:-1]])  # the step before, same env
    wrong_count = (~traj.first[1:] & (steps_before[1:] != previous[1:] + 1)).sum()
    errors = (wrong_start + wrong_count).astype(jnp.float32)
    return {"seen": agent["seen"] + traj.first.sum()}, {"carry_errors": errors,
                                                        "episode_starts": traj.first.sum().astype(jnp.float32)}
