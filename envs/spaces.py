"""Observation and action spaces: `Discrete` and `Box`.

Spaces are plain Python objects (not pytrees): their shapes and sizes are static, so they can
be queried while tracing. `sample` and `contains` are pure JAX and work under `jit`/`vmap`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


class Space:
    """Base class: a set of values with a static `shape` and `dtype`."""

    shape: tuple[int, ...]
    dtype: Any

    def sample(self, key: jax.Array) -> jax.Array:
        """Draws one element uniformly at random."""
        raise NotImplementedError

    def contains(self, x: jax.Array) -> jax.Array:
        """Returns a boolean scalar: whether `x` has this space's shape and lies in it."""
        raise NotImplementedError


class Discrete(Space):
    """The integers `0, ..., n - 1` (a categorical action or observation)."""

    def __init__(self, n: int, dtype: Any = jnp.int32):
        if int(n) < 1:
            raise ValueError(f"Discrete needs n >= 1, got {n}")
        self.n = int(n)
        self.shape: tuple[int, ...] = ()
        self.dtype = jnp.dtype(dtype)

    def __repr__(self) -> str:
        return f"Discrete({self.n})"

    def sample(self, key: jax.Array) -> jax.Array:
        return jax.random.randint(key, self.shape, 0, self.n, dtype=self.dtype)

    def contains(self, x: jax.Array) -> jax.Array:
        x = jnp.asarray(x)
        if x.shape != self.shape:
            return jnp.asarray(False)
        integral = jnp.issubdtype(x.dtype, jnp.integer) | (jnp.floor(x) == x)
        return integral & (x >= 0) & (x < self.n)


def _bound(value: Any, shape: tuple[int, ...], dtype: Any) -> Any:
    """Broadcasts a bound to `shape`: NumPy when concrete, JAX when traced.

    Bounds that come from traced env params (e.g. vmapped `max_torque`) cannot be NumPy
    arrays, so they stay JAX arrays; everything concrete is NumPy, cheap to inspect eagerly.
    """
    if isinstance(value, jax.core.Tracer):
        return jnp.broadcast_to(jnp.asarray(value, dtype), shape)
    return np.broadcast_to(np.asarray(value, dtype), shape)


class Box(Space):
    """A (possibly unbounded) box `low <= x <= high` of float arrays with a fixed shape.

    `low` and `high` are broadcast to `shape`; when `shape` is omitted it is the broadcast
    shape of the two bounds.
    """

    def __init__(
        self,
        low: Any,
        high: Any,
        shape: tuple[int, ...] | None = None,
        dtype: Any = jnp.float32,
    ):
        if shape is None:
            shape = jnp.broadcast_shapes(jnp.shape(low), jnp.shape(high))
        self.shape = tuple(int(d) for d in shape)
        self.dtype = jnp.dtype(dtype)
        self.low = _bound(low, self.shape, self.dtype)
        self.high = _bound(high, self.shape, self.dtype)

    def __repr__(self) -> str:
        return f"Box(low={self.low}, high={self.high}, shape={self.shape}, dtype={self.dtype})"

    @property
    def is_bounded(self) -> bool:
        """Whether every bound is finite (only meaningful for concrete bounds)."""
        return bool(np.all(np.isfinite(self.low)) and np.all(np.isfinite(self.high)))

    def sample(self, key: jax.Array) -> jax.Array:
        """Uniform in the box; unbounded dimensions draw a standard normal instead."""
        low, high = jnp.asarray(self.low), jnp.asarray(self.high)
        key_uniform, key_normal = jax.random.split(key)
        uniform = jax.random.uniform(key_uniform, self.shape, self.dtype)
        normal = jax.random.normal(key_normal, self.shape, self.dtype)
        bounded = jnp.isfinite(low) & jnp.isfinite(high)
        safe_low = jnp.where(bounded, low, 0.0)
        safe_high = jnp.where(bounded, high, 0.0)
        inside = safe_low + uniform * (safe_high - safe_low)
        outside = jnp.clip(normal, low, high)
        return jnp.where(bounded, inside, outside).astype(self.dtype)

    def contains(self, x: jax.Array) -> jax.Array:
        x = jnp.asarray(x)
        if x.shape != self.shape:
            return jnp.asarray(False)
        return jnp.all((x >= self.low) & (x <= self.high))
