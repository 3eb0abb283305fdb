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

import jax
import jax.numpy as jnp
from flax import struct

from jaxrl import config as cfg
from jaxrl import losses, networks, replay, targets
from jaxrl.core import Context, Spec, Transition, nan_like, per_device
from jaxrl.networks import QNetwork
from jaxrl.optim import Optimizer


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(cfg.Config):
    algo: str = "dqn"
    num_envs: int = 8
    num_steps: int = 1
    activation: str = "relu"
    hidden: tuple[int, ...] = (120, 84)
    buffer_size: int = 10_000  # transitions, all envs together (a multiple of num_envs)
    batch_size: int = 128
    learning_starts: int = 1_000  # env steps stored before the first gradient step
    updates_per_iteration: int = 1
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
        for name in ("buffer_size", "batch_size", "updates_per_iteration", "target_update_interval"):
            cfg.require(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        cfg.require(self.buffer_size % self.num_envs == 0,
                    f"buffer_size={self.buffer_size} is not a multiple of num_envs={self.num_envs} (the buffer "
                    f"keeps buffer_size / num_envs steps of every env)")
        cfg.require(
            self.buffer_size >= self.steps_per_iteration,
            f"buffer_size={self.buffer_size} cannot hold one iteration's "
            f"num_envs * num_steps = {self.steps_per_iteration} transitions",
        )
        cfg.require(
            self.steps_per_iteration <= self.learning_starts <= self.buffer_size,
            f"learning_starts={self.learning_starts} must lie between one iteration's "
            f"{self.steps_per_iteration} transitions and buffer_size={self.buffer_size}",
        )
        cfg.require(self.learning_starts < self.total_steps,
                    f"learning_starts={self.learning_starts} leaves no steps to learn in total_steps={self.total_steps}")
        run_steps = self.num_iterations * self.steps_per_iteration
        cfg.require(self.learning_starts <= run_steps,
                    f"learning_starts={self.learning_starts} is more than the {run_steps} env steps the run takes "
                    f"({self.num_iterations} iterations of num_envs * num_steps = {self.steps_per_iteration}), "
                    f"so it would never learn")
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
    obs = jnp.zeros(ctx.spec.obs_shape, jnp.float32)
    params = networks.init(network(ctx), key, obs[None])
    item = {"obs": obs, "action": jnp.int32(0), "reward": jnp.float32(0),
            "terminated": jnp.bool_(False), "next_obs": obs}
    buffer = replay.create(item, c.num_envs // ctx.devices, c.buffer_size // c.num_envs)
    return State(params, params, optimizer(ctx).init(params), jnp.int32(0), buffer)


def epsilon(ctx: Context) -> jax.Array:
    hp = ctx.hp
    decay_steps = hp["eps_fraction"] * ctx.config.total_steps
    frac = jnp.clip(1.0 - ctx.env_steps / decay_steps, 0.0, 1.0)
    return hp["eps_end"] + (hp["eps_start"] - hp["eps_end"]) * frac


def _epsilon_greedy(ctx: Context, agent: State, obs: jax.Array, key: jax.Array, eps: jax.Array) -> jax.Array:
    k_explore, k_random = jax.random.split(key)
    greedy = network(ctx).apply(agent.params, obs).argmax(-1)
    random = jax.random.randint(k_random, greedy.shape, 0, ctx.spec.action_dim)
    explore = jax.random.uniform(k_explore, greedy.shape) < eps
    return jnp.where(explore, random, greedy).astype(jnp.int32)


def act(ctx: Context, agent: State, carry: tuple, obs: jax.Array, key: jax.Array) -> tuple[jax.Array, tuple, dict]:
    return _epsilon_greedy(ctx, agent, obs, key, epsilon(ctx)), carry, {}


def policy(ctx: Context, agent: State, carry: tuple, obs: jax.Array, key: jax.Array,
           deterministic: bool) -> tuple[jax.Array, tuple]:
    """Greedy actions when deterministic, else epsilon-greedy with the final ``eps_end``."""
    return _epsilon_greedy(ctx, agent, obs, key, 0.0 if deterministic else ctx.hp["eps_end"]), carry


def loss(ctx: Context, params: dict, target_params: dict, b: dict) -> tuple[jax.Array, dict]:
    net, gamma = network(ctx), ctx.hp["gamma"]
    q_next_target = net.apply(target_params, b["next_obs"])
    chooser = net.apply(params, b["next_obs"]) if ctx.config.double else q_next_target
    best = jnp.take_along_axis(q_next_target, chooser.argmax(-1)[:, None], -1)[:, 0]
    target = b["reward"] + gamma * (1.0 - b["terminated"]) * best
    q = jnp.take_along_axis(net.apply(params, b["obs"]), b["action"][:, None], -1)[:, 0]
    per_item = losses.td_error_loss(q - jax.lax.stop_gradient(target), ctx.config.huber)
    return per_item.mean(), {"q_mean": q.mean()}


def learn(ctx: Context, agent: State, traj: Transition, key: jax.Array) -> tuple[State, dict]:
    c, hp = ctx.config, ctx.hp
    items = {"obs": traj.obs, "action": traj.action, "reward": traj.reward,
             "terminated": traj.terminated, "next_obs": traj.next_obs}
    agent = agent.replace(buffer=replay.add(agent.buffer, items))
    opt = optimizer(ctx)

    def update(agent: State, step_key: jax.Array) -> tuple[State, dict]:
        batch = replay.sample(agent.buffer, step_key, c.batch_size // ctx.devices)
        batch = {**batch, "obs": ctx.normalize(batch["obs"]), "next_obs": ctx.normalize(batch["next_obs"]),
                 "terminated": batch["terminated"].astype(jnp.float32)}
        params, opt_state, metrics = opt.step(
            ctx, agent.params, agent.opt_state, lambda p, b: loss(ctx, p, agent.target_params, b), batch)
        updates = agent.updates + 1
        target = targets.update(agent.target_params, params, hp["tau"], updates, c.target_update_interval)
        return agent.replace(params=params, target_params=target, opt_state=opt_state, updates=updates), metrics

    def train(agent: State) -> tuple[State, dict]:
        agent, metrics = jax.lax.scan(update, agent, jax.random.split(key, c.updates_per_iteration))
        return agent, jax.tree.map(jnp.mean, metrics)

    def wait(agent: State) -> tuple[State, dict]:  # replay warm-up: no gradient steps yet
        return agent, nan_like(jax.eval_shape(train, agent)[1])

    ready = ctx.env_steps + c.steps_per_iteration >= c.learning_starts
    agent, metrics = jax.lax.cond(ready, train, wait, agent)
    return agent, {**metrics, "lr": opt.learning_rate(ctx), "epsilon": epsilon(ctx)}
