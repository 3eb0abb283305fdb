"""Trust Region Policy Optimization (Schulman et al., 2015), discrete and continuous.

Per iteration, on PPO's network, rollout values and GAE (:func:`jaxrl.algos.ppo.rollout_data`):

1. the policy takes one natural-gradient step: the gradient ``g`` of the surrogate
   ``L(theta) = mean(pi_theta(a|s) / pi_old(a|s) * A)`` is preconditioned by the Fisher matrix
   ``F`` (the Hessian of the mean ``KL[pi_old, pi_theta]`` at ``theta_old``, applied to vectors
   by forward-over-reverse differentiation, never formed), ``s = (F + cg_damping I)^-1 g`` by
   ``cg_iters`` steps of conjugate gradient, scaled to the edge of the trust region:
   ``theta_old + beta s`` with ``beta = sqrt(2 max_kl / s^T (F + cg_damping I) s)``;
2. a backtracking line search tries the fractions ``1, backtrack_ratio, backtrack_ratio^2, ...``
   (``line_search_steps`` of them) of that step and accepts the first whose surrogate improves
   on the old policy's and whose mean KL is at most ``max_kl``; if none does, the policy stays;
3. the value function is fitted on its own: ``value_epochs`` passes of ``value_minibatches``
   minibatches of squared error to the GAE targets, with Adam at ``value_lr``.

``recurrent: gru | lstm`` (PPO's option, :class:`jaxrl.networks.RecurrentActorCritic`): the
policy's surrogate, KL and Fisher matrix replay the rollout's env streams from the carry they
started with (:func:`jaxrl.algos.ppo.forward`), so the natural-gradient step moves the embedding
and the cell with the actor. The cell is shared with the critic, so the value fit trains the
critic's head alone, on the memory features of the policy just updated (computed once): it
leaves the policy where the trust-region step put it.

Data parallel: the gradient, the Fisher-vector products, the surrogate and the KL are means over
every device's transitions, so every device computes the same step and takes the same accept
decision.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxrl import batching, losses, optim
from jaxrl import config as cfg
from jaxrl.algos import ppo
from jaxrl.core import Context, Spec, Transition
from jaxrl.networks import ActorCritic, RecurrentActorCritic
from jaxrl.optim import Optimizer

# TRPO's agent is PPO's: the params of the same actor-critic network (``opt_state`` is the value
# function's Adam: the policy moves by natural-gradient steps, without an optimizer state), and it
# acts and is evaluated as PPO's (with a recurrent policy, its carry is the cell's state)
State = ppo.State
act = ppo.act
policy = ppo.policy
init_carry = ppo.init_carry


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(ppo.MemoryConfig):
    algo: str = "trpo"
    max_kl: float = cfg.traced(0.01)  # delta: the bound on the mean KL[old, new] of one policy update
    cg_damping: float = cfg.traced(0.1)  # added to the Fisher matrix's diagonal in conjugate gradient
    value_lr: float = cfg.traced(1e-3)
    gae_lambda: float = cfg.traced(0.97)
    cg_iters: int = 10
    line_search_steps: int = 10
    backtrack_ratio: float = 0.8  # the line search shrinks the step by this factor per try
    value_epochs: int = 5
    value_minibatches: int = 4
    normalize_advantages: bool = True  # over the whole rollout (every device's transitions)

    def validate(self) -> None:
        super().validate()
        cfg.require(self.max_kl > 0, f"max_kl must be > 0, got {self.max_kl}")
        cfg.require(self.cg_damping > 0, f"cg_damping must be > 0 (the Fisher matrix is singular: the value "
                                         f"function's parameters, for one, do not change the policy), got {self.cg_damping}")
        cfg.require(self.value_lr > 0, f"value_lr must be > 0, got {self.value_lr}")
        cfg.require(0.0 <= self.gae_lambda <= 1.0, f"gae_lambda must be in [0, 1], got {self.gae_lambda}")
        for name in ("cg_iters", "line_search_steps", "value_epochs", "value_minibatches"):
            cfg.require(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        cfg.require(0.0 < self.backtrack_ratio < 1.0, f"backtrack_ratio must be in (0, 1), got {self.backtrack_ratio}")
        cfg.require(self.steps_per_iteration % self.value_minibatches == 0,
                    f"num_envs * num_steps = {self.steps_per_iteration} does not divide into "
                    f"value_minibatches = {self.value_minibatches}")


def check(config: Config, spec: Spec, devices: int) -> None:
    local = config.steps_per_iteration // devices
    if local % config.value_minibatches:
        raise cfg.ConfigError(
            f"each of {devices} devices fits the value function on num_envs * num_steps / {devices} = {local} "
            f"transitions, which do not divide into value_minibatches = {config.value_minibatches}")


def value_optimizer() -> Optimizer:
    return Optimizer(lr="value_lr", max_grad_norm=None, prefix="value_")


def init(ctx: Context, key: jax.Array) -> State:
    params = ppo.init_params(ctx, key)
    # the optimizer covers all params for simplicity; the value loss's gradient of the policy's is 0
    return State(params, value_optimizer().init(params))


def conjugate_gradient(matvec: Callable[[jax.Array], jax.Array], b: jax.Array, iters: int,
                       tol: float = 1e-10) -> jax.Array:
    """An approximate solution ``x`` of ``A x = b`` for a symmetric positive definite ``A``
    given as ``matvec(v) = A v``: ``iters`` steps of conjugate gradient from ``x = 0`` (exact
    after ``len(b)`` steps in exact arithmetic); steps stop changing ``x`` once the squared
    residual is below ``tol``."""

    def step(_: int, state: tuple) -> tuple:
        x, r, p, rr = state
        ap = matvec(p)
        going = rr > tol
        alpha = jnp.where(going, rr / jnp.where(going, p @ ap, 1.0), 0.0)
        x, r = x + alpha * p, r - alpha * ap
        rr_new = r @ r
        p = r + jnp.where(going, rr_new / jnp.where(going, rr, 1.0), 0.0) * p
        return x, r, p, rr_new

    return jax.lax.fori_loop(0, iters, step, (jnp.zeros_like(b), b, b, b @ b))[0]


def line_search(objective: Callable[[jax.Array], tuple[jax.Array, jax.Array]], x: jax.Array, step: jax.Array,
                max_kl: jax.Array, fractions: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Backtracking: ``x + f step`` for the first ``f`` of ``fractions`` whose surrogate improves
    on ``x``'s and whose KL is at most ``max_kl`` (``objective(x) -> (surrogate, kl)``), else
    ``x``. Every fraction is evaluated (one compiled loop, no early exit). Returns the new ``x``,
    the fraction taken, its surrogate gain and its KL (all three 0 when none was taken)."""
    surrogate_old, _ = objective(x)
    surrogates, kls = jax.lax.map(lambda f: objective(x + f * step), fractions)
    ok = (surrogates > surrogate_old) & (kls <= max_kl)
    first, accepted = jnp.argmax(ok), ok.any()  # argmax: the first True
    taken = jnp.where(accepted, fractions[first], 0.0)
    gain = jnp.where(accepted, surrogates[first] - surrogate_old, 0.0)
    return jnp.where(accepted, x + taken * step, x), taken, gain, jnp.where(accepted, kls[first], 0.0)


