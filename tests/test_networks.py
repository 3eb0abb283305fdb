"""networks: every dense kernel is gain x a random orthogonal matrix, drawn in one random call
(ensembles included); the off-policy critics and actors: shapes, bounds and log-probabilities."""

import re

import distrax

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl import networks

OBS = jnp.zeros((1, 5))

# jitted, the tests compile each network once instead of every operation on its own (4x faster)
init = jax.jit(networks.init, static_argnums=0)


def apply(net, *args):
    return jax.jit(net.apply)(*args)


def actor_critic(action_dim=3, hidden=(64, 8)):
    return networks.ActorCritic(action_dim, True, hidden, "tanh", (5,))


def kernels(params):
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {jax.tree_util.keystr(path): np.asarray(x) for path, x in flat if path[-1].key == "kernel"}


def test_kernels_are_scaled_orthogonal_and_biases_zero():
    params = init(actor_critic(), jax.random.key(0), OBS)
    gains = {"actor_out": 0.01, "critic_out": 1.0}
    found = kernels(params)
    assert len(found) == 6  # wide (5, 64), tall (64, 8) and (8, 3), and (8, 1) kernels
    for name, k in found.items():
        gain = next((g for layer, g in gains.items() if layer in name), np.sqrt(2))
        n_in, n_out = k.shape
        gram = k.T @ k if n_in >= n_out else k @ k.T  # the orthonormal side
        expected = gain**2 * np.eye(min(n_in, n_out))
        np.testing.assert_allclose(gram, expected, atol=1e-5 * gain**2, err_msg=name)
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        if path[-1].key == "bias":
            assert not np.any(np.asarray(x))
    # actor and critic torsos have the same shapes but get different matrices
    assert not np.allclose(found["['params']['actor']['Dense_0']['kernel']"],
                           found["['params']['critic']['Dense_0']['kernel']"])


def test_deterministic_per_key():
    a, b, c = (init(actor_critic(), jax.random.key(k), OBS) for k in (1, 1, 2))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert not np.allclose(kernels(a)["['params']['actor']['Dense_1']['kernel']"],
                           kernels(c)["['params']['actor']['Dense_1']['kernel']"])


def test_haar_distributed_like_flax_orthogonal():
    """Signs fixed from R's diagonal: without that, QR's first column is biased (mean of the
    corner entry about -0.28 for 8x8 matrices instead of 0)."""
    net = networks.QNetwork(8, (8,), "relu", obs_shape=(8,))
    draw = jax.jit(jax.vmap(lambda k: networks.init(net, k, jnp.zeros((1, 8)))["params"]))
    k = np.asarray(draw(jax.random.split(jax.random.key(3), 400))["MLP_0"]["Dense_0"]["kernel"]) / np.sqrt(2)
    assert abs(k[:, 0, 0].mean()) < 0.08 and abs(k[:, 7, 7].mean()) < 0.08
    np.testing.assert_allclose((k**2).mean(), 1 / 8, rtol=0.05)


def test_plain_module_init_still_works():
    """Without networks.init the kernels come boxed, from flax's own per-layer draw."""
    net = actor_critic()
    boxed = jax.jit(net.init)(jax.random.key(0), OBS)
    unboxed = nn.meta.unbox(boxed)
    x = jnp.ones((2, 5))
    assert isinstance(boxed["params"]["actor_out"]["kernel"], networks.Orthogonal)
    np.testing.assert_array_equal(apply(net, boxed, x)[1], apply(net, unboxed, x)[1])
    k = np.asarray(unboxed["params"]["critic"]["Dense_1"]["kernel"])
    np.testing.assert_allclose(k.T @ k, 2 * np.eye(8), atol=1e-5)


def test_fewer_compiled_kernels_than_per_layer_draws():
    """The reason for networks.init: XLA compiles each random call into kernels of its own
    (measured: 33 fused kernels here against 129 for flax's per-layer draws)."""
    def kernels_compiled(init):
        hlo = jax.jit(init).lower(jax.random.key(0)).compile().as_text()
        return len(re.findall(r"= \S+ fusion\(", hlo))

    net = actor_critic(hidden=(64, 64, 64))
    shared = kernels_compiled(lambda k: networks.init(net, k, OBS))
    assert 2 * shared < kernels_compiled(lambda k: net.init(k, OBS))


