"""A device-resident replay buffer that keeps every env's transitions in time order.

The buffer is a pytree of fixed-size arrays inside the agent's state, so adding and sampling are
part of the compiled program (no host round trip) and the buffer is checkpointed and vmapped
like any other state. Each leaf is ``(envs, capacity, ...)``: one time-ordered ring per env,
all written together (a rollout adds ``T`` steps of every env). Keeping time order is what makes
n-step returns and sequences possible (:func:`sample_windows`); keeping the env axis first makes
the buffer splittable over devices with the envs (declare it with :func:`jaxrl.core.per_device`).

Observations are stored raw, as the env produced them: normalise them when sampling (with
``ctx.normalize``), so stored data never goes stale when the statistics move on.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


class Buffer(struct.PyTreeNode):
    """``data`` leaves are ``(envs, capacity, ...)``; ``pos`` is the next time slot to write,
    ``size`` the number of filled time slots (per env)."""

    data: Any
    pos: jax.Array
    size: jax.Array

    @property
    def num_envs(self) -> int:
        return jax.tree.leaves(self.data)[0].shape[0]

    @property
    def capacity(self) -> int:
        """Time slots per env."""
        return jax.tree.leaves(self.data)[0].shape[1]


def create(example: Any, num_envs: int, capacity: int) -> Buffer:
    """An empty buffer of ``capacity`` time steps for each of ``num_envs`` envs, for items shaped
    like ``example`` (one transition of one env, no batch axes)."""
    data = jax.tree.map(lambda x: jnp.zeros((num_envs, capacity) + jnp.shape(x), jnp.asarray(x).dtype), example)
    return Buffer(data, jnp.int32(0), jnp.int32(0))


def add(buffer: Buffer, items: Any) -> Buffer:
    """Append a time-major rollout ``(T, envs, ...)`` (T <= capacity), overwriting the oldest steps."""
    steps = jax.tree.leaves(items)[0].shape[0]
    if steps > buffer.capacity:
        raise ValueError(f"cannot add {steps} steps to a buffer of {buffer.capacity} steps per env")
    slots = (buffer.pos + jnp.arange(steps)) % buffer.capacity
    data = jax.tree.map(lambda d, x: d.at[:, slots].set(jnp.swapaxes(x, 0, 1).astype(d.dtype)), buffer.data, items)
    return Buffer(data, (buffer.pos + steps) % buffer.capacity, jnp.minimum(buffer.size + steps, buffer.capacity))


def _oldest(buffer: Buffer) -> jax.Array:
    return (buffer.pos - buffer.size) % buffer.capacity


def sample(buffer: Buffer, key: jax.Array, batch_size: int) -> Any:
    """``batch_size`` transitions drawn uniformly, with replacement, from the filled part: items
    shaped ``(batch_size, ...)``."""
    k_env, k_time = jax.random.split(key)
    env = jax.random.randint(k_env, (batch_size,), 0, buffer.num_envs)
    offset = jax.random.randint(k_time, (batch_size,), 0, jnp.maximum(buffer.size, 1))
    slot = (_oldest(buffer) + offset) % buffer.capacity
    return jax.tree.map(lambda d: d[env, slot], buffer.data)


def sample_windows(buffer: Buffer, key: jax.Array, batch_size: int, length: int) -> Any:
    """``batch_size`` windows of ``length`` consecutive steps of one env each, drawn uniformly
    from the windows that lie in the filled part (never across the write position, where the
    newest step meets the oldest): items shaped ``(batch_size, length, ...)``. Needs at least
    ``length`` filled steps. Windows may cross episode boundaries: the ``terminated``,
    ``truncated`` and ``first`` flags they hold say where."""
    k_env, k_time = jax.random.split(key)
    env = jax.random.randint(k_env, (batch_size,), 0, buffer.num_envs)
    starts = jax.random.randint(k_time, (batch_size,), 0, jnp.maximum(buffer.size - length + 1, 1))
    slot = (_oldest(buffer) + starts[:, None] + jnp.arange(length)) % buffer.capacity
    return jax.tree.map(lambda d: d[env[:, None], slot], buffer.data)