def mean_grad(ctx: Context, per_item: Callable[[jax.Array], jax.Array]) -> Callable[[jax.Array], jax.Array]:
    """``x -> `` the gradient of the mean of ``per_item(x)`` over every device's items
    (:func:`jaxrl.optim.grad` averages the devices' gradients)."""
    return lambda x: optim.grad(ctx, lambda y: (per_item(y).mean(), {}), x)[0]


def policy_of(ctx: Context, unravel: Callable[[jax.Array], dict], data: dict) -> Callable:
    """``x -> `` the policy at ``data``'s observations of the parameters whose flat vector is
    ``x`` (a recurrent one replays ``data``'s sequences: :func:`jaxrl.algos.ppo.forward`)."""
    return lambda x: ppo.forward(ctx, unravel(x), data, critic=False)[0]


def fisher_product(ctx: Context, params: dict, data: dict) -> Callable[[jax.Array], jax.Array]:
    """``v -> F v`` for flat vectors ``v`` (in ``ravel_pytree(params)`` order), where ``F`` is
    the Fisher matrix of the policy at ``params``: the Hessian at ``x = params`` of the mean
    ``KL[pi_params, pi_x]`` over ``data``'s observations (every device's), by
    forward-over-reverse differentiation (jvp of the gradient, linearized once), never formed."""
    flat, unravel = ravel_pytree(params)
    pi = policy_of(ctx, unravel, data)
    old = pi(flat)  # a constant: only the second argument of the KL varies
    return jax.linearize(mean_grad(ctx, lambda x: old.kl_divergence(pi(x))), flat)[1]


