"""The jaxrl command end to end, on small budgets."""

from __future__ import annotations

import json

import pytest
import yaml

from jaxrl.cli import main


def test_train_writes_run_folder(tmp_path, capsys):
    code = main(["train", "ppo_cartpole", "total_steps=4096", "--seeds", "2", "--out", str(tmp_path),
                 "--chunk-size", "3"])
    assert code == 0
    out = capsys.readouterr().out
    assert "compile" in out and "env steps/s" in out and "seed    1" in out
    (run_dir,) = tmp_path.iterdir()
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["total_steps"] == 4096
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == list(range(8))
    assert all(len(r["loss"]) == 2 for r in rows)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["seeds"] == 2 and len(summary["final_return"]) == 2
    assert summary["env_steps_per_second"] > 0 and summary["compile_seconds"] > 0
    assert "eval_return" not in summary  # no in-loop evaluation in this config


def test_train_summary_gives_the_latest_evaluation(tmp_path, capsys):
    assert main(["train", "ppo_cartpole", "total_steps=4096", "eval_every=4", "eval_episodes=3", "--seeds", "2",
                 "--out", str(tmp_path), "--quiet"]) == 0
    assert "latest evaluation (3 episodes per seed)" in capsys.readouterr().out
    (run_dir,) = tmp_path.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert summary["eval_return"] == rows[-1]["eval_return"]  # iterations 4 and 8 evaluate: the last is latest
    assert summary["eval_return_mean"] == sum(summary["eval_return"]) / 2


TINY_BENCH = ["total_steps=400", "num_steps=16", "update_epochs=1", "num_minibatches=1", "learning_starts=200",
              "buffer_size=250", "batch_size=32", "hidden=[16]"]  # each applies to the configs that have it


