"""Meta-learning by evolution strategies: the learned drift obeys mirror learning's constraints
and equals a NumPy evaluation; one generation is one program whose member fitness equals a
standalone run with that member's meta-parameters; bad arguments and a missing evosax fail
clearly before anything compiles."""

from __future__ import annotations

import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrl
from jaxrl import meta
from jaxrl.config import ConfigError
from jaxrl.metrics import final_return

# ----------------------------------------------------------------------------- the learned drift


def numpy_drift(params: dict, ratio: np.ndarray, adv: np.ndarray, progress: float) -> np.ndarray:
    """The learned drift by hand: g's value and slope at r = 1 from its derivative in closed form."""
    w1, b1, w2 = (np.asarray(params[k], np.float64) for k in ("w1", "b1", "w2"))

    def features(r):
        return np.stack([r - 1, np.log(r), adv, (r - 1) * adv, np.log(r) * adv, np.full_like(r, progress)], -1)

    def g(r):
        return np.tanh(features(r) @ w1 + b1) @ w2

    one = np.ones_like(ratio)
    d_features = np.stack([one, one, 0 * one, adv, adv, 0 * one], -1)  # d features / dr at r = 1
    slope = ((1 - np.tanh(features(one) @ w1 + b1) ** 2) * (d_features @ w1)) @ w2
    return np.maximum(g(ratio) - g(one) - slope * (ratio - 1), 0.0)


def test_learned_drift_matches_numpy():
    rng = np.random.default_rng(0)
    ratio = rng.uniform(0.3, 3.0, 256).astype(np.float32)
    adv = rng.normal(size=256).astype(np.float32)
    for seed, scale in ((0, 1.0), (1, 3.0)):
        params = meta.init_drift_params(jax.random.key(seed), hidden=8, scale=scale)
        params["b1"] = jax.random.normal(jax.random.key(seed + 10), (8,))  # nonzero biases too
        got = meta.learned_drift(params, ratio, adv, 0.4)
        np.testing.assert_allclose(got, numpy_drift(params, ratio, adv, 0.4), rtol=1e-4, atol=1e-5)
        assert (np.asarray(got) >= 0).all() and np.asarray(got).max() > 0


def test_learned_drift_is_zero_with_zero_slope_at_ratio_one():
    """Mirror learning's constraints (Lu et al. 2022): drift(1) = 0 and d drift / dr (1) = 0 for
    ANY parameters. The slope next to 1 shrinks with the distance to 1 (a drift without the slope
    correction keeps g's slope there)."""
    adv = jnp.array([-2.0, -0.5, 0.0, 0.3, 1.0, 2.5])

    @jax.jit
    def drift_and_slope(params, r):
        drift = lambda r, a: meta.learned_drift(params, r, a, 0.7)  # noqa: E731
        r = jnp.full(adv.shape, r)
        return drift(r, adv), jax.vmap(jax.grad(drift))(r, adv)

    for seed in range(4):
        params = meta.init_drift_params(jax.random.key(seed), scale=2.0)
        params["b1"] = 0.5 * jax.random.normal(jax.random.key(seed + 10), params["b1"].shape)
        at_one = drift_and_slope(params, 1.0)
        np.testing.assert_array_equal(at_one[0], 0.0)
        np.testing.assert_array_equal(at_one[1], 0.0)
        for side in (1.0, -1.0):
            (near, near_slope), (nearer, nearer_slope) = (
                np.abs(x) for x in drift_and_slope(params, 1 + side * 1e-2)), (
                np.abs(x) for x in drift_and_slope(params, 1 + side * 1e-3))
            # ten times closer to 1: the slope ten times smaller, the drift a hundred times
            assert (nearer_slope <= 0.2 * near_slope + 1e-5).all(), (seed, side, near_slope, nearer_slope)
            assert (nearer <= 0.02 * near + 1e-7).all(), (seed, side, near, nearer)
        assert max(np.abs(drift_and_slope(params, r)[1]).max() for r in (0.5, 1.5)) > 0  # not trivially zero


