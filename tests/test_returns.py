"""Return estimators vs plain NumPy loop references, hand-computed numbers and special cases."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.returns import gae, nstep_returns, q_lambda, td_lambda, vtrace

RTOL, ATOL = 1e-5, 1e-5


# --------------------------------------------------------------------------------------------
# References: scalar Python loops over one 1-D sequence, written straight from the definitions
# (float64), then applied to every column of a (T, ...) batch.
# --------------------------------------------------------------------------------------------


def _columnwise(ref_1d):
    """Lift a reference over 1-D sequences to (T, ...) arrays by looping over the columns."""

    @functools.wraps(ref_1d)
    def ref(*arrays, **params):
        arrays = [np.asarray(a, np.float64) for a in arrays]
        shape = arrays[0].shape
        cols = [a.reshape(shape[0], -1) for a in arrays]
        outs = [ref_1d(*(c[:, j] for c in cols), **params) for j in range(cols[0].shape[1])]
        if isinstance(outs[0], tuple):
            return tuple(np.stack(o, axis=1).reshape(shape) for o in zip(*outs))
        return np.stack(outs, axis=1).reshape(shape)

    return ref


@_columnwise
def ref_gae(rewards, values, next_values, terminated, truncated, *, gamma, lam):
    T = len(rewards)
    adv = np.zeros(T)
    following = 0.0  # A_{t+1}
    for t in reversed(range(T)):
        term = terminated[t] != 0
        done = term or truncated[t] != 0
        bootstrap = 0.0 if term else next_values[t]
        delta = rewards[t] + gamma * bootstrap - values[t]
        if done:
            following = 0.0
        adv[t] = delta + gamma * lam * following
        following = adv[t]
    return adv, adv + values


@_columnwise
def ref_td_lambda(rewards, next_values, terminated, truncated, *, gamma, lam):
    T = len(rewards)
    ret = np.zeros(T)
    for t in reversed(range(T)):
        term = terminated[t] != 0
        done = term or truncated[t] != 0
        if done or t == T - 1:
            bracket = next_values[t]
        else:
            bracket = (1 - lam) * next_values[t] + lam * ret[t + 1]
        ret[t] = rewards[t] + (0.0 if term else gamma * bracket)
    return ret


@_columnwise
def ref_nstep(rewards, next_values, terminated, truncated, *, gamma, n):
    T = len(rewards)
    ret = np.zeros(T)
    for t in range(T):
        total, k = 0.0, 0
        while True:  # add rewards until n steps, the episode's end or the rollout's end
            total += gamma**k * rewards[t + k]
            k += 1
            last = t + k - 1
            if k == n or terminated[last] or truncated[last] or t + k == T:
                break
        if not terminated[last]:
            total += gamma**k * next_values[last]
        ret[t] = total
    return ret


def one_step_target(rewards, next_values, terminated, gamma):
    return np.asarray(rewards) + gamma * (1 - np.asarray(terminated, np.float64)) * next_values


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def make_batch(rng, shape, p_term=0.1, p_trunc=0.1, consistent=False):
    """Random rollout. With ``consistent``, next_values[t] == values[t+1] inside episodes."""
    rewards = rng.normal(size=shape)
    values = rng.normal(size=shape)
    next_values = rng.normal(size=shape)
    u = rng.uniform(size=shape)
    terminated = u < p_term
    truncated = (u >= p_term) & (u < p_term + p_trunc)
    if consistent:
        inside = ~(terminated | truncated)[:-1]
        next_values[:-1] = np.where(inside, values[1:], next_values[:-1])
    f32 = lambda a: a.astype(np.float32)  # noqa: E731
    return dict(rewards=f32(rewards), values=f32(values), next_values=f32(next_values),
                terminated=terminated, truncated=truncated)


def seq(rewards, values, next_values, terminated, truncated):
    return dict(rewards=np.float32(rewards), values=np.float32(values),
                next_values=np.float32(next_values), terminated=np.array(terminated, bool),
                truncated=np.array(truncated, bool))


def run_all(d, gamma, lam, n):
    """(jax outputs, reference outputs) of all estimators on one rollout."""
    no_v = (d["rewards"], d["next_values"], d["terminated"], d["truncated"])
    with_v = (d["rewards"], d["values"], *no_v[1:])
    got = (*gae(*with_v, gamma, lam), td_lambda(*no_v, gamma, lam), nstep_returns(*no_v, gamma, n))
    want = (*ref_gae(*with_v, gamma=gamma, lam=lam), ref_td_lambda(*no_v, gamma=gamma, lam=lam),
            ref_nstep(*no_v, gamma=gamma, n=n))
    return got, want


def assert_all_match(d, gamma, lam, n):
    for name, g, w in zip(("gae adv", "gae ret", "td_lambda", "nstep"), *run_all(d, gamma, lam, n)):
        assert g.shape == w.shape, name
        np.testing.assert_allclose(np.asarray(g), w, rtol=RTOL, atol=ATOL, err_msg=name)


R5, V5, NV5 = [1.0, -2.0, 0.5, 3.0, -1.0], [0.2, 0.4, -0.3, 1.1, 0.7], [0.4, -0.3, 1.1, 0.7, 2.0]
HAND_BUILT = {
    "termination": seq(R5, V5, NV5, [0, 1, 0, 0, 0], [0, 0, 0, 0, 0]),
    "truncation": seq(R5, V5, [0.4, 5.0, 1.1, 0.7, 2.0], [0, 0, 0, 0, 0], [0, 1, 0, 0, 0]),
    "both": seq(R5, V5, [0.4, 5.0, 1.1, -4.0, 2.0], [0, 1, 0, 0, 0], [0, 0, 0, 1, 0]),
    "ends_at_last_step_term": seq(R5, V5, NV5, [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]),
    "ends_at_last_step_trunc": seq(R5, V5, NV5, [0, 0, 0, 0, 0], [0, 0, 0, 0, 1]),
    "one_step_episodes": seq(R5, V5, NV5, [1, 0, 1, 0, 1], [0, 1, 0, 1, 0]),
    "both_flags_same_step": seq(R5, V5, NV5, [0, 0, 1, 0, 0], [0, 0, 1, 0, 0]),
    "no_dones": seq(R5, V5, NV5, [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]),
}


# --------------------------------------------------------------------------------------------
# The references themselves, on numbers worked out by hand
# --------------------------------------------------------------------------------------------

# T = 4, gamma = lam = 0.5; termination at t=1, truncation at t=2 (final-obs value 6 differs
# from the reset state's value values[3] = 2).
HAND = seq([1, 2, 4, 1], [1, 1, 3, 2], [1, 9, 6, 4], [0, 1, 0, 0], [0, 0, 1, 0])
# delta = [1 + .5*1 - 1, 2 + 0 - 1, 4 + .5*6 - 3, 1 + .5*4 - 2] = [.5, 1, 4, 1]
# A_3 = 1; A_2 = 4 (done); A_1 = 1 (done); A_0 = .5 + .25 * A_1 = .75
HAND_ADV = [0.75, 1.0, 4.0, 1.0]
HAND_RET = [1.75, 2.0, 7.0, 3.0]  # A + values
# td(lambda): G_3 = 1 + .5*4 = 3; G_2 = 4 + .5*6 = 7; G_1 = 2; G_0 = 1 + .5*(.5*1 + .5*2) = 1.75
HAND_TD = [1.75, 2.0, 7.0, 3.0]
# n=2: G_0 = 1 + .5*2 (+ 0, terminal) = 2; G_1 = 2; G_2 = 4 + .5*6 = 7; G_3 = 1 + .5*4 = 3
HAND_N2 = [2.0, 2.0, 7.0, 3.0]
HAND_N1 = [1.5, 2.0, 7.0, 3.0]  # r + gamma * (1 - term) * next_v


@pytest.mark.parametrize("impl", ["reference", "jax"])
def test_hand_computed_numbers(impl):
    d, g = HAND, 0.5
    no_v = (d["rewards"], d["next_values"], d["terminated"], d["truncated"])
    with_v = (d["rewards"], d["values"], *no_v[1:])
    if impl == "reference":
        outs = (*ref_gae(*with_v, gamma=g, lam=g), ref_td_lambda(*no_v, gamma=g, lam=g),
                ref_nstep(*no_v, gamma=g, n=2), ref_nstep(*no_v, gamma=g, n=1))
    else:
        outs = (*gae(*with_v, g, g), td_lambda(*no_v, g, g), nstep_returns(*no_v, g, 2),
                nstep_returns(*no_v, g, 1))
    for got, want in zip(outs, (HAND_ADV, HAND_RET, HAND_TD, HAND_N2, HAND_N1)):
        np.testing.assert_allclose(np.asarray(got), want, rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------------------------
# JAX vs references
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(HAND_BUILT))
def test_hand_built_sequences(name):
    for gamma, lam, n in [(0.9, 0.8, 2), (0.99, 0.95, 3), (0.5, 0.0, 1), (1.0, 1.0, 10)]:
        assert_all_match(HAND_BUILT[name], gamma, lam, n)


@pytest.mark.parametrize("shape", [(37, 4), (23, 3, 2)], ids=["T,N", "T,N,K"])
def test_random_rollouts(shape):
    rng = np.random.default_rng(0)
    for gamma, lam, n in [(0.99, 0.95, 5), (0.9, 0.5, 1), (0.97, 1.0, 100)]:
        assert_all_match(make_batch(rng, shape), gamma, lam, n)


def test_flags_as_floats_match_bools():
    d = make_batch(np.random.default_rng(1), (16, 3))
    f = dict(d, terminated=d["terminated"].astype(np.float32),
             truncated=d["truncated"].astype(np.float32))
    for a, b in zip(run_all(d, 0.9, 0.7, 3)[0], run_all(f, 0.9, 0.7, 3)[0]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --------------------------------------------------------------------------------------------
# Special cases (against each other and simple closed forms)
# --------------------------------------------------------------------------------------------

T, N, GAMMA = 20, 5, 0.95


@pytest.fixture
def consistent():
    return make_batch(np.random.default_rng(2), (T, N), consistent=True)


def test_gae_lambda_one_is_monte_carlo_with_bootstrap(consistent):
    d = consistent
    _, ret = gae(*(d[k] for k in ("rewards", "values", "next_values", "terminated", "truncated")),
                 GAMMA, 1.0)
    mc = ref_nstep(d["rewards"], d["next_values"], d["terminated"], d["truncated"],
                   gamma=GAMMA, n=T)
    np.testing.assert_allclose(np.asarray(ret), mc, rtol=RTOL, atol=ATOL)


def test_lambda_zero_and_n_one_are_one_step_td(consistent):
    d = consistent
    no_v = (d["rewards"], d["next_values"], d["terminated"], d["truncated"])
    target = one_step_target(d["rewards"], d["next_values"], d["terminated"], GAMMA)
    adv, ret = gae(d["rewards"], d["values"], *no_v[1:], GAMMA, 0.0)
    np.testing.assert_allclose(np.asarray(adv), target - d["values"], rtol=RTOL, atol=ATOL)
    for got in (ret, td_lambda(*no_v, GAMMA, 0.0), nstep_returns(*no_v, GAMMA, 1)):
        np.testing.assert_allclose(np.asarray(got), target, rtol=RTOL, atol=ATOL)


def test_td_lambda_one_is_nstep_with_n_at_least_T():
    d = make_batch(np.random.default_rng(3), (T, N))  # needs no consistency
    no_v = (d["rewards"], d["next_values"], d["terminated"], d["truncated"])
    want = nstep_returns(*no_v, GAMMA, T)
    for got in (td_lambda(*no_v, GAMMA, 1.0), nstep_returns(*no_v, GAMMA, 3 * T)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=RTOL, atol=ATOL)


def test_gae_returns_equal_td_lambda_for_consistent_values(consistent):
    d = consistent
    no_v = (d["rewards"], d["next_values"], d["terminated"], d["truncated"])
    _, ret = gae(d["rewards"], d["values"], *no_v[1:], GAMMA, 0.8)
    np.testing.assert_allclose(np.asarray(ret), np.asarray(td_lambda(*no_v, GAMMA, 0.8)),
                               rtol=RTOL, atol=ATOL)


def test_nstep_no_dones_is_discounted_sum_plus_bootstrap():
    r = np.arange(1.0, 5.0, dtype=np.float32)
    nv, flags = np.float32([10, 20, 30, 40]), np.zeros(4, bool)
    got = nstep_returns(r, nv, flags, flags, 0.5, 4)
    # G_t = sum_k .5^k r_{t+k} + .5^(4-t) * 40
    want = [1 + 1 + .75 + .5 + 40 / 16, 2 + 1.5 + 1 + 40 / 8, 3 + 2 + 40 / 4, 4 + 40 / 2]
    np.testing.assert_allclose(np.asarray(got), want, rtol=RTOL)


# --------------------------------------------------------------------------------------------
# Bootstrapping at truncation, none at termination, no leak across episodes
# --------------------------------------------------------------------------------------------


def _outputs(d):
    return [np.asarray(x) for x in run_all(d, 0.9, 0.8, 3)[0]]


@pytest.mark.parametrize("flag,should_change", [("truncated", True), ("terminated", False)])
def test_next_value_at_episode_end(flag, should_change):
    d = seq(R5, V5, NV5, [0, 0, 0, 0, 0], [0, 0, 0, 0, 0])
    d[flag][2] = True
    base = _outputs(d)
    d["next_values"][2] += 100.0
    for before, after in zip(base, _outputs(d)):
        changed = ~np.isclose(before, after)
        if should_change:
            assert changed[:3].all() and not changed[3:].any()  # t=0..2 bootstrap through it
        else:
            assert not changed.any()


def test_no_leak_across_episode_boundary():
    rng = np.random.default_rng(4)
    d = seq(rng.normal(size=8), rng.normal(size=8), rng.normal(size=8),
            [0] * 8, [0, 0, 0, 1, 0, 0, 0, 0])
    base = _outputs(d)
    for k in ("rewards", "values", "next_values"):
        d[k][4:] += rng.normal(size=4).astype(np.float32)
    for before, after in zip(base, _outputs(d)):
        np.testing.assert_array_equal(before[:4], after[:4])


# --------------------------------------------------------------------------------------------
# Transformations and validation
# --------------------------------------------------------------------------------------------


def test_jit_and_vmap_over_gamma_and_lam():
    d = make_batch(np.random.default_rng(5), (12, 3))
    gammas = jnp.array([0.0, 0.5, 0.9, 0.99], jnp.float32)
    lams = jnp.array([1.0, 0.95, 0.5, 0.0], jnp.float32)
    no_v = (d["rewards"], d["next_values"], d["terminated"], d["truncated"])
    with_v = (d["rewards"], d["values"], *no_v[1:])

    @jax.jit
    def swept(gammas, lams):
        return (
            jax.vmap(lambda g, l: gae(*with_v, g, l))(gammas, lams),
            jax.vmap(lambda g, l: td_lambda(*no_v, g, l))(gammas, lams),
            jax.vmap(lambda g: nstep_returns(*no_v, g, 4))(gammas),
        )

    (adv, ret), td, ns = swept(gammas, lams)
    assert adv.shape == ret.shape == td.shape == ns.shape == (4, 12, 3)
    for i, (g, l) in enumerate(zip(gammas.tolist(), lams.tolist())):
        single = (*gae(*with_v, g, l), td_lambda(*no_v, g, l), nstep_returns(*no_v, g, 4))
        for batched, one in zip((adv, ret, td, ns), single):
            np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(one),
                                       rtol=RTOL, atol=ATOL)


def test_jit_with_static_n():
    d = make_batch(np.random.default_rng(6), (10, 2))
    args = (d["rewards"], d["next_values"], d["terminated"], d["truncated"], 0.9)
    jitted = jax.jit(nstep_returns, static_argnames="n")
    np.testing.assert_allclose(np.asarray(jitted(*args, n=3)),
                               np.asarray(nstep_returns(*args, 3)), rtol=RTOL, atol=ATOL)


def test_validation():
    x, flags = np.zeros((4, 2), np.float32), np.zeros((4, 2), bool)
    with pytest.raises(ValueError, match="same time-major shape"):
        td_lambda(x, x[:3], flags, flags, 0.9, 0.9)
    with pytest.raises(ValueError, match="same time-major shape"):
        gae(x, x, x, flags, flags[:, :1], 0.9, 0.9)
    with pytest.raises(ValueError, match="time axis"):
        td_lambda(x[:0], x[:0], flags[:0], flags[:0], 0.9, 0.9)
    for n in (0, 2.0, True):
        with pytest.raises(ValueError, match="n must be"):
            nstep_returns(x, x, flags, flags, 0.9, n)


# --------------------------------------------------------------------------------------------
# Q(lambda) (PQN's targets)
# --------------------------------------------------------------------------------------------


def ref_q_lambda(rewards, next_q, terminated, truncated, *, gamma, lam):
    """``G_t = r_t + gamma (1 - term_t) [(1 - lam) max_a Q(s'_t, a) + lam G_{t+1}]``, the bracket
    being ``max_a Q(s'_t, a)`` where t's episode or the rollout ends; a loop over every env of a
    ``(T, ...)`` batch, ``next_q`` with a trailing axis of actions (float64)."""
    rewards, next_q = np.asarray(rewards, np.float64), np.asarray(next_q, np.float64)
    out, T = np.zeros(rewards.shape), rewards.shape[0]
    for env in np.ndindex(rewards.shape[1:]):
        for t in reversed(range(T)):
            at = (t, *env)
            bootstrap = max(next_q[at])  # at a truncation: the final observation's values
            if terminated[at] or truncated[at] or t == T - 1:
                bracket = bootstrap
            else:
                bracket = (1 - lam) * bootstrap + lam * out[(t + 1, *env)]
            out[at] = rewards[at] + (0.0 if terminated[at] else gamma * bracket)
    return out


def q_batch(rng, shape, actions=3, **kwargs):
    d = make_batch(rng, shape, **kwargs)
    return dict(rewards=d["rewards"], next_q=rng.normal(size=(*shape, actions)).astype(np.float32),
                terminated=d["terminated"], truncated=d["truncated"])


def _q_args(d):
    return d["rewards"], d["next_q"], d["terminated"], d["truncated"]


def test_q_lambda_hand_computed():
    # T = 4, gamma = lam = 0.5, termination at t=1, truncation at t=2 (its final observation's
    # best value 6, not the reset state's); max Q(s') = [1, 9, 6, 4] as HAND's next_values.
    next_q = np.float32([[1, -3], [9, 2], [-1, 6], [4, 4]])
    d = dict(rewards=HAND["rewards"], next_q=next_q, terminated=HAND["terminated"], truncated=HAND["truncated"])
    for got in (q_lambda(*_q_args(d), 0.5, 0.5), ref_q_lambda(*_q_args(d), gamma=0.5, lam=0.5)):
        np.testing.assert_allclose(np.asarray(got), HAND_TD, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("shape", [(37, 4), (23, 3, 2), (6, 1)], ids=["T,N", "T,N,K", "short"])
def test_q_lambda_matches_reference_with_terminations_and_truncations(shape):
    rng = np.random.default_rng(7)
    compiled = jax.jit(q_lambda)  # one program per shape: gamma and lam are traced
    for gamma, lam, p in [(0.99, 0.95, 0.1), (0.9, 0.5, 0.3), (0.97, 1.0, 0.05), (0.9, 0.0, 0.2)]:
        d = q_batch(rng, shape, p_term=p, p_trunc=p)
        assert d["terminated"].any() and d["truncated"].any() or shape == (6, 1)
        got = compiled(*_q_args(d), gamma, lam)
        want = ref_q_lambda(*_q_args(d), gamma=gamma, lam=lam)
        assert got.shape == shape
        np.testing.assert_allclose(np.asarray(got), want, rtol=RTOL, atol=ATOL, err_msg=f"{gamma} {lam}")


@pytest.mark.parametrize("flag,should_change", [("truncated", True), ("terminated", False)])
def test_q_lambda_bootstraps_from_the_final_observation_only_at_truncations(flag, should_change):
    d = q_batch(np.random.default_rng(8), (5, 1), p_term=0.0, p_trunc=0.0)
    d[flag][2] = True
    before = np.asarray(q_lambda(*_q_args(d), 0.9, 0.8))
    d["next_q"][2, 0] += 100.0  # every action's value of step 2's final observation
    after = np.asarray(q_lambda(*_q_args(d), 0.9, 0.8))
    changed = ~np.isclose(before, after)[:, 0]
    if should_change:
        assert changed[:3].all() and not changed[3:].any()  # t = 0..2 bootstrap through it
    else:
        assert not changed.any()
    d["rewards"][3:] += 10.0  # the next episode never leaks into this one
    np.testing.assert_array_equal(np.asarray(q_lambda(*_q_args(d), 0.9, 0.8))[:3], after[:3])


def test_q_lambda_is_td_lambda_on_max_q_and_validates_shapes():
    d = q_batch(np.random.default_rng(9), (12, 3))
    on_max_q = td_lambda(d["rewards"], d["next_q"].max(-1), d["terminated"], d["truncated"], 0.9, 0.7)
    np.testing.assert_allclose(np.asarray(jax.jit(q_lambda)(*_q_args(d), 0.9, 0.7)), np.asarray(on_max_q),
                               rtol=RTOL, atol=ATOL)
    for bad in (d["next_q"][..., 0], d["next_q"][:, :2]):
        with pytest.raises(ValueError, match="next_q_values must be shaped like rewards"):
            q_lambda(d["rewards"], bad, d["terminated"], d["truncated"], 0.9, 0.7)


# --------------------------------------------------------------------------------------------
# V-trace
# --------------------------------------------------------------------------------------------


@_columnwise
def ref_vtrace(rewards, values, next_values, terminated, truncated, log_rhos, *, gamma, lam, rho_clip,
               c_clip, pg_rho_clip):
    """Espeholt et al. 2018, eq. 1, as a sum: ``vs_s = V(x_s) + sum_t gamma^(t-s) (prod_{i<t} c_i) delta_t``
    over the rest of s's episode inside the rollout; the advantage bootstraps from the next
    state's ``vs`` inside an episode and from ``next_values`` where it or the rollout ends."""
    T = len(rewards)
    ratio = np.exp(log_rhos)
    delta = np.minimum(rho_clip, ratio) * (rewards + gamma * (1 - terminated) * next_values - values)
    c = lam * np.minimum(c_clip, ratio)
    vs = np.zeros(T)
    for s in range(T):
        total, weight, t = 0.0, 1.0, s
        while True:
            total += weight * delta[t]
            if terminated[t] or truncated[t] or t == T - 1:
                break
            weight *= gamma * c[t]
            t += 1
        vs[s] = values[s] + total
    adv = np.zeros(T)
    for s in range(T):
        inside = not (terminated[s] or truncated[s]) and s < T - 1
        next_vs = vs[s + 1] if inside else next_values[s]
        adv[s] = min(pg_rho_clip, ratio[s]) * (rewards[s] + gamma * (1 - terminated[s]) * next_vs - values[s])
    return vs, adv


VTRACE_SETTINGS = [  # gamma, lam, rho_clip, c_clip, pg_rho_clip
    dict(gamma=0.99, lam=1.0, rho_clip=1.0, c_clip=1.0, pg_rho_clip=1.0),
    dict(gamma=0.9, lam=0.8, rho_clip=2.0, c_clip=0.5, pg_rho_clip=1.5),
    dict(gamma=0.5, lam=0.0, rho_clip=1.0, c_clip=1.0, pg_rho_clip=1.0),
    dict(gamma=1.0, lam=0.95, rho_clip=np.inf, c_clip=np.inf, pg_rho_clip=np.inf),
]


def with_log_rhos(d, rng, scale=0.7):
    return {**d, "log_rhos": (scale * rng.normal(size=d["rewards"].shape)).astype(np.float32)}


def vtrace_args(d):
    return (d["rewards"], d["values"], d["next_values"], d["terminated"], d["truncated"], d["log_rhos"])


def test_vtrace_hand_computed():
    # T = 3, gamma = 0.5, lam = 1, clips 1; rhos = [2, 0.5, 1]; truncation at t = 1 (its final
    # observation's value 8 is not the next episode's first value 3)
    d = {**seq([1, 2, 4], [1, 2, 3], [2, 8, 4], [0, 0, 0], [0, 1, 0]), "log_rhos": np.log([2.0, 0.5, 1.0])}
    # rho = c = [1, .5, 1]; delta = [1 + 1 - 1, .5 * (2 + 4 - 2), 4 + 2 - 3] = [1, 2, 3]
    # vs - v = [1 + .5 * 1 * 2, 2 (truncated: trace cut), 3] = [2, 2, 3]; vs = [3, 4, 6]
    # adv = rho_pg * (r + .5 * next_vs - v), next_vs = [2 + 2, 8 (truncated), 4 (rollout end)]:
    #     = [1 + 2 - 1, .5 * (2 + 4 - 2), 4 + 2 - 3] = [2, 2, 3]
    for vs, adv in (vtrace(*vtrace_args(d), 0.5), ref_vtrace(*vtrace_args(d), gamma=0.5, lam=1.0, rho_clip=1.0,
                                                             c_clip=1.0, pg_rho_clip=1.0)):
        np.testing.assert_allclose(np.asarray(vs), [3.0, 4.0, 6.0], rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(np.asarray(adv), [2.0, 2.0, 3.0], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("shape", [(37, 4), (23, 3, 2)], ids=["T,N", "T,N,K"])
@pytest.mark.parametrize("settings", VTRACE_SETTINGS, ids=lambda s: "g{gamma}-l{lam}-r{rho_clip}-c{c_clip}".format(**s))
def test_vtrace_matches_reference_with_terminations_and_truncations(shape, settings):
    rng = np.random.default_rng(7)
    d = with_log_rhos(make_batch(rng, shape, p_term=0.1, p_trunc=0.1, consistent=True), rng)
    assert d["terminated"][1:-1].any() and d["truncated"][1:-1].any()
    got = vtrace(*vtrace_args(d), **settings)
    for g, w, name in zip(got, ref_vtrace(*vtrace_args(d), **settings), ("vs", "advantages")):
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-4, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("lam", [1.0, 0.9, 0.0])
def test_vtrace_on_policy_is_gae(lam):
    d = make_batch(np.random.default_rng(8), (29, 3), consistent=True)
    on_policy = {**d, "log_rhos": np.zeros_like(d["rewards"])}
    vs, adv = vtrace(*vtrace_args(on_policy), 0.97, lam)
    gae_adv, gae_ret = gae(d["rewards"], d["values"], d["next_values"], d["terminated"], d["truncated"], 0.97, lam)
    np.testing.assert_allclose(np.asarray(vs), np.asarray(gae_ret), rtol=RTOL, atol=ATOL)
    if lam == 1.0:
        np.testing.assert_allclose(np.asarray(adv), np.asarray(gae_adv), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("lam", [1.0, 0.8])
def test_vtrace_matches_rlax_without_truncations(lam):
    rlax = pytest.importorskip("rlax")
    rng = np.random.default_rng(9)
    d = with_log_rhos(make_batch(rng, (31, 4), p_term=0.1, p_trunc=0.0, consistent=True), rng)
    assert d["terminated"][1:-1].any()
    discount = (0.95 * (1 - d["terminated"])).astype(np.float32)
    vs, adv = vtrace(*vtrace_args(d), 0.95, lam, rho_clip=1.5)
    theirs = jax.vmap(lambda v, nv, r, disc, rho: rlax.vtrace_td_error_and_advantage(
        v, nv, r, disc, rho, lambda_=lam, clip_rho_threshold=1.5), in_axes=1, out_axes=1)(
        d["values"], d["next_values"], d["rewards"], discount, np.exp(d["log_rhos"]))
    np.testing.assert_allclose(np.asarray(vs), np.asarray(theirs.errors + d["values"]), rtol=1e-4, atol=1e-4)
    if lam == 1.0:  # rlax's advantage mixes v_{t+1} in by 1 - lam; the paper's (and ours) does not
        np.testing.assert_allclose(np.asarray(adv), np.asarray(theirs.pg_advantage), rtol=1e-4, atol=1e-4)


def test_vtrace_jit_vmap_and_validation():
    d = with_log_rhos(make_batch(np.random.default_rng(10), (12, 3)), np.random.default_rng(11))
    gammas = jnp.array([0.0, 0.9, 0.99], jnp.float32)
    batched = jax.jit(jax.vmap(lambda g: vtrace(*vtrace_args(d), g, 0.9, rho_clip=2.0)))(gammas)
    for i, g in enumerate(gammas.tolist()):
        for b, one in zip(batched, vtrace(*vtrace_args(d), g, 0.9, rho_clip=2.0)):
            np.testing.assert_allclose(np.asarray(b[i]), np.asarray(one), rtol=RTOL, atol=ATOL)
    with pytest.raises(ValueError, match="same time-major shape"):
        vtrace(*vtrace_args(d)[:-1], d["log_rhos"][:, :2], 0.9)


def _episodes(rng: np.random.Generator, steps: int, envs: int, end_rate: float):
    """A rollout's obs and next_obs (T, N, 3) as an auto-reset env gives them: next_obs[t] is
    obs[t + 1] inside an episode and a final observation (not the next obs) where one ended."""
    obs = rng.normal(size=(steps + 1, envs, 3)).astype(np.float32)
    terminated = rng.random((steps, envs)) < end_rate
    truncated = rng.random((steps, envs)) < end_rate
    final = rng.normal(size=(steps, envs, 3)).astype(np.float32)
    ended = (terminated | truncated)[..., None]
    return obs[:-1], np.where(ended, final, obs[1:]), terminated, truncated


@pytest.mark.parametrize("end_rate, chunk", [(0.0, None), (0.05, None), (0.6, None), (0.3, 1), (0.3, 7)])
def test_next_values_equal_the_value_of_every_next_observation(end_rate, chunk):
    """Only final observations of truncated episodes and the last step are evaluated, yet the
    result is the value function over all next observations (terminated steps excepted, whose
    next value the estimators multiply by zero); many truncations take several chunks."""
    from jaxrl.returns import next_values

    rng = np.random.default_rng(int(end_rate * 100) + (chunk or 0))
    obs, next_obs, terminated, truncated = _episodes(rng, 9, 5, end_rate)
    weights = jnp.asarray([0.5, -1.0, 2.0])
    calls = []

    def value_fn(o):
        calls.append(o.shape[0])
        return jnp.tanh(o @ weights)

    values = value_fn(jnp.asarray(obs))
    got = jax.jit(next_values, static_argnums=(3, 5))(values, jnp.asarray(next_obs), truncated, value_fn,
                                                      terminated, chunk)
    want = np.tanh(next_obs @ np.asarray(weights))
    keep = ~terminated
    np.testing.assert_allclose(np.asarray(got)[keep], want[keep], rtol=1e-6, atol=1e-6)
    assert np.isfinite(np.asarray(got)).all()  # terminated steps: the next step's value, multiplied by zero
    assert sorted(calls[1:]) == sorted([5, chunk or 5])  # last step, then one chunk of rows in the loop
    # without terminated, every truncated step bootstraps from the value function
    got = next_values(values, jnp.asarray(next_obs), truncated, value_fn, chunk=chunk)
    np.testing.assert_allclose(np.asarray(got)[~terminated | truncated], want[~terminated | truncated],
                               rtol=1e-6, atol=1e-6)


def test_next_values_under_vmap_and_validation():
    from jaxrl.returns import next_values

    rng = np.random.default_rng(3)
    batch = [_episodes(rng, 6, 4, rate) for rate in (0.0, 0.5, 0.9)]  # different numbers of chunks
    obs, next_obs, terminated, truncated = (np.stack(x) for x in zip(*batch))
    value_fn = lambda o: o.sum(-1) ** 2  # noqa: E731
    values = value_fn(jnp.asarray(obs))
    got = jax.jit(jax.vmap(lambda v, n, tr, te: next_values(v, n, tr, value_fn, te, chunk=2)))(
        values, jnp.asarray(next_obs), truncated, terminated)
    want = np.asarray(value_fn(jnp.asarray(next_obs)))
    np.testing.assert_allclose(np.asarray(got)[~terminated], want[~terminated], rtol=1e-5)
    q_fn = lambda o: jnp.stack([o.sum(-1), o.max(-1)], -1)  # noqa: E731 (per-action values: a trailing axis)
    got = next_values(q_fn(jnp.asarray(obs[1])), jnp.asarray(next_obs[1]), truncated[1], q_fn, terminated[1], 3)
    want = np.asarray(q_fn(jnp.asarray(next_obs[1])))
    np.testing.assert_allclose(np.asarray(got)[~terminated[1]], want[~terminated[1]], rtol=1e-5)
    with pytest.raises(ValueError, match=r"values must be \(T, N, ...\)"):
        next_values(values[0, 0], jnp.asarray(next_obs[0]), truncated[0], value_fn)
