"""optim: the flat-vector update equals optax's clip + Adam applied to the param tree, in optax's
sign convention; each optimized part has its own learning-rate hyperparameter, schedule and
metric names; and targets move as Polyak averaging or periodic copies."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrl import optim, targets
from jaxrl.core import Context


def _ctx(hp, iteration=0, num_iterations=10):
    config = SimpleNamespace(num_iterations=num_iterations)
    return Context(config, None, {k: jnp.float32(v) for k, v in hp.items()}, jnp.int32(iteration))


def _loss(p, x):
    y = jnp.tanh(x @ p["w"] + p["b"]) * p["s"]
    return (y**2).sum(), {"mean": y.mean()}


PARAMS = {"w": jnp.arange(6.0).reshape(2, 3) / 7, "b": jnp.array([0.5, -1.0, 2.0]), "s": jnp.float32(0.3)}


def test_flat_step_equals_optax_on_the_param_tree():
    x = jax.random.normal(jax.random.key(0), (5, 2))
    opt = optim.Optimizer(lr="actor_lr", max_grad_norm="clip", prefix="actor_")
    ctx = _ctx({"actor_lr": 0.05, "clip": 0.5})  # the norm clip is active
    tx = optax.chain(optax.clip_by_global_norm(0.5), optax.scale_by_adam(eps=1e-5), optax.scale(-0.05))
    ours, ours_state = PARAMS, opt.init(PARAMS)
    ref, ref_state = PARAMS, tx.init(PARAMS)
    for _ in range(4):
        ours, ours_state, metrics = opt.step(ctx, ours, ours_state, _loss, x)
        (value, aux), grads = jax.value_and_grad(_loss, has_aux=True)(ref, x)
        updates, ref_state = tx.update(grads, ref_state, ref)
        ref = optax.apply_updates(ref, updates)
        np.testing.assert_allclose(metrics["actor_grad_norm"], optax.global_norm(grads), rtol=1e-6)
        np.testing.assert_allclose(metrics["actor_loss"], value, rtol=1e-6)
        np.testing.assert_allclose(metrics["actor_mean"], aux["mean"], rtol=1e-6)
        assert metrics["actor_grad_norm"] > 0.5 and metrics["actor_lr"] == np.float32(0.05)
    assert jax.tree.structure(ours) == jax.tree.structure(PARAMS)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), ours, ref)


def test_grad_and_apply_are_separate_steps_in_optax_sign_convention():
    x = jax.random.normal(jax.random.key(1), (5, 2))
    ctx = _ctx({"lr": 0.1})
    grads, loss, aux = optim.grad(ctx, _loss, PARAMS, x)
    np.testing.assert_allclose(loss, _loss(PARAMS, x)[0])
    expected = jax.grad(lambda p: _loss(p, x)[0])(PARAMS)
    jax.tree.map(np.testing.assert_allclose, grads, expected)  # the gradient of the loss itself
    opt = optim.Optimizer(max_grad_norm=None)  # no clipping: Adam's first step is -lr g / (|g| + eps)
    params, _, info = opt.apply(ctx, PARAMS, opt.init(PARAMS), grads)
    moved = jax.tree.map(lambda a, b: np.asarray(a - b), params, PARAMS)
    jax.tree.map(lambda m, g: np.testing.assert_allclose(m, -0.1 * g / (np.abs(g) + 1e-5), rtol=1e-4, atol=1e-7),
                 moved, grads)
    assert set(info) == {"grad_norm", "lr"}


def test_linear_schedule_and_bad_schedule():
    opt = optim.Optimizer(lr="critic_lr", schedule="linear")
    assert float(opt.learning_rate(_ctx({"critic_lr": 1.0}, iteration=5, num_iterations=10))) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="schedule must be one of"):
        optim.Optimizer(schedule="cosine-ish")


def test_targets_polyak_and_periodic():
    online, target = {"w": jnp.ones(3)}, {"w": jnp.zeros(3)}
    np.testing.assert_allclose(targets.polyak(target, online, 0.25)["w"], 0.25)
    np.testing.assert_allclose(targets.update(target, online, 1.0, jnp.int32(3), interval=4)["w"], 0.0)
    np.testing.assert_allclose(targets.update(target, online, 1.0, jnp.int32(8), interval=4)["w"], 1.0)