def test_mlp_drift_reads_inputs_and_progress():
    params = meta.init_drift_params(jax.random.key(0))
    ratio, adv = jnp.array([0.5, 1.5, 2.0]), jnp.array([1.0, -1.0, 2.0])
    early = meta.mlp_drift(ratio, adv, types.SimpleNamespace(inputs=params, progress=jnp.float32(0.0)))
    late = meta.mlp_drift(ratio, adv, types.SimpleNamespace(inputs=params, progress=jnp.float32(0.9)))
    np.testing.assert_allclose(early, meta.learned_drift(params, ratio, adv, 0.0))
    assert not np.allclose(early, late)  # the progress is an input
    with pytest.raises(ValueError, match="reads its MLP parameters from the inputs"):
        meta.mlp_drift(ratio, adv, types.SimpleNamespace(inputs=None, progress=0.0))
    with pytest.raises(ValueError, match="expected"):
        meta.learned_drift({**params, "w1": params["w1"][:3]}, ratio, adv)


def test_final_return_in_jax_equals_numpy():
    rng = np.random.default_rng(1)
    episodes = rng.integers(0, 4, (5, 30)).astype(np.float32)
    returns = np.where(episodes > 0, rng.uniform(0, 500, (5, 30)), np.nan).astype(np.float32)
    episodes[4] = 0.0
    returns[4] = np.nan  # no finished episode: NaN
    for window in (1, 7, 100):
        got = jax.vmap(lambda r, e: meta.final_return({"episode_return": r, "episodes": e}, window))(
            returns, episodes)
        want = final_return({"episode_return": returns, "episodes": episodes}, window)
        np.testing.assert_allclose(got, want, rtol=1e-5)


def test_a_population_that_ignores_its_inputs_is_noticed():
    assert meta._ignores_inputs(np.array([[1.0, np.nan], [1.0, np.nan], [1.0, np.nan]]))
    assert not meta._ignores_inputs(np.array([[1.0, 2.0], [1.0, 2.5]]))


# ----------------------------------------------------------------------------- meta-training


@pytest.fixture(scope="module")
def dpo_config():
    return jaxrl.load_config("ppo_cartpole", total_steps=512 * 4, objective="dpo", drift="jaxrl.meta.mlp_drift")


@pytest.fixture(scope="module")
def init_params():
    return meta.init_drift_params(jax.random.key(0), hidden=8)


@pytest.fixture(scope="module")
def meta_run(dpo_config, init_params):
    return meta.meta_train(dpo_config, init_params, generations=2, population=4, seeds=2)


def test_generations_have_finite_fitness_of_the_right_shape(meta_run, init_params):
    r = meta_run
    assert r.generations == 2 and r.fitness.shape == (2, 4) and r.seed_fitness.shape == (2, 4, 2)
    assert np.isfinite(r.seed_fitness).all() and (r.seed_fitness > 5).all()  # CartPole episodes last >= 8 steps
    np.testing.assert_allclose(r.fitness, r.seed_fitness.mean(2))
    np.testing.assert_allclose(r.fitness_mean, r.fitness.mean(1))
    np.testing.assert_allclose(r.fitness_max, r.fitness.max(1))
    np.testing.assert_array_equal(r.seed_values, [[0, 1], [2, 3]])  # fresh inner seeds each generation
    assert jax.tree.structure(r.best_params) == jax.tree.structure(init_params)
    assert jax.tree.leaves(r.candidates)[0].shape[:2] == (2, 4)
    assert r.best_fitness == r.fitness.max()
    for got, want in zip(jax.tree.leaves(r.best_params),
                         jax.tree.leaves(r.candidate(r.best_generation, r.best_member))):
        np.testing.assert_array_equal(got, want)
    # the ES was told: its mean moved, and generation 1 asked around the new mean
    moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(r.mean_params), jax.tree.leaves(init_params))]
    assert any(moved)
    assert not np.allclose(r.candidates["w2"][0], r.candidates["w2"][1])
    assert r.compile_seconds > 0 and len(r.generation_seconds) == 2 and r.run_seconds > 0
    assert [row["generation"] for row in r.rows()] == [0, 1]


def test_a_members_fitness_equals_a_standalone_run(meta_run, dpo_config):
    train = jax.jit(jaxrl.make_train(dpo_config))
    for g, m in ((0, 0), (1, 3)):
        params = meta_run.candidate(g, m)
        for s, seed in enumerate(meta_run.seed_values[g]):
            alone = jax.device_get(train(jax.random.key(int(seed)), None, params))
            assert alone.state.diverged_at == -1
            np.testing.assert_allclose(meta_run.seed_fitness[g, m, s], final_return(alone.metrics),
                                       rtol=1e-4, err_msg=f"generation {g}, member {m}, seed {seed}")


