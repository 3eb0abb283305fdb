"""TD3 (Fujimoto et al., 2018) and DDPG (Lillicrap et al., 2016): deterministic actor-critic.

A deterministic actor ``mu(s)`` (tanh, rescaled to the action bounds) and Q(s, a) critics learn
from a replay buffer. TD3's three additions to DDPG are options, so DDPG is this module with
them off (``configs/ddpg_pendulum.yaml``):

- clipped double Q (``num_critics: 2``): the TD target takes the smaller of two target critics;
- target policy smoothing (``target_noise > 0``): the target action is the target actor's plus
  clipped Gaussian noise;
- delayed policy updates (``policy_delay: 2``): the actor and the target networks move once
  every ``policy_delay`` critic updates.

Per gradient step: ``y = r + discount * min_i Q'_i(s', clip(mu'(s') + noise))`` (the n-step
return and discount of :func:`jaxrl.replay.sample_nstep`); every critic regresses on ``y``; then
every ``policy_delay`` steps the actor ascends ``Q_1(s, mu(s))`` and the targets move a
fraction ``tau`` towards the online networks. Exploration adds Gaussian noise to ``mu(s)``: one
scale for every env, or (``exploration: per_env``) scales spread over the envs from
``exploration_noise`` to ``exploration_noise_max``; the first ``learning_starts`` env steps act
uniformly at random.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from jaxrl import config as cfg
from jaxrl import explore, networks, replay, targets
from jaxrl.algos import _actor_critic as ac
from jaxrl.core import Context, Spec, Transition, per_device
from jaxrl.optim import Optimizer

EXPLORATION = ("gaussian", "per_env")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(ac.Config):
    algo: str = "td3"
    num_critics: int = 2  # 2: clipped double Q (TD3); 1: DDPG
    policy_delay: int = 2  # critic updates per actor (and target) update; 1: DDPG
    exploration: str = "gaussian"  # or per_env: noise scales spread over the envs
    exploration_noise: float = cfg.traced(0.1)  # std of the action noise, a fraction of the half range
    exploration_noise_max: float = cfg.traced(0.4)  # per_env: the largest env's noise scale
    target_noise: float = cfg.traced(0.2)  # target policy smoothing (0: DDPG)
    target_noise_clip: float = cfg.traced(0.5)

    def validate(self) -> None:
        super().validate()
        cfg.require_one_of("exploration", self.exploration, EXPLORATION)
        for name in ("exploration_noise", "target_noise", "target_noise_clip"):
            cfg.require(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        if self.exploration == "per_env":
            cfg.require(self.exploration_noise_max >= self.exploration_noise,
                        f"exploration_noise_max={self.exploration_noise_max} is below "
                        f"exploration_noise={self.exploration_noise}")


def check(config: Config, spec: Spec, devices: int) -> None:
    ac.check(config, spec, devices, discrete_ok=False)


class State(struct.PyTreeNode):
    actor: dict
    critic: dict
    target_actor: dict
    target_critic: dict
    actor_opt: tuple
    critic_opt: tuple
    buffer: replay.Buffer = per_device()  # each device keeps its own envs' transitions


def actor_net(ctx: Context) -> networks.DeterministicActor:
    c, (low, high) = ctx.config, ctx.spec.action_bounds
    return networks.DeterministicActor(low, high, c.hidden, c.activation, c.layer_norm, ctx.spec.obs_shape,
                                       c.conv)


def critic_net(ctx: Context) -> networks.QCriticEnsemble:
    c = ctx.config
    return networks.QCriticEnsemble(c.critic_hidden or c.hidden, c.num_critics, c.activation, c.layer_norm,
                                    obs_shape=ctx.spec.obs_shape, conv=c.conv)


def init(ctx: Context, key: jax.Array) -> State:
    k_actor, k_critic = jax.random.split(key)
    obs, action = ac.example_inputs(ctx)
    actor = networks.init(actor_net(ctx), k_actor, obs)
    critic = networks.init(critic_net(ctx), k_critic, obs, action)
    return State(actor, critic, actor, critic, ac.actor_optimizer().init(actor), ac.critic_optimizer().init(critic),
                 ac.buffer(ctx))


def _noise_scale(ctx: Context, n: int) -> jax.Array:
    hp = ctx.hp
    if ctx.config.exploration == "per_env":
        return explore.per_env_scales(hp["exploration_noise"], hp["exploration_noise_max"], n)
    return hp["exploration_noise"]


def act(ctx: Context, agent: State, carry: tuple, obs: jax.Array, key: jax.Array) -> tuple[jax.Array, tuple, dict]:
    k_noise, k_random = jax.random.split(key)
    action = explore.gaussian(k_noise, ctx.spec, actor_net(ctx).apply(agent.actor, obs), _noise_scale(ctx, len(obs)))
    return ac.random_until_learning(ctx, k_random, action), carry, {}


def policy(ctx: Context, agent: State, carry: tuple, obs: jax.Array, key: jax.Array,
           deterministic: bool) -> tuple[jax.Array, tuple]:
    """``mu(s)`` when deterministic, else with the exploration noise."""
    action = actor_net(ctx).apply(agent.actor, obs)
    return (action if deterministic else explore.gaussian(key, ctx.spec, action, _noise_scale(ctx, len(obs)))), carry


def critic_loss(ctx: Context, critic: dict, agent: State, b: dict, key: jax.Array) -> tuple[jax.Array, dict]:
    hp = ctx.hp
    next_action = actor_net(ctx).apply(agent.target_actor, b["next_obs"])
    next_action = explore.gaussian(key, ctx.spec, next_action, hp["target_noise"], hp["target_noise_clip"])
    next_q = critic_net(ctx).apply(agent.target_critic, b["next_obs"], next_action).min(0)
    target = jax.lax.stop_gradient(b["reward"] + b["discount"] * next_q)
    q = critic_net(ctx).apply(critic, b["obs"], b["action"])  # (critics, batch)
    return 0.5 * jnp.square(q - target).mean(1).sum(), {"q_mean": q.mean()}


def actor_loss(ctx: Context, actor: dict, agent: State, b: dict) -> tuple[jax.Array, dict]:
    q = critic_net(ctx).apply(agent.critic, b["obs"], actor_net(ctx).apply(actor, b["obs"]))
    return -q[0].mean(), {}


def learn(ctx: Context, agent: State, traj: Transition, key: jax.Array) -> tuple[State, dict]:
    c, hp = ctx.config, ctx.hp

    def update(agent: State, b: dict, key: jax.Array, step: jax.Array) -> tuple[State, dict]:
        critic, critic_opt, metrics = ac.critic_optimizer().step(
            ctx, agent.critic, agent.critic_opt, lambda p, b: critic_loss(ctx, p, agent, b, key), b)
        agent = agent.replace(critic=critic, critic_opt=critic_opt)

        def actor_step(agent: State) -> tuple[State, dict]:
            actor, actor_opt, info = ac.actor_optimizer().step(
                ctx, agent.actor, agent.actor_opt, lambda p, b: actor_loss(ctx, p, agent, b), b)
            return agent.replace(actor=actor, actor_opt=actor_opt,
                                 target_actor=targets.polyak(agent.target_actor, actor, hp["tau"]),
                                 target_critic=targets.polyak(agent.target_critic, agent.critic, hp["tau"])), info

        agent, info = ac.every(c.policy_delay, step, actor_step, agent)
        return agent, {**metrics, **info}

    return ac.learn(ctx, agent, traj, key, update)
