"""Proximal Policy Optimization (Schulman et al., 2017) with GAE, discrete and continuous, and
the policy objectives of its successors as options.

Per iteration: GAE advantages from the rollout (bootstrapping truncated episodes from the final
observation's value), then ``update_epochs`` passes over ``num_minibatches`` shuffled
minibatches of the policy loss + value loss (optionally clipped) - entropy bonus.

``objective`` picks the policy loss from :mod:`jaxrl.losses`: ``clip`` (PPO's clipped
surrogate), ``kl`` (PPO's adaptive KL penalty: its coefficient is agent state, halved or doubled
after each update to keep the update's KL near ``kl_target``), ``spo`` (Simple Policy
Optimization, trust region ``clip_eps``), ``mdpo`` (on-policy Mirror Descent Policy
Optimization, KL weight ``1 / t_k`` with ``t_k = 1 - k / K`` over the run's ``K`` iterations) or
``dpo`` (Discovered Policy Optimisation's drift, or a drift function of your own named by
``drift``) or ``pg`` (the plain policy gradient: with one epoch of one minibatch this is A2C,
and with ``baseline: false`` and ``gae_lambda: 1`` REINFORCE, whose advantages are the
discounted returns, the critic bootstrapping only episodes cut by the rollout's end or a time
limit). ``ewma_decay > 0`` turns on PPO-EWMA (Hilton et al. 2021, "Batch size-invariance for
policy optimization"): the trust region is around a proximal policy whose parameters are an
exponential moving average of the policy's (updated after every optimizer step, bias-corrected
as in the paper's code) instead of the behaviour policy, and the advantages are importance-weighted
by ``pi_prox / pi_behaviour``.

IMPALA (Espeholt et al. 2018) as options: ``actor_lag: k`` makes the acting policy lag the
learner by ``k`` updates (the agent keeps the parameters of its last ``k`` updates and acts with
the oldest), so the rollout is off-policy for real, and ``advantage: vtrace`` replaces GAE by
V-trace's value targets and policy-gradient advantages (:func:`jaxrl.returns.vtrace`, importance
weights clipped at ``rho_bar`` and traces at ``c_bar``, ``gae_lambda`` as V-trace's lambda),
corrected from the acting parameters' log-probabilities to the learner's. With ``objective: pg``
and one epoch of one minibatch this is IMPALA's actor-critic update. (``advantage: gae`` with a
lag learns as if the rollout were on-policy: the uncorrected baseline.)

``recurrent: gru`` or ``lstm`` gives the policy memory (:class:`jaxrl.networks.RecurrentActorCritic`:
a dense embedding, a GRU/LSTM cell of ``rnn_size`` units, actor and critic heads). The cell's
state is each env's carry in the loop (zeros where an episode starts); the rollout records
the carry it started from (``Transition.carry``), and ``learn`` trains on sequences: minibatches
are whole env streams in time order (``num_minibatches`` splits the envs), replayed from that
carry with the resets at ``Transition.first``, so before the first update the replay gives the
acting policy's log-probabilities exactly. (PPO-EWMA's proximal policy is replayed from the same
start carry, the behaviour policy's.) With ``actor_lag`` the recorded carries are the acting
(lagged) policy's: its log-probabilities are replayed exactly, the learner's from the same
stored carries (as IMPALA's and R2D2's learners start from the actor's stored state).

Acting runs the actor alone: the rollout's values and log-probabilities are computed at the
start of ``learn``, batched over the whole rollout (the parameters have not changed since the
rollout, so they are the same numbers, at a fraction of the per-step cost: +2-5% env steps/s).
With ``actor_lag`` the acting parameters' log-probabilities (V-trace's behaviour policy) are
recomputed the same way, from the oldest parameters of the agent's ring.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

import distrax
import jax
import jax.numpy as jnp
from flax import struct

from jaxrl import batching, losses, networks, returns
from jaxrl import config as cfg
from jaxrl.core import Context, Spec, Transition
from jaxrl.networks import ActorCritic, RecurrentActorCritic
from jaxrl.optim import Optimizer


RECURRENT = ("none",) + networks.RNN_CELLS


@dataclasses.dataclass(frozen=True, kw_only=True)
class MemoryConfig(cfg.Config):
    """The recurrent-policy options of the algorithms on this module's network (PPO and TRPO)."""
    recurrent: str = "none"  # one of RECURRENT: a GRU or LSTM cell between embedding and heads
    rnn_size: int = 128  # recurrent: the cell's units

    def validate(self) -> None:
        super().validate()
        cfg.require_one_of("recurrent", self.recurrent, RECURRENT)
        cfg.require(self.rnn_size >= 1, f"rnn_size must be >= 1, got {self.rnn_size}")
        if self.recurrent == "none":
            cfg.require(self.rnn_size == 128, f"rnn_size={self.rnn_size} is used only by a recurrent policy "
                                              f"(recurrent: gru or lstm), not recurrent: none")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(MemoryConfig):
    algo: str = "ppo"
    update_epochs: int = 4
    num_minibatches: int = 4
    anneal_lr: bool = True  # decay lr linearly to 0 over training
    normalize_advantages: bool = True  # per minibatch
    clip_value_loss: bool = False  # clip value updates to +-clip_eps around the rollout values
    lr: float = cfg.traced(2.5e-4)
    max_grad_norm: float = cfg.traced(0.5)
    gae_lambda: float = cfg.traced(0.95)
    clip_eps: float = cfg.traced(0.2)
    ent_coef: float = cfg.traced(0.01)
    vf_coef: float = cfg.traced(0.5)
    objective: str = "clip"  # one of OBJECTIVES
    kl_target: float = cfg.traced(0.01)  # kl: the KL per update the coefficient is adapted toward
    kl_coef: float = cfg.traced(1.0)  # kl: the coefficient's initial value
    dpo_alpha: float = cfg.traced(2.0)  # dpo: the drift's scale for positive advantages
    dpo_beta: float = cfg.traced(0.6)  # dpo: ... and for negative ones
    drift: str = "dpo"  # dpo: "dpo" (the closed form) or the import path of fn(ratio, advantage, ctx) -> drift
    ewma_decay: float = 0.0  # PPO-EWMA's decay of the proximal policy's average (0: off, no proximal policy)
    baseline: bool = True  # advantages are returns minus the critic's values; false: the returns (REINFORCE)
    actor_lag: int = 0  # IMPALA: act with the parameters of this many updates ago (0: the learner's own)
    advantage: str = "gae"  # one of ADVANTAGES: how advantages and value targets are estimated
    rho_bar: float = cfg.traced(1.0)  # vtrace: clip of the importance weights (targets and policy gradient)
    c_bar: float = cfg.traced(1.0)  # vtrace: clip of the trace coefficients

    def validate(self) -> None:
        super().validate()
        batch = self.steps_per_iteration
        cfg.require(self.update_epochs >= 1, f"update_epochs must be >= 1, got {self.update_epochs}")
        cfg.require(self.num_minibatches >= 1, f"num_minibatches must be >= 1, got {self.num_minibatches}")
        cfg.require(
            batch % self.num_minibatches == 0,
            f"num_envs * num_steps = {batch} does not divide into num_minibatches = {self.num_minibatches}",
        )
        cfg.require(self.lr > 0, f"lr must be > 0, got {self.lr}")
        cfg.require(self.max_grad_norm > 0, f"max_grad_norm must be > 0, got {self.max_grad_norm}")
        cfg.require(0.0 <= self.gae_lambda <= 1.0, f"gae_lambda must be in [0, 1], got {self.gae_lambda}")
        cfg.require(self.clip_eps > 0, f"clip_eps must be > 0, got {self.clip_eps}")
        cfg.require(self.ent_coef >= 0, f"ent_coef must be >= 0, got {self.ent_coef}")
        cfg.require(self.vf_coef >= 0, f"vf_coef must be >= 0, got {self.vf_coef}")
        cfg.require_one_of("objective", self.objective, OBJECTIVES)
        cfg.require(self.kl_target > 0, f"kl_target must be > 0, got {self.kl_target}")
        cfg.require(self.kl_coef > 0, f"kl_coef must be > 0 (it is doubled and halved), got {self.kl_coef}")
        cfg.require(self.dpo_alpha > 0, f"dpo_alpha must be > 0, got {self.dpo_alpha}")
        cfg.require(self.dpo_beta > 0, f"dpo_beta must be > 0, got {self.dpo_beta}")
        cfg.require(0.0 <= self.ewma_decay < 1.0, f"ewma_decay must be in [0, 1), got {self.ewma_decay}")
        cfg.require(self.drift == "dpo" or self.objective == "dpo",
                    f"drift={self.drift!r} is used only by objective 'dpo', not {self.objective!r}")
        drift_function(self.drift)  # a ConfigError unless it names a function
        if self.recurrent != "none":
            cfg.require(self.num_envs % self.num_minibatches == 0,
                        f"recurrent: minibatches are whole env streams, but num_envs = {self.num_envs} does not "
                        f"divide into num_minibatches = {self.num_minibatches}")

        cfg.require(self.actor_lag >= 0, f"actor_lag must be >= 0 (updates the acting policy lags), got {self.actor_lag}")
        cfg.require_one_of("advantage", self.advantage, ADVANTAGES)
        cfg.require(self.rho_bar > 0, f"rho_bar must be > 0, got {self.rho_bar}")
        cfg.require(self.c_bar > 0, f"c_bar must be > 0, got {self.c_bar}")
        cfg.require(self.baseline or self.advantage == "gae",
                    "baseline: false (REINFORCE: the advantages are GAE's returns) needs advantage: gae, "
                    f"got {self.advantage!r}")


