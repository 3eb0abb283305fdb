"""Network torsos and heads (flax.linen), shared by all algorithms.

linen + ``jax.jit`` measured fastest for the small networks RL uses (see STACK-NOTES). Weights
use orthogonal initialisation with the usual gains: sqrt(2) for hidden layers, 0.01 for policy
logits/means (a near-uniform initial policy) and 1.0 for values.
"""

from __future__ import annotations

from collections.abc import Sequence

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxrl.config import ACTIVATIONS

ACTIVATION_FNS = {name: getattr(nn, name) for name in ACTIVATIONS}


def dense(features: int, gain: float = float(np.sqrt(2))) -> nn.Dense:
    return nn.Dense(features, kernel_init=nn.initializers.orthogonal(gain), bias_init=nn.initializers.zeros)


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
