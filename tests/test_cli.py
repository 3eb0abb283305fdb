"""The jaxrl command end to end, on small budgets."""

from __future__ import annotations

import json

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


def test_bench_prints_table_and_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert main(["bench", "ppo_cartpole", "total_steps=2048", "--seeds", "1,2", "--repeats", "1",
                 "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "env steps/s" in out
    data = json.loads(path.read_text())
    assert [r["seeds"] for r in data["results"]] == [1, 2]
    assert all(r["compile_seconds"] > 0 and r["env_steps_per_second"] > 0 for r in data["results"])
    assert data["device"]["platform"] == "cpu" and data["versions"]["jax"]


def test_errors_exit_2(capsys):
    assert main(["train", "ppo_cartpole", "--seeds", "0"]) == 2
    assert "--seeds must be >= 1" in capsys.readouterr().err
    assert main(["bench", "ppo_cartpole", "--seeds", "1,x"]) == 2


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "ppo_cartpole" in out and "dqn" in out and "CartPole-v1" in out and "brax/ant" in out


def test_train_with_extra_loggers(tmp_path, capsys):
    assert main(["train", "ppo_cartpole", "total_steps=2048", "--out", str(tmp_path), "--log", "csv,tensorboard",
                 "--checkpoint-every", "-1"]) == 0
    (run_dir,) = tmp_path.iterdir()
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 1 + 4 * 2  # header + (seed, mean) rows
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
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
    assert main(["train", "ppo_cartpole", "total_steps=4096", "--seeds", "2", "--out", str(train_dir)]) == 0
    (run,) = train_dir.iterdir()
    assert main(["plot", str(run), "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 1000
    assert main(["plot", str(tmp_path)]) == 2
