"""A device-resident ring buffer of transitions for off-policy algorithms.

The buffer is a pytree of fixed-size arrays inside the train state, so adding and sampling are
part of the compiled program (no host round trip) and the buffer is checkpointed and vmapped
like any other state.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


class Buffer(struct.PyTreeNode):
    """``data`` holds ``capacity`` items along axis 0 of every leaf; ``pos`` is the next write slot."""

    data: Any
    pos: jax.Array
    size: jax.Array

    @property
    def capacity(self) -> int:
        return jax.tree.leaves(self.data)[0].shape[0]


def create(example: Any, capacity: int) -> Buffer:
    """An empty buffer for items shaped like ``example`` (one item, no batch axis)."""
    data = jax.tree.map(lambda x: jnp.zeros((capacity,) + jnp.shape(x), jnp.asarray(x).dtype), example)
    return Buffer(data, jnp.int32(0), jnp.int32(0))


def add(buffer: Buffer, items: Any) -> Buffer:
    """Write a batch of items (leading axis B <= capacity), overwriting the oldest first."""
    batch = jax.tree.leaves(items)[0].shape[0]
    if batch > buffer.capacity:
        raise ValueError(f"cannot add {batch} items to a buffer of capacity {buffer.capacity}")
    idx = (buffer.pos + jnp.arange(batch)) % buffer.capacity
    data = jax.tree.map(lambda d, x: d.at[idx].set(x.astype(d.dtype)), buffer.data, items)
    return Buffer(data, (buffer.pos + batch) % buffer.capacity, jnp.minimum(buffer.size + batch, buffer.capacity))


def sample(buffer: Buffer, key: jax.Array, batch_size: int) -> Any:
    """``batch_size`` items drawn uniformly, with replacement, from the filled part."""
    idx = jax.random.randint(key, (batch_size,), 0, jnp.maximum(buffer.size, 1))
    return jax.tree.map(lambda d: d[idx], buffer.data)
