"""The policy objectives of ``jaxrl.losses``: values and gradients against hand-computed NumPy.

Each loss is minus the mean over items of a per-item objective ``o(r, A)``, so its gradient with
respect to ratio ``r_i`` is ``-o'(r_i, A_i) / n``. The grid covers positive and negative
advantages and ratios inside and outside the trust region ``[1 - eps, 1 + eps]`` (never exactly
on its edge, where the clipped surrogate has no derivative).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl import losses

EPS = 0.2
RATIOS = np.array([0.5, 0.7, 0.9, 1.0, 1.1, 1.3, 2.0], np.float32)  # 0.5, 0.7 and 1.3, 2.0 lie outside
ADVANTAGES = np.array([2.0, 0.5, -0.5, -2.0], np.float32)
R, A = (x.reshape(-1) for x in np.meshgrid(RATIOS, ADVANTAGES))
N = R.size


def value_and_grad(loss_fn, *args):
    """A loss's value and gradient with respect to every argument, jitted."""
    return jax.jit(jax.value_and_grad(loss_fn, argnums=tuple(range(len(args)))))(*args)


def check(loss_fn, objective, d_objective, *extra):
    """``loss_fn(R, A, *extra)`` equals ``-mean(objective)`` and its ratio gradient ``-d_objective / N``."""
    value, grads = value_and_grad(loss_fn, jnp.asarray(R), jnp.asarray(A), *extra)
    np.testing.assert_allclose(value, -objective.mean(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads[0], -d_objective / N, rtol=1e-4, atol=1e-7)
    return grads


def test_clipped_surrogate():
    clipped = np.clip(R, 1 - EPS, 1 + EPS)
    objective = np.minimum(R * A, clipped * A)
    # the unclipped term is the smaller one (gradient A) unless r left the region in A's direction
    outside_favoured = ((A > 0) & (R > 1 + EPS)) | ((A < 0) & (R < 1 - EPS))
    check(lambda r, a: losses.clipped_surrogate(r, a, EPS), objective, np.where(outside_favoured, 0.0, A))
    # hand-computed: r = 2, A = 2 is clipped to 1.2 * 2 = 2.4; r = 0.5, A = -2 to 0.8 * -2 = -1.6
    assert losses.clipped_surrogate(jnp.array([2.0]), jnp.array([2.0]), EPS) == pytest.approx(-2.4)
    assert losses.clipped_surrogate(jnp.array([0.5]), jnp.array([-2.0]), EPS) == pytest.approx(1.6)
    assert losses.clipped_surrogate(jnp.array([0.5]), jnp.array([2.0]), EPS) == pytest.approx(-1.0)


def test_kl_penalty():
    kl = np.linspace(0.0, 0.3, N).astype(np.float32)
    beta = 3.0
    grads = check(lambda r, a, k: losses.kl_penalty(r, a, k, beta), R * A - beta * kl, A, jnp.asarray(kl))
    np.testing.assert_allclose(grads[2], beta / N * np.ones(N), rtol=1e-5)
    # hand-computed: r = 1.5, A = 1, KL = 0.1, beta = 2 -> -(1.5 - 0.2)
    assert losses.kl_penalty(jnp.array([1.5]), jnp.array([1.0]), jnp.array([0.1]), 2.0) == pytest.approx(-1.3)


@pytest.mark.parametrize("kl, expected", [
    (0.001, 0.5), (0.01 / 1.5 - 1e-4, 0.5),  # below target / 1.5: halved
    (0.01 / 1.5 + 1e-4, 1.0), (0.01, 1.0), (0.015 - 1e-4, 1.0),  # inside: kept
    (0.015 + 1e-4, 2.0), (0.5, 2.0),  # above target * 1.5: doubled
])
def test_adapt_kl_coef(kl, expected):
    coef = jax.jit(losses.adapt_kl_coef)(jnp.float32(1.0), jnp.float32(kl), jnp.float32(0.01))
    assert float(coef) == pytest.approx(expected)


def test_adapt_kl_coef_can_always_recover():
    coef = jnp.float32(1.0)
    for _ in range(200):  # tiny updates: halved until the floor, never to 0
        coef = losses.adapt_kl_coef(coef, jnp.float32(0.0), 0.01)
    assert float(coef) == losses.KL_COEF_RANGE[0]
    assert float(losses.adapt_kl_coef(coef, jnp.float32(1.0), 0.01)) == 2 * losses.KL_COEF_RANGE[0]
    for _ in range(200):
        coef = losses.adapt_kl_coef(coef, jnp.float32(1.0), 0.01)
    assert float(coef) == losses.KL_COEF_RANGE[1]


def test_spo():
    objective = R * A - np.abs(A) / (2 * EPS) * (R - 1) ** 2
    check(lambda r, a: losses.spo(r, a, EPS), objective, A - np.abs(A) / EPS * (R - 1))
    # hand-computed: r = 1.5, A = 2, eps = 0.2 -> 3 - 2 / 0.4 * 0.25 = 1.75
    assert losses.spo(jnp.array([1.5]), jnp.array([2.0]), EPS) == pytest.approx(-1.75)


def test_spo_agrees_with_clip_at_ratio_one_and_peaks_on_the_trust_region_edge():
    ones = jnp.ones(len(ADVANTAGES))
    adv = jnp.asarray(ADVANTAGES)
    for loss_fn in (losses.spo, losses.clipped_surrogate):  # value and gradient at r = 1: A
        value, grad = jax.value_and_grad(loss_fn)(ones, adv, EPS)
        np.testing.assert_allclose(value, -ADVANTAGES.mean(), rtol=1e-6)
        np.testing.assert_allclose(grad, -ADVANTAGES / len(ADVANTAGES), rtol=1e-6)
    ratios = jnp.linspace(0.5, 1.5, 1001)
    for a in (2.0, -0.5):  # the per-item objective is largest at r = 1 + sign(A) eps
        per_item = jax.vmap(lambda r: -losses.spo(r[None], jnp.array([a]), EPS))(ratios)
        assert float(ratios[jnp.argmax(per_item)]) == pytest.approx(1 + np.sign(a) * EPS, abs=1e-3)


def test_mdpo():
    kl = np.linspace(0.0, 0.3, N).astype(np.float32)
    t = 0.25
    grads = check(lambda r, a, k: losses.mdpo(r, a, k, t), R * A - kl / t, A, jnp.asarray(kl))
    np.testing.assert_allclose(grads[2], 1 / t / N * np.ones(N), rtol=1e-5)
    assert losses.mdpo(jnp.array([1.5]), jnp.array([1.0]), jnp.array([0.1]), 0.5) == pytest.approx(-1.3)


def test_mdpo_step_size_anneals_from_one_toward_zero():
    steps = jax.jit(losses.mdpo_step_size, static_argnums=1)(jnp.arange(4), 4)
    np.testing.assert_allclose(steps, [1.0, 0.75, 0.5, 0.25])


def dpo_drift_numpy(r, a, alpha=2.0, beta=0.6):
    """The published closed form and its derivative in ``r``: ``d/dx (x - c tanh(x/c)) = tanh(x/c)^2``."""
    x = np.where(a >= 0, (r - 1) * a, np.log(r) * a)
    c = np.where(a >= 0, alpha, beta)
    inner = x - c * np.tanh(x / c)
    dx_dr = np.where(a >= 0, a, a / r)
    return np.maximum(inner, 0), np.where(inner > 0, np.tanh(x / c) ** 2 * dx_dr, 0.0)


def test_dpo_drift_and_objective():
    drift, d_drift = dpo_drift_numpy(R, A)
    np.testing.assert_allclose(losses.dpo_drift(jnp.asarray(R), jnp.asarray(A)), drift, rtol=1e-4, atol=1e-7)
    check(lambda r, a: losses.drift_objective(r, a, losses.dpo_drift), R * A - drift, A - d_drift)
    # hand-computed: r = 2, A = 2: x = 2, drift = 2 - 2 tanh(1) = 0.476812; A = -2, r = 0.5:
    # x = 2 ln 2 = 1.386294, drift = x - 0.6 tanh(x / 0.6) = 0.797991
    np.testing.assert_allclose(losses.dpo_drift(jnp.array([2.0, 0.5]), jnp.array([2.0, -2.0])),
                               [0.476812, 0.797991], rtol=1e-5)
    # moves against the advantage's direction cost nothing; drift and its slope vanish at r = 1
    assert float(losses.dpo_drift(jnp.float32(0.5), jnp.float32(2.0))) == 0.0
    assert float(losses.dpo_drift(jnp.float32(2.0), jnp.float32(-2.0))) == 0.0
    grad_at_one = jax.grad(lambda r: losses.dpo_drift(r, jnp.asarray(ADVANTAGES)).sum())(jnp.ones(4))
    np.testing.assert_allclose(grad_at_one, 0.0, atol=1e-7)


def test_dpo_alpha_beta_are_used():
    drift, d_drift = dpo_drift_numpy(R, A, alpha=0.5, beta=1.5)
    chosen = functools.partial(losses.dpo_drift, alpha=0.5, beta=1.5)
    check(lambda r, a: losses.drift_objective(r, a, chosen), R * A - drift, A - d_drift)


def test_drift_objective_takes_a_user_drift():
    # no drift: the plain importance-sampled policy gradient; SPO's penalty as a drift: SPO
    check(lambda r, a: losses.drift_objective(r, a, lambda r, a: jnp.zeros_like(r)), R * A, A)
    spo_drift = lambda r, a: jnp.abs(a) / (2 * EPS) * (r - 1) ** 2  # noqa: E731
    r, a = jnp.asarray(R), jnp.asarray(A)
    np.testing.assert_allclose(losses.drift_objective(r, a, spo_drift), losses.spo(r, a, EPS), rtol=1e-6)
