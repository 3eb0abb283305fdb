"""Shared helpers for the test suite."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import pytest

import jaxrl
from jaxrl.core import Context
from jaxrl.loop import CPU_COMPILER_OPTIONS

# Every program of the suite is compiled with the XLA options jaxrl's own entry points use on a CPU
# (jaxrl.compiler_options()), also those a test jits itself: faster to compile, as users' runs are.
# XLA reads XLA_FLAGS when the first backend starts, which importing jax and jaxrl does not do.
COMPILER_FLAGS = {name: f"--{name}={value}" for name, value in CPU_COMPILER_OPTIONS.items()}
for _name, _flag in COMPILER_FLAGS.items():
    if _name not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_flag}".strip()


def xla_flags(devices: int | None = None) -> str:
    """XLA_FLAGS for a test's subprocess that sets its own: the CPU compiler options this process
    uses (a subprocess's raw ``jax.jit`` programs compile with them too, as users' runs do) and,
    when given, a number of simulated CPU devices."""
    devices_flag = [f"--xla_force_host_platform_device_count={devices}"] if devices else []
    return " ".join(devices_flag + list(COMPILER_FLAGS.values()))


# In-process `jaxrl train/sweep/bench` calls must not turn on the persistent compilation cache in
# ~/.cache for the whole test process (test_compile_cache.py runs subprocesses with their own).
os.environ.setdefault("JAXRL_NO_COMPILE_CACHE", "1")


@pytest.fixture(scope="session", autouse=True)
def _session_compilation_cache(tmp_path_factory):
    """One persistent compilation cache for this test session, shared by the xdist workers (their
    temporary folders have a common parent), by the subprocesses the tests start (through the
    environment; the tests of the cache itself and the SIGKILL tests give theirs their own) and
    removed with pytest's old temporary folders: many tests compile a program another test, or
    an earlier run in the same subprocess, compiled already (measured: 14% less time on four
    files; a warning test went from 15 s to 3 s sharing the program of the test before it)."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if base.name.startswith("popen-gw") else base) / "jax-compilation-cache"
    settings = {"jax_compilation_cache_dir": str(folder), "jax_persistent_cache_min_compile_time_secs": 0.3}
    for name, value in settings.items():
        jax.config.update(name, value)
        os.environ[name.upper()] = str(value)
    yield


def run(config, seeds: int = 1, hparams=None):
    """Train ``seeds`` vmapped seeds of ``config``; returns (train, output) on the host."""
    train = jaxrl.make_train(config)
    out = jax.jit(jax.vmap(train, in_axes=(0, None)))(jaxrl.seed_keys(config.seed, seeds), hparams)
    return train, jax.device_get(out)


def context(train) -> Context:
    """A Context for calling an algorithm's network functions outside the loop."""
    return Context(train.config, train.spec, train.config.hparams(), jnp.int32(0))


@pytest.fixture(autouse=True)
def _no_rounding_warnings(recwarn):
    yield


# an observation of each kind of probe (its states: the random sign, or the two steps of discount)
PROBE_OBS = {"constant": [0.0], "obs": [-1.0, 1.0], "discount": [0.0, 1.0], "action": [0.0], "obs-action": [-1.0, 1.0]}


def probe_obs(kind: str) -> jnp.ndarray:
    return jnp.array(PROBE_OBS[kind])[:, None]


def on_every_probe(config):
    """Seed 0 of ``config`` trained on each probe (``probes.PROBES`` order) by one compiled
    program: the probe's kind is an env param, vmapped. Returns ``(train, agent)`` with
    ``agent(i)`` the agent trained on probe ``i``; every one stayed finite."""
    from jaxrl.envs import probes

    train = jaxrl.make_train(config)
    kinds = jnp.arange(len(probes.PROBES), dtype=jnp.int32)
    out = jax.device_get(jax.jit(jax.vmap(train, in_axes=(None, 0)))(jax.random.key(0), {"env.kind": kinds}))
    assert (out.state.diverged_at == -1).all()
    return train, lambda i: jax.tree.map(lambda x: x[i], out.state.agent)

