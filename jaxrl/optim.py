"""The optimizer every algorithm uses: global-norm gradient clipping, then Adam.

The learning rate is applied outside the optax chain so that it can be a traced (vmappable)
hyperparameter and follow any schedule the algorithm computes, and so it can be reported.

The optimizer works on one flat vector of all parameters (its state comes from :func:`init`):
XLA then compiles one set of update kernels instead of one per parameter array, which cut a PPO
program's compile time by about 12% on CPU at the same run speed.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree


def adam(max_grad_norm: jax.Array, eps: float = 1e-5) -> optax.GradientTransformation:
    """Clip by global norm, then Adam's moment scaling (no learning rate yet)."""
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), optax.scale_by_adam(eps=eps))


def init(tx: optax.GradientTransformation, params: Any) -> Any:
    """``tx``'s state for ``params``, over the flat vector :func:`gradient_step` updates."""
    return tx.init(ravel_pytree(params)[0])


def gradient_step(
    tx: optax.GradientTransformation,
    lr: jax.Array,
    params: Any,
    opt_state: Any,
    loss_fn: Callable[..., tuple[jax.Array, dict]],
    *batch: Any,
    axis: str | None = None,
) -> tuple[Any, Any, dict[str, jax.Array]]:
    """One descent step on ``loss_fn(params, *batch) -> (loss, aux metrics)``.

    ``opt_state`` comes from :func:`init`. Returns new params, optimizer state and the metrics
    (``loss``, ``grad_norm`` before clipping, and the aux dict). With ``axis`` (inside
    ``jax.shard_map``, data parallel), each device holds its share of the batch: the gradients
    and metrics are averaged over the devices on ``axis``, so the step equals one on the whole
    batch (for a loss that averages over its items) and leaves the replicated params identical
    on every device.
    """
    flat, unravel = ravel_pytree(params)
    flat_in = flat
    if axis is not None:
        # Deliberate: cast the replicated (device-invariant) params to device-varying before
        # differentiating. Differentiating w.r.t. the invariant params themselves would make the
        # transpose of their implicit broadcast psum the gradient over devices, so a pmean on top
        # would give D times the mean gradient. With varying params the gradient is this device's
        # own, and the explicit pmean below is the average.
        flat_in = jax.lax.pcast(flat, axis, to="varying")
    flat_loss = lambda p, *b: loss_fn(unravel(p), *b)  # noqa: E731
    (loss, aux), grads = jax.value_and_grad(flat_loss, has_aux=True)(flat_in, *batch)
    if axis is not None:
        grads, loss, aux = jax.lax.pmean((grads, loss, aux), axis)
    updates, opt_state = tx.update(grads, opt_state, flat)
    return unravel(flat - lr * updates), opt_state, {"loss": loss, "grad_norm": jnp.linalg.norm(grads), **aux}
