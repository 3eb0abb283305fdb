"""Epochs of shuffled minibatches over a batch of data, the inner loop of on-policy learners.

``data`` is a pytree of arrays sharing a leading batch axis (flattened transitions), or, with
``sequences=True``, time-major arrays ``(T, N, ...)`` whose env streams are kept whole and in
time order (recurrent policies learn from whole sequences): then the ``N`` streams are shuffled
and split, never the time axis.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp


def minibatches(key: jax.Array, data: Any, num_minibatches: int, sequences: bool = False) -> Any:
    """``data`` shuffled and split into ``num_minibatches`` equal minibatches along a new
    leading axis: ``(M, B / M, ...)``, or ``(M, T, N / M, ...)`` with ``sequences``."""
    axis = 1 if sequences else 0
    size = jax.tree.leaves(data)[0].shape[axis]
    if size % num_minibatches:
        raise ValueError(f"{size} {'env streams' if sequences else 'items'} do not divide into "
                         f"{num_minibatches} minibatches")
    perm = jax.random.permutation(key, size)

    def split(x: jax.Array) -> jax.Array:
        x = jnp.take(x, perm, axis=axis)
        if not sequences:
            return x.reshape((num_minibatches, -1) + x.shape[1:])
        x = x.reshape((x.shape[0], num_minibatches, -1) + x.shape[2:])
        return jnp.moveaxis(x, 1, 0)

    return jax.tree.map(split, data)


def epochs(step: Callable[[Any, Any], tuple[Any, dict]], carry: Any, data: Any, key: jax.Array,
           num_epochs: int, num_minibatches: int, sequences: bool = False) -> tuple[Any, dict[str, jax.Array]]:
    """``num_epochs`` passes of ``step(carry, minibatch) -> (carry, metrics)`` over freshly
    shuffled minibatches of ``data``; returns the final carry and each metric's mean over all
    minibatch steps."""

    def epoch(carry: Any, epoch_key: jax.Array) -> tuple[Any, dict]:
        return jax.lax.scan(step, carry, minibatches(epoch_key, data, num_minibatches, sequences))

    carry, metrics = jax.lax.scan(epoch, carry, jax.random.split(key, num_epochs))
    return carry, jax.tree.map(jnp.mean, metrics)
