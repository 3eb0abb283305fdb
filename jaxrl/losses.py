"""Loss terms shared by the algorithms, each a small pure function of arrays.

Conventions: every function returns a per-item loss or a mean over the items it is given, as its
docstring says; gradients are taken by the caller, and targets are passed in already computed
(wrap them in ``jax.lax.stop_gradient`` where they come from the same parameters).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax


# --------------------------------------------------------------------------- policy objectives
# Each is a loss to minimise, the mean over items of minus an objective in the probability ratio
# ``r = pi(a|s) / pi_old(a|s)`` of the sampled actions and their advantages ``A``; ``r A`` is the
# importance-sampled policy-gradient surrogate, and the objectives differ in how they keep the new
# policy near the old one. KL terms come in per item, computed by the caller from the two
# distributions (which KL, old-to-new or new-to-old, is part of each method).

def policy_gradient(ratio: jax.Array, advantage: jax.Array) -> jax.Array:
    """The unclipped importance-sampled surrogate (to minimise), mean over items: ``-r A``.

    At ``r = 1`` (the data's own policy: one epoch, one minibatch) its gradient is the policy
    gradient ``-A grad log pi`` of REINFORCE (Williams, 1992) and A2C (Mnih et al., 2016,
    synchronous); later minibatch steps weigh it by the ratio (Kakade and Langford, 2002)."""
    return -(ratio * advantage).mean()


def clipped_surrogate(ratio: jax.Array, advantage: jax.Array, clip_eps: jax.Array | float) -> jax.Array:
    """PPO's policy loss (to minimise), mean over items: ``-min(r A, clip(r, 1 - eps, 1 + eps) A)``.

    Schulman et al. 2017, "Proximal Policy Optimization Algorithms", eq. 7: the pessimistic bound
    gives no gradient to push ``r`` further once it left ``[1 - eps, 1 + eps]`` in the direction
    the advantage favours."""
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    return -jnp.minimum(ratio * advantage, clipped * advantage).mean()


def kl_penalty(ratio: jax.Array, advantage: jax.Array, kl: jax.Array, kl_coef: jax.Array | float) -> jax.Array:
    """PPO's adaptive-KL-penalty loss, mean over items: ``-(r A - beta KL[pi_old, pi])``.

    Schulman et al. 2017, eq. 8: a soft trust region; ``kl`` is the per-item
    ``KL[pi_old(.|s), pi(.|s)]`` and ``kl_coef`` (beta) is adapted between updates by
    :func:`adapt_kl_coef`."""
    return -(ratio * advantage - kl_coef * kl).mean()


KL_COEF_RANGE = (2.0**-100, 2.0**100)  # where adapt_kl_coef keeps the coefficient


def adapt_kl_coef(kl_coef: jax.Array, kl: jax.Array, target: jax.Array | float) -> jax.Array:
    """The KL coefficient for the next update (Schulman et al. 2017, section 4): halved when the
    mean KL of the last update ``kl`` fell below ``target / 1.5``, doubled when it rose above
    ``target * 1.5``, kept otherwise; so the policy moves about ``target`` per update.

    The result stays within :data:`KL_COEF_RANGE` (powers of 2, so halving and doubling stay
    exact): float32 would flush a coefficient halved ~126 times (a long run of tiny updates, as a
    learning rate annealed to 0 gives) to 0, from which doubling never brings it back."""
    adapted = jnp.where(kl < target / 1.5, kl_coef / 2.0, jnp.where(kl > target * 1.5, kl_coef * 2.0, kl_coef))
    return jnp.clip(adapted, *KL_COEF_RANGE)


def spo(ratio: jax.Array, advantage: jax.Array, eps: jax.Array | float) -> jax.Array:
    """Simple Policy Optimization's loss, mean over items: ``-(r A - |A| / (2 eps) (r - 1)^2)``.

    Xie et al. 2024, "Simple Policy Optimization": instead of clipping (which leaves ``r``
    free once outside the trust region) a quadratic penalty whose maximum over ``r`` lies exactly
    on the boundary ``r = 1 + sign(A) eps``, so the gradient always pulls ``r`` back toward it."""
    return -(ratio * advantage - jnp.abs(advantage) / (2.0 * eps) * jnp.square(ratio - 1.0)).mean()


def mdpo(ratio: jax.Array, advantage: jax.Array, kl: jax.Array, step_size: jax.Array | float) -> jax.Array:
    """On-policy Mirror Descent Policy Optimization's loss, mean over items:
    ``-(r A - KL[pi, pi_old] / t_k)``.

    Tomar et al. 2020, "Mirror Descent Policy Optimization" (on-policy MDPO): each iteration ``k``
    approximately solves the mirror-descent step ``max E[r A] - KL(pi || pi_k) / t_k`` by several
    gradient steps from ``pi_k``; ``kl`` is the per-item ``KL[pi(.|s), pi_old(.|s)]`` (new to old,
    as in the authors' code) and ``step_size`` is ``t_k`` (:func:`mdpo_step_size`)."""
    return -(ratio * advantage - kl / step_size).mean()


def mdpo_step_size(iteration: jax.Array, num_iterations: int) -> jax.Array:
    """MDPO's step size ``t_k = 1 - k / K`` at iteration ``k`` of ``K`` (Tomar et al. 2020, on-policy
    MDPO; the authors' code anneals it once per iteration, from 1 toward 0): the KL term's weight
    ``1 / t_k`` grows from 1 to ``K``, so the policy settles as training ends."""
    return 1.0 - jnp.asarray(iteration, jnp.float32) / num_iterations


def dpo_drift(ratio: jax.Array, advantage: jax.Array, alpha: jax.Array | float = 2.0,
              beta: jax.Array | float = 0.6) -> jax.Array:
    """Discovered Policy Optimisation's drift, per item (Lu et al. 2022, "Discovered Policy
    Optimisation", the closed form distilled from the learned drift, with its defaults
    ``alpha = 2``, ``beta = 0.6``)::

        A >= 0:  relu((r - 1) A - alpha tanh((r - 1) A / alpha))
        A <  0:  relu(log(r) A - beta tanh(log(r) A / beta))

    ``x - c tanh(x / c)`` is ~ ``x^3 / (3 c^2)`` near 0 and ~ ``x - c`` far out, so small moves of
    the ratio cost almost nothing and large ones in the advantage's direction are penalised
    about linearly (the relu keeps moves against the advantage free, as clipping does)."""
    log_ratio = jnp.log(ratio)
    positive = jax.nn.relu((ratio - 1.0) * advantage - alpha * jnp.tanh((ratio - 1.0) * advantage / alpha))
    negative = jax.nn.relu(log_ratio * advantage - beta * jnp.tanh(log_ratio * advantage / beta))
    return jnp.where(advantage >= 0, positive, negative)


def drift_objective(ratio: jax.Array, advantage: jax.Array,
                    drift: Callable[[jax.Array, jax.Array], jax.Array]) -> jax.Array:
    """Mirror-learning loss with a drift function, mean over items: ``-(r A - drift(r, A))``.

    Lu et al. 2022 (after Kuba et al. 2022, "Mirror Learning"): any drift that is >= 0 and zero
    with zero gradient at ``r = 1`` gives a valid update. ``drift`` maps per-item ratios and
    advantages to per-item drifts: :func:`dpo_drift` (with chosen ``alpha, beta``) or a learned
    function."""
    return -(ratio * advantage - drift(ratio, advantage)).mean()


# --------------------------------------------------------------------------- value and other losses


def value_loss(value: jax.Array, target: jax.Array, old_value: jax.Array | None = None,
               clip_eps: jax.Array | float | None = None) -> jax.Array:
    """``0.5 * (value - target)^2``, mean over items; with ``old_value`` and ``clip_eps``, PPO's
    clipped version: the larger of the errors of ``value`` and of ``value`` kept within
    ``clip_eps`` of ``old_value``."""
    err = jnp.square(value - target)
    if clip_eps is not None:
        clipped = old_value + jnp.clip(value - old_value, -clip_eps, clip_eps)
        err = jnp.maximum(err, jnp.square(clipped - target))
    return 0.5 * err.mean()


def td_error_loss(error: jax.Array, huber: bool = False) -> jax.Array:
    """Per item: ``0.5 * error^2``, or the Huber loss (quadratic within 1, linear beyond)."""
    return optax.huber_loss(error) if huber else 0.5 * jnp.square(error)


def quantile_huber(quantiles: jax.Array, targets: jax.Array, taus: jax.Array, kappa: float = 1.0) -> jax.Array:
    """Quantile regression loss (QR-DQN, IQN, TQC), per item.

    ``quantiles (..., M)`` estimate the ``taus`` quantiles of a return distribution (``(M,)``
    for the same fractions in every item, as QR-DQN's; ``(..., M)`` for each item's own, as IQN's
    sampled ones); ``targets (..., K)`` are samples of the target distribution. The loss of one
    item is
    ``sum_i mean_j |tau_i - 1{u_ij < 0}| * huber_kappa(u_ij) / kappa`` with ``u_ij = t_j - q_i``
    (``kappa = 0``: the plain quantile (pinball) loss).
    """
    u = targets[..., None, :] - quantiles[..., :, None]  # (..., M, K)
    weight = jnp.abs(taus[..., :, None] - (u < 0).astype(u.dtype))
    if kappa == 0:
        return (weight * jnp.abs(u)).mean(-1).sum(-1)
    huber = optax.huber_loss(u, delta=kappa) / kappa
    return (weight * huber).mean(-1).sum(-1)


def temperature_loss(log_alpha: jax.Array, entropy: jax.Array, target_entropy: jax.Array | float) -> jax.Array:
    """SAC's automatic temperature (mean over items): ``log_alpha * (entropy - target)``, so
    ``alpha`` grows while the policy's entropy is below the target and shrinks above it.
    ``entropy`` is the per-item estimate (``-log pi(a|s)`` of sampled actions, or the exact
    entropy of a discrete policy) and is not differentiated."""
    return (log_alpha * jax.lax.stop_gradient(entropy - target_entropy)).mean()


def categorical_support(v_min: float, v_max: float, num_atoms: int) -> jax.Array:
    """C51's fixed support: ``num_atoms`` evenly spaced returns from ``v_min`` to ``v_max``."""
    return jnp.linspace(v_min, v_max, num_atoms, dtype=jnp.float32)


def categorical_projection(probs: jax.Array, reward: jax.Array, discount: jax.Array, v_min: float,
                           v_max: float) -> jax.Array:
    """The distribution of ``reward + discount * Z`` projected onto the support (C51, Bellemare et
    al., 2017, Algorithm 1).

    ``probs (..., N)`` are the probabilities of ``Z`` on :func:`categorical_support` (``N``
    atoms), ``reward`` and ``discount`` ``(...)``: ``discount = 0`` (a terminal transition) puts
    all the mass at ``reward``. Each shifted atom ``r + discount * z_j`` is clipped to
    ``[v_min, v_max]``, then its mass is shared between the two support atoms around it in
    proportion to closeness: support atom ``i`` receives ``p_j * max(0, 1 - |Tz_j - z_i| / dz)``
    (all of it when ``Tz_j`` lands on ``z_i``). Returns ``(..., N)`` probabilities, summing to 1.
    """
    support = categorical_support(v_min, v_max, probs.shape[-1])
    spacing = (v_max - v_min) / (probs.shape[-1] - 1)
    shifted = jnp.clip(reward[..., None] + discount[..., None] * support, v_min, v_max)  # (..., N)
    share = jnp.clip(1.0 - jnp.abs(shifted[..., None, :] - support[:, None]) / spacing, 0.0, 1.0)  # (..., N_to, N_from)
    return (share * probs[..., None, :]).sum(-1)


def categorical_cross_entropy(logits: jax.Array, target_probs: jax.Array) -> jax.Array:
    """Per item: ``-sum_i target_i * log softmax(logits)_i`` over the last axis (C51's loss, the KL
    divergence from the target up to the target's entropy, which has no gradient)."""
    return -(target_probs * jax.nn.log_softmax(logits)).sum(-1)


def munchausen_target(q_obs: jax.Array, q_next: jax.Array, action: jax.Array, reward: jax.Array,
                      discount: jax.Array, alpha: jax.Array | float, entropy_tau: jax.Array | float,
                      log_policy_clip: jax.Array | float) -> jax.Array:
    """Munchausen-DQN's regression target (Vieillard, Pietquin and Geist, 2020, "Munchausen
    Reinforcement Learning", eq. of M-DQN), per item:

    ``r + alpha * clip(tau * log pi(a|s), l0, 0) + discount * sum_a' pi(a'|s') (q(s', a') - tau * log pi(a'|s'))``

    with ``pi = softmax(q / tau)`` the target network's policy at temperature ``entropy_tau``
    (``tau``), ``l0 = log_policy_clip`` (<= 0) and ``q_obs``, ``q_next`` the target network's
    action values ``(B, actions)`` at ``s`` and ``s'``; ``action (B,)`` is the action taken. The
    first term is the scaled log-policy bonus (it penalises actions the policy finds unlikely,
    an implicit KL regularisation), the last the soft value of ``s'``. ``tau * log pi`` is
    ``tau * log_softmax(q / tau)``, stable for small ``tau``.
    """
    tau_log_pi = entropy_tau * jax.nn.log_softmax(q_obs / entropy_tau)
    bonus = jnp.take_along_axis(tau_log_pi, action[:, None], -1)[:, 0]
    tau_log_pi_next = entropy_tau * jax.nn.log_softmax(q_next / entropy_tau)
    soft_value = (jax.nn.softmax(q_next / entropy_tau) * (q_next - tau_log_pi_next)).sum(-1)
    return reward + alpha * jnp.clip(bonus, log_policy_clip, 0.0) + discount * soft_value
