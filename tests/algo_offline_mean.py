"""A trivial offline algorithm for the interface tests: it takes no env steps and learns the
mean observation of a dataset given as ``inputs`` (``{"obs": (N, *obs_shape)}``) by gradient
steps on minibatches sampled from it."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from jaxrl import config as cfg
from jaxrl import optim
from jaxrl.core import Context


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(cfg.Config):
    offline = True
    algo: str = "tests.algo_offline_mean"
    num_envs: int = 1
    num_steps: int = 0
    updates: int = 200  # iterations, one gradient step each
    batch_size: int = 32
    lr: float = cfg.traced(0.05)

    @property
    def num_iterations(self) -> int:
        return self.updates


class State(struct.PyTreeNode):
    mean: jax.Array
    opt_state: tuple


def init(ctx: Context, key: jax.Array) -> State:
    mean = jnp.zeros(ctx.spec.obs_shape)
    return State(mean, optim.Optimizer(max_grad_norm=None).init(mean))


def act(ctx, agent, carry, obs, key):
    return jnp.zeros(obs.shape[0], jnp.int32), carry, {}


def policy(ctx, agent, carry, obs, key, deterministic):
    return jnp.zeros(obs.shape[0], jnp.int32), carry


def learn(ctx: Context, agent: State, traj, key: jax.Array):
    assert traj is None  # offline: the loop takes no env steps
    data = ctx.inputs["obs"]
    batch = data[jax.random.randint(key, (ctx.config.batch_size,), 0, data.shape[0])]
    loss = lambda m, b: (jnp.mean(jnp.sum(jnp.square(b - m), -1)), {})  # noqa: E731
    opt = optim.Optimizer(max_grad_norm=None)
    mean, opt_state, metrics = opt.step(ctx, agent.mean, agent.opt_state, loss, batch)
    return State(mean, opt_state), metrics