def compiled_kernels(init):
    """Fused kernels plus library calls (the QRs) in the compiled program of ``init(key)``."""
    hlo = jax.jit(init).lower(jax.random.key(0)).compile().as_text()
    return len(re.findall(r"= \S+ fusion\(", hlo)) + len(re.findall(r"custom-call\(", hlo))


# --- MLP -------------------------------------------------------------------------------------


def test_mlp_layer_norm_after_dense_before_activation():
    net = networks.MLP((6, 4), "tanh", (5,), layer_norm=True)
    x = jax.random.normal(jax.random.key(1), (3, 5))
    params = init(net, jax.random.key(0), x)["params"]
    # non-default scale and bias so the test sees where they act
    params["LayerNorm_0"] = {"scale": jnp.arange(1.0, 7.0), "bias": jnp.full(6, 0.3)}
    h = np.asarray(x, np.float64)
    for i in range(2):
        dense, norm = params[f"Dense_{i}"], params[f"LayerNorm_{i}"]
        h = h @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"])
        h = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-6)
        h = np.tanh(h * np.asarray(norm["scale"]) + np.asarray(norm["bias"]))
    np.testing.assert_allclose(apply(net, {"params": params}, x), h, atol=1e-5)


def test_layer_norm_off_by_default_keeps_existing_layouts():
    ac = init(actor_critic(), jax.random.key(0), OBS)["params"]
    assert set(ac) == {"actor", "actor_out", "critic", "critic_out"}
    assert set(ac["actor"]) == {"Dense_0", "Dense_1"}
    q = init(networks.QNetwork(3, (8, 8), obs_shape=(5,)), jax.random.key(0), OBS)["params"]
    assert set(q) == {"MLP_0", "Dense_0"} and set(q["MLP_0"]) == {"Dense_0", "Dense_1"}


# --- ensembles -------------------------------------------------------------------------------


def test_member_axes_round_trip():
    box = networks.Orthogonal(jnp.zeros((2, 3, 4, 5)), 1.0)
    lifted = box.add_axis(0, {}).add_axis(2, {})  # the second lift lands between the first and the kernel
    assert lifted.member_axes == (0, 2)
    assert lifted.remove_axis(2, {}).remove_axis(0, {}) == box
    assert lifted.remove_axis(0, {}).member_axes == (1,)
    assert lifted.matrices() == (2 * 4, 3, 5)
    with pytest.raises(ValueError, match="not a member axis"):
        lifted.remove_axis(1, {})


def critic_ensemble(num_critics=4, **kw):
    return networks.QCriticEnsemble((16, 8), num_critics, obs_shape=(3,), **kw)


S, A = jnp.zeros((1, 3)), jnp.zeros((1, 2))


def assert_scaled_orthogonal(k, gain, err_msg=""):
    n_in, n_out = k.shape
    gram = k.T @ k if n_in >= n_out else k @ k.T
    np.testing.assert_allclose(gram, gain**2 * np.eye(min(n_in, n_out)), atol=1e-5 * gain**2, err_msg=err_msg)


def test_ensemble_members_are_independent_orthogonal():
    params = init(critic_ensemble(), jax.random.key(0), S, A)
    found = kernels(params)
    assert {k.shape for k in found.values()} == {(4, 5, 16), (4, 16, 8), (4, 8, 1)}
    for name, k in found.items():
        gain = 1.0 if "['critics']['Dense_0']" in name else np.sqrt(2)
        for member in k:
            assert_scaled_orthogonal(member, gain, name)
        for i in range(4):
            for j in range(i):
                assert not np.allclose(k[i], k[j]), name
    again, other = (init(critic_ensemble(), jax.random.key(k), S, A) for k in (0, 1))
    jax.tree.map(np.testing.assert_array_equal, params, again)
    assert not np.allclose(kernels(other)["['params']['critics']['MLP_0']['Dense_1']['kernel']"],
                           found["['params']['critics']['MLP_0']['Dense_1']['kernel']"])