OBJECTIVES = ("clip", "kl", "spo", "mdpo", "dpo", "pg")
ADVANTAGES = ("gae", "vtrace")  # GAE (on-policy) or V-trace (off-policy corrected, IMPALA)


def drift_function(name: str) -> Callable | None:
    """The drift function a ``drift`` import path (``package.module.function``) names; None for
    ``"dpo"`` (the published closed form, :func:`jaxrl.losses.dpo_drift`)."""
    if name == "dpo":
        return None
    module, _, attr = name.rpartition(".")
    try:
        fn = getattr(importlib.import_module(module), attr) if module else None
    except (ImportError, AttributeError) as err:
        raise cfg.ConfigError(f"drift {name!r} cannot be imported: {err}") from None
    if not callable(fn):
        raise cfg.ConfigError(f"drift must be 'dpo' or the import path of a function "
                              f"fn(ratio, advantage, ctx) -> drift, got {name!r}")
    return fn


def check(config: Config, spec: Spec, devices: int) -> None:
    local = config.steps_per_iteration // devices
    if local % config.num_minibatches:
        raise cfg.ConfigError(
            f"each of {devices} devices learns on num_envs * num_steps / {devices} = {local} transitions, "
            f"which do not divide into num_minibatches = {config.num_minibatches}")
    if is_recurrent(config) and (config.num_envs // devices) % config.num_minibatches:
        raise cfg.ConfigError(
            f"recurrent: each of {devices} devices splits its num_envs / {devices} = {config.num_envs // devices} "
            f"env streams into minibatches, which do not divide into num_minibatches = {config.num_minibatches}")


class State(struct.PyTreeNode):
    params: dict
    opt_state: tuple
    kl_coef: jax.Array | None = None  # objective kl: the adaptive KL coefficient
    prox_params: dict | None = None  # PPO-EWMA: the proximal policy's parameters ...
    prox_weight: jax.Array | None = None  # ... and the total weight of their average
    lagged: dict | None = None  # actor_lag k: the params before each of the last k updates, oldest first


def is_recurrent(config: cfg.Config) -> bool:
    """Whether ``config`` asks for a recurrent policy (``recurrent: gru | lstm``)."""
    return getattr(config, "recurrent", "none") != "none"


def network(ctx: Context) -> ActorCritic | RecurrentActorCritic:
    c, s = ctx.config, ctx.spec
    if is_recurrent(c):
        return RecurrentActorCritic(s.action_dim, s.discrete, c.hidden, c.activation, s.obs_shape,
                                    c.recurrent, c.rnn_size, conv=c.conv)
    return ActorCritic(s.action_dim, s.discrete, c.hidden, c.activation, s.obs_shape, c.conv)


def init_carry(ctx: Context) -> Any:
    """One env's memory at an episode's start: the recurrent cell's zeros, or ``()``."""
    return network(ctx).initial_carry() if is_recurrent(ctx.config) else ()


def optimizer(ctx: Context) -> Optimizer:
    return Optimizer(schedule="linear" if ctx.config.anneal_lr else "constant")


def init_params(ctx: Context, key: jax.Array) -> dict:
    """Fresh parameters of :func:`network`."""
    obs = jnp.zeros((1, *ctx.spec.obs_shape))
    if not is_recurrent(ctx.config):
        return networks.init(network(ctx), key, obs)
    return networks.init(network(ctx), key, jax.tree.map(lambda x: x[None], init_carry(ctx)), obs)


def init(ctx: Context, key: jax.Array) -> State:
    c = ctx.config
    params = init_params(ctx, key)
    return State(params, optimizer(ctx).init(params),
                 kl_coef=ctx.hp["kl_coef"] if c.objective == "kl" else None,
                 prox_params=params if c.ewma_decay else None,
                 prox_weight=jnp.float32(1.0) if c.ewma_decay else None,
                 lagged=jax.tree.map(lambda x: jnp.stack([x] * c.actor_lag), params) if c.actor_lag else None)


def acting_params(agent: State) -> dict:
    """The parameters the agent acts with: its own, or with ``actor_lag`` those of
    ``actor_lag`` updates ago (the initial ones until there were that many updates)."""
    return agent.params if agent.lagged is None else jax.tree.map(lambda x: x[0], agent.lagged)


def step_policy(ctx: Context, params: dict, carry: Any, obs: jax.Array) -> tuple[Any, distrax.Distribution]:
    """The policy at one step of a batch of envs (the actor alone), and their carry after it
    (a recurrent cell's next state; unchanged ``()`` for a feed-forward policy)."""
    if not is_recurrent(ctx.config):
        return carry, network(ctx).apply(params, obs, method=ActorCritic.policy)
    return network(ctx).apply(params, carry, obs, method=RecurrentActorCritic.policy_step)


def act(ctx: Context, agent: State, carry: Any, obs: jax.Array, key: jax.Array) -> tuple[jax.Array, Any, dict]:
    carry, pi = step_policy(ctx, acting_params(agent), carry, obs)
    return pi.sample(seed=key), carry, {}


def policy(ctx: Context, agent: State, carry: Any, obs: jax.Array, key: jax.Array,
           deterministic: bool) -> tuple[jax.Array, Any]:
    """Actions for evaluation: the mode (discrete) or mean (continuous) when deterministic."""
    carry, pi = step_policy(ctx, agent.params, carry, obs)
    return (pi.mode() if deterministic else pi.sample(seed=key)), carry


def normalized(ctx: Context, x: jax.Array) -> jax.Array:
    """``x`` shifted and scaled to mean 0 and standard deviation 1 over every device's items."""
    mean = ctx.mean(x)
    return (x - mean) / (jnp.sqrt(ctx.mean(jnp.square(x - mean))) + 1e-8)


def memory_features(ctx: Context, params: dict, data: dict) -> jax.Array:
    """A recurrent network's features ``(T, N, rnn_size)`` along ``data``'s sequences
    (time-major ``obs``), replayed from the stored carry ``data["carry"]`` (leaves
    ``(1, N, ...)``), reset where ``data["first"]`` is set: what its heads take."""
    carry = jax.tree.map(lambda x: x[0], data["carry"])
    return networks.unroll(network(ctx), params, carry, data["obs"], data["first"])[1]


def forward(ctx: Context, params: dict, data: dict,
            critic: bool = True) -> tuple[distrax.Distribution, jax.Array | None]:
    """The policy and (with ``critic``) the value at each of ``data["obs"]``. A recurrent
    network replays ``data``'s sequences (time-major ``(T, N, ...)``) from the carry
    ``data["carry"]`` (leaves ``(1, N, ...)``), reset where ``data["first"]`` is set."""
    net = network(ctx)
    if not is_recurrent(ctx.config):
        if not critic:
            return net.apply(params, data["obs"], method=ActorCritic.policy), None
        return net.apply(params, data["obs"])
    features = memory_features(ctx, params, data)
    pi = net.apply(params, features, method=RecurrentActorCritic.policy)
    return pi, (net.apply(params, features, method=RecurrentActorCritic.value) if critic else None)


def rollout_outputs(ctx: Context, params: dict, traj: Transition,
                    obs: jax.Array) -> tuple[distrax.Distribution, jax.Array, jax.Array]:
    """The policy and values at the rollout's (normalised) ``obs``, as the acting policy saw
    them, and the values of its next observations (for bootstrapping). A feed-forward critic
    evaluates only the next observations that are not the next step's observation
    (:func:`jaxrl.returns.next_values`). A recurrent network replays the rollout from the carry
    it started with; each next observation's value comes from the carry its step left, so a
    truncated episode bootstraps with the episode's memory."""
    net = network(ctx)
    if not is_recurrent(ctx.config):
        pi, values = net.apply(params, obs)
        value = lambda o: net.apply(params, ctx.normalize(o), method=ActorCritic.value)  # noqa: E731
        return pi, values, returns.next_values(values, traj.next_obs, traj.truncated, value, traj.terminated)
    carries, features = networks.unroll(net, params, traj.carry, obs, traj.first)
    next_obs = ctx.normalize(traj.next_obs)
    _, next_features = net.apply(params, carries, net.apply(params, next_obs, method=RecurrentActorCritic.embed),
                                 method=RecurrentActorCritic.step)
    value = lambda f: net.apply(params, f, method=RecurrentActorCritic.value)  # noqa: E731
    return net.apply(params, features, method=RecurrentActorCritic.policy), value(features), value(next_features)


def objective_loss(ctx: Context, ratio: jax.Array, adv: jax.Array, pi: distrax.Distribution,
                   reference: distrax.Distribution | None, kl_coef: jax.Array | None) -> jax.Array:
    """The configured objective's loss; ``reference`` is the distribution the trust region is
    around (needed by the KL objectives only)."""
    c, hp = ctx.config, ctx.hp
    if c.objective == "clip":
        return losses.clipped_surrogate(ratio, adv, hp["clip_eps"])
    if c.objective == "spo":
        return losses.spo(ratio, adv, hp["clip_eps"])
    if c.objective == "pg":
        return losses.policy_gradient(ratio, adv)
    if c.objective == "kl":  # KL[old, new] (Schulman et al. 2017)
        return losses.kl_penalty(ratio, adv, reference.kl_divergence(pi), kl_coef)
    if c.objective == "mdpo":  # KL[new, old] (Tomar et al. 2020)
        return losses.mdpo(ratio, adv, pi.kl_divergence(reference),
                           losses.mdpo_step_size(ctx.iteration, c.num_iterations))
    user_drift = drift_function(c.drift)
    drift = (lambda r, a: losses.dpo_drift(r, a, hp["dpo_alpha"], hp["dpo_beta"])) if user_drift is None else (
        lambda r, a: user_drift(r, a, ctx))
    return losses.drift_objective(ratio, adv, drift)


def loss(ctx: Context, params: dict, mb: dict, reference: dict | None = None,
         kl_coef: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """PPO's loss on a minibatch. ``reference``: the parameters of the policy the trust region is
    around, when it is not enough to know the rollout's log-probabilities: the behaviour policy's
    for the KL objectives, the proximal policy's for PPO-EWMA (None otherwise)."""
    c, hp = ctx.config, ctx.hp
    pi, value = forward(ctx, params, mb)
    log_prob = pi.log_prob(mb["action"])
    adv = normalized(ctx, mb["advantage"]) if c.normalize_advantages else mb["advantage"]
    ref_pi, ref_log_prob = None, mb["log_prob"]
    if reference is not None:
        ref_pi, _ = forward(ctx, reference, mb, critic=False)
        ref_log_prob = ref_pi.log_prob(mb["action"])
    if c.ewma_decay:  # importance weights behaviour -> proximal on the advantages
        adv = adv * jnp.exp(ref_log_prob - mb["log_prob"])
    log_ratio = log_prob - ref_log_prob
    ratio = jnp.exp(log_ratio)
    eps = hp["clip_eps"]
    policy_loss = objective_loss(ctx, ratio, adv, pi, ref_pi, kl_coef)
    value_loss = losses.value_loss(value, mb["target"], mb["value"], eps if c.clip_value_loss else None)
    entropy = pi.entropy().mean()
    total = policy_loss + hp["vf_coef"] * value_loss - hp["ent_coef"] * entropy
    return total, {
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "entropy": entropy,
        "approx_kl": ((ratio - 1.0) - log_ratio).mean(),
        "clip_fraction": (jnp.abs(ratio - 1.0) > eps).mean(),
    }


def ewma(ctx: Context, agent: State) -> State:
    """``agent`` with its proximal parameters moved toward its parameters: the bias-corrected
    average of PPO-EWMA's code, ``w' = decay w + 1``, ``prox' = (decay w prox + params) / w'``."""
    decay = ctx.config.ewma_decay
    weight = decay * agent.prox_weight + 1.0
    prox = jax.tree.map(lambda e, p: e * (decay * agent.prox_weight / weight) + p / weight,
                        agent.prox_params, agent.params)
    return agent.replace(prox_params=prox, prox_weight=weight)


def rollout_data(ctx: Context, params: dict, traj: Transition, advantage: str = "gae",
                 behaviour: dict | None = None) -> dict:
    """The rollout as the learner sees it: normalised observations, actions, the
    log-probabilities and values of ``params`` (the learner's), advantages and value targets
    (with the ``gamma`` and ``gae_lambda`` hyperparameters). A feed-forward network's are this
    device's transitions flattened to ``(T * N, ...)``; a recurrent network's stay time-major
    sequences ``(T, N, ...)`` with ``first`` and the start ``carry`` (leaves ``(1, N, ...)``),
    replayed from that carry (:func:`forward`), to be split into minibatches of whole env streams.

    ``advantage="gae"``: GAE, bootstrapping truncated episodes from the final observation's
    value. ``"vtrace"``: V-trace (clips ``rho_bar`` and ``c_bar``) for a rollout played by the
    policy of the ``behaviour`` params (None: ``params`` themselves, on-policy).
    """
    hp = ctx.hp
    obs = ctx.normalize(traj.obs)
    pi, values, next_values = rollout_outputs(ctx, params, traj, obs)
    log_prob = pi.log_prob(traj.action)
    sequences = {"obs": obs, "first": traj.first, "carry": jax.tree.map(lambda x: x[None], traj.carry)}
    if advantage == "vtrace":
        behaviour_log_prob = log_prob if behaviour is None else (
            forward(ctx, behaviour, sequences, critic=False)[0].log_prob(traj.action))
        target, adv = returns.vtrace(traj.reward, values, next_values, traj.terminated, traj.truncated,
                                     log_prob - behaviour_log_prob, hp["gamma"], hp["gae_lambda"],
                                     hp["rho_bar"], hp["c_bar"], hp["rho_bar"])
    else:
        adv, target = returns.gae(traj.reward, values, next_values,
                                  traj.terminated, traj.truncated, hp["gamma"], hp["gae_lambda"])
    data = {"obs": obs, "action": traj.action, "log_prob": log_prob, "value": values, "advantage": adv,
            "target": target}
    if is_recurrent(ctx.config):
        return data | sequences
    return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), data)


