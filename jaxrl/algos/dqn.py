"""Deep Q-Networks (Mnih et al., 2015) with Double-DQN targets, a Dueling head, distributional
heads, Munchausen targets, n-step returns, prioritized replay and noisy nets as options (Rainbow,
Hessel et al., 2018, is a config: ``configs/rainbow_cartpole.yaml``).

Each iteration adds the rollout to a device-resident replay buffer, then (once
``learning_starts`` env steps are stored) takes ``updates_per_iteration`` gradient steps on
uniformly sampled minibatches. The target network follows the online one every
``target_update_interval`` gradient steps: a hard copy when ``tau = 1``, Polyak averaging
``target <- tau * online + (1 - tau) * target`` otherwise. Exploration is epsilon-greedy with
epsilon decaying linearly from ``eps_start`` to ``eps_end`` over ``eps_fraction`` of training.

``distributional`` learns the return's distribution instead of its mean; Q is its mean, and
Double/Dueling apply as usual (the greedy next action from the online network's Q; dueling atom
by atom):

- ``c51`` (Bellemare et al., 2017, "A Distributional Perspective on Reinforcement Learning"):
  ``num_atoms`` probabilities on a fixed support from ``v_min`` to ``v_max``; the target
  distribution ``r + discount * Z'`` is projected onto the support, and the loss is its
  cross-entropy.
- ``qr`` (Dabney et al., 2018, "Distributional Reinforcement Learning with Quantile Regression"):
  ``num_quantiles`` quantiles at the fractions ``(i + 0.5) / num_quantiles``, fitted to the
  target quantiles by the quantile Huber loss (``kappa``).
- ``iqn`` (Dabney et al., 2018, "Implicit Quantile Networks for Distributional Reinforcement
  Learning"): the quantile function itself, at fractions sampled from U[0, 1]: ``num_taus`` for
  the online quantiles, ``num_target_taus`` for the target, ``num_acting_taus`` for Q when
  choosing actions (acting and the target's greedy action), those last distorted by ``risk``
  (``neutral``, ``cvar`` or ``wang`` with ``risk_eta``) and, with ``stratified_taus``, drawn one
  per stratum ``[i/K, (i+1)/K)`` (the same Q, with far less noise between draws).

``munchausen`` (Vieillard, Pietquin and Geist, 2020, "Munchausen Reinforcement Learning")
regresses Q on a soft target with the scaled log-policy bonus,
``r + alpha * clip(tau log pi(a|s), l0, 0) + discount * sum_a' pi(a'|s') (q(s', a') - tau log pi(a'|s'))``
with ``pi = softmax(q / tau)`` of the target network (:func:`jaxrl.losses.munchausen_target`;
``alpha = munchausen_alpha``, ``tau = entropy_tau``, ``l0 = log_policy_clip``).

``prioritized`` (Schaul et al., 2016, "Prioritized Experience Replay", proportional) draws
minibatches with probability ``P(i) ∝ p_i^priority_alpha`` (:func:`jaxrl.replay.draw`; new
transitions get the largest priority so far), weighs each item's loss by the importance weight
``(N P(i))^-beta / max w`` with ``beta`` annealed linearly from ``priority_beta_start`` to
``priority_beta_end`` over training, and after each gradient step sets the drawn items'
priorities to ``|TD error| + priority_eps`` (distributional: c51's KL divergence from the
target distribution, as in Rainbow; qr and iqn: the item's quantile Huber loss), computed with
the parameters before the step. Each device of a data-parallel run keeps its own buffer and priorities.

``noisy`` (Fortunato et al., 2018, "Noisy Networks for Exploration") makes every dense layer of
the Q-network (torso and head, as Rainbow's fully connected layers; ``conv`` layers stay
deterministic) a factorised-Gaussian :class:`jaxrl.networks.NoisyDense` (``noisy_sigma0``). Noise
is drawn afresh for every forward pass (acting; the online, target and action-choosing passes of
a gradient step each their own) from its own stream of that call's key; the deterministic
(greedy) policy uses the mean weights. Epsilon-greedy stays as configured: set ``eps_start`` and
``eps_end`` to 0 to explore by the noise alone.
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
from jaxrl.optim import Optimizer


DISTRIBUTIONAL = ("none", "c51", "qr", "iqn")


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
    distributional: str = "none"  # none | c51 | qr | iqn
    num_atoms: int = 51  # c51: atoms of the support
    v_min: float = -10.0  # c51: the support's range of returns
    v_max: float = 10.0
    num_quantiles: int = 50  # qr
    num_taus: int = 32  # iqn: sampled fractions of the online quantiles (N)
    num_target_taus: int = 32  # iqn: of the target quantiles (N')
    num_acting_taus: int = 32  # iqn: of Q when choosing actions (K)
    num_cosines: int = 64  # iqn: the embedding's cosines
    kappa: float = 1.0  # qr, iqn: the quantile Huber loss's threshold (0: plain quantile loss)
    risk: str = "neutral"  # iqn: distortion of the acting fractions (neutral | cvar | wang)
    stratified_taus: bool = False  # iqn: draw the acting fractions one per stratum [i/K, (i+1)/K)
    munchausen: bool = False
    prioritized: bool = False  # prioritized replay (proportional)
    noisy: bool = False  # factorised-Gaussian noisy layers
    noisy_sigma0: float = 0.5  # noisy: the noise scales' initial sigma_0 / sqrt(inputs)
    huber: bool = False  # Huber (smooth L1) TD loss; squared error is more stable where rare terminal
    # transitions carry the signal (CartPole: capped gradients let Q drift upwards)
    anneal_lr: bool = False  # decay lr linearly to 0 over training
    lr: float = cfg.traced(2.5e-4)
    max_grad_norm: float = cfg.traced(10.0)
    tau: float = cfg.traced(1.0)
    eps_start: float = cfg.traced(1.0)
    eps_end: float = cfg.traced(0.05)
    eps_fraction: float = cfg.traced(0.5)  # of total_steps spent decaying epsilon
    risk_eta: float = cfg.traced(1.0)  # iqn: cvar's fraction in (0, 1], wang's shift
    munchausen_alpha: float = cfg.traced(0.9)  # the log-policy bonus's scale
    entropy_tau: float = cfg.traced(0.03)  # the softmax policy's temperature
    log_policy_clip: float = cfg.traced(-1.0)  # l0: the bonus's lower clip (<= 0)
    priority_alpha: float = cfg.traced(0.6)  # prioritized: P(i) ∝ p_i^alpha (0: uniform)
    priority_beta_start: float = cfg.traced(0.4)  # the importance weights' exponent at the start,
    priority_beta_end: float = cfg.traced(1.0)  # annealed linearly to this at the end (1: unbiased)
    priority_eps: float = cfg.traced(1e-6)  # added to every new priority: every item stays drawable

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
        self._validate_variant()

    def _validate_variant(self) -> None:
        """The distributional and Munchausen options and the combinations they allow."""
        cfg.require_one_of("distributional", self.distributional, DISTRIBUTIONAL)
        cfg.require_one_of("risk", self.risk, networks.RISKS)
        cfg.require(self.num_atoms >= 2, f"num_atoms must be >= 2, got {self.num_atoms}")
        cfg.require(self.v_min < self.v_max, f"need v_min < v_max, got {self.v_min} and {self.v_max}")
        for name in ("num_quantiles", "num_taus", "num_target_taus", "num_acting_taus", "num_cosines"):
            cfg.require(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        cfg.require(self.kappa >= 0, f"kappa must be >= 0, got {self.kappa}")
        if self.risk == "cvar":
            cfg.require(0 < self.risk_eta <= 1, f"risk: cvar needs risk_eta in (0, 1], got {self.risk_eta}")
        cfg.require(not self.stratified_taus or self.distributional == "iqn",
                    "stratified_taus draws IQN's acting fractions; it needs distributional: iqn")
        cfg.require(self.risk == "neutral" or self.distributional == "iqn",
                    f"risk={self.risk!r} distorts IQN's sampled fractions; it needs distributional: iqn")
        cfg.require(not (self.huber and self.distributional != "none"),
                    f"huber is the scalar TD loss; distributional: {self.distributional} has its own loss "
                    f"(qr and iqn: the quantile Huber loss with kappa)")
        cfg.require(self.entropy_tau > 0, f"entropy_tau must be > 0, got {self.entropy_tau}")
        cfg.require(self.log_policy_clip <= 0, f"log_policy_clip must be <= 0, got {self.log_policy_clip}")
        if self.munchausen:
            cfg.require(self.distributional == "none",
                        f"munchausen works on scalar Q-values; it cannot be combined with distributional: "
                        f"{self.distributional}")
            cfg.require(not self.double, "munchausen's target is a soft value (an expectation under softmax(q / "
                                         "entropy_tau)) with no greedy action to choose: set double: false")
            cfg.require(self.n_step == 1, f"munchausen adds the bonus of one action to one reward; n_step must "
                                          f"be 1, got {self.n_step}")
        cfg.require(self.priority_alpha >= 0, f"priority_alpha must be >= 0, got {self.priority_alpha}")
        for name in ("priority_beta_start", "priority_beta_end"):
            cfg.require(0 <= getattr(self, name) <= 1, f"{name} must be in [0, 1], got {getattr(self, name)}")
        cfg.require(self.priority_eps > 0, f"priority_eps must be > 0 (an item of priority 0 is never drawn "
                                           f"again), got {self.priority_eps}")
        cfg.require(self.noisy_sigma0 > 0, f"noisy_sigma0 must be > 0, got {self.noisy_sigma0}")


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


def network(ctx: Context) -> networks.QNetwork | networks.ImplicitQuantileNetwork:
    c, s = ctx.config, ctx.spec
    noisy = dict(noisy=c.noisy, sigma0=c.noisy_sigma0)
    if c.distributional == "iqn":
        return networks.ImplicitQuantileNetwork(s.action_dim, c.hidden, c.activation, c.dueling, s.obs_shape,
                                                conv=c.conv, num_cosines=c.num_cosines, **noisy)
    atoms = {"c51": c.num_atoms, "qr": c.num_quantiles}.get(c.distributional)
    return networks.QNetwork(s.action_dim, c.hidden, c.activation, c.dueling, s.obs_shape, conv=c.conv,
                             num_atoms=atoms, **noisy)


NOISE_STREAM = 2  # the noisy layers' noise comes from fold_in(key, NOISE_STREAM)


def outputs(ctx: Context, params: dict, obs: jax.Array, key: jax.Array, num_taus: int,
            acting: bool = False, noise: bool = True) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """``(out, q, taus)`` of the network at ``obs (..., *obs_shape)``: ``out`` is what it predicts
    per action, ``(..., actions)`` Q-values or ``(..., actions, atoms)`` (c51: logits; qr, iqn:
    quantiles at ``taus``), ``q (..., actions)`` their mean. IQN samples ``num_taus`` fractions
    per observation with ``key`` (distorted by ``risk`` when ``acting``); the others ignore
    ``key`` and ``num_taus``, and ``taus`` is None but for iqn. A noisy network draws its noise
    from its own stream of ``key``, or uses its mean weights without ``noise``."""
    c = ctx.config
    rngs = {"noise": jax.random.fold_in(key, NOISE_STREAM)} if c.noisy and noise else None
    if c.distributional == "iqn":
        batch = obs.shape[: obs.ndim - len(ctx.spec.obs_shape)]
        taus = jax.random.uniform(key, (*batch, num_taus))
        if acting:
            if c.stratified_taus:  # the same mean with far less variance between draws
                taus = (jnp.arange(num_taus) + taus) / num_taus
            taus = networks.distort(taus, c.risk, ctx.hp["risk_eta"])
        out = network(ctx).apply(params, obs, taus, rngs=rngs)
        return out, out.mean(-1), taus
    out = network(ctx).apply(params, obs, rngs=rngs)
    if c.distributional == "c51":
        support = losses.categorical_support(c.v_min, c.v_max, c.num_atoms)
        return out, (jax.nn.softmax(out) * support).sum(-1), None
    return out, (out.mean(-1) if c.distributional == "qr" else out), None


def q_values(ctx: Context, params: dict, obs: jax.Array, key: jax.Array, noise: bool = True) -> jax.Array:
    """The action values actions are chosen by, ``(..., actions)``: the mean of the predicted
    return distribution (IQN: over ``num_acting_taus`` sampled, risk-distorted fractions);
    without ``noise`` a noisy network's mean weights."""
    return outputs(ctx, params, obs, key, ctx.config.num_acting_taus, acting=True, noise=noise)[1]


