"""Soft Actor-Critic (Haarnoja et al., 2018), for continuous and discrete actions, and TQC.

A stochastic actor and ``num_critics`` Q critics (with Polyak-averaged targets) learn from a
replay buffer, maximising return plus ``alpha`` times the policy's entropy; ``alpha`` is tuned
towards a target entropy (``autotune``), or fixed.

- Continuous actions: a tanh-Gaussian actor rescaled to the action bounds. The TD target is
  ``y = r + discount * (min_i Q'_i(s', a') - alpha log pi(a'|s'))`` with ``a' ~ pi(s')``; the
  actor minimises ``alpha log pi(a|s) - min_i Q_i(s, a)``; the target entropy is
  ``-target_entropy_scale * action_dim``.
- Discrete actions (Christodoulou, 2019): a categorical actor and critics of Q(s, .); the
  expectations over actions are exact sums; the target entropy is
  ``target_entropy_scale * log(num_actions)`` (a fraction of the uniform policy's).
- TQC (Kuznetsov et al., 2020; ``quantiles > 0``): every critic predicts ``quantiles`` quantiles
  of the return; the target pools all critics' target quantiles, drops the
  ``drop_quantiles * num_critics`` largest (the overestimation control), and each critic fits the
  rest with the quantile Huber loss; the actor maximises the mean of all quantiles.

Per gradient step: the critics, then (every ``policy_delay`` steps) the actor and the
temperature, all on the same minibatch of n-step targets; the target critics move a fraction
``tau`` after every critic step. The first ``learning_starts`` env steps act uniformly at random.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import struct

from jaxrl import config as cfg
from jaxrl import losses, networks, replay, targets
from jaxrl.algos import _actor_critic as ac
from jaxrl.core import Context, Spec, Transition, per_device
from jaxrl.optim import Optimizer


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(ac.Config):
    algo: str = "sac"
    num_critics: int = 2
    policy_delay: int = 1  # critic updates per actor and temperature update
    autotune: bool = True  # tune alpha towards the target entropy; false: alpha stays fixed
    quantiles: int = 0  # > 0: TQC, every critic predicts this many quantiles of the return
    drop_quantiles: int = 2  # TQC: the largest pooled target quantiles dropped, per critic
    alpha: float = cfg.traced(1.0)  # the entropy temperature (its initial value when autotuned)
    alpha_lr: float = cfg.traced(3e-4)
    target_entropy_scale: float = cfg.traced(1.0)

    def validate(self) -> None:
        super().validate()
        cfg.require(self.alpha > 0, f"alpha must be > 0, got {self.alpha}")
        cfg.require(self.alpha_lr > 0, f"alpha_lr must be > 0, got {self.alpha_lr}")
        cfg.require(self.quantiles >= 0, f"quantiles must be >= 0 (0: SAC, > 0: TQC), got {self.quantiles}")
        if self.quantiles:
            cfg.require(0 <= self.drop_quantiles < self.quantiles,
                        f"drop_quantiles must be in [0, quantiles={self.quantiles}), got {self.drop_quantiles}")


def check(config: Config, spec: Spec, devices: int) -> None:
    ac.check(config, spec, devices, discrete_ok=True)
    if spec.discrete and config.quantiles:
        raise cfg.ConfigError(f"TQC (quantiles={config.quantiles}) is for continuous actions; {config.env} has "
                              f"{spec.action_space}")


class State(struct.PyTreeNode):
    actor: dict
    critic: dict
    target_critic: dict
    log_alpha: jax.Array
    actor_opt: tuple
    critic_opt: tuple
    alpha_opt: tuple
    buffer: replay.Buffer = per_device()  # each device keeps its own envs' transitions


def actor_net(ctx: Context) -> networks.TanhGaussianActor | networks.CategoricalActor:
    c, s = ctx.config, ctx.spec
    if s.discrete:
        return networks.CategoricalActor(s.action_dim, c.hidden, c.activation, c.layer_norm, s.obs_shape, c.conv)
    low, high = s.action_bounds
    return networks.TanhGaussianActor(low, high, c.hidden, c.activation, c.layer_norm, s.obs_shape, c.conv)


def critic_net(ctx: Context) -> networks.QCriticEnsemble | networks.DiscreteCriticEnsemble:
    c, s = ctx.config, ctx.spec
    hidden = c.critic_hidden or c.hidden
    if s.discrete:
        return networks.DiscreteCriticEnsemble(s.action_dim, hidden, c.num_critics, c.activation, c.layer_norm,
                                               s.obs_shape, c.conv)
    return networks.QCriticEnsemble(hidden, c.num_critics, c.activation, c.layer_norm, c.quantiles or None,
                                    s.obs_shape, c.conv)


def alpha_optimizer() -> Optimizer:
    return Optimizer(lr="alpha_lr", max_grad_norm=None, prefix="alpha_")


def target_entropy(ctx: Context) -> jax.Array:
    scale = ctx.hp["target_entropy_scale"]
    return scale * math.log(ctx.spec.action_dim) if ctx.spec.discrete else -scale * ctx.spec.action_dim


def init(ctx: Context, key: jax.Array) -> State:
    k_actor, k_critic = jax.random.split(key)
    obs, action = ac.example_inputs(ctx)
    actor = networks.init(actor_net(ctx), k_actor, obs)
    critic = networks.init(critic_net(ctx), k_critic, *((obs,) if ctx.spec.discrete else (obs, action)))
    log_alpha = jnp.log(ctx.hp["alpha"])
    return State(actor, critic, critic, log_alpha, ac.actor_optimizer().init(actor), ac.critic_optimizer().init(critic),
                 alpha_optimizer().init(log_alpha), ac.buffer(ctx))


def act(ctx: Context, agent: State, carry: tuple, obs: jax.Array, key: jax.Array) -> tuple[jax.Array, tuple, dict]:
    k_policy, k_random = jax.random.split(key)
    action = actor_net(ctx).apply(agent.actor, obs).sample(seed=k_policy)
    return ac.random_until_learning(ctx, k_random, action), carry, {}


def policy(ctx: Context, agent: State, carry: tuple, obs: jax.Array, key: jax.Array,
           deterministic: bool) -> tuple[jax.Array, tuple]:
    """The most likely action (discrete) or the squashed mean (continuous) when deterministic,
    else a sample from the policy."""
    pi = actor_net(ctx).apply(agent.actor, obs)
    return (pi.mode() if deterministic else pi.sample(seed=key)), carry


def _soft_values(ctx: Context, agent: State, critic: dict, obs: jax.Array, key: jax.Array, alpha: jax.Array,
                 pool: bool) -> tuple[jax.Array, jax.Array]:
    """The soft value of ``obs`` under the current policy, ``E_a[Q(s, a) - alpha log pi(a|s)]``,
    from ``critic`` (min over critics; with ``pool`` (TQC) all critics' quantiles sorted, the
    largest dropped: ``(batch, kept)``), and the policy's entropy estimate per state."""
    pi = actor_net(ctx).apply(agent.actor, obs)
    if ctx.spec.discrete:  # exact expectations over the actions
        q = critic_net(ctx).apply(critic, obs).min(0)  # (batch, actions)
        log_pi = jax.nn.log_softmax(pi.logits)
        probs = jnp.exp(log_pi)
        return (probs * (q - alpha * log_pi)).sum(-1), -(probs * log_pi).sum(-1)
    action, log_prob = pi.sample_and_log_prob(seed=key)
    q = critic_net(ctx).apply(critic, obs, action)  # (critics, batch) or (critics, batch, quantiles)
    if not pool:
        q = q.min(0) if q.ndim == 2 else q.mean((0, 2))
        return q - alpha * log_prob, -log_prob
    c = ctx.config
    atoms = jnp.sort(jnp.moveaxis(q, 0, 1).reshape(q.shape[1], -1), axis=-1)
    kept = atoms[:, : c.num_critics * (c.quantiles - c.drop_quantiles)]
    return kept - alpha * log_prob[:, None], -log_prob