def lag(agent: State, params: dict) -> State:
    """``agent`` with ``params`` (the parameters before this update) appended to its ring of
    lagged parameters and the oldest dropped (nothing to do without ``actor_lag``)."""
    if agent.lagged is None:
        return agent
    return agent.replace(lagged=jax.tree.map(lambda ring, p: jnp.concatenate([ring[1:], p[None]]),
                                             agent.lagged, params))


def learn(ctx: Context, agent: State, traj: Transition, key: jax.Array) -> tuple[State, dict]:
    c, hp = ctx.config, ctx.hp
    before = agent.params  # the policy before this update: the kl and mdpo objectives' reference
    # the rollout's log-probabilities and values as the learner's parameters give them (without
    # actor_lag the acting ones: the same parameters and normalisation statistics)
    data = rollout_data(ctx, before, traj, c.advantage, None if agent.lagged is None else acting_params(agent))
    if not c.baseline:  # REINFORCE: the returns themselves (the critic only bootstraps cut-off episodes)
        data["advantage"] = data["target"]
    opt = optimizer(ctx)

    def minibatch_step(agent: State, mb: dict) -> tuple[State, dict]:
        reference = agent.prox_params if c.ewma_decay else before if c.objective in ("kl", "mdpo") else None
        loss_fn = lambda p, b: loss(ctx, p, b, reference, agent.kl_coef)  # noqa: E731
        params, opt_state, metrics = opt.step(ctx, agent.params, agent.opt_state, loss_fn, mb)
        agent = agent.replace(params=params, opt_state=opt_state)
        return (ewma(ctx, agent) if c.ewma_decay else agent), metrics

    agent, metrics = batching.epochs(minibatch_step, agent, data, key, c.update_epochs, c.num_minibatches,
                                     is_recurrent(c))  # recurrent: minibatches of whole env streams
    if c.objective == "kl":  # adapt the coefficient to this update's KL[old, new]
        old_pi, new_pi = (forward(ctx, p, data, critic=False)[0] for p in (before, agent.params))
        kl = ctx.mean(old_pi.kl_divergence(new_pi))
        metrics = {**metrics, "kl_coef": agent.kl_coef, "update_kl": kl}
        agent = agent.replace(kl_coef=losses.adapt_kl_coef(agent.kl_coef, kl, hp["kl_target"]))
    return lag(agent, before), metrics
