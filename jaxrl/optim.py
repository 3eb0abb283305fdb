"""The optimizer every algorithm uses: global-norm gradient clipping, then Adam.

The learning rate is applied outside the optax chain so that it can be a traced (vmappable)
hyperparameter and follow any schedule the algorithm computes, and so it can be reported.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import optax


def adam(max_grad_norm: jax.Array, eps: float = 1e-5) -> optax.GradientTransformation:
    """Clip by global norm, then Adam's moment scaling (no learning rate yet)."""
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), optax.scale_by_adam(eps=eps))


def gradient_step(
    tx: optax.GradientTransformation,
    lr: jax.Array,
    params: Any,
    opt_state: Any,
    loss_fn: Callable[..., tuple[jax.Array, dict]],
    *batch: Any,
) -> tuple[Any, Any, dict[str, jax.Array]]:
    """One descent step on ``loss_fn(params, *batch) -> (loss, aux metrics)``.

    Returns new params, optimizer state and the metrics (``loss``, ``grad_norm`` before
    clipping, and the aux dict).
    """
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, *batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, jax.tree.map(lambda u: -lr * u, updates))
    return params, opt_state, {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}
