"""The distributional building blocks against plain NumPy references: C51's projection and
cross-entropy, the quantile Huber loss, Munchausen-DQN's target, IQN's cosine embedding and
risk distortions and stratified acting fractions, and the distributional heads' shapes."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrl
from jaxrl import losses, networks
from jaxrl.algos import dqn
from tests.conftest import context


def project_reference(probs, reward, discount, v_min, v_max):
    """C51's projection as Bellemare et al. (2017) write it (Algorithm 1), one item, in loops:
    every shifted atom, clipped to the support's range, splits its mass between the support atoms
    below (l) and above (u) it; all to one atom where it lands on it (l == u)."""
    n = len(probs)
    dz = (v_max - v_min) / (n - 1)
    out = np.zeros(n)
    for j in range(n):
        z = v_min + j * dz
        tz = min(max(reward + discount * z, v_min), v_max)
        b = (tz - v_min) / dz
        lo, hi = math.floor(b), math.ceil(b)
        if lo == hi:
            out[lo] += probs[j]
        else:
            out[lo] += probs[j] * (hi - b)
            out[hi] += probs[j] * (b - lo)
    return out


# support [0, 1, 2, 3, 4]; mass 0.5 at 1 and 0.5 at 3
HALF = [0.0, 0.5, 0.0, 0.5, 0.0]


@pytest.mark.parametrize("probs, reward, discount, expected", [
    (HALF, 0.5, 1.0, [0, 0.25, 0.25, 0.25, 0.25]),  # atoms land half way between support atoms
    (HALF, 1.0, 0.5, [0, 0.25, 0.5, 0.25, 0]),  # 1 + 0.5 * {1, 3} = {1.5, 2.5}
    (HALF, 1.0, 1.0, [0, 0, 0.5, 0, 0.5]),  # on support atoms: no splitting
    (HALF, 3.0, 1.0, [0, 0, 0, 0, 1.0]),  # {4, 6}: the atom above v_max is clipped to it
    (HALF, -10.0, 1.0, [1.0, 0, 0, 0, 0]),  # every atom below v_min
    ([0.2, 0.2, 0.2, 0.2, 0.2], 2.3, 0.0, [0, 0, 0.7, 0.3, 0]),  # terminal: all mass at the reward
    ([0.2, 0.2, 0.2, 0.2, 0.2], 9.0, 0.0, [0, 0, 0, 0, 1.0]),  # terminal, reward beyond v_max
    ([0.1, 0.2, 0.3, 0.4, 0.0], -1.5, 0.9, None),  # a mix: compared with the reference only
])
def test_categorical_projection_on_hand_made_distributions(probs, reward, discount, expected):
    got = losses.categorical_projection(jnp.asarray(probs), jnp.float32(reward), jnp.float32(discount), 0.0, 4.0)
    reference = project_reference(np.asarray(probs), reward, discount, 0.0, 4.0)
    if expected is not None:
        np.testing.assert_allclose(reference, expected, atol=1e-12)  # the reference agrees with the hand
    np.testing.assert_allclose(got, reference, atol=1e-6)
    np.testing.assert_allclose(got.sum(), 1.0, atol=1e-6)


def random_batch(seed: int, batch: int, atoms: int):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(atoms) * 0.3, size=batch)
    reward = rng.uniform(-15, 15, size=batch)  # many shifted atoms fall outside [-10, 10]
    discount = rng.choice([0.0, 0.5, 0.99, 1.0], size=batch)  # 0: terminal transitions
    return probs, reward, discount


def test_categorical_projection_batched_matches_the_reference_and_rlax():
    rlax = pytest.importorskip("rlax")
    probs, reward, discount = random_batch(0, 64, 51)
    got = np.asarray(losses.categorical_projection(
        jnp.asarray(probs, jnp.float32), jnp.asarray(reward, jnp.float32), jnp.asarray(discount, jnp.float32),
        -10.0, 10.0))
    reference = np.stack([project_reference(p, r, d, -10.0, 10.0) for p, r, d in zip(probs, reward, discount)])
    np.testing.assert_allclose(got, reference, atol=1e-5)
    support = losses.categorical_support(-10.0, 10.0, 51)
    shifted = jnp.asarray(reward, jnp.float32)[:, None] + jnp.asarray(discount, jnp.float32)[:, None] * support
    by_rlax = jax.vmap(rlax.categorical_l2_project, (0, 0, None))(shifted, jnp.asarray(probs, jnp.float32), support)
    np.testing.assert_allclose(got, by_rlax, atol=1e-5)


def test_categorical_cross_entropy():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(8, 11))
    target = rng.dirichlet(np.ones(11), size=8)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    np.testing.assert_allclose(losses.categorical_cross_entropy(jnp.asarray(logits), jnp.asarray(target)),
                               -(target * log_p).sum(-1), rtol=1e-5)


def quantile_huber_reference(quantiles, targets, taus, kappa):
    """One item: sum over quantiles i, mean over targets j of |tau_i - 1{u < 0}| L_kappa(u) / kappa,
    u = t_j - q_i; kappa = 0: |tau_i - 1{u < 0}| |u|."""
    total = 0.0
    for i, q in enumerate(quantiles):
        row = 0.0
        for t in targets:
            u = t - q
            weight = abs(taus[i] - (u < 0))
            if kappa == 0:
                row += weight * abs(u)
            else:
                huber = 0.5 * u * u if abs(u) <= kappa else kappa * (abs(u) - 0.5 * kappa)
                row += weight * huber / kappa
        total += row / len(targets)
    return total


@pytest.mark.parametrize("kappa", [0.0, 1.0, 2.0])
@pytest.mark.parametrize("per_item_taus", [False, True], ids=["shared-taus", "per-item-taus"])
def test_quantile_huber_matches_a_loop(kappa, per_item_taus):
    rng = np.random.default_rng(2)
    batch, m, k = 5, 7, 9
    quantiles = rng.normal(size=(batch, m)) * 2
    targets = rng.normal(size=(batch, k)) * 2
    taus = rng.uniform(size=(batch, m)) if per_item_taus else (np.arange(m) + 0.5) / m
    got = losses.quantile_huber(jnp.asarray(quantiles), jnp.asarray(targets), jnp.asarray(taus), kappa)
    expected = [quantile_huber_reference(quantiles[b], targets[b], taus[b] if per_item_taus else taus, kappa)
                for b in range(batch)]
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_munchausen_target_matches_its_formula():
    rng = np.random.default_rng(3)
    q_obs, q_next = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    action, reward = rng.integers(0, 3, size=6), rng.normal(size=6)
    discount = np.array([0.99, 0.0, 0.99, 0.5, 0.99, 0.99])
    alpha, tau, l0 = 0.9, 0.3, -1.0
    expected = []
    for i in range(6):
        pi = np.exp(q_obs[i] / tau) / np.exp(q_obs[i] / tau).sum()
        pi_next = np.exp(q_next[i] / tau) / np.exp(q_next[i] / tau).sum()
        bonus = alpha * np.clip(tau * np.log(pi[action[i]]), l0, 0.0)
        soft_value = (pi_next * (q_next[i] - tau * np.log(pi_next))).sum()
        expected.append(reward[i] + bonus + discount[i] * soft_value)
    got = losses.munchausen_target(*map(jnp.asarray, (q_obs, q_next, action, reward, discount)), alpha, tau, l0)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # a small temperature and large values stay finite (the log-policy is clipped at l0)
    big = losses.munchausen_target(jnp.asarray(q_obs * 100), jnp.asarray(q_next * 100), jnp.asarray(action),
                                   jnp.asarray(reward), jnp.asarray(discount), alpha, 0.03, l0)
    assert np.isfinite(big).all()


def test_cosine_embedding_matches_its_formula():
    module = networks.CosineEmbedding(num_cosines=5, features=4)
    taus = jnp.asarray([[0.1, 0.7], [0.0, 0.99]])
    params = module.init(jax.random.key(0), taus)
    out = module.apply(params, taus)
    assert out.shape == (2, 2, 4)
    dense = jax.tree.leaves(params)  # bias, kernel (alphabetical)
    bias, kernel = (np.asarray(x) for x in dense)
    cosines = np.cos(np.pi * np.arange(5) * np.asarray(taus)[..., None])
    np.testing.assert_allclose(out, np.maximum(cosines @ kernel + bias, 0.0), rtol=1e-5, atol=1e-6)


def test_risk_distortions():
    from scipy.stats import norm

    taus = jnp.asarray([0.05, 0.3, 0.5, 0.9])
    np.testing.assert_array_equal(networks.distort(taus, "neutral", 0.3), taus)
    np.testing.assert_allclose(networks.distort(taus, "cvar", 0.25), 0.25 * np.asarray(taus), rtol=1e-6)
    np.testing.assert_allclose(networks.distort(taus, "wang", -0.75), norm.cdf(norm.ppf(taus) - 0.75), rtol=1e-4)
    with pytest.raises(ValueError, match="risk must be one of"):
        networks.distort(taus, "optimistic", 1.0)


@pytest.mark.parametrize("dueling", [False, True])
def test_distributional_heads_have_one_output_per_action_and_atom(dueling):
    obs = jnp.zeros((3, 4))
    q = networks.QNetwork(2, (8,), dueling=dueling, obs_shape=(4,), num_atoms=5)
    assert q.apply(networks.init(q, jax.random.key(0), obs), obs).shape == (3, 2, 5)
    iqn = networks.ImplicitQuantileNetwork(2, (8, 6), dueling=dueling, obs_shape=(4,), num_cosines=3)
    taus = jnp.full((3, 7), 0.5)
    params = networks.init(iqn, jax.random.key(0), obs, taus)
    out = iqn.apply(params, obs, taus)
    assert out.shape == (3, 2, 7)
    np.testing.assert_allclose(out, out[..., :1] * jnp.ones(7), rtol=1e-6)  # same tau, same quantile


def test_scalar_q_network_keeps_its_parameters():
    """The distributional option leaves DQN's scalar network as it was (same params, same names)."""
    obs = jnp.zeros((1, 4))
    for dueling, names in ((False, {"MLP_0", "Dense_0"}), (True, {"MLP_0", "Dense_0", "Dense_1"})):
        params = networks.init(networks.QNetwork(2, (8,), dueling=dueling, obs_shape=(4,)), jax.random.key(0), obs)
        assert set(params["params"]) == names
        assert params["params"]["Dense_0"]["kernel"].shape == (8, 2)


