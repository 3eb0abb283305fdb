"""Exploration: random actions, Gaussian action noise, epsilon-greedy choice.

Continuous actions live in the env's action Box; noise scales are fractions of the Box's half
width (``0.1`` is 10% of the way from the centre to a bound), so one setting fits envs whose
actions span [-1, 1] and [-2, 2] alike. Every function works on a batch of envs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrl.core import Spec


def _bounds(spec: Spec) -> tuple[jax.Array, jax.Array]:
    low, high = spec.action_bounds
    return jnp.asarray(low, jnp.float32), jnp.asarray(high, jnp.float32)


def uniform(key: jax.Array, spec: Spec, n: int) -> jax.Array:
    """``n`` actions drawn uniformly from the action space (discrete or a bounded Box)."""
    if spec.discrete:
        return jax.random.randint(key, (n,), 0, spec.action_dim)
    low, high = _bounds(spec)
    return jax.random.uniform(key, (n, spec.action_dim), minval=low, maxval=high)


def gaussian(key: jax.Array, spec: Spec, action: jax.Array, scale: jax.Array,
             clip: jax.Array | float | None = None) -> jax.Array:
    """``action (n, dim)`` plus Gaussian noise of standard deviation ``scale`` (a fraction of the
    Box's half width; a scalar or one per env ``(n,)``), the noise cut to ``+-clip`` of the half
    width when ``clip`` is given, and the result clipped to the Box."""
    low, high = _bounds(spec)
    half = (high - low) / 2
    scale = jnp.asarray(scale, jnp.float32)
    noise = jax.random.normal(key, action.shape) * (scale[:, None] if scale.ndim else scale)
    if clip is not None:
        noise = jnp.clip(noise, -clip, clip)
    return jnp.clip(action + noise * half, low, high)


def per_env_scales(low: jax.Array, high: jax.Array, n: int) -> jax.Array:
    """``n`` noise scales spread evenly over ``[low, high]``, one per env: a population of envs
    exploring from nearly greedy to wide (as in Ape-X and FastTD3)."""
    if n == 1:
        return jnp.asarray(low, jnp.float32)[None]
    return low + (high - low) * jnp.linspace(0.0, 1.0, n)


def epsilon_greedy(key: jax.Array, q_values: jax.Array, epsilon: jax.Array) -> jax.Array:
    """The greedy action of ``q_values (n, actions)``, replaced by a uniformly random one with
    probability ``epsilon``."""
    k_explore, k_random = jax.random.split(key)
    greedy = q_values.argmax(-1)
    random = jax.random.randint(k_random, greedy.shape, 0, q_values.shape[-1])
    explore = jax.random.uniform(k_explore, greedy.shape) < epsilon
    return jnp.where(explore, random, greedy).astype(jnp.int32)
