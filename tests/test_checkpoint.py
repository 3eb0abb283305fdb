"""Full-state checkpoints: bit-identical resume, crash safety, pruning, CLI --resume, load_policy."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxrl.checkpoint import Checkpointer, IncompatibleCheckpointError, score
from jaxrl.cli import main
from jaxrl.algos import load_config
from jaxrl.runs import abstract_state, load_policy
from jaxrl.runner import train_seeds

SMALL = {
    "ppo_cartpole": dict(total_steps=4096, num_steps=64, update_epochs=1),  # 16 iterations
    "dqn_cartpole": dict(total_steps=400, learning_starts=100, buffer_size=200, batch_size=16,
                         target_update_interval=5, hidden=[16]),  # 40 iterations
}


class Interrupted(Exception):
    pass


def _raw(state):
    """Leaves of a state with typed PRNG keys as their uint32 data, as NumPy arrays."""
    is_key = lambda x: jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)  # noqa: E731
    return [np.asarray(jax.random.key_data(x) if is_key(x) else x) for x in jax.tree.leaves(state)]


def assert_same_run(a, b):
    assert jax.tree.structure(a.state) == jax.tree.structure(b.state)
    for x, y in zip(jax.tree.leaves(a.state), jax.tree.leaves(b.state)):
        assert x.dtype == y.dtype and x.shape == y.shape
    for x, y in zip(_raw(a.state), _raw(b.state)):
        np.testing.assert_array_equal(x, y)
    assert a.metrics.keys() == b.metrics.keys()
    for k in a.metrics:
        np.testing.assert_array_equal(a.metrics[k], b.metrics[k])


@pytest.mark.parametrize("name", ["ppo_cartpole", "dqn_cartpole"])
def test_resume_is_bit_identical(tmp_path, name):
    config = load_config(name, **SMALL[name])
    chunk = 4 if name.startswith("ppo") else 8
    full = train_seeds(config, 2, chunk_size=chunk)

    def stop_after_two_checkpoints(done, metrics, seconds):
        if done > 2 * chunk:  # raised before the 3rd chunk's save: 2 checkpoints on disk
            raise Interrupted

    with pytest.raises(Interrupted):
        train_seeds(config, 2, chunk_size=chunk, on_chunk=stop_after_two_checkpoints,
                    checkpoint_dir=tmp_path)
    assert Checkpointer(tmp_path).steps() == [chunk, 2 * chunk]
    seen = []
    resumed = train_seeds(config, 2, checkpoint_dir=tmp_path, resume=True,
                          on_resume=lambda done, m: seen.append((done, m["loss"].shape)))
    assert seen == [(2 * chunk, (2, 2 * chunk))] and resumed.resumed_from == 2 * chunk
    assert_same_run(full, resumed)


def test_resume_refuses_other_config(tmp_path):
    config = load_config("ppo_cartpole", **SMALL["ppo_cartpole"])
    # 1 seed in chunks of 4, as in this file's other PPO tests: one program, compiled once per session
    train_seeds(config, 1, chunk_size=4, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="lr"):
        train_seeds(config.replace(lr=1e-3), 1, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match="seed"):
        train_seeds(config, 2, checkpoint_dir=tmp_path, resume=True)


def test_incomplete_newest_checkpoint_is_skipped(tmp_path):
    config = load_config("ppo_cartpole", **SMALL["ppo_cartpole"])
    full = train_seeds(config, 1, chunk_size=4)
    with pytest.raises(Interrupted):
        train_seeds(config, 1, chunk_size=4, checkpoint_dir=tmp_path,
                    on_chunk=lambda d, m, s: (_ for _ in ()).throw(Interrupted) if d > 8 else None)
    # A save killed mid-way leaves an orbax tmp directory (never listed as a step) ...
    shutil.copytree(tmp_path / "8", tmp_path / "12.orbax-checkpoint-tmp-1234567")
    # ... and a damaged newest step (here: its state arrays gone) is skipped with a warning.
    shutil.copytree(tmp_path / "8", tmp_path / "10")
    shutil.rmtree(tmp_path / "10" / "state")
    with pytest.warns(UserWarning, match="trying an older one"):
        restored = Checkpointer(tmp_path).restore(abstract_state(config, 1))
    assert restored.step == 8
    resumed = train_seeds(config, 1, checkpoint_dir=tmp_path, resume=True)
    assert resumed.resumed_from == 8
    assert_same_run(full, resumed)
    assert not any(".orbax-checkpoint-tmp" in p for p in os.listdir(tmp_path))


def test_keeps_last_k_and_best(tmp_path):
    config = load_config("ppo_cartpole", **SMALL["ppo_cartpole"])
    ckpt = Checkpointer(tmp_path, keep=2)
    state = train_seeds(config, 1, chunk_size=4).state
    scores = [5.0, 50.0, 1.0, 2.0, 3.0]
    for i, s in enumerate(scores, 1):
        m = {"episode_return": np.full((1, i), s, np.float32), "episodes": np.ones((1, i), np.float32)}
        ckpt.save(state, m, config=config.to_dict(), num_seeds=1, chunk_size=1)
    assert ckpt.steps() == [2, 4, 5]  # last two + the best (score 50 at step 2)
    assert ckpt.best_step() == 2 and ckpt.meta(2)["score"] == 50.0
    ckpt.close()


def _save_scored(ckpt: Checkpointer, step: int, value: float, num_seeds: int = 1, **kwargs) -> int:
    """Save a tiny state at ``step`` whose score is ``value`` (every iteration finishes one
    episode of return ``value``, so any final-return window averages to ``value``)."""
    metrics = {"episode_return": np.full((num_seeds, step), value, np.float32),
               "episodes": np.ones((num_seeds, step), np.float32)}
    return ckpt.save({"w": np.arange(3, dtype=np.float32)}, metrics, config={}, num_seeds=num_seeds,
                     chunk_size=1, **kwargs)


@pytest.mark.parametrize("async_save", [False, True])
def test_best_step_survives_a_reopen(tmp_path, async_save):
    """Retention is the same whether or not the run was reopened: the best step's score is read
    back from disk (orbax kept it only in memory, so the old code deleted step 4 at step 8)."""
    with Checkpointer(tmp_path, keep=2, async_save=async_save) as ckpt:
        for step, value in [(2, 20.0), (4, 100.0), (6, 30.0)]:
            _save_scored(ckpt, step, value)
        assert ckpt.steps() == [4, 6]
    with Checkpointer(tmp_path, keep=2, async_save=async_save) as ckpt:
        for step in (8, 10, 12, 14):
            _save_scored(ckpt, step, 50.0)
            assert 4 in ckpt.steps()
        assert ckpt.steps() == [4, 12, 14] and ckpt.best_step() == 4
    reopened = Checkpointer(tmp_path, read_only=True)
    assert reopened.best_step() == 4 and reopened.meta(4)["score"] == 100.0
    assert not any(".orbax-checkpoint-tmp" in p for p in os.listdir(tmp_path))  # deletions finished


def test_last_finite_step_is_kept(tmp_path):
    """A diverged seed makes a step non-finite; the newest step in which all seeds were finite
    stays (as does the best), however many diverged steps follow, also across a reopen."""
    finite, diverged = [None, None], [None, 4]
    with Checkpointer(tmp_path, keep=2) as ckpt:
        _save_scored(ckpt, 1, 100.0, num_seeds=2)  # the best, saved before `diverged` existed
        for step in (2, 3):
            _save_scored(ckpt, step, 10.0, num_seeds=2, diverged=finite)
        for step in (4, 5):
            _save_scored(ckpt, step, 10.0, num_seeds=2, diverged=diverged)
        _save_scored(ckpt, 6, 10.0, num_seeds=2, diverged=[np.int64(5), 4])
        assert ckpt.steps() == [1, 3, 5, 6]
        assert ckpt.last_finite_step() == 3 and ckpt.best_step() == 1
        assert ckpt.meta(6)["diverged"] == [5, 4] and ckpt.meta(1)["diverged"] is None
        for bad in ([None], [None, -1], [None, 2.5], [None, True]):  # refused before writing
            with pytest.raises(ValueError, match="diverged"):
                _save_scored(ckpt, 7, 10.0, num_seeds=2, diverged=bad)
        assert ckpt.steps() == [1, 3, 5, 6]
    with Checkpointer(tmp_path, keep=2) as ckpt:
        assert ckpt.last_finite_step() == 3
        for step in (7, 8):
            _save_scored(ckpt, step, 10.0, num_seeds=2, diverged=diverged)
        assert ckpt.steps() == [1, 3, 7, 8]
        _save_scored(ckpt, 9, 10.0, num_seeds=2)  # finite again (e.g. not checked): the last finite
        assert ckpt.steps() == [1, 8, 9] and ckpt.last_finite_step() == 9


def test_resumed_run_keeps_the_same_checkpoints(tmp_path):
    """A real PPO run saved after every iteration with keep=2, interrupted right after its best
    step and resumed, ends with exactly the steps the uninterrupted run keeps.

    The length is chosen from a first run's scores so that the best step is not one of the last
    two (the case the old code got wrong); a step's score depends only on the iterations before
    it (no lr annealing), so a shorter run is a prefix of the longer one."""
    small = dict(SMALL["ppo_cartpole"], anneal_lr=False)
    probe = train_seeds(load_config("ppo_cartpole", **small), 1, chunk_size=1)
    n = probe.metrics["loss"].shape[1]
    scores = np.array([score({k: v[:, :i] for k, v in probe.metrics.items()}) for i in range(1, n + 1)])
    scores = np.nan_to_num(scores, nan=-np.inf)  # NaN ranks lowest
    # lengths whose best step (ties go to the later one) is older than the last two
    older = [length for length in range(3, n + 1)
             if scores[:length - 2].max() > scores[length - 2:length].max()]
    length = older[-1] if older else n  # (scores that set a record every other step: no such case)
    config = load_config("ppo_cartpole", **dict(small, total_steps=length * 64 * 4))

    whole = train_seeds(config, 1, chunk_size=1, checkpoint_dir=tmp_path / "whole", keep=2)
    np.testing.assert_array_equal(whole.metrics["episode_return"],
                                  probe.metrics["episode_return"][:, :length])  # a prefix, as said
    kept = Checkpointer(tmp_path / "whole").steps()
    best = Checkpointer(tmp_path / "whole").best_step()
    if older:
        assert len(kept) == 3 and best == kept[0] < length - 1
    stop = best if older else length // 2  # the last step saved before the interruption

    def interrupt(done, metrics, seconds):
        if done > stop:  # raised before step stop + 1 is saved: stop is the newest on disk
            raise Interrupted

    with pytest.raises(Interrupted):
        train_seeds(config, 1, chunk_size=1, checkpoint_dir=tmp_path / "resumed", keep=2, on_chunk=interrupt)
    resumed = train_seeds(config, 1, checkpoint_dir=tmp_path / "resumed", keep=2, resume=True)
    assert resumed.resumed_from == stop
    assert Checkpointer(tmp_path / "resumed").steps() == kept


def test_cli_resume_and_load_policy(tmp_path, capsys):
    args = ["ppo_cartpole", "total_steps=4096", "num_steps=64", "update_epochs=1", "--chunk-size", "4",
            "--out", str(tmp_path)]
    assert main(["train", *args, "--keep", "1"]) == 0
    (run_dir,) = tmp_path.iterdir()
    full_rows = (run_dir / "metrics.jsonl").read_text().splitlines()
    full_state, config = load_policy(run_dir)
    assert config.total_steps == 4096 and config.hidden == (64, 64)
    assert sorted(os.listdir(run_dir / "checkpoints"))[-1] == "16"
    # Simulate a crash after iteration 8: checkpoint at 8, metrics.jsonl written to 12 (+ a torn line).
    ckpt_dir = run_dir / "checkpoints"
    for step in os.listdir(ckpt_dir):
        if step != "8" and step.isdigit():
            shutil.rmtree(ckpt_dir / step)
    if not (ckpt_dir / "8").exists():  # --keep 1 may have pruned it: recreate by a fresh run
        shutil.rmtree(ckpt_dir)
        cfg = load_config("ppo_cartpole", total_steps=4096, num_steps=64, update_epochs=1)
        with pytest.raises(Interrupted):
            train_seeds(cfg, 1, chunk_size=4, checkpoint_dir=ckpt_dir,
                        on_chunk=lambda d, m, s: (_ for _ in ()).throw(Interrupted) if d > 8 else None)
    (run_dir / "metrics.jsonl").write_text("\n".join(full_rows[:12]) + "\n" + full_rows[12][:20])
    (run_dir / "summary.json").unlink()
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir), "lr=1e-3"]) == 2
    assert "cannot change the config" in capsys.readouterr().err
    assert main(["train", "--resume", str(run_dir)]) == 0
    assert "resumed at iteration 8/16" in capsys.readouterr().out
    assert (run_dir / "metrics.jsonl").read_text().splitlines() == full_rows
    assert json.loads((run_dir / "summary.json").read_text())["seeds"] == 1
    state, _ = load_policy(run_dir)
    for x, y in zip(_raw(full_state), _raw(state)):
        np.testing.assert_array_equal(x, y)
    best_state, _ = load_policy(run_dir, step="best")
    assert jax.tree.structure(best_state) == jax.tree.structure(state)


def _tiny_save(ckpt: Checkpointer, iterations: int = 1) -> int:
    metrics = {"episode_return": np.ones((1, iterations), np.float32), "episodes": np.ones((1, iterations), np.float32)}
    return ckpt.save({"w": np.arange(3, dtype=np.float32)}, metrics, config={}, num_seeds=1, chunk_size=1)


def test_background_save_failure_is_raised_on_the_caller(tmp_path):
    ckpt = Checkpointer(tmp_path, async_save=True)

    def broken_disk(*args, **kwargs):
        raise OSError("disk full")

    ckpt._manager.save = broken_disk
    assert _tiny_save(ckpt) == 1  # returns at once: the write fails in the writer thread
    with pytest.raises(RuntimeError, match="disk full"):
        ckpt.wait()
    ckpt.wait()  # reported once
    with pytest.raises(RuntimeError, match="disk full"):  # also when it is the last save
        _tiny_save(ckpt, 2)
        ckpt.close()


def test_background_save_failure_does_not_hide_the_first_error(tmp_path):
    ckpt = Checkpointer(tmp_path, async_save=True)
    ckpt._manager.save = lambda *args, **kwargs: (_ for _ in ()).throw(OSError("disk full"))
    with pytest.warns(UserWarning, match="disk full"), pytest.raises(Interrupted):
        with ckpt:
            _tiny_save(ckpt)
            raise Interrupted


@pytest.fixture
def ctrl_c():
    """SIGINT raises KeyboardInterrupt during the test, also when the tests run as a background
    job (which starts with SIGINT ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_inside_wait_does_not_pass_for_a_finished_save(tmp_path, ctrl_c):
    """A KeyboardInterrupt landing while the caller waits for the writer must leave the save
    counted as running (CPython 3.11's Thread.join marks the thread finished in that case)."""
    ckpt = Checkpointer(tmp_path, async_save=True)
    release = threading.Event()
    real_save = ckpt._manager.save
    ckpt._manager.save = lambda *args, **kwargs: (release.wait(10), real_save(*args, **kwargs))
    _tiny_save(ckpt)
    main = threading.main_thread().ident  # a real SIGINT to the main thread, as Ctrl-C sends
    with pytest.raises(KeyboardInterrupt):  # (the timer starts inside: on a loaded machine its
        threading.Timer(0.3, signal.pthread_kill, (main, signal.SIGINT)).start()  # start can take 0.3 s)
        ckpt.wait()
    with pytest.raises(TimeoutError):  # still writing, and known to be
        ckpt.wait(timeout=0.2)
    release.set()
    ckpt.close()
    assert Checkpointer(tmp_path, read_only=True).steps() == [1]


def test_background_saves_are_written_in_order(tmp_path):
    with Checkpointer(tmp_path, keep=3, async_save=True) as ckpt:
        for i in range(1, 5):
            _tiny_save(ckpt, i)
        assert ckpt.steps() == [2, 3, 4]  # waits for the save in flight first
    assert Checkpointer(tmp_path, read_only=True).meta()["iterations_done"] == 4


# --------------------------------------------------------------------------- packed format
class _Pair(NamedTuple):
    a: Any
    b: Any


def _mixed_state(n_leaves: int = 3):
    """A state of many small leaves of every kind a TrainState has (and a few it might)."""
    return {
        "params": [np.full((2, 3), i, np.float32) for i in range(n_leaves)],
        "opt": _Pair(np.arange(4, dtype=np.int32).reshape(2, 2), np.array([True, False])),
        "keys": jax.random.split(jax.random.key(3), 2),
        "half": np.linspace(0, 1, 5).astype(jnp.bfloat16),
        "scalar": np.float32(2.5),
        "empty": np.zeros((2, 0), np.float32),
    }


def _metrics(iterations: int, names: int = 2) -> dict[str, np.ndarray]:
    m = {"episode_return": np.arange(iterations, dtype=np.float32)[None], "episodes": np.ones((1, iterations), np.float32)}
    m.update({f"m{j}": np.full((1, iterations), j, np.int32 if j % 2 else np.float32) for j in range(names)})
    return m


def test_save_writes_one_file_per_dtype_however_many_leaves(tmp_path):
    """A save writes a packed vector per dtype, not an array per leaf: orbax/tensorstore kept
    ~1 KB of host memory per saved array per save, forever (see the module's "Why packed")."""
    state = _mixed_state(n_leaves=200)
    metrics = _metrics(5, names=30)
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(state, metrics, config={}, num_seeds=1, chunk_size=1)
        restored = ckpt.restore(jax.eval_shape(lambda: state))
    files = lambda item: sorted(p.name for p in (tmp_path / "5" / item).iterdir() if p.name != "commit_success.txt")  # noqa: E731
    assert files("state") == ["bfloat16.bin", "bool.bin", "float32.bin", "int32.bin", "uint32.bin"]
    assert files("history") == ["float32.bin", "int32.bin"]
    # exact structure (NamedTuple, typed keys), dtypes and values
    assert jax.tree.structure(restored.state) == jax.tree.structure(state)
    assert isinstance(restored.state["opt"], _Pair)
    for x, y in zip(jax.tree.leaves(restored.state), jax.tree.leaves(state)):
        assert x.dtype == y.dtype and x.shape == y.shape
    for x, y in zip(_raw(restored.state), _raw(state)):
        np.testing.assert_array_equal(x, y)
    assert list(restored.metrics) == list(metrics)
    for k in metrics:
        assert restored.metrics[k].dtype == metrics[k].dtype
        np.testing.assert_array_equal(restored.metrics[k], metrics[k])


_RSS_SCRIPT = """
import sys, numpy as np, jax
from jaxrl.checkpoint import Checkpointer
def rss_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
state = {"w": [np.full((1, 8), i, np.float32) for i in range(150)],
         "n": [np.full((1, 2), i, np.int32) for i in range(30)], "key": jax.random.split(jax.random.key(0), 1)}
names = ["episode_return", "episodes"] + [f"m{j}" for j in range(13)]
rows = []
with Checkpointer(sys.argv[1], keep=2, async_save=True) as ckpt:
    for i in range(1, 81):
        ckpt.save(state, {k: np.ones((1, i), np.float32) for k in names}, config={}, num_seeds=1, chunk_size=1)
        ckpt.wait()
        rows.append(rss_kib())
print(np.polyfit(np.arange(20, 80), np.array(rows[20:], float), 1)[0])
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads resident memory from /proc")
def test_host_memory_does_not_grow_per_save(tmp_path):
    """80 saves of a state with ~180 leaves: resident memory grows by less than 32 KiB per save
    after 20 saves of warm-up (measured 6-7 KiB, falling to <1 KiB over 1,600 saves; one array
    per leaf through orbax/tensorstore grew it by ~1 KB per array per save, here ~230 KiB per
    save, forever). In a fresh process, so that nothing else of the test session moves its memory."""
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    kib_per_save = float(out.stdout.split()[-1])
    assert kib_per_save < 32, f"resident memory grows by {kib_per_save:.1f} KiB per checkpoint save"


def test_checkpoint_of_another_structure_is_refused_without_fallback(tmp_path):
    state = _mixed_state()
    with Checkpointer(tmp_path) as ckpt:
        for i in (1, 2):
            ckpt.save(state, _metrics(i), config={}, num_seeds=1, chunk_size=1)
        other_shape = dict(state, scalar=np.zeros(3, np.float32))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # refused at once, not "trying an older one"
            with pytest.raises(IncompatibleCheckpointError, match=r"\['scalar'\] \(\) float32 where the train "
                                                                   r"state has \['scalar'\] \(3,\) float32"):
                ckpt.restore(jax.eval_shape(lambda: other_shape))
            with pytest.raises(IncompatibleCheckpointError, match="9 arrays, the train state has 8"):
                ckpt.restore(jax.eval_shape(lambda: {k: v for k, v in state.items() if k != "empty"}))
            with pytest.raises(IncompatibleCheckpointError, match="PRNG key data"):
                ckpt.restore(jax.eval_shape(lambda: dict(state, keys=np.zeros((2, 2), np.uint32))))
        assert ckpt.steps() == [1, 2]  # nothing set aside


def _old_format_step(ckpt_dir, step: int) -> None:
    """Rewrite checkpoint ``step`` the way the previous jaxrl wrote it: one orbax array per leaf
    (keys as raw data), the metrics as a pytree, and no ``format`` in the meta."""
    _, config = load_policy(ckpt_dir, step)
    ckpt = Checkpointer(ckpt_dir, read_only=True)
    meta = ckpt.meta(step)
    restored = ckpt.restore(abstract_state(config, meta["num_seeds"]), step)
    ckpt.close()
    shutil.rmtree(ckpt_dir / str(step))
    old_meta = {k: v for k, v in meta.items() if k not in ("format", "state_leaves")}
    old_meta["key_impls"] = [impl for *_, impl in meta["state_leaves"]]
    manager = ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False))
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(jax.tree.unflatten(jax.tree.structure(restored.state), _raw(restored.state))),
        history=ocp.args.StandardSave(restored.metrics), meta=ocp.args.JsonSave(old_meta)))
    manager.close()


def test_old_format_checkpoint_gives_a_clear_error(tmp_path, capsys):
    args = ["ppo_cartpole", "total_steps=2048", "num_steps=64", "update_epochs=1", "--chunk-size", "4",
            "--out", str(tmp_path)]
    assert main(["train", *args, "--keep", "1"]) == 0
    (run_dir,) = tmp_path.iterdir()
    ckpt_dir = run_dir / "checkpoints"
    for step in Checkpointer(ckpt_dir).steps()[:-1]:
        shutil.rmtree(ckpt_dir / str(step))
    _old_format_step(ckpt_dir, 8)
    config = load_config("ppo_cartpole", total_steps=2048, num_steps=64, update_epochs=1)
    with pytest.raises(IncompatibleCheckpointError, match="written by an older jaxrl"):
        Checkpointer(ckpt_dir).restore(abstract_state(config, 1))
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir)]) == 2
    assert "jaxrl: error: checkpoint" in capsys.readouterr().err
    assert main(["eval", str(run_dir), "--episodes", "1"]) == 2
    assert "written by an older jaxrl" in capsys.readouterr().err
    assert Checkpointer(ckpt_dir).steps() == [8]  # left as it was


def test_resume_past_a_damaged_step_saves_that_step_again(tmp_path):
    """--resume falls back past a damaged newest step N; the resumed run reaches N again and must
    be able to save it (the old code raised orbax's StepAlreadyExistsError). The damaged step is
    renamed aside with a warning, not deleted."""
    config = load_config("ppo_cartpole", **SMALL["ppo_cartpole"])
    full = train_seeds(config, 1, chunk_size=4)
    with pytest.raises(Interrupted):
        train_seeds(config, 1, chunk_size=4, checkpoint_dir=tmp_path, keep=3,
                    on_chunk=lambda d, m, s: (_ for _ in ()).throw(Interrupted) if d > 12 else None)
    assert Checkpointer(tmp_path).steps() == [4, 8, 12]
    shutil.rmtree(tmp_path / "12" / "state")  # e.g. lost by a failing disk
    damaged = sorted(os.listdir(tmp_path / "12"))
    # read-only: skipped with a warning, but left where it is
    with pytest.warns(UserWarning, match="trying an older one"):
        assert Checkpointer(tmp_path, read_only=True).restore(abstract_state(config, 1)).step == 8
    assert Checkpointer(tmp_path).steps() == [4, 8, 12]
    with pytest.warns(UserWarning, match=f"moved the unreadable checkpoint {tmp_path / '12'} aside"):
        resumed = train_seeds(config, 1, checkpoint_dir=tmp_path, keep=3, resume=True)
    assert resumed.resumed_from == 8
    assert_same_run(full, resumed)
    assert Checkpointer(tmp_path).steps() == [8, 12, 16]  # 12 saved again (reopened: nothing cleaned up)
    (aside,) = [p for p in tmp_path.iterdir() if p.name.startswith("12.damaged-")]
    assert sorted(os.listdir(aside)) == damaged  # kept as it was
    assert Checkpointer(tmp_path).meta(12)["iterations_done"] == 12


def test_resume_past_a_step_with_damaged_metadata(tmp_path):
    """The newest step's metadata is unreadable: the resume checks and restores the newest step
    whose metadata can be read (the old code failed with a KeyError before restoring)."""
    config = load_config("ppo_cartpole", **SMALL["ppo_cartpole"])
    with pytest.raises(Interrupted):
        train_seeds(config, 1, chunk_size=4, checkpoint_dir=tmp_path, keep=3,
                    on_chunk=lambda d, m, s: (_ for _ in ()).throw(Interrupted) if d > 12 else None)
    shutil.rmtree(tmp_path / "12" / "meta")
    with pytest.warns(UserWarning, match="unreadable metadata"):
        resumed = train_seeds(config, 1, checkpoint_dir=tmp_path, keep=3, resume=True)
    assert resumed.resumed_from == 8