def optimizer(ctx: Context) -> Optimizer:
    return Optimizer(schedule="linear" if ctx.config.anneal_lr else "constant")


def init(ctx: Context, key: jax.Array) -> State:
    c = ctx.config
    example = (jnp.zeros((1, *ctx.spec.obs_shape)),) + ((jnp.zeros((1, 1)),) if c.distributional == "iqn" else ())
    params = networks.init(network(ctx), key, *example)
    buffer = replay.create(replay.example_transition(ctx), c.num_envs // ctx.devices, c.buffer_size // c.num_envs,
                           prioritized=c.n_step if c.prioritized else None)
    return State(params, params, optimizer(ctx).init(params), jnp.int32(0), buffer)


def epsilon(ctx: Context) -> jax.Array:
    hp = ctx.hp
    decay_steps = hp["eps_fraction"] * ctx.config.total_steps
    frac = jnp.clip(1.0 - ctx.env_steps / decay_steps, 0.0, 1.0)
    return hp["eps_end"] + (hp["eps_start"] - hp["eps_end"]) * frac


def priority_beta(ctx: Context) -> jax.Array:
    """The importance weights' exponent this iteration: linear from ``priority_beta_start`` to
    ``priority_beta_end`` over training."""
    hp = ctx.hp
    return hp["priority_beta_start"] + (hp["priority_beta_end"] - hp["priority_beta_start"]) * ctx.progress