def test_bench_two_configs_table_json_and_plot(tmp_path, capsys):
    path, png = tmp_path / "bench.json", tmp_path / "scaling.png"
    assert main(["bench", "ppo_cartpole", "dqn_cartpole", *TINY_BENCH, "--seeds", "2", "--repeats", "1",
                 "--json", str(path), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "jaxrl bench ppo_cartpole" in out and "jaxrl bench dqn_cartpole" in out and "env steps/s" in out
    data = json.loads(path.read_text())
    assert [(e["config_name"], e["algo"]) for e in data["benchmarks"]] == [("ppo_cartpole", "ppo"), ("dqn_cartpole", "dqn")]
    assert data["benchmarks"][0]["config"]["num_steps"] == 16 and data["benchmarks"][1]["config"]["learning_starts"] == 200
    for entry in data["benchmarks"]:
        (row,) = entry["results"]
        assert row["seeds"] == 2 and row["compile_seconds"] > 0 and row["env_steps_per_second"] > 0
    assert data["device"]["platform"] == "cpu" and data["versions"]["jax"] and data["date"]
    assert png.stat().st_size > 10_000


def test_bench_stops_cleanly_when_the_first_count_does_not_fit(tmp_path, capsys):
    path, png = tmp_path / "bench.json", tmp_path / "scaling.png"
    assert main(["bench", "ppo_cartpole", *TINY_BENCH[:4], "--seeds", "1:1024", "--memory-limit", "1e-9",
                 "--json", str(path), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "stopped at 1 seed(s) (memory)" in out and "plot: skipped" in out and not png.exists()
    data = json.loads(path.read_text())
    assert data["results"] == [] and data["stopped"]["reason"] == "memory"  # one config: also at the top level
    assert data["benchmarks"][0]["stopped"]["seeds"] == 1


def test_eval_run_folder(tmp_path, capsys):
    assert main(["train", "ppo_cartpole", "total_steps=2048", "--seeds", "2", "--out", str(tmp_path), "--quiet"]) == 0
    (run_dir,) = tmp_path.iterdir()
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--episodes", "4"]) == 0
    out = capsys.readouterr().out
    assert "after 4 iterations" in out and "seed    0: return" in out and "seed    1: return" in out
    both = json.loads((run_dir / "eval.json").read_text())
    assert both["seeds"] == [0, 1] and both["deterministic"] and both["iteration"] == 4
    assert [len(r) for r in both["returns"]] == [4, 4] and both["finished"] == [4, 4]
    assert both["return_mean"][1] == sum(both["returns"][1]) / 4

    assert main(["eval", str(run_dir), "--episodes", "4", "--seeds", "1"]) == 0
    one = json.loads((run_dir / "eval.json").read_text())
    assert one["seeds"] == [1] and one["returns"] == both["returns"][1:]  # same episodes for a seed

    assert main(["eval", str(run_dir), "--episodes", "4", "--stochastic", "--env-kwargs", "max_steps_in_episode=5"]) == 0
    short = json.loads((run_dir / "eval.json").read_text())
    assert not short["deterministic"] and short["env_kwargs"] == {"max_steps_in_episode": 5}
    assert all(length <= 5 for length in short["length_mean"])

    capsys.readouterr()
    for bad, message in [([str(tmp_path / "missing")], "not a folder"), ([str(tmp_path)], "no checkpoint"),
                         ([str(run_dir), "--seeds", "7"], "not in this run"),
                         ([str(run_dir), "--step", "3"], "saved: 4"), ([str(run_dir), "--step", "x"], "--step"),
                         ([str(run_dir), "--episodes", "0"], "--episodes"),
                         ([str(run_dir), "--env-kwargs", "no_such=1"], "eval env")]:
        assert main(["eval", *bad]) == 2, bad
        assert message in capsys.readouterr().err, bad


def test_errors_exit_2(capsys):
    assert main(["train", "ppo_cartpole", "--seeds", "0"]) == 2
    assert "--seeds must be >= 1" in capsys.readouterr().err
    for bad in (["--seeds", "1,x"], ["--seeds", "8:1"], ["--repeats", "0"], ["--memory-limit", "0"], ["learning_starts=1"],
                ["no_such_key=1"]):
        assert main(["bench", "ppo_cartpole", *bad]) == 2, bad
    assert main(["bench", "total_steps=1000"]) == 2
    assert "at least one config" in capsys.readouterr().err


def test_overrides_may_follow_options_and_stray_arguments_are_refused(tmp_path, capsys):
    out = tmp_path / "runs"
    # (the budget and seed count of the other CLI tests: the session's compilation cache has the program)
    assert main(["train", "ppo_cartpole", "--seeds", "2", "--quiet", "total_steps=2048", "--out", str(out),
                 "--checkpoint-every", "-1"]) == 0
    (run_dir,) = out.iterdir()
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["total_steps"] == 2048
    with pytest.raises(SystemExit):
        main(["train", "ppo_cartpole", "--no-such-option"])
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # not an abbreviation of --seeds: the config's seed, with a hint
        main(["train", "ppo_cartpole", "--seed", "100"])
    assert "unrecognized arguments: --seed 100 (config values are key=value overrides: seed=...)" in (
        capsys.readouterr().err)
    with pytest.raises(SystemExit):
        main(["list", "lr=1"])


def test_a_bad_environment_leaves_no_run_folder(tmp_path, capsys):
    assert main(["train", "ppo_cartpole", "--env", "CartPole-v9", "--out", str(tmp_path)]) == 2
    assert "Unknown environment 'CartPole-v9'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_sweep_refuses_a_key_both_overridden_and_swept(capsys):
    assert main(["sweep", "ppo_cartpole", "lr=1e-3", "--grid", "lr=1e-4,3e-4"]) == 2
    assert "lr: given both as an override (key=value) and in --grid" in capsys.readouterr().err


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "ppo_cartpole" in out and "dqn" in out and "CartPole-v1" in out and "brax/ant" in out


def test_train_with_extra_loggers(tmp_path, capsys):
    assert main(["train", "ppo_cartpole", "total_steps=2048", "--seeds", "2", "--out", str(tmp_path),
                 "--log", "csv,tensorboard", "--checkpoint-every", "-1"]) == 0
    (run_dir,) = tmp_path.iterdir()
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 1 + 4 * 3  # header + (seed 0, 1, mean) rows
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert main(["eval", str(run_dir)]) == 2  # trained without checkpoints
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["train", "ppo_cartpole", "total_steps=2048", "--out", str(tmp_path), "--log", "bogus"]) == 2


def test_sweep_and_plot(tmp_path, capsys):
    assert main(["sweep", "ppo_cartpole", "total_steps=3072", "--seeds", "2", "--grid", "lr=1e-4,1e-3",
                 "clip_eps=0.2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "best:" in out and "4 runs" in out
    (run_dir,) = tmp_path.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["grid"] == {"lr": [1e-4, 1e-3], "clip_eps": [0.2]} and len(summary["final_return"]) == 2
    assert (run_dir / "results.csv").read_text().count("\n") == 1 + 4
    assert (run_dir / "curves.png").stat().st_size > 1000
    assert main(["sweep", "ppo_cartpole", "--grid", "num_envs=4,8"]) == 2
    assert "static field" in capsys.readouterr().err
    assert main(["sweep", "ppo_cartpole", "--grid", "lr="]) == 2

    train_dir = tmp_path / "train"
    assert main(["train", "ppo_cartpole", "total_steps=2048", "--seeds", "2", "--out", str(train_dir)]) == 0
    (run,) = train_dir.iterdir()
    assert main(["plot", str(run), "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 1000
    assert main(["plot", str(tmp_path)]) == 2


def test_eval_over_a_grid_of_env_params(tmp_path, capsys):
    """`jaxrl eval --grid`: each point equals a plain evaluation with those params (same initial
    states), robustness = mean / worst / 10% quantile of the points' means, table and heat map."""
    import numpy as np

    assert main(["train", "ppo_cartpole", "total_steps=2048", "--seeds", "2", "--out", str(tmp_path), "--quiet"]) == 0
    (run_dir,) = tmp_path.iterdir()
    assert main(["eval", str(run_dir), "--episodes", "3", "--grid", "gravity=5,20", "max_steps_in_episode=20,40"]) == 0
    out = capsys.readouterr().out
    assert "over the 4 points: mean" in out and (run_dir / "robustness.png").stat().st_size > 10_000
    grid = json.loads((run_dir / "robustness.json").read_text())
    assert grid["points"] == [{"gravity": 5, "max_steps_in_episode": 20}, {"gravity": 5, "max_steps_in_episode": 40},
                              {"gravity": 20, "max_steps_in_episode": 20}, {"gravity": 20, "max_steps_in_episode": 40}]
    for point, per_seed in zip(grid["points"], grid["return_per_seed"]):
        kwargs = [f"{k}={v}" for k, v in point.items()]
        assert main(["eval", str(run_dir), "--episodes", "3", "--env-kwargs", *kwargs]) == 0
        assert json.loads((run_dir / "eval.json").read_text())["return_mean"] == per_seed, point
    means = np.array(grid["return_mean"])
    np.testing.assert_allclose(means, np.mean(grid["return_per_seed"], axis=1))
    assert grid["robustness"] == {"mean": means.mean(), "worst": means.min(), "q0.1": np.quantile(means, 0.1)}
    assert max(means[[0, 2]]) <= 20 < max(means[[1, 3]])  # the step limit really varies

    capsys.readouterr()
    for bad, message in [(["gravty=5,10"], "no numeric env param 'gravty'"),
                         (["max_steps_in_episode=10.5"], "integer"),
                         (["gravity=x"], "finite numbers")]:
        assert main(["eval", str(run_dir), "--grid", *bad]) == 2, bad
        assert message in capsys.readouterr().err, bad


CLAIM_IN_A_LOOP = """
import datetime, sys
from pathlib import Path
import jaxrl.cli as cli

class Frozen(datetime.datetime):  # every claim in the same second
    @classmethod
    def now(cls, tz=None):
        return datetime.datetime(2026, 1, 2, 3, 4, 5)

cli.datetime.datetime = Frozen
out, suffix = Path(sys.argv[1]), sys.argv[2]
sys.stdin.readline()  # start together
print(" ".join(cli.claim_run_path(out, "ppo_cartpole", suffix).name for _ in range(25)))
"""


@pytest.mark.parametrize("suffix", ["", ".json"])
def test_runs_started_in_the_same_second_get_their_own_paths(tmp_path, suffix):
    """Two processes claiming run folders (or bench files) in the same second never share one."""
    import subprocess
    import sys

    from jaxrl.cli import run_name

    procs = [subprocess.Popen([sys.executable, "-c", CLAIM_IN_A_LOOP, str(tmp_path), suffix],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate("go\n", timeout=60)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    names = outputs[0] + outputs[1]
    assert len(set(names)) == 50 and sorted(p.name for p in tmp_path.iterdir()) == sorted(names)
    stem = "ppo_cartpole-20260102-030405"
    assert {n.removesuffix(suffix) for n in names} == {stem} | {f"{stem}-{i}" for i in range(2, 51)}
    if not suffix:
        assert {run_name(tmp_path / n) for n in names} == {"ppo_cartpole"}