def critic_loss(ctx: Context, critic: dict, agent: State, b: dict, key: jax.Array) -> tuple[jax.Array, dict]:
    tqc = ctx.config.quantiles > 0
    alpha = jnp.exp(agent.log_alpha)
    next_v, _ = _soft_values(ctx, agent, agent.target_critic, b["next_obs"], key, alpha, pool=tqc)
    discount = b["discount"][:, None] if tqc else b["discount"]
    target = jax.lax.stop_gradient((b["reward"][:, None] if tqc else b["reward"]) + discount * next_v)
    if ctx.spec.discrete:
        q = critic_net(ctx).apply(critic, b["obs"])
        q = jnp.take_along_axis(q, b["action"][None, :, None], -1)[..., 0]  # (critics, batch)
    else:
        q = critic_net(ctx).apply(critic, b["obs"], b["action"])
    if tqc:  # every critic's quantiles against the pooled target atoms
        taus = (jnp.arange(ctx.config.quantiles) + 0.5) / ctx.config.quantiles
        loss = losses.quantile_huber(q, target[None], taus).mean(1).sum()
    else:
        loss = 0.5 * jnp.square(q - target).mean(1).sum()
    return loss, {"q_mean": q.mean()}


def actor_loss(ctx: Context, actor: dict, agent: State, b: dict, key: jax.Array) -> tuple[jax.Array, dict]:
    alpha = jnp.exp(agent.log_alpha)
    value, entropy = _soft_values(ctx, agent.replace(actor=actor), agent.critic, b["obs"], key, alpha, pool=False)
    return -value.mean(), {"entropy": entropy.mean()}


def learn(ctx: Context, agent: State, traj: Transition, key: jax.Array) -> tuple[State, dict]:
    c, hp = ctx.config, ctx.hp

    def update(agent: State, b: dict, key: jax.Array, step: jax.Array) -> tuple[State, dict]:
        k_critic, k_actor = jax.random.split(key)
        critic, critic_opt, metrics = ac.critic_optimizer().step(
            ctx, agent.critic, agent.critic_opt, lambda p, b: critic_loss(ctx, p, agent, b, k_critic), b)
        agent = agent.replace(critic=critic, critic_opt=critic_opt,
                              target_critic=targets.polyak(agent.target_critic, critic, hp["tau"]))

        def actor_and_alpha(agent: State) -> tuple[State, dict]:
            actor, actor_opt, info = ac.actor_optimizer().step(
                ctx, agent.actor, agent.actor_opt, lambda p, b: actor_loss(ctx, p, agent, b, k_actor), b)
            agent = agent.replace(actor=actor, actor_opt=actor_opt)
            if c.autotune:
                entropy = info["actor_entropy"]
                log_alpha, alpha_opt, alpha_info = alpha_optimizer().step(
                    ctx, agent.log_alpha, agent.alpha_opt,
                    lambda a, e: (losses.temperature_loss(a, e, target_entropy(ctx)), {}), entropy)
                agent = agent.replace(log_alpha=log_alpha, alpha_opt=alpha_opt)
                info = {**info, **alpha_info}
            return agent, {**info, "alpha": jnp.exp(agent.log_alpha)}

        agent, info = ac.every(c.policy_delay, step, actor_and_alpha, agent)
        return agent, {**metrics, **info}

    return ac.learn(ctx, agent, traj, key, update)
