"""Network torsos and heads (flax.linen), shared by all algorithms.

linen + ``jax.jit`` measured fastest for the small networks RL uses (see STACK-NOTES). Weights
use orthogonal initialisation with the usual gains: sqrt(2) for hidden layers, 0.01 for policy
logits/means (a near-uniform initial policy) and 1.0 for values; :func:`init` builds a
network's params with all those random matrices drawn in one call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxrl.config import ACTIVATIONS

ACTIVATION_FNS = {name: getattr(nn, name) for name in ACTIVATIONS}


class Orthogonal(struct.PyTreeNode, nn.meta.AxisMetadata):
    """A weight (boxed by :func:`dense`) to be ``gain`` times a random orthogonal matrix.

    ``value`` already holds such a matrix, drawn by this layer alone, so ``module.init`` works
    as usual (flax unboxes it on use); :func:`init` replaces it with one from a shared draw.
    """

    value: jax.Array
    gain: float = struct.field(pytree_node=False)

    def unbox(self) -> jax.Array:
        return self.value

    def replace_boxed(self, value: jax.Array) -> Orthogonal:
        return self.replace(value=value)

    def add_axis(self, index: int, params: dict) -> Orthogonal:
        raise NotImplementedError("jaxrl.networks.dense layers cannot be lifted by nn.vmap or nn.scan")

    remove_axis = add_axis


def dense(features: int, gain: float = float(np.sqrt(2))) -> nn.Dense:
    """A dense layer with an orthogonal ``gain``-scaled kernel and zero bias."""
    orthogonal = nn.initializers.orthogonal(gain)

    def kernel_init(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype = jnp.float32) -> Orthogonal:
        return Orthogonal(orthogonal(key, shape, dtype), gain)

    return nn.Dense(features, kernel_init=kernel_init, bias_init=nn.initializers.zeros)


def _inputs_outputs(shape: tuple[int, ...]) -> tuple[int, int]:
    """A kernel as a matrix, as flax's orthogonal sees it: (all axes but the last, the last)."""
    return math.prod(shape[:-1]), shape[-1]


def init(module: nn.Module, key: jax.Array, *inputs: jax.Array) -> dict:
    """``module.init(key, *inputs)``, unboxed, with every :func:`dense` kernel drawn at once.

    Flax draws each layer's weights with a random call of its own, and XLA compiles each call
    into kernels of its own: on a 2-core CPU that was 16% of a PPO program's compile time. Here
    one normal draw covers all kernels, and matrices with as many rows are orthogonalised by one
    batched QR (the per-layer draws go unused and are dropped when tracing). Same distribution
    as flax's ``orthogonal(gain)``: Q of the QR of a Gaussian matrix, signs fixed by R's diagonal.
    """
    k_init, k_noise = jax.random.split(key)
    is_box = lambda x: isinstance(x, Orthogonal)  # noqa: E731
    leaves, tree = jax.tree.flatten(module.init(k_init, *inputs), is_leaf=is_box)
    # A kernel is a (rows >= cols) matrix, transposed when wide. Kernels with the same rows
    # share one batched QR at the group's widest cols: the first cols columns of Q from the QR
    # of a Gaussian matrix are Q from the QR of its first cols columns.
    groups: dict[int, list[tuple[int, int, int]]] = {}  # rows -> (leaf index, n_in, n_out)
    for i, leaf in enumerate(leaves):
        if is_box(leaf):
            n_in, n_out = _inputs_outputs(leaf.value.shape)
            groups.setdefault(max(n_in, n_out), []).append((i, n_in, n_out))
    widths = {m: max(min(n_in, n_out) for _, n_in, n_out in kernels) for m, kernels in groups.items()}
    sizes = [len(kernels) * m * widths[m] for m, kernels in groups.items()]
    noise = jnp.split(jax.random.normal(k_noise, (sum(sizes),)), np.cumsum(sizes)[:-1]) if groups else []
    for (m, kernels), flat in zip(groups.items(), noise):
        q, r = jnp.linalg.qr(flat.reshape(len(kernels), m, widths[m]))
        q = q * jnp.sign(jnp.diagonal(r, axis1=-2, axis2=-1))[:, None, :]
        for matrix, (i, n_in, n_out) in zip(q, kernels):
            box = leaves[i]
            matrix = matrix[:, :min(n_in, n_out)]
            matrix = matrix.T if n_in < n_out else matrix
            leaves[i] = (box.gain * matrix).reshape(box.value.shape).astype(box.value.dtype)
    return jax.tree.unflatten(tree, leaves)


class MLP(nn.Module):
    """Flattens everything after the batch axis, then ``hidden`` dense layers."""

    hidden: Sequence[int]
    activation: str = "tanh"
    obs_shape: tuple[int, ...] = ()  # the per-observation shape, flattened to one axis

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[: x.ndim - len(self.obs_shape)] + (-1,))
        for width in self.hidden:
            x = ACTIVATION_FNS[self.activation](dense(width)(x))
        return x


class ActorCritic(nn.Module):
    """Separate actor and critic MLPs; ``__call__`` returns (policy distribution, value).

    ``action_dim`` is the number of actions (discrete, categorical policy) or the action size
    (continuous, diagonal Gaussian with a state-independent log standard deviation). ``value``
    alone is a method so bootstrap values cost only the critic.
    """

    action_dim: int
    discrete: bool
    hidden: Sequence[int]
    activation: str = "tanh"
    obs_shape: tuple[int, ...] = ()

    def setup(self) -> None:
        self.actor = MLP(self.hidden, self.activation, self.obs_shape)
        self.actor_out = dense(self.action_dim, 0.01)
        self.critic = MLP(self.hidden, self.activation, self.obs_shape)
        self.critic_out = dense(1, 1.0)
        if not self.discrete:
            self.log_std = self.param("log_std", nn.initializers.zeros, (self.action_dim,))

    def __call__(self, obs: jax.Array) -> tuple[distrax.Distribution, jax.Array]:
        return self.policy(obs), self.value(obs)

    def policy(self, obs: jax.Array) -> distrax.Distribution:
        out = self.actor_out(self.actor(obs))
        if self.discrete:
            return distrax.Categorical(logits=out)
        return distrax.MultivariateNormalDiag(out, jnp.exp(self.log_std))

    def value(self, obs: jax.Array) -> jax.Array:
        return self.critic_out(self.critic(obs))[..., 0]


class QNetwork(nn.Module):
    """Action values for discrete actions; ``dueling`` splits into V + (A - mean A)."""

    num_actions: int
    hidden: Sequence[int]
    activation: str = "relu"
    dueling: bool = False
    obs_shape: tuple[int, ...] = ()

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        x = MLP(self.hidden, self.activation, self.obs_shape)(obs)
        if not self.dueling:
            return dense(self.num_actions, 1.0)(x)
        advantage = dense(self.num_actions, 1.0)(x)
        value = dense(1, 1.0)(x)
        return value + advantage - advantage.mean(axis=-1, keepdims=True)
