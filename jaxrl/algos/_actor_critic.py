"""What the off-policy actor-critic algorithms (TD3/DDPG and SAC/TQC) share: their config, a
replay buffer with warm-up, two optimizers, random actions before learning starts, and the
learn skeleton (store the rollout, then per gradient step sample a minibatch of n-step targets
and hand it to the algorithm's own update)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxrl import config as cfg
from jaxrl import explore, replay
from jaxrl.core import Context, Spec, Transition, nan_like
from jaxrl.optim import Optimizer


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(replay.Config):
    hidden: tuple[int, ...] = (256, 256)  # actor (and critic, unless critic_hidden is set)
    critic_hidden: tuple[int, ...] = ()  # () : the same as hidden
    activation: str = "relu"
    layer_norm: bool = False  # LayerNorm after every hidden layer of actor and critics
    learning_starts: int = 5_000  # env steps of uniformly random actions before learning
    actor_lr: float = cfg.traced(3e-4)
    critic_lr: float = cfg.traced(3e-4)
    tau: float = cfg.traced(0.005)  # target networks move this fraction per update
    max_grad_norm: float = cfg.traced(0.0)  # global-norm gradient clipping; 0: none

    def validate(self) -> None:
        super().validate()
        cfg.require(all(h >= 1 for h in self.critic_hidden),
                    f"critic_hidden must list positive layer widths (or be empty), got {self.critic_hidden}")
        for name in ("actor_lr", "critic_lr"):
            cfg.require(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)}")
        cfg.require(0.0 < self.tau <= 1.0, f"tau must be in (0, 1], got {self.tau}")
        cfg.require(self.max_grad_norm >= 0, f"max_grad_norm must be >= 0 (0: no clipping), got {self.max_grad_norm}")
        for name in ("num_critics", "policy_delay"):
            if hasattr(self, name):
                cfg.require(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")


def check(config: Config, spec: Spec, devices: int, discrete_ok: bool) -> None:
    """Refuse envs the algorithm cannot act in, and batches that do not split over devices."""
    if spec.discrete and not discrete_ok:
        raise cfg.ConfigError(f"{config.algo} needs a continuous (Box) action space; {config.env} has "
                              f"{spec.action_space} (for discrete actions use sac or dqn)")
    if not spec.discrete:
        low, high = spec.action_bounds
        if not all(map(math.isfinite, low + high)):
            raise cfg.ConfigError(f"{config.algo} squashes actions into the action bounds, but {config.env}'s "
                                  f"are not finite: {spec.action_space}")
    cfg.require(config.batch_size % devices == 0,  # data parallel: every device samples a share
                f"batch_size={config.batch_size} does not divide over {devices} devices")


def example_inputs(ctx: Context) -> tuple[jax.Array, jax.Array]:
    """A batch of one observation and one (continuous) action, for initialising networks."""
    return jnp.zeros((1, *ctx.spec.obs_shape)), jnp.zeros((1, ctx.spec.action_dim))


def actor_optimizer() -> Optimizer:
    return Optimizer(lr="actor_lr", prefix="actor_")


def critic_optimizer() -> Optimizer:
    return Optimizer(lr="critic_lr", prefix="critic_")


def buffer(ctx: Context) -> replay.Buffer:
    """An empty replay buffer for this device's envs."""
    c = ctx.config
    return replay.create(replay.example_transition(ctx), c.num_envs // ctx.devices, c.buffer_size // c.num_envs)


def random_until_learning(ctx: Context, key: jax.Array, action: jax.Array) -> jax.Array:
    """``action``, or uniformly random actions while the replay buffer fills (``learning_starts``)."""
    random = explore.uniform(key, ctx.spec, len(action))
    return jnp.where(ctx.env_steps < ctx.config.learning_starts, random, action)


def every(period: int, step: jax.Array, update: Callable[[Any], tuple[Any, dict]], agent: Any) -> tuple[Any, dict]:
    """``update(agent)`` on every ``period``-th gradient step, else the agent unchanged and NaN
    metrics (a real branch: ``step`` counts gradient steps of the run, the same in every seed)."""
    if period == 1:
        return update(agent)
    return jax.lax.cond(step % period == 0, update, lambda a: (a, nan_like(jax.eval_shape(update, a)[1])), agent)


def learn(ctx: Context, agent: Any, traj: Transition, key: jax.Array,
          update: Callable[[Any, dict, jax.Array, jax.Array], tuple[Any, dict]]) -> tuple[Any, dict]:
    """Store the rollout, then (after the warm-up) ``updates_per_iteration`` times: sample a
    minibatch of n-step targets (observations normalised) and call ``update(agent, batch, key,
    step)``; ``step`` is the gradient step's index in the run."""
    c = ctx.config
    agent = agent.replace(buffer=replay.add(agent.buffer, replay.transitions(traj)))

    def one(agent: Any, key: jax.Array, step: jax.Array) -> tuple[Any, dict]:
        k_sample, k_update = jax.random.split(key)
        b = replay.sample_nstep(agent.buffer, k_sample, c.batch_size // ctx.devices, c.n_step, ctx.hp["gamma"])
        b = {**b, "obs": ctx.normalize(b["obs"]), "next_obs": ctx.normalize(b["next_obs"])}
        return update(agent, b, k_update, step)

    return replay.update_after_warmup(ctx, agent, key, one, c.updates_per_iteration, c.learning_starts)
