"""PQN (Gallici et al., 2024, "Simplifying Deep Temporal Difference Learning"): a DQN with no
replay buffer and no target network that learns from vectorised rollouts.

Acting is epsilon-greedy over ``num_envs`` parallel envs, with DQN's linear epsilon schedule
(:func:`jaxrl.algos.dqn.epsilon`). Each iteration computes Q(lambda) targets backwards over the
rollout (:func:`jaxrl.returns.q_lambda`: a termination bootstraps nothing, a truncation bootstraps
from its final observation's ``max_a Q``, and no target crosses an episode end), then takes
``update_epochs`` passes over ``num_minibatches`` shuffled minibatches of the squared TD error.
The bootstrap values come from the network that acted, not recomputed per minibatch: the
Q-values it acted on (kept by ``act``; the next observation inside an episode is the next step's
observation), and it is run again only on the rollout's last next observations and on the final
observations of truncated episodes (:func:`jaxrl.returns.next_values`). LayerNorm after every
hidden dense layer (``layer_norm``, on by default) is what keeps this stable without a target
network.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from jaxrl import batching, explore, losses, networks, returns
from jaxrl import config as cfg
from jaxrl.algos import dqn
from jaxrl.core import Context, Spec, Transition
from jaxrl.optim import Optimizer


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(cfg.Config):
    algo: str = "pqn"
    num_envs: int = 32
    num_steps: int = 64
    update_epochs: int = 4
    num_minibatches: int = 16
    hidden: tuple[int, ...] = (256, 256)
    activation: str = "relu"
    layer_norm: bool = True  # LayerNorm after every hidden dense layer, before its activation
    anneal_lr: bool = True  # decay lr linearly to 0 over training
    lr: float = cfg.traced(1e-4)
    max_grad_norm: float = cfg.traced(10.0)
    q_lambda: float = cfg.traced(0.95)  # lambda of the Q(lambda) targets
    eps_start: float = cfg.traced(1.0)
    eps_end: float = cfg.traced(0.05)
    eps_fraction: float = cfg.traced(0.2)  # of total_steps spent decaying epsilon

    def validate(self) -> None:
        super().validate()
        for name in ("update_epochs", "num_minibatches"):
            cfg.require(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        cfg.require(self.steps_per_iteration % self.num_minibatches == 0,
                    f"num_envs * num_steps = {self.steps_per_iteration} does not divide into num_minibatches = "
                    f"{self.num_minibatches}")
        cfg.require(self.total_steps <= cfg.INT32_MAX,  # the epsilon schedule uses it in the compiled program
                    f"total_steps={self.total_steps} is more than pqn supports ({cfg.INT32_MAX}, int32)")
        cfg.require(self.lr > 0, f"lr must be > 0, got {self.lr}")
        cfg.require(self.max_grad_norm >= 0, f"max_grad_norm must be >= 0 (0: no clipping), got {self.max_grad_norm}")
        cfg.require(0.0 <= self.q_lambda <= 1.0, f"q_lambda must be in [0, 1], got {self.q_lambda}")
        cfg.require(0.0 <= self.eps_end <= self.eps_start <= 1.0,
                    f"need 0 <= eps_end <= eps_start <= 1, got eps_end={self.eps_end}, eps_start={self.eps_start}")
        cfg.require(self.eps_fraction > 0, f"eps_fraction must be > 0, got {self.eps_fraction}")


def check(config: Config, spec: Spec, devices: int) -> None:
    if not spec.discrete:
        raise cfg.ConfigError(f"pqn needs a discrete action space; {config.env} has {spec.action_space}")
    local = config.steps_per_iteration // devices
    cfg.require(local % config.num_minibatches == 0,
                f"each of {devices} devices learns on num_envs * num_steps / {devices} = {local} transitions, "
                f"which do not divide into num_minibatches = {config.num_minibatches}")


class State(struct.PyTreeNode):
    params: dict
    opt_state: tuple


def network(ctx: Context) -> networks.QNetwork:
    """The Q-network: the one place its torso is chosen."""
    c, s = ctx.config, ctx.spec
    return networks.QNetwork(s.action_dim, c.hidden, c.activation, obs_shape=s.obs_shape, layer_norm=c.layer_norm,
                             conv=c.conv)


def optimizer(ctx: Context) -> Optimizer:
    return Optimizer(schedule="linear" if ctx.config.anneal_lr else "constant")


def init(ctx: Context, key: jax.Array) -> State:
    params = networks.init(network(ctx), key, jnp.zeros((1, *ctx.spec.obs_shape)))
    return State(params, optimizer(ctx).init(params))


def _epsilon_greedy(ctx: Context, agent: State, obs: jax.Array, key: jax.Array, eps: jax.Array) -> jax.Array:
    return explore.epsilon_greedy(key, network(ctx).apply(agent.params, obs), eps)


def act(ctx: Context, agent: State, carry: tuple, obs: jax.Array, key: jax.Array) -> tuple[jax.Array, tuple, dict]:
    """Epsilon-greedy; the Q-values acted on are kept for :func:`learn`'s targets."""
    q = network(ctx).apply(agent.params, obs)
    return explore.epsilon_greedy(key, q, dqn.epsilon(ctx)), carry, {"q": q}


def policy(ctx: Context, agent: State, carry: tuple, obs: jax.Array, key: jax.Array,
           deterministic: bool) -> tuple[jax.Array, tuple]:
    """Greedy actions when deterministic, else epsilon-greedy with the final ``eps_end``."""
    return _epsilon_greedy(ctx, agent, obs, key, 0.0 if deterministic else ctx.hp["eps_end"]), carry


def loss(ctx: Context, params: dict, mb: dict) -> tuple[jax.Array, dict]:
    q = network(ctx).apply(params, mb["obs"])
    taken = jnp.take_along_axis(q, mb["action"][:, None], axis=-1)[:, 0]
    return losses.td_error_loss(taken - mb["target"]).mean(), {"q_mean": taken.mean()}


def learn(ctx: Context, agent: State, traj: Transition, key: jax.Array) -> tuple[State, dict]:
    c, hp = ctx.config, ctx.hp
    # the acting network's values of the next observations: those acted on at the next step, the
    # network run only on the rollout's last next observations and truncated episodes' final ones
    q_of = lambda obs: network(ctx).apply(agent.params, ctx.normalize(obs))  # noqa: E731
    next_q = returns.next_values(traj.extras["q"], traj.next_obs, traj.truncated, q_of, traj.terminated)
    target = returns.q_lambda(traj.reward, next_q, traj.terminated, traj.truncated, hp["gamma"], hp["q_lambda"])
    data = {"obs": ctx.normalize(traj.obs), "action": traj.action, "target": target}
    data = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), data)  # this device's transitions
    opt = optimizer(ctx)

    def minibatch_step(agent: State, mb: dict) -> tuple[State, dict]:
        params, opt_state, metrics = opt.step(ctx, agent.params, agent.opt_state, lambda p, b: loss(ctx, p, b), mb)
        return State(params, opt_state), metrics

    agent, metrics = batching.epochs(minibatch_step, agent, data, key, c.update_epochs, c.num_minibatches)
    return agent, {**metrics, "epsilon": dqn.epsilon(ctx)}
