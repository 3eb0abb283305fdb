"""Divergence: a NaN or infinity in a seed's learner is detected inside the compiled program
(``TrainState.diverged_at``), reported per seed with the iteration, and handled as asked:
``on_divergence="stop"`` ends a run after the chunk in which it happened (keeping the last
checkpoint in which every seed was finite), ``"warn"`` goes on."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrl
from jaxrl import cli
from jaxrl.checkpoint import Checkpointer
from jaxrl.loop import DivergenceWarning
from jaxrl.runner import train_seeds

# DQN learns nothing during its replay warm-up (1000 env steps = 10 iterations of 10 envs x 10 steps),
# so a huge learning rate makes it blow up right after the warm-up, never before: Adam's first step
# moves every parameter by about lr (1e30: still finite) in iteration 9, and the next forward pass
# overflows, in iteration 10.
DQN = dict(total_steps=4000, learning_starts=1000, num_steps=10)
DIVERGED = 10


def test_diverged_at_is_the_first_non_finite_iteration_per_seed():
    config = jaxrl.load_config("dqn_cartpole", **DQN)
    train = jaxrl.make_train(config)
    out = jax.jit(jax.vmap(train))(jaxrl.seed_keys(0, 3), {"lr": jnp.array([1e-4, 1e30, 1e30])})
    diverged = np.asarray(out.state.diverged_at)
    assert diverged[0] == -1  # a sane learning rate stays finite
    assert (diverged[1:] == DIVERGED).all(), diverged  # not during the warm-up, at once after it
    params = jax.tree.leaves(out.state.agent.params)
    assert all(np.isfinite(np.asarray(p[0])).all() for p in params)
    assert not all(np.isfinite(np.asarray(p[1])).all() for p in params)


def test_ppo_divergence_is_flagged_and_a_healthy_run_is_not():
    config = jaxrl.load_config("ppo_cartpole", total_steps=4 * 512)
    out = jax.jit(jax.vmap(jaxrl.make_train(config), in_axes=(None, 0)))(
        jax.random.key(0), {"lr": jnp.array([2.5e-4, 1e35])})
    assert np.asarray(out.state.diverged_at).tolist() == [-1, 0]


def test_stop_ends_the_run_and_keeps_the_last_finite_checkpoint(tmp_path):
    config = jaxrl.load_config("dqn_cartpole", **DQN)
    with pytest.warns(DivergenceWarning, match=r"seed 0 \(iteration 10\), seed 1 \(iteration 10\).*stopping"):
        run = train_seeds(config, num_seeds=2, chunk_size=5, hparams={"lr": 1e30}, checkpoint_dir=tmp_path,
                          checkpoint_every=1, keep=1, on_divergence="stop")
    assert run.stopped and run.iterations_done == 15  # the chunk of iterations 10..14 held the divergence
    assert run.diverged_at.tolist() == [DIVERGED, DIVERGED] and run.diverged == {0: DIVERGED, 1: DIVERGED}
    assert run.metrics["env_steps"].shape == (2, 15)  # nothing the run produced is dropped
    assert run.last_finite_step == 10
    with Checkpointer(tmp_path, read_only=True) as ckpt:
        assert 10 in ckpt.steps() and ckpt.latest_step() == 15  # the diverged state is saved too
        assert ckpt.meta(15)["diverged"] == [DIVERGED, DIVERGED] and ckpt.meta(10)["diverged"] == [None, None]
    # resuming a run that stopped on divergence does not train on from the broken state
    with pytest.warns(DivergenceWarning, match="not continuing"):
        again = train_seeds(config, num_seeds=2, hparams={"lr": 1e30}, checkpoint_dir=tmp_path, resume=True,
                            on_divergence="stop")
    assert again.stopped and again.iterations_done == 15


def test_warn_goes_on_to_the_end():
    config = jaxrl.load_config("dqn_cartpole", **DQN)
    with pytest.warns(DivergenceWarning, match="going on"):
        # (2 seeds in chunks of 5: the program of the test above)
        run = train_seeds(config, num_seeds=2, chunk_size=5, hparams={"lr": 1e30}, on_divergence="warn")
    assert not run.stopped and run.iterations_done == config.num_iterations
    assert run.diverged == {0: DIVERGED, 1: DIVERGED}
    with pytest.raises(ValueError, match="on_divergence must be one of stop, warn"):
        train_seeds(config, on_divergence="ignore")


def test_sweep_stop_runs_no_batch_after_a_divergence():
    config = jaxrl.load_config("dqn_cartpole", **DQN)
    with pytest.warns(DivergenceWarning, match="stopped"):  # batches of one setting (2 seeds) each
        result = jaxrl.sweep(config, seeds=2, grid={"lr": [1e-4, 1e30, 3e-4]}, batch_size=2, on_divergence="stop")
    assert result.stopped and [s["lr"] for s in result.settings] == [1e-4, 1e30]
    assert result.metrics["env_steps"].shape[:2] == (2, 2)


def test_cli_train_stops_with_status_3_and_reports_it(tmp_path, capsys):
    argv = ["train", "dqn_cartpole", "total_steps=4000", "learning_starts=1000", "num_steps=10", "lr=1e30",
            "--seeds", "2", "--chunk-size", "5", "--checkpoint-seconds", "0", "--quiet", "--out", str(tmp_path)]
    with pytest.warns(DivergenceWarning):
        assert cli.main(argv) == 3
    err = capsys.readouterr().err
    (run_dir,) = tmp_path.iterdir()
    assert f"last checkpoint with every seed finite: {run_dir / 'checkpoints' / '10'}" in err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["diverged_at"] == [DIVERGED, DIVERGED] and summary["stopped_on_divergence"]
    assert summary["iterations_done"] == 15 and summary["last_finite_checkpoint"].endswith("checkpoints/10")
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 15


def test_cli_sweep_table_and_summary_name_the_diverged_runs(tmp_path, capsys):
    argv = ["sweep", "dqn_cartpole", "total_steps=4000", "learning_starts=1000", "num_steps=10",
            "--grid", "lr=1e-4,1e30", "--seeds", "2", "--out", str(tmp_path)]
    with pytest.warns(DivergenceWarning, match=r"2 of 4 runs diverged.*lr=1e\+30, seed=0, iteration=10"):
        assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "2/2 (first at iteration 10)" in out
    (run_dir,) = tmp_path.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["diverged_at"] == [[None, None], [DIVERGED, DIVERGED]] and not summary["stopped_on_divergence"]
    assert summary["best"] == {"lr": 1e-4}  # a setting whose seeds diverged is never the best
    assert [(r["lr"], r["seed"], r["iteration"]) for r in summary["diverged"]] == [(1e30, 0, DIVERGED), (1e30, 1, DIVERGED)]
    rows = (run_dir / "results.csv").read_text().splitlines()
    assert rows[0].endswith("diverged_at") and rows[1].endswith(",") and rows[3].endswith(f",{DIVERGED}")


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_finite_flags_one_bad_float_in_any_leaf(bad):
    """``loop.finite`` (a fused sum of ``x * 0``) against NumPy's isfinite, one bad float placed in
    each leaf in turn, compiled as in the loop; metrics may be NaN (by design) but not infinite."""
    from jaxrl.loop import finite

    agent = {"params": {"w": np.ones((4, 3), np.float32), "b": np.zeros(3, np.float32)},
             "opt": (np.full(12, 1e30, np.float32), np.int32(7)), "steps": np.int32(3)}
    stats = (np.arange(5, dtype=np.float32), np.float32(2.0))
    check = jax.jit(finite)
    assert bool(check(agent, stats, {"loss": jnp.float32(np.nan)}))  # huge but finite; a NaN metric is allowed
    leaves, tree = jax.tree.flatten((agent, stats))
    floats = [i for i, x in enumerate(leaves) if np.issubdtype(x.dtype, np.floating)]
    assert len(floats) == 5
    for i in floats:
        broken = [np.array(x) for x in leaves]
        broken[i].reshape(-1)[-1] = bad
        assert not np.isfinite(broken[i]).all()
        assert not bool(check(*jax.tree.unflatten(tree, broken), {"loss": jnp.float32(0.0)})), i
    assert not bool(check(agent, stats, {"loss": jnp.float32(np.inf)}))