# ----------------------------------------------------------------------------- failing clearly


def test_without_evosax_the_error_names_the_extra(dpo_config, init_params, monkeypatch):
    for name in [n for n in sys.modules if n == "evosax" or n.startswith("evosax.")] + ["evosax"]:
        monkeypatch.setitem(sys.modules, name, None)  # `import evosax...` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install jaxrl\[meta\]"):
        meta.meta_train(dpo_config, init_params, generations=1, population=4)


@pytest.mark.parametrize("kwargs, message", [
    ({"generations": 0}, "generations must be a positive integer"),
    ({"population": 1}, "population must be an integer >= 2"),
    ({"population": 2.0}, "population must be an integer >= 2"),
    ({"seeds": 0}, "seeds must be a positive integer"),
    ({"episodes": 0}, "episodes must be a positive integer"),
    ({"fitness": "finale"}, "fitness must be one of final, mean.*did you mean 'final'"),
    ({"init_params": {}}, "init_params must be a non-empty pytree"),
    ({"init_params": {"w": np.arange(3)}}, "float arrays only"),
    ({"init_params": {"w": np.array([1.0, np.nan])}}, "NaN or infinite"),
    ({"resample_seeds": "yes"}, "resample_seeds must be true or false"),
    ({"generations": 2**30 + 1, "seeds": 2}, "seed values up to 2147483649, past int32"),
    ({"strategy": "OpenES"}, "unknown evosax strategy 'OpenES'.*did you mean 'Open_ES'"),
    ({"strategy": "SimpleGA"}, "SimpleGA is a population-based evosax strategy"),
    ({"population": 3}, "evosax Open_ES with population 3"),  # antithetic sampling needs an even population
    ({"strategy_kwargs": {"sigma": 0.1}}, "evosax Open_ES.*sigma"),
    ({"strategy": object()}, "strategy must be the name"),
])
def test_bad_arguments_fail_before_compiling(dpo_config, init_params, kwargs, message, monkeypatch):
    import evosax.algorithms  # noqa: F401  (imported before jax.jit is patched: its classes use jax.jit)

    def no_compiling(*args, **kw):
        raise AssertionError("compiled bad arguments")

    monkeypatch.setattr(jax, "jit", no_compiling)
    args = {"init_params": init_params, "generations": 1, "population": 4} | kwargs
    with pytest.raises(ConfigError, match=message):
        meta.meta_train(dpo_config, **args)


def test_a_built_strategy_must_fit_the_population_and_parameters(init_params):
    from evosax.algorithms import SNES

    with pytest.raises(ConfigError, match="built for a population of 6, not 4"):
        meta.make_strategy(SNES(population_size=6, solution=init_params), 4, init_params)
    with pytest.raises(ConfigError, match="built for 3 parameters"):
        meta.make_strategy(SNES(population_size=4, solution=jnp.zeros(3)), 4, init_params)
    assert meta.make_strategy("SNES", 4, init_params).population_size == 4


SHARDED = """
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2 --xla_cpu_collective_call_terminate_timeout_seconds=20"
import jax, numpy as np, jaxrl
from jaxrl import meta
config = jaxrl.load_config("ppo_cartpole", total_steps=512 * 4, objective="dpo", drift="jaxrl.meta.mlp_drift")
init = meta.init_drift_params(jax.random.key(0), hidden=8)
two = meta.meta_train(config, init, generations=2, population=4, seeds=2)
one = meta.meta_train(config, init, generations=2, population=4, seeds=2, devices=jax.devices()[:1])
assert len(jax.devices()) == 2
np.testing.assert_allclose(two.seed_fitness, one.seed_fitness, rtol=1e-4)
for a, b in zip(jax.tree.leaves(two.mean_params), jax.tree.leaves(one.mean_params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
print("ok")
"""


@pytest.mark.slow
def test_members_sharded_over_two_devices_equal_one_device():
    import subprocess

    out = subprocess.run([sys.executable, "-c", SHARDED], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