def _epsilon_greedy(ctx: Context, agent: State, obs: jax.Array, key: jax.Array, eps: jax.Array,
                    noise: bool = True) -> jax.Array:
    return explore.epsilon_greedy(key, q_values(ctx, agent.params, obs, jax.random.fold_in(key, 1), noise), eps)


def act(ctx: Context, agent: State, carry: tuple, obs: jax.Array, key: jax.Array) -> tuple[jax.Array, tuple, dict]:
    return _epsilon_greedy(ctx, agent, obs, key, epsilon(ctx)), carry, {}


def policy(ctx: Context, agent: State, carry: tuple, obs: jax.Array, key: jax.Array,
           deterministic: bool) -> tuple[jax.Array, tuple]:
    """Greedy actions (a noisy network's mean weights) when deterministic, else epsilon-greedy
    with the final ``eps_end`` (and noise)."""
    eps = 0.0 if deterministic else ctx.hp["eps_end"]
    return _epsilon_greedy(ctx, agent, obs, key, eps, noise=not deterministic), carry


def _taken(values: jax.Array, action: jax.Array) -> jax.Array:
    """``values (B, actions, ...)`` of the actions ``action (B,)``: ``(B, ...)``."""
    index = action.reshape(action.shape + (1,) * (values.ndim - 1))
    return jnp.take_along_axis(values, index, 1)[:, 0]


