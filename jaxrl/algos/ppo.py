"""Proximal Policy Optimization (Schulman et al., 2017) with GAE, discrete and continuous.

Per iteration: GAE advantages from the rollout (bootstrapping truncated episodes from the final
observation's value), then ``update_epochs`` passes over ``num_minibatches`` shuffled
minibatches of the clipped-surrogate loss + value loss (optionally clipped) - entropy bonus.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from jaxrl import config as cfg
from jaxrl import networks, optim, returns
from jaxrl.loop import Context, Spec, Transition
from jaxrl.networks import ActorCritic


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(cfg.Config):
    algo: str = "ppo"
    update_epochs: int = 4
    num_minibatches: int = 4
    anneal_lr: bool = True
    normalize_advantages: bool = True  # per minibatch
    clip_value_loss: bool = False  # clip value updates to +-clip_eps around the rollout values
    gae_lambda: float = cfg.traced(0.95)
    clip_eps: float = cfg.traced(0.2)
    ent_coef: float = cfg.traced(0.01)
    vf_coef: float = cfg.traced(0.5)

    def validate(self) -> None:
        super().validate()
        batch = self.steps_per_iteration
        cfg.require(self.update_epochs >= 1, f"update_epochs must be >= 1, got {self.update_epochs}")
        cfg.require(self.num_minibatches >= 1, f"num_minibatches must be >= 1, got {self.num_minibatches}")
        cfg.require(
            batch % self.num_minibatches == 0,
            f"num_envs * num_steps = {batch} does not divide into num_minibatches = {self.num_minibatches}",
        )
        cfg.require(0.0 <= self.gae_lambda <= 1.0, f"gae_lambda must be in [0, 1], got {self.gae_lambda}")
        cfg.require(self.clip_eps > 0, f"clip_eps must be > 0, got {self.clip_eps}")
        cfg.require(self.ent_coef >= 0, f"ent_coef must be >= 0, got {self.ent_coef}")
        cfg.require(self.vf_coef >= 0, f"vf_coef must be >= 0, got {self.vf_coef}")


def check(config: Config, spec: Spec, devices: int) -> None:
    local = config.steps_per_iteration // devices
    if local % config.num_minibatches:
        raise cfg.ConfigError(
            f"each of {devices} devices learns on num_envs * num_steps / {devices} = {local} transitions, "
            f"which do not divide into num_minibatches = {config.num_minibatches}")


class State(struct.PyTreeNode):
    params: dict
    opt_state: tuple


def network(ctx: Context) -> ActorCritic:
    c, s = ctx.config, ctx.spec
    return ActorCritic(s.action_dim, s.discrete, c.hidden, c.activation, s.obs_shape)


def init(ctx: Context, key: jax.Array) -> State:
    params = networks.init(network(ctx), key, jnp.zeros((1, *ctx.spec.obs_shape)))
    return State(params, optim.init(optim.adam(ctx.hp["max_grad_norm"]), params))


def act(ctx: Context, agent: State, obs: jax.Array, key: jax.Array) -> tuple[jax.Array, dict]:
    pi, value = network(ctx).apply(agent.params, obs)
    action, log_prob = pi.sample_and_log_prob(seed=key)
    return action, {"log_prob": log_prob, "value": value}


def policy(ctx: Context, agent: State, obs: jax.Array, key: jax.Array, deterministic: bool) -> jax.Array:
    """Actions for evaluation: the mode (discrete) or mean (continuous) when deterministic."""
    pi = network(ctx).apply(agent.params, obs, method=ActorCritic.policy)
    return pi.mode() if deterministic else pi.sample(seed=key)


def loss(ctx: Context, params: dict, mb: dict) -> tuple[jax.Array, dict]:
    c, hp = ctx.config, ctx.hp
    pi, value = network(ctx).apply(params, mb["obs"])
    log_ratio = pi.log_prob(mb["action"]) - mb["log_prob"]
    ratio = jnp.exp(log_ratio)
    adv = mb["advantage"]
    if c.normalize_advantages:  # over the whole minibatch, every device's share of it
        mean = ctx.mean(adv)
        adv = (adv - mean) / (jnp.sqrt(ctx.mean(jnp.square(adv - mean))) + 1e-8)
    eps = hp["clip_eps"]
    policy_loss = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1.0 - eps, 1.0 + eps) * adv).mean()
    value_err = (value - mb["target"]) ** 2
    if c.clip_value_loss:
        clipped = mb["value"] + jnp.clip(value - mb["value"], -eps, eps)
        value_err = jnp.maximum(value_err, (clipped - mb["target"]) ** 2)
    value_loss = 0.5 * value_err.mean()
    entropy = pi.entropy().mean()
    total = policy_loss + hp["vf_coef"] * value_loss - hp["ent_coef"] * entropy
    return total, {
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "entropy": entropy,
        "approx_kl": ((ratio - 1.0) - log_ratio).mean(),
        "clip_fraction": (jnp.abs(ratio - 1.0) > eps).mean(),
    }


def learn(ctx: Context, agent: State, traj: Transition, key: jax.Array) -> tuple[State, dict]:
    c, hp = ctx.config, ctx.hp
    next_values = network(ctx).apply(agent.params, traj.next_obs, method=ActorCritic.value)
    advantage, target = returns.gae(traj.reward, traj.extras["value"], next_values,
                                    traj.terminated, traj.truncated, hp["gamma"], hp["gae_lambda"])
    data = {"obs": traj.obs, "action": traj.action, "log_prob": traj.extras["log_prob"],
            "value": traj.extras["value"], "advantage": advantage, "target": target}
    batch = traj.reward.size  # this device's share of the iteration's transitions
    data = jax.tree.map(lambda x: x.reshape((batch,) + x.shape[2:]), data)
    tx, lr = optim.adam(hp["max_grad_norm"]), ctx.learning_rate()

    def minibatch_step(agent: State, mb: dict) -> tuple[State, dict]:
        params, opt_state, metrics = optim.gradient_step(
            tx, lr, agent.params, agent.opt_state, lambda p, b: loss(ctx, p, b), mb, axis=ctx.axis)
        return State(params, opt_state), metrics

    def epoch(agent: State, epoch_key: jax.Array) -> tuple[State, dict]:
        perm = jax.random.permutation(epoch_key, batch)
        minibatches = jax.tree.map(
            lambda x: x[perm].reshape((c.num_minibatches, -1) + x.shape[1:]), data)
        return jax.lax.scan(minibatch_step, agent, minibatches)

    agent, metrics = jax.lax.scan(epoch, agent, jax.random.split(key, c.update_epochs))
    return agent, {**jax.tree.map(jnp.mean, metrics), "lr": lr}
