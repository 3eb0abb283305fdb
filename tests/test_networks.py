"""networks.init: every dense kernel is gain x a random orthogonal matrix, drawn in one random call."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl import networks

OBS = jnp.zeros((1, 5))


def actor_critic(action_dim=3, hidden=(64, 8)):
    return networks.ActorCritic(action_dim, True, hidden, "tanh", (5,))


def kernels(params):
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {jax.tree_util.keystr(path): np.asarray(x) for path, x in flat if path[-1].key == "kernel"}


def test_kernels_are_scaled_orthogonal_and_biases_zero():
    params = networks.init(actor_critic(), jax.random.key(0), OBS)
    gains = {"actor_out": 0.01, "critic_out": 1.0}
    found = kernels(params)
    assert len(found) == 6  # wide (5, 64), tall (64, 8) and (8, 3), and (8, 1) kernels
    for name, k in found.items():
        gain = next((g for layer, g in gains.items() if layer in name), np.sqrt(2))
        n_in, n_out = k.shape
        gram = k.T @ k if n_in >= n_out else k @ k.T  # the orthonormal side
        expected = gain**2 * np.eye(min(n_in, n_out))
        np.testing.assert_allclose(gram, expected, atol=1e-5 * gain**2, err_msg=name)
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        if path[-1].key == "bias":
            assert not np.any(np.asarray(x))
    # actor and critic torsos have the same shapes but get different matrices
    assert not np.allclose(found["['params']['actor']['Dense_0']['kernel']"],
                           found["['params']['critic']['Dense_0']['kernel']"])


def test_deterministic_per_key():
    a, b, c = (networks.init(actor_critic(), jax.random.key(k), OBS) for k in (1, 1, 2))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert not np.allclose(kernels(a)["['params']['actor']['Dense_1']['kernel']"],
                           kernels(c)["['params']['actor']['Dense_1']['kernel']"])


def test_haar_distributed_like_flax_orthogonal():
    """Signs fixed from R's diagonal: without that, QR's first column is biased (mean of the
    corner entry about -0.28 for 8x8 matrices instead of 0)."""
    net = networks.QNetwork(8, (8,), "relu", obs_shape=(8,))
    draw = jax.jit(jax.vmap(lambda k: networks.init(net, k, jnp.zeros((1, 8)))["params"]))
    k = np.asarray(draw(jax.random.split(jax.random.key(3), 400))["MLP_0"]["Dense_0"]["kernel"]) / np.sqrt(2)
    assert abs(k[:, 0, 0].mean()) < 0.08 and abs(k[:, 7, 7].mean()) < 0.08
    np.testing.assert_allclose((k**2).mean(), 1 / 8, rtol=0.05)


def test_plain_module_init_still_works():
    """Without networks.init the kernels come boxed, from flax's own per-layer draw."""
    net = actor_critic()
    boxed = net.init(jax.random.key(0), OBS)
    unboxed = nn.meta.unbox(boxed)
    x = jnp.ones((2, 5))
    assert isinstance(boxed["params"]["actor_out"]["kernel"], networks.Orthogonal)
    np.testing.assert_array_equal(net.apply(boxed, x)[1], net.apply(unboxed, x)[1])
    k = np.asarray(unboxed["params"]["critic"]["Dense_1"]["kernel"])
    np.testing.assert_allclose(k.T @ k, 2 * np.eye(8), atol=1e-5)


def test_fewer_compiled_kernels_than_per_layer_draws():
    """The reason for networks.init: XLA compiles each random call into kernels of its own
    (measured: 33 fused kernels here against 129 for flax's per-layer draws)."""
    def kernels_compiled(init):
        hlo = jax.jit(init).lower(jax.random.key(0)).compile().as_text()
        return len(re.findall(r"= \S+ fusion\(", hlo))

    net = actor_critic(hidden=(64, 64, 64))
    shared = kernels_compiled(lambda k: networks.init(net, k, OBS))
    assert 2 * shared < kernels_compiled(lambda k: net.init(k, OBS))


def test_lifted_layers_rejected():
    class Stacked(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.vmap(lambda m, y: networks.dense(4)(y), variable_axes={"params": 0},
                           split_rngs={"params": True})(self, x)

    with pytest.raises(NotImplementedError, match="cannot be lifted"):
        Stacked().init(jax.random.key(0), jnp.zeros((2, 1, 3)))