def td_target(ctx: Context, params: dict, target_params: dict, b: dict, key: jax.Array) -> jax.Array:
    """The regression target of every item of the minibatch ``b``: the TD target ``(B,)``, or for
    a distributional head the target distribution, ``(B, atoms)`` probabilities (c51) or
    ``(B, quantiles)`` samples (qr, iqn)."""
    c, hp = ctx.config, ctx.hp
    k_choose, k_target = jax.random.split(key)
    if c.munchausen:
        q_obs = outputs(ctx, target_params, b["obs"], k_choose, 0)[0]
        q_next = outputs(ctx, target_params, b["next_obs"], k_target, 0)[0]
        return losses.munchausen_target(q_obs, q_next, b["action"], b["reward"], b["discount"],
                                        hp["munchausen_alpha"], hp["entropy_tau"], hp["log_policy_clip"])
    best = q_values(ctx, params if c.double else target_params, b["next_obs"], k_choose).argmax(-1)
    next_out = _taken(outputs(ctx, target_params, b["next_obs"], k_target, c.num_target_taus)[0], best)
    if c.distributional == "c51":
        return losses.categorical_projection(jax.nn.softmax(next_out), b["reward"], b["discount"], c.v_min, c.v_max)
    if c.distributional == "none":
        return b["reward"] + b["discount"] * next_out
    return b["reward"][:, None] + b["discount"][:, None] * next_out


