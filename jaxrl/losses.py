"""Loss terms shared by the algorithms, each a small pure function of arrays.

Conventions: every function returns a per-item loss or a mean over the items it is given, as its
docstring says; gradients are taken by the caller, and targets are passed in already computed
(wrap them in ``jax.lax.stop_gradient`` where they come from the same parameters).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def clipped_surrogate(ratio: jax.Array, advantage: jax.Array, clip_eps: jax.Array | float) -> jax.Array:
    """PPO's policy loss (to minimise), mean over items: ``-min(r A, clip(r, 1 - eps, 1 + eps) A)``."""
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    return -jnp.minimum(ratio * advantage, clipped * advantage).mean()


def value_loss(value: jax.Array, target: jax.Array, old_value: jax.Array | None = None,
               clip_eps: jax.Array | float | None = None) -> jax.Array:
    """``0.5 * (value - target)^2``, mean over items; with ``old_value`` and ``clip_eps``, PPO's
    clipped version: the larger of the errors of ``value`` and of ``value`` kept within
    ``clip_eps`` of ``old_value``."""
    err = jnp.square(value - target)
    if clip_eps is not None:
        clipped = old_value + jnp.clip(value - old_value, -clip_eps, clip_eps)
        err = jnp.maximum(err, jnp.square(clipped - target))
    return 0.5 * err.mean()


def td_error_loss(error: jax.Array, huber: bool = False) -> jax.Array:
    """Per item: ``0.5 * error^2``, or the Huber loss (quadratic within 1, linear beyond)."""
    return optax.huber_loss(error) if huber else 0.5 * jnp.square(error)


def quantile_huber(quantiles: jax.Array, targets: jax.Array, taus: jax.Array, kappa: float = 1.0) -> jax.Array:
    """Quantile regression loss (QR-DQN, IQN, TQC), per item.

    ``quantiles (..., M)`` estimate the ``taus (M,)`` quantiles of a return distribution,
    ``targets (..., K)`` are samples of the target distribution. The loss of one item is
    ``sum_i mean_j |tau_i - 1{u_ij < 0}| * huber_kappa(u_ij) / kappa`` with ``u_ij = t_j - q_i``
    (``kappa = 0``: the plain quantile (pinball) loss).
    """
    u = targets[..., None, :] - quantiles[..., :, None]  # (..., M, K)
    weight = jnp.abs(taus[:, None] - (u < 0).astype(u.dtype))
    if kappa == 0:
        return (weight * jnp.abs(u)).mean(-1).sum(-1)
    huber = optax.huber_loss(u, delta=kappa) / kappa
    return (weight * huber).mean(-1).sum(-1)


def temperature_loss(log_alpha: jax.Array, entropy: jax.Array, target_entropy: jax.Array | float) -> jax.Array:
    """SAC's automatic temperature (mean over items): ``log_alpha * (entropy - target)``, so
    ``alpha`` grows while the policy's entropy is below the target and shrinks above it.
    ``entropy`` is the per-item estimate (``-log pi(a|s)`` of sampled actions, or the exact
    entropy of a discrete policy) and is not differentiated."""
    return (log_alpha * jax.lax.stop_gradient(entropy - target_entropy)).mean()
