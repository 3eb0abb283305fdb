"""optim.gradient_step (flat-vector Adam) equals optax's clip + Adam applied to the param tree."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrl import optim


def test_flat_step_equals_tree_step():
    params = {"w": jnp.arange(6.0).reshape(2, 3) / 7, "b": jnp.array([0.5, -1.0, 2.0]), "s": jnp.float32(0.3)}
    x = jax.random.normal(jax.random.key(0), (5, 2))

    def loss(p, x):
        y = jnp.tanh(x @ p["w"] + p["b"]) * p["s"]
        return (y**2).sum(), {"mean": y.mean()}

    lr, max_norm = jnp.float32(0.05), jnp.float32(0.5)  # the norm clip is active
    tx = optim.adam(max_norm)
    ours, ours_state = params, optim.init(tx, params)
    ref, ref_state = params, tx.init(params)
    for _ in range(4):
        ours, ours_state, metrics = optim.gradient_step(tx, lr, ours, ours_state, loss, x)
        (value, aux), grads = jax.value_and_grad(loss, has_aux=True)(ref, x)
        updates, ref_state = tx.update(grads, ref_state, ref)
        ref = jax.tree.map(lambda p, u: p - lr * u, ref, updates)
        np.testing.assert_allclose(metrics["grad_norm"], optax.global_norm(grads), rtol=1e-6)
        np.testing.assert_allclose(metrics["loss"], value, rtol=1e-6)
        np.testing.assert_allclose(metrics["mean"], aux["mean"], rtol=1e-6)
        assert metrics["grad_norm"] > max_norm
    assert jax.tree.structure(ours) == jax.tree.structure(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), ours, ref)
