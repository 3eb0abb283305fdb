"""Target networks: slowly moving copies of parameters that TD targets are computed from.

One rule covers both common schemes: every ``interval`` updates the target moves a fraction
``tau`` of the way to the online parameters. ``tau = 1`` is a hard copy every ``interval``
updates (DQN); ``interval = 1`` with a small ``tau`` is Polyak averaging after every update
(DDPG, TD3, SAC). ``tau`` may be a traced hyperparameter (a sweep vmaps over it).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax


def polyak(target: Any, online: Any, tau: jax.Array | float) -> Any:
    """``tau * online + (1 - tau) * target``, leaf by leaf."""
    return optax.incremental_update(online, target, tau)


def update(target: Any, online: Any, tau: jax.Array | float, updates: jax.Array, interval: int = 1) -> Any:
    """The target after the online parameters' ``updates``-th update: moved by ``tau`` when
    ``updates`` is a multiple of ``interval``, unchanged otherwise (one ``where``, no branch)."""
    if interval == 1:
        return polyak(target, online, tau)
    return polyak(target, online, jnp.where(updates % interval == 0, tau, 0.0))
