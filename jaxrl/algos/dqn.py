"""Deep Q-Networks (Mnih et al., 2015) with Double-DQN targets and a Dueling head as options.

Each iteration adds the rollout to a device-resident replay buffer, then (once
``learning_starts`` env steps are stored) takes ``updates_per_iteration`` gradient steps on
uniformly sampled minibatches. The target network follows the online one every
``target_update_interval`` gradient steps: a hard copy when ``tau = 1``, Polyak averaging
``target <- tau * online + (1 - tau) * target`` otherwise. Exploration is epsilon-greedy with
epsilon decaying linearly from ``eps_start`` to ``eps_end`` over ``eps_fraction`` of training.
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
from flax import struct

from jaxrl import config as cfg
from jaxrl import explore, losses, networks, replay, targets
from jaxrl.core import Context, Spec, Transition, per_device
from jaxrl.networks import QNetwork
from jaxrl.optim import Optimizer


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(replay.Config):
    algo: str = "dqn"
    num_envs: int = 8
    activation: str = "relu"
    hidden: tuple[int, ...] = (120, 84)
    buffer_size: int = 10_000
    batch_size: int = 128
    target_update_interval: int = 100  # in gradient steps
    double: bool = True
    dueling: bool = False
    huber: bool = False  # Huber (smooth L1) TD loss; squared error is more stable where rare terminal
    # transitions carry the signal (CartPole: capped gradients let Q drift upwards)
    anneal_lr: bool = False  # decay lr linearly to 0 over training
    lr: float = cfg.traced(2.5e-4)
    max_grad_norm: float = cfg.traced(10.0)
    tau: float = cfg.traced(1.0)
    eps_start: float = cfg.traced(1.0)
    eps_end: float = cfg.traced(0.05)
    eps_fraction: float = cfg.traced(0.5)  # of total_steps spent decaying epsilon

    def validate(self) -> None:
        super().validate()
        cfg.require(self.target_update_interval >= 1,
                    f"target_update_interval must be >= 1, got {self.target_update_interval}")
        warmup = -(-self.learning_starts // self.steps_per_iteration) - 1  # iterations before the first update
        updates = (self.num_iterations - warmup) * self.updates_per_iteration
        if self.target_update_interval > updates:  # runs (a smoke test may want that), but learns little
            warnings.warn(f"target_update_interval={self.target_update_interval} is more than the {updates} gradient "
                          "steps the run takes: the target network is never updated", UserWarning, stacklevel=3)
        cfg.require(self.total_steps <= cfg.INT32_MAX,  # the epsilon schedule uses it in the compiled program
                    f"total_steps={self.total_steps} is more than dqn supports ({cfg.INT32_MAX}, int32)")
        cfg.require(self.lr > 0, f"lr must be > 0, got {self.lr}")
        cfg.require(self.max_grad_norm > 0, f"max_grad_norm must be > 0, got {self.max_grad_norm}")
        cfg.require(0.0 < self.tau <= 1.0, f"tau must be in (0, 1], got {self.tau}")
        cfg.require(0.0 <= self.eps_end <= self.eps_start <= 1.0,
                    f"need 0 <= eps_end <= eps_start <= 1, got {self.eps_end}, {self.eps_start}")
        cfg.require(self.eps_fraction > 0, f"eps_fraction must be > 0, got {self.eps_fraction}")


def check(config: Config, spec: Spec, devices: int) -> None:
    if not spec.discrete:
        raise cfg.ConfigError(f"dqn needs a discrete action space; {config.env} has {spec.action_space}")
    cfg.require(config.batch_size % devices == 0,  # data parallel: every device samples a share
                f"batch_size={config.batch_size} does not divide over {devices} devices")


class State(struct.PyTreeNode):
    params: dict
    target_params: dict
    opt_state: tuple
    updates: jax.Array  # gradient steps taken (drives target-network updates)
    buffer: replay.Buffer = per_device()  # each device keeps its own envs' transitions


def network(ctx: Context) -> QNetwork:
    c = ctx.config
    return QNetwork(ctx.spec.action_dim, c.hidden, c.activation, c.dueling, ctx.spec.obs_shape)


def optimizer(ctx: Context) -> Optimizer:
    return Optimizer(schedule="linear" if ctx.config.anneal_lr else "constant")


def init(ctx: Context, key: jax.Array) -> State:
    c = ctx.config
    params = networks.init(network(ctx), key, jnp.zeros((1, *ctx.spec.obs_shape)))
    buffer = replay.create(replay.example_transition(ctx), c.num_envs // ctx.devices, c.buffer_size // c.num_envs)
    return State(params, params, optimizer(ctx).init(params), jnp.int32(0), buffer)


def epsilon(ctx: Context) -> jax.Array:
    hp = ctx.hp
    decay_steps = hp["eps_fraction"] * ctx.config.total_steps
    frac = jnp.clip(1.0 - ctx.env_steps / decay_steps, 0.0, 1.0)
    return hp["eps_end"] + (hp["eps_start"] - hp["eps_end"]) * frac


def _epsilon_greedy(ctx: Context, agent: State, obs: jax.Array, key: jax.Array, eps: jax.Array) -> jax.Array:
    return explore.epsilon_greedy(key, network(ctx).apply(agent.params, obs), eps)


def act(ctx: Context, agent: State, carry: tuple, obs: jax.Array, key: jax.Array) -> tuple[jax.Array, tuple, dict]:
    return _epsilon_greedy(ctx, agent, obs, key, epsilon(ctx)), carry, {}


def policy(ctx: Context, agent: State, carry: tuple, obs: jax.Array, key: jax.Array,
           deterministic: bool) -> tuple[jax.Array, tuple]:
    """Greedy actions when deterministic, else epsilon-greedy with the final ``eps_end``."""
    return _epsilon_greedy(ctx, agent, obs, key, 0.0 if deterministic else ctx.hp["eps_end"]), carry


def loss(ctx: Context, params: dict, target_params: dict, b: dict) -> tuple[jax.Array, dict]:
    net = network(ctx)
    q_next_target = net.apply(target_params, b["next_obs"])
    chooser = net.apply(params, b["next_obs"]) if ctx.config.double else q_next_target
    best = jnp.take_along_axis(q_next_target, chooser.argmax(-1)[:, None], -1)[:, 0]
    target = b["reward"] + b["discount"] * best
    q = jnp.take_along_axis(net.apply(params, b["obs"]), b["action"][:, None], -1)[:, 0]
    per_item = losses.td_error_loss(q - jax.lax.stop_gradient(target), ctx.config.huber)
    return per_item.mean(), {"q_mean": q.mean()}


def learn(ctx: Context, agent: State, traj: Transition, key: jax.Array) -> tuple[State, dict]:
    c, hp = ctx.config, ctx.hp
    agent = agent.replace(buffer=replay.add(agent.buffer, replay.transitions(traj)))
    opt = optimizer(ctx)

    def update(agent: State, step_key: jax.Array, step: jax.Array) -> tuple[State, dict]:
        batch = replay.sample_nstep(agent.buffer, step_key, c.batch_size // ctx.devices, c.n_step, hp["gamma"])
        batch = {**batch, "obs": ctx.normalize(batch["obs"]), "next_obs": ctx.normalize(batch["next_obs"])}
        params, opt_state, metrics = opt.step(
            ctx, agent.params, agent.opt_state, lambda p, b: loss(ctx, p, agent.target_params, b), batch)
        updates = agent.updates + 1
        target = targets.update(agent.target_params, params, hp["tau"], updates, c.target_update_interval)
        return agent.replace(params=params, target_params=target, opt_state=opt_state, updates=updates), metrics

    agent, metrics = replay.update_after_warmup(ctx, agent, key, update, c.updates_per_iteration, c.learning_starts)
    return agent, {**metrics, "lr": opt.learning_rate(ctx), "epsilon": epsilon(ctx)}
