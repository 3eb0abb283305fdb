"""The one rollout every algorithm shares: ``num_steps`` steps of ``num_envs`` vmapped envs.

All the randomness of a rollout is drawn before the scan, in one batched key split of shape
``(num_steps, 1 + num_envs)`` (one key for acting, one per env): a split inside every step
would add two more random-number kernels to each of the many small steps, and on a CPU a
rollout of a small network is bound by per-kernel overhead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from flax import struct

from jaxrl import envs


class Transition(struct.PyTreeNode):
    """A time-major rollout ``(T, N, ...)``; ``next_obs`` is the true next observation (the
    final one at episode ends, before the auto-reset), for bootstrapping at truncations."""

    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    next_obs: jax.Array
    extras: dict[str, jax.Array]  # whatever ``act`` returned (log-probs, values, ...)


class Episodes(struct.PyTreeNode):
    """Per step and env ``(T, N)``: whether an episode ended there, and its return and length."""

    done: jax.Array
    returns: jax.Array
    lengths: jax.Array


Act = Callable[[jax.Array, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


def make_rollout(env: envs.Environment, num_envs: int, num_steps: int) -> Callable[..., Any]:
    """Build ``rollout(env_state, obs, act, key, env_params) -> ((env_state, obs), Transition, Episodes)``.

    ``env`` is wrapped for training (auto-reset keeping ``info["final_obs"]``, episode
    statistics); ``act(obs, key) -> (action, extras)`` acts on a ``(num_envs, ...)`` batch.
    """
    step_envs = jax.vmap(env.step, in_axes=(0, 0, 0, None))

    def rollout(env_state: Any, obs: jax.Array, act: Act, key: jax.Array, env_params: Any):
        def step(carry, keys):
            env_state, obs = carry
            action, extras = act(obs, keys[0])
            next_obs, env_state, reward, term, trunc, info = step_envs(keys[1:], env_state, action, env_params)
            transition = Transition(obs, action, reward, term, trunc, info["final_obs"], extras)
            episodes = Episodes(info["episode_done"], info["episode_return"], info["episode_length"])
            return (env_state, next_obs), (transition, episodes)

        keys = jax.random.split(key, (num_steps, 1 + num_envs))
        carry, (traj, episodes) = jax.lax.scan(step, (env_state, obs), keys)
        return carry, traj, episodes

    return rollout
