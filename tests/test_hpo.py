"""Hyperparameter search (jaxrl.hpo.tune): disjoint tuning and test seeds, successive halving
continuing the survivors' states, the report's statistics, the result folder, early errors."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl import stats
from jaxrl.algos import load_config
from jaxrl.config import ConfigError
from jaxrl.hpo import halving_rungs, parse_space, sample_candidates, tune
from jaxrl.loop import make_train
from jaxrl.metrics import final_return

# 8 iterations of 4 envs x 16 steps: successive halving with 4 candidates and eta 2 has rungs
# ending at iterations 2, 4 and 8
CONFIG = load_config("ppo_cartpole", total_steps=512, num_envs=4, num_steps=16, hidden=[16], num_minibatches=2,
                     update_epochs=1)
SPACE = {"lr": {"range": [1e-4, 1e-1], "log": True}, "ent_coef": {"values": [0.0, 0.01]}}
EPISODES = 5


@pytest.fixture(scope="module")
def halving():
    return tune(CONFIG, SPACE, budget=4, tuning_seeds=[3, 5], test_seeds=2, method="successive_halving",
                episodes=EPISODES)


def test_halving_rungs():
    assert halving_rungs(100, 8, 2) == [(12, 8), (25, 4), (50, 2), (100, 1)]
    assert halving_rungs(100, 10, 3) == [(11, 10), (33, 3), (100, 1)]
    assert halving_rungs(8, 4, 2) == [(2, 4), (4, 2), (8, 1)]
    assert halving_rungs(3, 16, 2) == [(2, 16), (3, 8)]  # as many rungs as the iterations allow
    assert halving_rungs(50, 1, 3) == [(50, 1)]


def test_candidates_are_reproducible_and_inside_the_space():
    space = parse_space(CONFIG, SPACE)
    a, b = sample_candidates(space, 64, seed=1), sample_candidates(space, 64, seed=1)
    assert a == b and a != sample_candidates(space, 64, seed=2)
    lrs = np.array([c["lr"] for c in a])
    assert (lrs >= 1e-4).all() and (lrs <= 1e-1).all()
    assert (np.log(lrs) < np.log(1e-4) + 0.5 * np.log(1e3)).mean() > 0.3  # log-uniform: half below 3e-3
    assert {c["ent_coef"] for c in a} == {0.0, 0.01}


def test_seeds_are_disjoint_and_survivors_continue(halving):
    r = halving
    assert r.tuning_seeds == [3, 5] and r.test_seeds == [6, 7]  # a count of test seeds starts after the search
    assert sorted(t["iterations"] for t in r.trials) == [2, 2, 4, 8]
    # each rung kept the candidates best by their mean final return at the rung's end
    for end, kept in ((2, 2), (4, 1)):
        scores = final_return({k: v[:, :, :end] for k, v in r.curves.items()}, EPISODES).mean(1)
        reached = [t["candidate"] for t in r.trials if t["iterations"] >= end]
        went_on = [t["candidate"] for t in r.trials if t["iterations"] > end]
        ranked = [c for c in np.argsort(-scores) if c in reached]
        assert sorted(went_on) == sorted(ranked[:kept])
    assert r.trials[r.best_trial]["iterations"] == 8
    assert r.chosen == {k: r.trials[r.best_trial][k] for k in SPACE}

    # the winner's tuning runs, continued from rung to rung, equal uninterrupted runs with its values;
    # so do the test runs (the chosen values and the config as given) on the test seeds
    train = make_train(CONFIG)
    hp = {k: jnp.array([r.chosen[k], r.chosen[k], r.chosen[k], getattr(CONFIG, k)], jnp.float32) for k in SPACE}
    keys = jax.vmap(jax.random.key)(jnp.array([3, 5, 6, 6]))
    ref = jax.jit(jax.vmap(train))(keys, hp).metrics
    got = [r.curves["episode_return"][r.best_trial, 0], r.curves["episode_return"][r.best_trial, 1],
           r.test_curves["episode_return"][0, 0], r.test_curves["episode_return"][1, 0]]
    for row, values in enumerate(got):
        np.testing.assert_allclose(values, ref["episode_return"][row], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(r.tuning_scores, final_return(ref, EPISODES)[:2], rtol=1e-4)


def test_report_and_folder(halving, tmp_path):
    r = halving
    report = r.report(reps=200)
    assert report["tuning"]["iqm"] == pytest.approx(stats.iqm(r.tuning_scores[:, None]))
    assert report["test"]["iqm"] == pytest.approx(stats.iqm(r.test_scores[:, None]))
    assert report["baseline_test"]["iqm"] == pytest.approx(stats.iqm(r.baseline_scores[:, None]))
    assert report["gap"] == pytest.approx(report["tuning"]["iqm"] - report["test"]["iqm"])
    assert report["test"]["low"] <= report["test"]["iqm"] <= report["test"]["high"]
    folder = r.save(tmp_path / "tuned")
    assert json.loads((folder / "report.json").read_text())["chosen"] == r.chosen
    best = load_config(folder / "best.yaml")
    assert best.lr == pytest.approx(r.chosen["lr"]) and best.total_steps == CONFIG.total_steps
    assert len((folder / "trials.csv").read_text().splitlines()) == 1 + len(r.trials)
    with np.load(folder / "curves.npz") as curves:
        assert curves["test_episode_return"].shape == (2, 2, CONFIG.num_iterations)


def test_pbt_finds_a_schedule_replayed_on_test_seeds():
    r = tune(CONFIG, {"lr": {"range": [1e-4, 1e-1], "log": True}}, budget=4, tuning_seeds=1, test_seeds=2,
             method="pbt", interval=2, episodes=EPISODES)
    assert r.test_seeds == [4, 5]  # the population's members took seeds 0..3
    assert len(r.schedule["lr"]) == 4 and all(1e-4 <= v <= 1e-1 for v in r.schedule["lr"])
    assert r.chosen == {"lr": r.schedule["lr"][-1]} and r.interval == 2
    assert len(r.trials) == 4 and r.trials[r.best_trial]["score"] == pytest.approx(r.tuning_scores[0])
    assert r.test_curves["episode_return"].shape == (2, 2, CONFIG.num_iterations)


@pytest.mark.parametrize("kwargs, message", [
    ({"space": {"hidden": {"values": [1, 2]}}}, "static field"),
    ({"space": {"lrr": {"range": [1e-4, 1e-2]}}}, "did you mean 'lr'"),
    ({"space": {"lr": {"range": [1e-2, 1e-4]}}}, "low < high"),
    ({"space": {"lr": {"range": [0.0, 1e-2], "log": True}}}, "log range needs low > 0"),
    ({"space": {"lr": {"range": [-1.0, 1e-2]}}}, "lr must be > 0"),
    ({"space": {"lr": {"values": [1e-3], "log": True}}}, "'log' applies to a 'range'"),
    ({"space": {"lr": {"range": [1e-4, 1e-2], "values": [1e-3]}}}, "exactly one of"),
    ({"space": {"lr": {"rnage": [1e-4, 1e-2]}}}, "unknown key 'rnage'"),
    ({"budget": 0}, "budget must be a positive integer"),
    ({"method": "bayes"}, "method must be one of"),
    ({"tuning_seeds": [1, 2], "test_seeds": [2, 3]}, r"test seeds \[2\] were used by the search"),
    ({"tuning_seeds": [1, 1]}, "lists a seed twice"),
    ({"method": "successive_halving", "eta": 1}, "eta must be an integer >= 2"),
    ({"method": "pbt"}, "needs interval"),
    ({"method": "pbt", "interval": 2, "space": {"lr": {"values": [1e-3, 1e-2]}}}, "give 'values'"),
    ({"method": "pbt", "interval": 2, "tuning_seeds": [0, 1]}, "number of populations"),
    ({"method": "pbt", "interval": 2, "budget": 4, "test_seeds": [3], "space": {"lr": {"range": [1e-4, 1e-2]}}},
     r"test seeds \[3\] were used"),
    ({"interval": 2}, "apply to method='pbt' only"),
])
def test_bad_input_fails_before_compiling(kwargs, message, monkeypatch):
    monkeypatch.setattr(jax, "jit", lambda *a, **k: pytest.fail("compiled before checking"))
    args = {"space": SPACE, "budget": 4, **kwargs}
    with pytest.raises(ConfigError, match=message):
        tune(CONFIG, args.pop("space"), args.pop("budget"), **args)
