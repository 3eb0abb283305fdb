"""Optimizers: a gradient step and an update step, in optax's sign convention.

An agent may have any number of optimized parts (an actor, a critic, a temperature), each an
:class:`Optimizer`: which traced hyperparameter is its learning rate (``"lr"``,
``"actor_lr"``, ...), its gradient clipping, its schedule and the prefix of its metrics. The two
steps are separate, so an algorithm can combine, mask or reuse gradients in between:

    grads, loss, aux = optim.grad(ctx, loss_fn, params, batch)     # d loss / d params
    params, state, info = opt.apply(ctx, params, state, grads)     # params + updates

:func:`grad` is the one place where data parallelism is handled: inside ``jax.shard_map`` each
device differentiates the loss on its share of the batch and the gradients (and the loss and
its aux metrics) are averaged over the devices, so every device applies the same update.

The update runs on one flat vector of all of a part's parameters (its state comes from
:meth:`Optimizer.init`): XLA then compiles one set of Adam kernels instead of one per parameter
array, which cut a PPO program's compile time by about 12% on CPU at the same run speed.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from jaxrl.core import Context

SCHEDULES = ("constant", "linear")  # linear: from the learning rate down to 0 over training


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """One optimized part of an agent: Adam after optional global-norm gradient clipping.

    ``lr`` and ``max_grad_norm`` name traced hyperparameters (``ctx.hp``), so they can be swept
    and vmapped; a ``max_grad_norm`` hyperparameter of 0 clips nothing, and ``max_grad_norm=None``
    leaves clipping out of the program. ``schedule`` scales the learning
    rate over training (:data:`SCHEDULES`). Metrics of the part are named ``prefix + "loss"``,
    ``prefix + "grad_norm"`` and ``prefix + "lr"`` (``prefix=""``: ``loss``, ``grad_norm``,
    ``lr``; ``prefix="actor_"``: ``actor_loss``, ...).
    """

    lr: str = "lr"
    max_grad_norm: str | None = "max_grad_norm"
    schedule: str = "constant"
    prefix: str = ""
    eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")

    def transform(self, lr: jax.Array | float, max_grad_norm: jax.Array | float | None) -> optax.GradientTransformation:
        """The optax chain: clip by global norm (not for None; a traced 0 clips nothing), Adam,
        scale by ``-lr``."""
        if max_grad_norm is not None:
            max_grad_norm = jnp.where(max_grad_norm > 0, max_grad_norm, jnp.inf)
        parts = [] if max_grad_norm is None else [optax.clip_by_global_norm(max_grad_norm)]
        return optax.chain(*parts, optax.scale_by_adam(eps=self.eps), optax.scale_by_learning_rate(lr))

    def init(self, params: Any) -> Any:
        """The optimizer state of ``params`` (over the flat vector :meth:`apply` updates)."""
        return self.transform(1.0, None if self.max_grad_norm is None else 1.0).init(ravel_pytree(params)[0])

    def learning_rate(self, ctx: Context) -> jax.Array:
        """This iteration's learning rate: ``ctx.hp[self.lr]`` times the schedule's factor."""
        lr = ctx.hp[self.lr]
        return lr * (1.0 - ctx.progress) if self.schedule == "linear" else lr

    def apply(self, ctx: Context, params: Any, state: Any, grads: Any) -> tuple[Any, Any, dict[str, jax.Array]]:
        """One update of ``params`` from ``grads`` (of the loss, as :func:`grad` gives them).

        Returns the new params and state, and the metrics ``grad_norm`` (before clipping) and
        ``lr`` under this part's prefix.
        """
        flat_grads, unravel = ravel_pytree(grads)
        lr = self.learning_rate(ctx)
        clip = None if self.max_grad_norm is None else ctx.hp[self.max_grad_norm]
        updates, state = self.transform(lr, clip).update(flat_grads, state)
        metrics = {"grad_norm": jnp.linalg.norm(flat_grads), "lr": lr}
        # the updates go back to the params' shapes and are added leaf by leaf: raveling the
        # params too would copy all of them into one vector every step
        return optax.apply_updates(params, unravel(updates)), state, self.named(metrics)

    def named(self, metrics: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """``metrics`` with this part's prefix on every name."""
        return {self.prefix + k: v for k, v in metrics.items()}

    def step(self, ctx: Context, params: Any, state: Any, loss_fn: Callable[..., tuple[jax.Array, dict]],
             *batch: Any) -> tuple[Any, Any, dict[str, jax.Array]]:
        """:func:`grad` then :meth:`apply`; the metrics are ``loss``, the loss's aux metrics,
        ``grad_norm`` and ``lr``, all under this part's prefix."""
        grads, loss, aux = grad(ctx, loss_fn, params, *batch)
        params, state, info = self.apply(ctx, params, state, grads)
        return params, state, {**self.named({"loss": loss, **aux}), **info}


def grad(ctx: Context, loss_fn: Callable[..., tuple[jax.Array, dict]], params: Any,
         *batch: Any) -> tuple[Any, jax.Array, dict[str, jax.Array]]:
    """``(d loss / d params, loss, aux)`` of ``loss_fn(params, *batch) -> (loss, aux metrics)``.

    Data parallel (``ctx.axis`` set, inside ``jax.shard_map``): each device holds its share of
    the batch; the gradients, loss and aux are averaged over the devices, so the result equals
    the gradient on the whole batch (for a loss that averages over its items) on every device.
    """
    if ctx.axis is None:
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, *batch)
        return grads, loss, aux
    # Deliberate: cast the replicated (device-invariant) params to device-varying before
    # differentiating. Differentiating w.r.t. the invariant params themselves would make the
    # transpose of their implicit broadcast psum the gradient over devices, so a pmean on top
    # would give D times the mean gradient. With varying params the gradient is this device's
    # own, and the explicit pmean below is the average.
    varying = jax.tree.map(lambda p: jax.lax.pcast(p, ctx.axis, to="varying"), params)
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(varying, *batch)
    return jax.lax.pmean((grads, loss, aux), ctx.axis)