def test_nested_and_middle_member_axes():
    """Members of members, and a member axis inside the kernel: each matrix drawn on its own."""
    nested = networks.ensemble(networks.ensemble(networks.QCritic, 2), 3)((4,), obs_shape=(3,))
    k = kernels(init(nested, jax.random.key(0), S, A))["['params']['MLP_0']['Dense_0']['kernel']"]
    assert k.shape == (3, 2, 5, 4)
    matrices = k.reshape(6, 5, 4)
    for m in matrices:
        assert_scaled_orthogonal(m, np.sqrt(2))
    assert len({m.tobytes() for m in matrices}) == 6

    class Middle(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.vmap(lambda mod, y: networks.dense(6)(y), variable_axes={"params": 1},
                           split_rngs={"params": True}, in_axes=None, out_axes=0, axis_size=3)(self, x)

    k = np.asarray(init(Middle(), jax.random.key(0), jnp.zeros((1, 4)))["params"]["Dense_0"]["kernel"])
    assert k.shape == (4, 3, 6)
    for i in range(3):
        assert_scaled_orthogonal(k[:, i, :], np.sqrt(2))


def test_ensemble_forward_equals_each_member_alone():
    ensemble = critic_ensemble(num_quantiles=3, layer_norm=True)
    single = networks.QCritic((16, 8), num_quantiles=3, layer_norm=True, obs_shape=(3,))
    s, a = jax.random.normal(jax.random.key(1), (7, 3)), jax.random.normal(jax.random.key(2), (7, 2))
    params = init(ensemble, jax.random.key(0), s, a)
    out = apply(ensemble, params, s, a)
    assert out.shape == (4, 7, 3)
    apply_single = jax.jit(single.apply)
    for i in range(4):
        member = jax.tree.map(lambda x: x[i], params["params"]["critics"])
        np.testing.assert_allclose(out[i], apply_single({"params": member}, s, a), rtol=1e-5, atol=1e-6)
    assert not np.allclose(out[0], out[1])


def test_ensemble_plain_module_init_and_boxed_apply():
    net = critic_ensemble(3)
    boxed = jax.jit(net.init)(jax.random.key(0), S, A)
    box = boxed["params"]["critics"]["MLP_0"]["Dense_0"]["kernel"]
    assert isinstance(box, networks.Orthogonal) and box.member_axes == (0,) and box.value.shape == (3, 5, 16)
    s, a = jnp.ones((2, 3)), jnp.ones((2, 2))
    np.testing.assert_array_equal(apply(net, boxed, s, a), apply(net, nn.meta.unbox(boxed), s, a))


def test_ensemble_init_compiles_to_as_many_kernels_for_2_and_10_members():
    """All members' matrices come from the one shared draw and the same batched QRs: an
    ensemble compiles to about as many kernels as one critic (measured 35 against 33)."""
    counts = [compiled_kernels(lambda k, n=n: networks.init(critic_ensemble(n), k, S, A)) for n in (2, 10)]
    single = compiled_kernels(lambda k: networks.init(networks.QCritic((16, 8), obs_shape=(3,)), k, S, A))
    assert counts[0] == counts[1] < 1.5 * single, (counts, single)


def test_ensemble_sizes_checked():
    with pytest.raises(ValueError, match="num_critics"):
        networks.QCriticEnsemble((8,), 0)
    with pytest.raises(ValueError, match="num_quantiles"):
        networks.QCritic((8,), num_quantiles=0)
    with pytest.raises(ValueError, match="members"):
        networks.ensemble(networks.QCritic, 0)


# --- critics ---------------------------------------------------------------------------------


def test_q_critic_shapes():  # a single critic's quantiles: test_ensemble_forward_equals_each_member_alone
    s, a = jnp.zeros((6, 2, 3)), jnp.zeros((6, 4))
    for net, shape in [(networks.QCritic((8,), obs_shape=(2, 3)), (6,)),
                       (networks.QCriticEnsemble((8,), 3, obs_shape=(2, 3)), (3, 6)),
                       (networks.QCriticEnsemble((8,), 3, num_quantiles=5, obs_shape=(2, 3)), (3, 6, 5))]:
        params = init(net, jax.random.key(0), s[:1], a[:1])
        assert apply(net, params, s, a).shape == shape
    with pytest.raises(ValueError, match="same batch axes"):
        apply(net, params, s, a[:5])


def test_q_critic_depends_on_observation_and_action():
    net = networks.QCritic((16,), obs_shape=(3,))
    params = init(net, jax.random.key(0), S, A)
    s, a = jax.random.normal(jax.random.key(1), (2, 3)), jax.random.normal(jax.random.key(2), (2, 2))
    q = apply(net, params, s, a)
    assert not np.allclose(q, apply(net, params, s, a[::-1]))
    assert not np.allclose(q, apply(net, params, s[::-1], a))


def test_discrete_critic_ensemble():
    net = networks.DiscreteCriticEnsemble(4, (16,), 3, layer_norm=True, obs_shape=(3,))
    params = init(net, jax.random.key(0), S)
    q = apply(net, params, jnp.ones((5, 3)))
    assert q.shape == (3, 5, 4)
    assert not np.allclose(q[0], q[1])
    assert params["params"]["critics"]["MLP_0"]["Dense_0"]["kernel"].shape == (3, 3, 16)


# --- actors ----------------------------------------------------------------------------------

LOW, HIGH = (-2.0, 0.0, -1.0), (1.0, 5.0, 1.0)


@pytest.mark.parametrize("low, high, match", [
    ((-1.0, -np.inf), (1.0, 1.0), "finite"),
    ((-1.0, -1.0), (1.0, np.nan), "finite"),
    ((-1.0, 2.0), (1.0, 2.0), "low < high"),
    (-1.0, 1.0, "one value per action dimension"),
    (np.zeros((2, 2)), np.ones((2, 2)), "one value per action dimension"),
    ((-1.0, -1.0, -1.0), (1.0, 1.0), "do not broadcast"),
])
def test_action_bounds_checked_at_construction(low, high, match):
    for actor in (networks.DeterministicActor, networks.TanhGaussianActor):
        with pytest.raises(ValueError, match=match):
            actor(low, high, (8,))


def test_action_bounds_broadcast_and_stored_as_floats():
    actor = networks.DeterministicActor(np.float32(-1), np.array([1.0, 2.0]), (8,))
    assert actor.action_low == (-1.0, -1.0) and actor.action_high == (1.0, 2.0)
    hash(actor)


def scaled(params, factor, layer):
    """``params`` with one layer's kernel multiplied (to push its outputs far out)."""
    params = jax.tree.map(lambda x: x, params)
    params["params"][layer]["kernel"] = params["params"][layer]["kernel"] * factor
    return params


def test_deterministic_actor_within_bounds():
    net = networks.DeterministicActor(LOW, HIGH, (32,), obs_shape=(4,))
    obs = 3 * jax.random.normal(jax.random.key(1), (500, 4))
    params = init(net, jax.random.key(0), obs[:1])
    center = (np.array(LOW) + np.array(HIGH)) / 2
    np.testing.assert_allclose(apply(net, params, obs), np.broadcast_to(center, (500, 3)), atol=0.2)  # gain 0.01
    actions = np.asarray(apply(net, scaled(params, 1e4, "Dense_0"), obs))  # tanh saturated
    assert actions.shape == (500, 3)
    assert np.all(actions >= np.array(LOW, np.float32)) and np.all(actions <= np.array(HIGH, np.float32))
    np.testing.assert_allclose(actions.min(0), LOW, atol=1e-5)
    np.testing.assert_allclose(actions.max(0), HIGH, atol=1e-5)


def reference_log_prob(u, loc, log_std, low, high, plain=True):
    """log p(a), a = c + h tanh(u), in float64: Gaussian log-density of u minus sum log|da/du|,
    with da/du = h (1 - tanh(u)^2) computed plainly (-inf once tanh(u)^2 rounds to 1), or as
    h / cosh(u)^2 (finite for all |u| < 700)."""
    u, loc, log_std = (np.asarray(x, np.float64) for x in (u, loc, log_std))
    half = (np.asarray(high, np.float64) - np.asarray(low, np.float64)) / 2
    gaussian = -0.5 * ((u - loc) / np.exp(log_std)) ** 2 - log_std - 0.5 * np.log(2 * np.pi)
    with np.errstate(divide="ignore"):
        log_dtanh = np.log(1 - np.tanh(u) ** 2) if plain else -2 * np.log(np.cosh(u))
    return (gaussian - np.log(half) - log_dtanh).sum(-1)


def extreme_tanh_gaussian():
    """A batch of 24 distributions over 3 action dims, half with means up to |20| (tanh saturated
    in float32 and, past ~19, in float64 too), and log-stds across the actor's range."""
    loc = np.random.default_rng(0).choice([-20.0, -8.0, -3.0, -0.5, 0.0, 1.0, 6.0, 20.0], (24, 3))
    loc[:2] = [[20.0, -20.0, 20.0], [-20.0, 20.0, 0.0]]
    loc[12:] = np.random.default_rng(1).uniform(-1.5, 1.5, (12, 3))  # mostly unsaturated rows
    log_std = np.resize(np.array([-5.0, -1.0, 0.0, 2.0]), loc.shape)
    return networks.TanhGaussian(jnp.asarray(loc, jnp.float32), jnp.asarray(log_std, jnp.float32), LOW, HIGH)


def test_tanh_gaussian_log_prob_matches_reference():
    dist = extreme_tanh_gaussian()
    key = jax.random.key(7)
    actions, log_prob = dist.sample_and_log_prob(seed=key, sample_shape=(200,))
    assert actions.shape == (200, 24, 3) and log_prob.shape == (200, 24)
    # the documented recipe: u = loc + std * standard normal, a = squash(u)
    u = dist.loc + jnp.exp(dist.log_std) * jax.random.normal(key, (200, 24, 3))
    np.testing.assert_array_equal(actions, dist.squash(u))
    np.testing.assert_allclose(log_prob, dist.log_prob_pre_squash(u), rtol=1e-6, atol=1e-5)
    log_prob = np.asarray(log_prob)
    assert np.all(np.isfinite(log_prob))
    # The plain reference: -inf once tanh(u)^2 rounds to 1 in float64 (|u| > ~19), and
    # inaccurate a little before (1 - tanh^2 cancels): compared where it keeps 10 digits.
    plain = reference_log_prob(u, dist.loc, dist.log_std, LOW, HIGH)
    accurate = (1 - np.tanh(np.asarray(u, np.float64)) ** 2 > 1e-6).all(-1)
    assert 0.2 < accurate.mean() < 0.8 and np.all(np.isfinite(plain[accurate]))
    np.testing.assert_allclose(log_prob[accurate], plain[accurate], rtol=1e-5, atol=2e-3)
    saturated = np.isclose(np.abs(np.tanh(np.asarray(u, np.float32))), 1).any(-1)
    assert saturated.mean() > 0.1
    np.testing.assert_allclose(log_prob, reference_log_prob(u, dist.loc, dist.log_std, LOW, HIGH, plain=False),
                               rtol=1e-5, atol=2e-3)
    assert np.all(actions >= np.array(LOW, np.float32)) and np.all(actions <= np.array(HIGH, np.float32))


def test_tanh_gaussian_mode_and_log_prob_of_given_actions():
    dist = extreme_tanh_gaussian()
    center, half = (np.array(HIGH) + np.array(LOW)) / 2, (np.array(HIGH) - np.array(LOW)) / 2
    np.testing.assert_allclose(dist.mode(), center + half * np.tanh(np.asarray(dist.loc)), atol=1e-5)
    actions, log_prob = dist.sample_and_log_prob(seed=jax.random.key(3), sample_shape=(100,))
    recomputed = np.asarray(dist.log_prob(actions))
    assert np.all(np.isfinite(recomputed))  # including actions exactly at the bounds
    inner = (np.abs((np.asarray(actions) - center) / half) < 0.99).all(-1)  # |u| < 2.6
    assert inner.mean() > 0.05
    np.testing.assert_allclose(recomputed[inner], np.asarray(log_prob)[inner], rtol=1e-4, atol=1e-2)
    at_bounds = dist.log_prob(jnp.broadcast_to(jnp.array([LOW, HIGH]), (12, 2, 3)).reshape(24, 3))
    assert np.all(np.isfinite(at_bounds))


def test_tanh_gaussian_jit_and_vmap():
    dist = extreme_tanh_gaussian()
    sample = jax.jit(lambda d, k: d.sample_and_log_prob(seed=k))(dist, jax.random.key(0))
    assert sample[0].shape == (24, 3) and sample[1].shape == (24,)
    per_row = jax.vmap(lambda loc, ls: networks.TanhGaussian(loc, ls, LOW, HIGH).mode())(dist.loc, dist.log_std)
    np.testing.assert_array_equal(per_row, dist.mode())

    def sac_like_loss(loc, log_std):  # gradients through saturated samples stay finite
        a, lp = networks.TanhGaussian(loc, log_std, LOW, HIGH).sample_and_log_prob(seed=jax.random.key(1))
        return a.sum() + lp.sum()

    grads = jax.jit(jax.grad(sac_like_loss, argnums=(0, 1)))(dist.loc, dist.log_std)
    assert all(np.all(np.isfinite(g)) for g in grads)


def test_tanh_gaussian_actor():
    net = networks.TanhGaussianActor(LOW, HIGH, (32,), obs_shape=(4,))
    obs = jax.random.normal(jax.random.key(1), (50, 4))
    params = init(net, jax.random.key(0), obs[:1])
    dist = apply(net, params, obs)
    assert isinstance(dist, networks.TanhGaussian) and isinstance(dist, distrax.Distribution)
    assert dist.batch_shape == (50,) and dist.event_shape == (3,)
    np.testing.assert_allclose(dist.log_std, 0, atol=0.1)  # gain 0.01 heads: std about 1, mean about 0
    a, lp = dist.sample_and_log_prob(seed=jax.random.key(2))
    assert a.shape == (50, 3) and lp.shape == (50,)
    log_std = apply(net, scaled(params, 1e4, "log_std"), 100 * obs).log_std
    assert np.all(np.asarray(log_std) >= -5) and np.all(np.asarray(log_std) <= 2)
    assert np.isclose(np.asarray(log_std), -5).mean() > 0.1 and np.isclose(np.asarray(log_std), 2).mean() > 0.1
    wide = networks.TanhGaussianActor(LOW, HIGH, (32,), log_std_min=-20.0, obs_shape=(4,))
    assert apply(wide, scaled(params, 1e4, "log_std"), 100 * obs).log_std.min() < -5
    with pytest.raises(ValueError, match="log_std_min < log_std_max"):
        networks.TanhGaussianActor(LOW, HIGH, (8,), log_std_min=2.0, log_std_max=2.0)


def test_categorical_actor():
    net = networks.CategoricalActor(5, (16,), obs_shape=(2, 3))
    obs = jax.random.normal(jax.random.key(1), (8, 2, 3))
    params = init(net, jax.random.key(0), obs[:1])
    dist = apply(net, params, obs)
    assert isinstance(dist, distrax.Categorical) and dist.batch_shape == (8,)
    np.testing.assert_allclose(dist.probs.sum(-1), 1, rtol=1e-6)
    np.testing.assert_allclose(dist.probs, 0.2, atol=0.02)  # gain 0.01 logits: near uniform
    assert dist.sample(seed=jax.random.key(2)).shape == (8,)


# ---------------------------------------------------------------------------------------------
# Convolutional torso (config ``conv``)


def conv_reference(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, stride: int) -> np.ndarray:
    """A 'VALID' convolution of one image x (H, W, C) with kernel (k, k, C, F), by loops: the
    output is ((H - k) // stride + 1) x ((W - k) // stride + 1)."""
    (h, w, _), k = x.shape, kernel.shape[0]
    out = np.zeros(((h - k) // stride + 1, (w - k) // stride + 1, kernel.shape[-1]))
    for i, j in np.ndindex(out.shape[:2]):
        patch = x[i * stride:i * stride + k, j * stride:j * stride + k]
        out[i, j] = np.einsum("abc,abcf->f", patch, kernel) + bias
    return out


def test_conv_torso_matches_a_numpy_convolution_then_the_dense_layers():
    conv = ((4, 3, 2), (3, 2, 1))  # (features, kernel, stride): 7x6 -> 3x2 -> 2x1
    net = networks.MLP((6,), "relu", (7, 6, 2), conv=conv)
    x = jax.random.normal(jax.random.key(0), (2, 3, 7, 6, 2))  # two batch axes
    assert networks.conv_output_shape((7, 6, 2), conv) == (2, 1, 3)
    params = init(net, jax.random.key(1), x[0, :1])
    p = params["params"]
    out = np.asarray(apply(net, params, x))
    assert out.shape == (2, 3, 6)
    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    for b in np.ndindex(2, 3):
        h = relu(conv_reference(np.asarray(x[b]), np.asarray(p["Conv_0"]["kernel"]), np.asarray(p["Conv_0"]["bias"]), 2))
        h = relu(conv_reference(h, np.asarray(p["Conv_1"]["kernel"]), np.asarray(p["Conv_1"]["bias"]), 1))
        expected = relu(h.reshape(-1) @ np.asarray(p["Dense_0"]["kernel"]) + np.asarray(p["Dense_0"]["bias"]))
        np.testing.assert_allclose(out[b], expected, rtol=1e-4, atol=1e-5)
    # conv kernels are drawn with the shared orthogonal draw: as (k*k*C, F) matrices, sqrt(2)-scaled
    for name in ("Conv_0", "Conv_1"):
        k = np.asarray(p[name]["kernel"]).reshape(-1, p[name]["kernel"].shape[-1])
        np.testing.assert_allclose(k.T @ k, 2 * np.eye(k.shape[1]), atol=1e-5)
        assert not np.any(np.asarray(p[name]["bias"]))


def test_every_network_takes_the_conv_torso():
    obs, image, conv = jnp.zeros((2, 6, 6, 3)), (6, 6, 3), ((4, 3, 1),)
    action = jnp.zeros((2, 2))
    nets = {
        networks.ActorCritic(3, True, (8,), "tanh", image, conv): (obs,),
        networks.QNetwork(3, (8,), "relu", True, image, conv=conv, num_atoms=5): (obs,),
        networks.ImplicitQuantileNetwork(3, (8,), "relu", False, image, conv=conv, num_cosines=4): (obs, jnp.zeros((2, 7))),
        networks.QCriticEnsemble((8,), 2, "relu", False, None, image, conv): (obs, action),
        networks.DiscreteCriticEnsemble(3, (8,), 2, "relu", False, image, conv): (obs,),
        networks.DeterministicActor((-1, -1), (1, 1), (8,), "relu", False, image, conv): (obs,),
        networks.TanhGaussianActor((-1, -1), (1, 1), (8,), "relu", False, image, conv): (obs,),
        networks.CategoricalActor(3, (8,), "relu", False, image, conv): (obs,),
    }
    for net, inputs in nets.items():
        params = jax.eval_shape(lambda: networks.init(net, jax.random.key(0), *inputs))  # shapes only: no compile
        convs = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]
                 if any(getattr(k, "key", "").startswith("Conv_") for k in path)]
        assert convs, type(net).__name__
        jax.eval_shape(net.apply, params, *inputs)  # runs on images


@pytest.mark.parametrize("by_matmul", [True, False])
def test_convolve_by_matmul_and_by_lax_conv_match_numpy(by_matmul):
    x = np.asarray(jax.random.normal(jax.random.key(0), (2, 9, 7, 3)))
    kernel = np.asarray(jax.random.normal(jax.random.key(1), (3, 3, 3, 5)))
    got = jax.jit(networks.convolve, static_argnums=(2, 3))(x, kernel, 2, by_matmul)
    assert got.shape == (2, 4, 3, 5)
    for b in range(2):
        np.testing.assert_allclose(got[b], conv_reference(x[b], kernel, np.zeros(5), 2), rtol=1e-4, atol=1e-4)


def test_conv_needs_image_observations_its_kernels_fit():
    with pytest.raises(ValueError, match="image observations"):
        init(networks.MLP((4,), conv=((4, 3, 1),), obs_shape=(5,)), jax.random.key(0), OBS)
    with pytest.raises(ValueError, match=r"conv kernel 3 is larger than the 2x2 image it gets \(after convolutions \[\(2, 2, 4\)\]\)"):
        networks.conv_output_shape((4, 4, 1), ((4, 3, 1), (4, 3, 1)))


def test_conv_layer_norm_normalizes_each_position_over_features():
    net = networks.MLP((3,), "relu", (5, 5, 2), layer_norm=True, conv=((4, 3, 1),))
    params = init(net, jax.random.key(0), jnp.zeros((1, 5, 5, 2)))
    assert set(params["params"]) == {"Conv_0", "LayerNorm_0", "Dense_0", "LayerNorm_1"}
    assert params["params"]["LayerNorm_0"]["scale"].shape == (4,)