def test_iqn_stratified_acting_fractions_keep_the_mean_with_less_variance():
    """``stratified_taus``: one acting fraction per stratum [i/K, (i+1)/K), so Q (the mean of the
    quantiles) is estimated without bias but far less noisily than from K independent draws,
    which can flip the greedy action where two actions' values are close."""
    obs = jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)
    draws = jax.random.split(jax.random.key(3), 200)
    q = {}
    for stratified in (False, True):
        # 2 cosines: a smooth quantile function, as a trained one is (an untrained one with 64 cosines
        # varies at frequencies up to 63 / 2 over [0, 1], finer than the strata)
        config = jaxrl.load_config("iqn_cartpole", stratified_taus=stratified, num_acting_taus=8, num_cosines=2)
        train = jaxrl.make_train(config)
        ctx = context(train)
        params = networks.init(dqn.network(ctx), jax.random.key(0), obs, jnp.full((3, 8), 0.5))
        _, _, taus = dqn.outputs(ctx, params, obs, draws[0], 8, acting=True)
        if stratified:
            np.testing.assert_array_equal(np.floor(np.asarray(taus) * 8), np.broadcast_to(np.arange(8), (3, 8)))
        q[stratified] = np.asarray(jax.vmap(lambda k: dqn.q_values(ctx, params, obs, k))(draws))  # (draws, 3, actions)
    fine = 256  # the mean of the quantile function over [0, 1], from a fine grid
    exact = dqn.network(ctx).apply(params, obs, jnp.broadcast_to((jnp.arange(fine) + 0.5) / fine, (3, fine))).mean(-1)
    for stratified, values in q.items():  # both unbiased: the draws' mean is within a few standard errors
        error = np.abs(values.mean(0) - exact) / (values.std(0) / np.sqrt(len(draws)) + 1e-6)
        assert (error < 5).all(), (stratified, error)
    ratio = q[True].std(0) / q[False].std(0)  # measured 0.11-0.23; independent draws: about 1
    assert (ratio < 0.4).all(), ratio