def item_losses(ctx: Context, params: dict, goal: jax.Array, b: dict,
                key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(loss, priority, q)`` per item of the minibatch ``b`` against the targets ``goal``: the
    loss, the prioritized-replay priority (``|TD error|``; c51: the KL divergence of the
    prediction from the target, as in Rainbow; qr, iqn: the item's loss) and the Q-value of the
    taken action."""
    c = ctx.config
    out, q, taus = outputs(ctx, params, b["obs"], key, c.num_taus)
    out, q = _taken(out, b["action"]), _taken(q, b["action"])
    if c.distributional == "none":
        return losses.td_error_loss(out - goal, c.huber), jnp.abs(out - goal), q
    if c.distributional == "c51":
        per_item = losses.categorical_cross_entropy(out, goal)
        target_entropy = -(goal * jnp.log(jnp.where(goal > 0, goal, 1.0))).sum(-1)
        return per_item, jnp.maximum(per_item - target_entropy, 0.0), q  # KL = cross-entropy - entropy
    fractions = taus if c.distributional == "iqn" else (jnp.arange(c.num_quantiles) + 0.5) / c.num_quantiles
    per_item = losses.quantile_huber(out, goal, fractions, c.kappa)
    return per_item, per_item, q


def loss(ctx: Context, params: dict, goal: jax.Array, b: dict, weight: jax.Array | float,
         key: jax.Array) -> tuple[jax.Array, dict]:
    """The mean over the minibatch of each item's loss times its importance ``weight``."""
    per_item, _, q = item_losses(ctx, params, goal, b, key)
    return (weight * per_item).mean(), {"q_mean": q.mean()}


LOSS_STREAM = 2  # a gradient step's fractions and noise come from fold_in(step_key, LOSS_STREAM)


def loss_keys(step_key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The keys of a gradient step's online and target passes (IQN's fractions, the noise); the
    minibatch is drawn with ``step_key`` itself. Not ``fold_in(step_key, 1)``: with JAX's
    partitionable threefry ``split(k, n)[i] == fold_in(k, i)``, so that key is the uniform
    draw's time key, whose own splits (inside ``randint``) are that key's children: the online
    fractions reused the bits that chose the drawn steps."""
    return tuple(jax.random.split(jax.random.fold_in(step_key, LOSS_STREAM)))


def learn(ctx: Context, agent: State, traj: Transition, key: jax.Array) -> tuple[State, dict]:
    c, hp = ctx.config, ctx.hp
    agent = agent.replace(buffer=replay.add(agent.buffer, replay.transitions(traj)))
    opt = optimizer(ctx)

    def update(agent: State, step_key: jax.Array, step: jax.Array) -> tuple[State, dict]:
        k_online, k_target = loss_keys(step_key)
        drawn = replay.draw(agent.buffer, step_key, c.batch_size // ctx.devices, c.n_step, c.prioritized)
        batch = replay.nstep_at(agent.buffer, drawn, c.n_step, hp["gamma"])
        batch = {**batch, "obs": ctx.normalize(batch["obs"]), "next_obs": ctx.normalize(batch["next_obs"])}
        goal = jax.lax.stop_gradient(td_target(ctx, agent.params, agent.target_params, batch, k_target))
        weight = replay.importance_weights(drawn, priority_beta(ctx), ctx.axis) if c.prioritized else 1.0
        params, opt_state, metrics = opt.step(
            ctx, agent.params, agent.opt_state, lambda p, b: loss(ctx, p, goal, b, weight, k_online), batch)
        buffer = agent.buffer
        if c.prioritized:  # the items' errors before the step (as the loss saw them: same noise, same fractions)
            priority = item_losses(ctx, agent.params, goal, batch, k_online)[1] + hp["priority_eps"]
            buffer = replay.update_priorities(buffer, drawn, priority, hp["priority_alpha"])
            metrics = {**metrics, "importance_weight": ctx.mean(weight)}
        updates = agent.updates + 1
        target = targets.update(agent.target_params, params, hp["tau"], updates, c.target_update_interval)
        return agent.replace(params=params, target_params=target, opt_state=opt_state, updates=updates,
                             buffer=buffer), metrics

    agent, metrics = replay.update_after_warmup(ctx, agent, key, update, c.updates_per_iteration, c.learning_starts)
    return agent, {**metrics, "lr": opt.learning_rate(ctx), "epsilon": epsilon(ctx)}
