"""The one rollout every algorithm shares: ``num_steps`` steps of ``num_envs`` vmapped envs.

All the randomness of a rollout is drawn before the scan, in one batched key split of shape
``(num_steps, 1 + num_envs)`` (one key for acting, one per env): a split inside every step
would add two more random-number kernels to each of the many small steps, and on a CPU a
rollout of a small network is bound by per-kernel overhead.

Each env carries a memory of the agent's (``carry``: a recurrent state, per-env noise; ``()``
for feed-forward agents). Where an episode starts (``first``) it is replaced by the fresh
``initial_carry`` before the agent acts. The carry each env started the rollout from is
recorded once (``Transition.carry``, ``(N, ...)``) so a recurrent learner can replay it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from flax import struct

from jaxrl import envs
from jaxrl.core import Transition, fresh_carry


class Episodes(struct.PyTreeNode):
    """Per step and env ``(T, N)``: whether an episode ended there, and its return and length."""

    done: jax.Array
    returns: jax.Array
    lengths: jax.Array


class EnvSide(struct.PyTreeNode):
    """Everything per env that a rollout continues from: env states, the last observations,
    whether each is the first of an episode, and the agent's per-env memory."""

    env_state: Any
    obs: jax.Array
    first: jax.Array
    carry: Any


Act = Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, Any, dict[str, jax.Array]]]


def make_rollout(env: envs.Environment, num_envs: int, num_steps: int) -> Callable[..., Any]:
    """Build ``rollout(side, initial_carry, act, key, env_params) -> (side, Transition, Episodes)``.

    ``env`` is wrapped for training (auto-reset keeping ``info["final_obs"]``, episode
    statistics); ``act(carry, obs, key) -> (action, carry, extras)`` acts on a ``(num_envs, ...)``
    batch; ``initial_carry`` is the batched memory an episode starts with.
    """
    step_envs = jax.vmap(env.step, in_axes=(0, 0, 0, None))

    def rollout(side: EnvSide, initial_carry: Any, act: Act, key: jax.Array, env_params: Any):
        def step(side: EnvSide, keys: jax.Array):
            carry = fresh_carry(side.first, initial_carry, side.carry)
            action, carry, extras = act(carry, side.obs, keys[0])
            next_obs, env_state, reward, term, trunc, info = step_envs(keys[1:], side.env_state, action, env_params)
            transition = Transition(side.obs, action, reward, term, trunc, info["final_obs"], side.first, extras)
            episodes = Episodes(info["episode_done"], info["episode_return"], info["episode_length"])
            return EnvSide(env_state, next_obs, term | trunc, carry), (transition, episodes)

        keys = jax.random.split(key, (num_steps, 1 + num_envs))
        side = side.replace(carry=fresh_carry(side.first, initial_carry, side.carry))
        start = side.carry
        side, (traj, episodes) = jax.lax.scan(step, side, keys)
        return side, traj.replace(carry=start), episodes

    return rollout