def policy_step(ctx: Context, params: dict, data: dict, advantage: jax.Array) -> tuple[dict, dict]:
    """One TRPO policy update of ``params`` from a batch (this device's share of the rollout:
    :func:`jaxrl.algos.ppo.rollout_data`): the natural gradient step, scaled to the trust region
    ``max_kl`` and line-searched; returns the new params and metrics. ``data["log_prob"]`` are
    the batch's log-probabilities under ``params``."""
    c, hp = ctx.config, ctx.hp
    flat, unravel = ravel_pytree(params)
    pi = policy_of(ctx, unravel, data)
    old = pi(flat)

    def surrogate(x: jax.Array) -> jax.Array:  # per item
        return jnp.exp(pi(x).log_prob(data["action"]) - data["log_prob"]) * advantage

    def damped(v: jax.Array) -> jax.Array:
        return fisher(v) + hp["cg_damping"] * v

    g = mean_grad(ctx, surrogate)(flat)
    fisher = fisher_product(ctx, params, data)
    direction = conjugate_gradient(damped, g, c.cg_iters)
    curvature = direction @ damped(direction)
    step = jnp.sqrt(2.0 * hp["max_kl"] / jnp.maximum(curvature, 1e-20)) * direction  # 0 when g is 0

    def objective(x: jax.Array) -> tuple[jax.Array, jax.Array]:  # the means over every device's items
        return ctx.mean(surrogate(x)), ctx.mean(old.kl_divergence(pi(x)))

    fractions = c.backtrack_ratio ** jnp.arange(c.line_search_steps, dtype=flat.dtype)
    new, taken, gain, step_kl = line_search(objective, flat, step, hp["max_kl"], fractions)
    return unravel(new), {"accepted": (taken > 0).astype(jnp.float32), "step_fraction": taken,
                          "surrogate_gain": gain, "policy_kl": step_kl, "expected_gain": g @ step,
                          "entropy": ctx.mean(old.entropy())}


def learn(ctx: Context, agent: State, traj: Transition, key: jax.Array) -> tuple[State, dict]:
    c = ctx.config
    data = ppo.rollout_data(ctx, agent.params, traj)  # GAE with the value function before the update
    adv = ppo.normalized(ctx, data["advantage"]) if c.normalize_advantages else data["advantage"]
    params, metrics = policy_step(ctx, agent.params, data, adv)

    opt = value_optimizer()
    net, inputs, value_head = ppo.network(ctx), data["obs"], ActorCritic.value
    if ppo.is_recurrent(c):  # the critic head on the new policy's memory features, per transition
        features = ppo.memory_features(ctx, params, data)
        inputs, value_head = features.reshape((-1, features.shape[-1])), RecurrentActorCritic.value

    def value_loss(p: dict, mb: dict) -> tuple[jax.Array, dict]:
        return losses.value_loss(net.apply(p, mb["inputs"], method=value_head), mb["target"]), {}

    def value_step(state: tuple, mb: dict) -> tuple[tuple, dict]:
        params, opt_state, metrics = opt.step(ctx, *state, value_loss, mb)
        return (params, opt_state), metrics

    targets = {"inputs": inputs, "target": data["target"].reshape(-1)}
    (params, opt_state), value_metrics = batching.epochs(value_step, (params, agent.opt_state), targets, key,
                                                         c.value_epochs, c.value_minibatches)
    return agent.replace(params=params, opt_state=opt_state), {**metrics, **value_metrics}
