"""Real interruptions of `jaxrl train` subprocesses: SIGKILL during a save, then --resume, ends
bit-identical to the uninterrupted run; Ctrl-C finishes the save in flight and exits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxrl.algos import load_config
from jaxrl.checkpoint import Checkpointer
from jaxrl.runs import abstract_state, load_policy

SMALL = ["total_steps=6144", "num_steps=64", "update_epochs=1"]  # 24 iterations of 256 steps
LONG = ["total_steps=49152", "num_steps=64", "update_epochs=1"]  # 192: still running when Ctrl-C lands
TMP_MARK = ".orbax-checkpoint-tmp"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """One compilation cache for this module: only the first subprocess compiles."""
    return tmp_path_factory.mktemp("compile_cache")


def _env(cache_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE", "JAXRL_"))}
    env["JAXRL_CACHE_DIR"] = str(cache_dir)
    return env


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "jaxrl.cli", "train", *args]


def _start_saving_every_chunk(out: Path, cache_dir: Path, log: Path, budget: list[str] = SMALL) -> subprocess.Popen:
    """A run that saves after every one-iteration chunk, so a save is almost always in flight.
    Ctrl-C reaches it even when the tests run as a background job (which ignores SIGINT and would
    pass that on: Python then installs no KeyboardInterrupt handler)."""
    args = ["ppo_cartpole", *budget, "--chunk-size", "1", "--checkpoint-seconds", "0", "--out", str(out)]
    return subprocess.Popen(_command(*args), env=_env(cache_dir), stdout=log.open("w"),
                            stderr=subprocess.STDOUT, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_save_in_flight(proc: subprocess.Popen, out: Path, log: Path) -> Path:
    """Poll until one checkpoint is complete and the next is being written; its folder."""
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and proc.poll() is None:
        for ckpt_dir in out.glob("*/checkpoints"):
            names = os.listdir(ckpt_dir)
            if any(n.isdigit() for n in names) and any(TMP_MARK in n for n in names):
                return ckpt_dir
        time.sleep(0.002)
    proc.kill()
    pytest.fail(f"no save in flight seen (exit code {proc.poll()}):\n{log.read_text()[-3000:]}")


def _raw_leaves(state) -> list[np.ndarray]:
    is_key = lambda x: jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)  # noqa: E731
    return [np.asarray(jax.random.key_data(x) if is_key(x) else x) for x in jax.tree.leaves(state)]


def test_sigkill_during_a_save_then_resume_is_bit_identical(tmp_path, cache_dir):
    killed_out, log = tmp_path / "killed", tmp_path / "killed.log"
    proc = _start_saving_every_chunk(killed_out, cache_dir, log)
    ckpt_dir = _wait_for_save_in_flight(proc, killed_out, log)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    run_dir = ckpt_dir.parent
    assert not (run_dir / "summary.json").exists()  # it really died before the end
    left = os.listdir(ckpt_dir)
    complete = sorted(int(n) for n in left if n.isdigit())
    assert complete and complete[-1] < 24

    # The newest complete checkpoint restores; a half-written one (tmp folder) is never listed.
    config = load_config("ppo_cartpole", **dict(a.split("=") for a in SMALL))
    assert Checkpointer(ckpt_dir, read_only=True).restore(abstract_state(config, 1)).step == complete[-1]

    # Resume, and side by side (both load their programs from the cache), the uninterrupted run.
    resume = _command("--resume", str(run_dir), "--checkpoint-seconds", "60", "--quiet")
    whole = _command("ppo_cartpole", *SMALL, "--chunk-size", "1", "--checkpoint-seconds", "60", "--quiet",
                     "--out", str(tmp_path / "reference"))
    procs = [subprocess.Popen(c, env=_env(cache_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for c in (resume, whole)]
    (resumed_out, _), (ref_out, _) = [p.communicate(timeout=150) for p in procs]
    resumed_rc, ref_rc = [p.returncode for p in procs]
    assert resumed_rc == 0, resumed_out
    assert ref_rc == 0, ref_out
    assert f"resumed at iteration {complete[-1]}/24" in resumed_out
    assert not any(TMP_MARK in n for n in os.listdir(ckpt_dir))  # the killed save's leftovers are gone
    (ref_dir,) = (tmp_path / "reference").iterdir()
    assert (run_dir / "metrics.jsonl").read_text() == (ref_dir / "metrics.jsonl").read_text()
    for name in ("final_return", "env_steps_per_seed"):
        assert (json.loads((run_dir / "summary.json").read_text())[name]
                == json.loads((ref_dir / "summary.json").read_text())[name])
    state, _ = load_policy(run_dir)
    ref_state, _ = load_policy(ref_dir)
    assert jax.tree.structure(state) == jax.tree.structure(ref_state)
    for x, y in zip(_raw_leaves(state), _raw_leaves(ref_state)):
        np.testing.assert_array_equal(x, y)


def test_ctrl_c_finishes_the_save_in_flight_and_exits(tmp_path, cache_dir):
    out, log = tmp_path / "out", tmp_path / "run.log"
    # A longer run than SMALL's: on a loaded machine the poll below can first see a save in flight
    # near the end, and the run must not finish before the signal lands.
    proc = _start_saving_every_chunk(out, cache_dir, log, LONG)
    ckpt_dir = _wait_for_save_in_flight(proc, out, log)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130, log.read_text()[-3000:]
    assert "interrupted; continue with: jaxrl train --resume" in log.read_text()
    names = os.listdir(ckpt_dir)
    assert not any(TMP_MARK in n for n in names), names  # finished, not abandoned
    config = load_config("ppo_cartpole", **dict(a.split("=") for a in LONG))
    newest = max(int(n) for n in names if n.isdigit())
    assert Checkpointer(ckpt_dir, read_only=True).restore(abstract_state(config, 1)).step == newest
