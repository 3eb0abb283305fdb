"""The throughput benchmark: seed-count specs, scaling curves of an on- and an off-policy config,
the plot, and the clean stop at the first seed count that does not fit in memory."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import pytest

import jaxrl
from jaxrl import bench
from jaxrl.config import ConfigError

# Tiny programs: what is measured here is the benchmark's bookkeeping, not the speed.
TINY = {
    "ppo_cartpole": dict(total_steps=256, num_steps=16, update_epochs=1, num_minibatches=1, hidden=[16]),
    "dqn_cartpole": dict(total_steps=400, learning_starts=200, buffer_size=250, batch_size=32, hidden=[16]),
}


def tiny(name: str, **overrides) -> jaxrl.Config:
    return jaxrl.load_config(name, **TINY[name], **overrides)


@pytest.mark.parametrize("spec, counts", [
    ("1:4096", [2**k for k in range(13)]),
    ("1:100", [1, 2, 4, 8, 16, 32, 64]),
    ("1:1000:10", [1, 10, 100, 1000]),
    ("3:20", [3, 6, 12]),
    ("64,8,1", [1, 8, 64]),
    ("1,3,1:8", [1, 2, 3, 4, 8]),
    (" 5 ", [5]),
])
def test_seed_counts(spec, counts):
    assert bench.seed_counts(spec) == counts


@pytest.mark.parametrize("spec, message", [
    ("", "empty"), ("1,,2", "neither"), ("x", "neither"), ("1.5", "neither"), ("-1", "neither"),
    ("1:2:3:4", "neither"), ("0", "positive"), ("0:8", "positive"), ("8:1", "below its start"),
    ("1:8:1", "factor"), ("1:" + "9" * 40, "more than"),
])
def test_bad_seed_counts(spec, message):
    with pytest.raises(ConfigError, match=message):
        bench.seed_counts(spec)


@pytest.fixture(scope="module")
def report():
    """One real scaling run: an on-policy and an off-policy config, 1 and 2 seeds."""
    return bench.benchmark_all({name: tiny(name) for name in TINY}, [1, 2], repeats=2)


def test_scaling_report(report):
    assert set(report) >= {"date", "device", "versions", "machine", "benchmarks"}
    assert report["device"]["platform"] and report["device"]["kind"] and report["device"]["count"] >= 1
    assert all(report["versions"][k] for k in ("jax", "jaxlib", "jaxrl", "python"))
    assert report["versions"]["jaxrl"] == jaxrl.__version__ and report["machine"]["cpus"] >= 1
    assert "results" not in report  # several configs: only under "benchmarks"
    assert [e["config_name"] for e in report["benchmarks"]] == list(TINY)
    assert [e["algo"] for e in report["benchmarks"]] == ["ppo", "dqn"]
    for entry in report["benchmarks"]:
        assert entry["stopped"] is None and entry["repeats"] == 2
        assert [r["seeds"] for r in entry["results"]] == [1, 2]
        for row in entry["results"]:
            assert row["compile_seconds"] > 0 and len(row["all_run_seconds"]) == 2
            assert isinstance(row["compile_cached"], bool)
            assert row["run_seconds"] == min(row["all_run_seconds"])
            assert row["env_steps_per_second"] == pytest.approx(
                row["seeds"] * entry["env_steps_per_seed"] / row["run_seconds"], rel=1e-3)
        low, high = (r["memory_bytes"] for r in entry["results"])
        assert 0 < low < high  # the memory analysis grows with the seed count
    json.dumps(report, allow_nan=False)  # strict JSON: no NaN


def test_scaling_plot(report, tmp_path):
    path = bench.save_plot(report, tmp_path / "scaling.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    fig = bench.plot_scaling(report)
    speed, compile_ = fig.axes
    assert speed.get_xscale() == "log" and compile_.get_xscale() == "log"
    assert len(speed.lines) == len(compile_.lines) == 2  # one curve per config
    assert [t.get_text() for t in speed.get_legend().get_texts()] == list(TINY)
    with pytest.raises(ValueError, match="nothing to plot"):
        bench.plot_scaling({"benchmarks": [{**report["benchmarks"][0], "results": []}]})


def test_memory_limit_ends_the_curve_at_the_first_count_that_does_not_fit(report):
    one_seed = report["benchmarks"][0]["results"][0]["memory_bytes"]
    out = bench.benchmark(tiny("ppo_cartpole"), [1, 2, 4], repeats=1, memory_limit=one_seed, name="ppo")
    assert [r["seeds"] for r in out["results"]] == [1]
    assert out["stopped"]["seeds"] == 2 and out["stopped"]["reason"] == "memory"
    assert out["stopped"]["memory_bytes"] > out["stopped"]["available_bytes"] == one_seed
    assert "GiB" in out["stopped"]["message"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="address-space limit via setrlimit")
def test_out_of_memory_during_the_run_is_a_clean_stop(tmp_path):
    # A real RESOURCE_EXHAUSTED from XLA: --memory-limit lets a 1-seed DQN with an 8 GB replay
    # buffer past the memory-analysis check, and the process's address space is capped at 6 GiB
    # (so nothing is ever touched: the one big allocation is refused).
    def cap_address_space():
        resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))

    path = tmp_path / "oom.json"
    proc = subprocess.run(
        [sys.executable, "-m", "jaxrl.cli", "bench", "dqn_cartpole", "total_steps=1000", "learning_starts=500",
         "buffer_size=500000000", "--seeds", "1:4", "--repeats", "1", "--memory-limit", "1000", "--json", str(path)],
        preexec_fn=cap_address_space, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "stopped at 1 seed(s) (resource_exhausted)" in proc.stdout
    stopped = json.loads(path.read_text())["benchmarks"][0]["stopped"]
    assert stopped["seeds"] == 1 and stopped["reason"] == "resource_exhausted"
    assert "RESOURCE_EXHAUSTED" in stopped["message"]


def test_bad_arguments():
    config = tiny("ppo_cartpole")
    with pytest.raises(ConfigError, match="repeats"):
        bench.benchmark(config, [1], repeats=0)
    with pytest.raises(ConfigError, match="positive"):
        bench.benchmark(config, [0, 1])
    with pytest.raises(ConfigError, match="memory_limit"):
        bench.benchmark(config, [1], memory_limit=0)
    with pytest.raises(ConfigError, match="no config"):
        bench.benchmark_all({}, [1])


def test_baseline_splits_the_run_into_env_acting_and_learning():
    """--baseline: the env alone is faster than training, and its split adds up to the run."""
    out = bench.benchmark(tiny("ppo_cartpole"), [1, 2], repeats=1, baseline=True)
    for row in out["results"]:
        base = row["baseline"]
        assert base["env_steps_per_second"] > row["env_steps_per_second"]
        assert 0 < base["fraction_of_env"] < 1
        split = base["seconds"]
        assert min(split.values()) >= 0
        assert sum(split.values()) == pytest.approx(row["run_seconds"], rel=0.05, abs=2e-3)


def test_partial_programs_play_the_env_without_learning():
    import jax
    import numpy as np

    from jaxrl.loop import make_train

    config = tiny("ppo_cartpole").replace(total_steps=2048, num_envs=8)
    init = make_train(config).init(jax.random.key(0))
    for phases in ("env", "act"):
        out = jax.jit(make_train(config, phases=phases))(jax.random.key(0))
        same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), out.state.agent, init.agent)
        assert all(jax.tree.leaves(same)), phases  # nothing learned
        lengths = np.asarray(out.metrics["episode_length"])
        assert np.nanmean(lengths) < 60  # short random-ish CartPole episodes were played
    with pytest.raises(ConfigError, match="phases must be one of"):
        make_train(config, phases="learn")


def test_baseline_on_the_command_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "jaxrl.cli", "bench", "ppo_cartpole", "total_steps=256", "num_steps=16",
                          "update_epochs=1", "num_minibatches=1", "hidden=[16]", "--seeds", "1", "--repeats", "1",
                          "--baseline", "--json", str(tmp_path / "b.json"), "--no-compile-cache"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "env alone/s" in out.stdout and "learn s" in out.stdout
    row = json.loads((tmp_path / "b.json").read_text())["results"][0]
    assert set(row["baseline"]["seconds"]) == {"env", "acting", "learning"}


def test_seeds_are_split_over_the_cpu_cores_with_the_same_results(tmp_path):
    """With 2 CPU devices (jaxrl bench's default on a 2-core machine) a 4-seed count runs 2 seeds
    per device, and learns what one device learns."""
    args = ["ppo_cartpole", "total_steps=2048", "num_steps=16", "update_epochs=1", "num_minibatches=1", "hidden=[16]",
            "--repeats", "1", "--no-compile-cache"]
    rows = {}
    for cores, seeds in (("2", "1,4"), ("1", "4")):  # (1 seed is one device either way)
        env = {**os.environ, "JAXRL_CPU_DEVICES": cores, "JAX_PLATFORMS": "cpu"}
        env.pop("XLA_FLAGS", None)
        path = tmp_path / f"b{cores}.json"
        out = subprocess.run([sys.executable, "-m", "jaxrl.cli", "bench", *args, "--seeds", seeds, "--json", str(path)],
                             capture_output=True, text=True, timeout=600, env=env)
        assert out.returncode == 0, out.stderr
        rows[cores] = json.loads(path.read_text())["results"]
    assert [r["devices"] for r in rows["2"]] == [1, 2]
    assert [r["devices"] for r in rows["1"]] == [1]
    assert rows["2"][1]["final_return_mean"] == pytest.approx(rows["1"][0]["final_return_mean"], rel=1e-3)
