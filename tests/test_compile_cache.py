"""Persistent compilation cache: a second identical `jaxrl train` loads its programs instead of
compiling them; where the cache goes, and when jaxrl leaves JAX's settings alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxrl import cli
from jaxrl.compile_cache import cpu_tag

_OURS = ("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE", "JAXRL_", "XDG_CACHE_HOME", "TF_CPP_MIN_LOG_LEVEL")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OURS)}
    return {**env, **extra}


def test_second_identical_train_loads_every_program_from_the_cache(tmp_path):
    env = _env(JAXRL_CACHE_DIR=str(tmp_path / "cache"))
    runs = []
    for i in range(2):
        out = tmp_path / f"run{i}"
        proc = subprocess.run([sys.executable, "-m", "jaxrl.cli", "train", "ppo_cartpole", "total_steps=2048",
                               "num_steps=64", "update_epochs=1", "--checkpoint-every", "-1", "--quiet",
                               "--out", str(out)], env=env, capture_output=True, text=True, timeout=170)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        (summary,) = out.glob("*/summary.json")
        runs.append((json.loads(summary.read_text()), proc))
    (first, _), (second, proc) = runs
    assert first["compile_cache_lookups"] >= 2 and first["compile_cache_hits"] == 0
    assert second["compile_cache_hits"] == second["compile_cache_lookups"] == first["compile_cache_lookups"]
    assert "programs from the compilation cache" in proc.stdout
    assert second["compile_seconds"] < first["compile_seconds"]
    assert "cpu_aot_loader" not in proc.stderr  # XLA's spurious per-load error is kept quiet
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [cpu_tag()]


_SHOW = ("import os, sys; from jaxrl.compile_cache import enable_compilation_cache as enable; "
         "print(enable()); print(os.environ.get('JAX_COMPILATION_CACHE_DIR')); "
         "print(os.environ.get('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS')); print('jax' in sys.modules)")


def _show(**env: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", _SHOW], env=_env(**env), capture_output=True, text=True,
                         timeout=60, check=True)
    return out.stdout.split("\n")[:4]


def test_where_the_cache_goes(tmp_path):
    ours = str(tmp_path / "mine" / cpu_tag())
    assert _show(JAXRL_CACHE_DIR=str(tmp_path / "mine")) == [ours, ours, "0.0", "False"]  # jax not imported
    xdg = str(tmp_path / "xdg" / "jaxrl" / "jax" / cpu_tag())
    assert _show(XDG_CACHE_HOME=str(tmp_path / "xdg"))[:2] == [xdg, xdg]
    # A cache the user gave JAX is kept, thresholds included; the switch turns ours off.
    assert _show(JAX_COMPILATION_CACHE_DIR="/elsewhere") == ["/elsewhere", "/elsewhere", "None", "False"]
    assert _show(JAXRL_NO_COMPILE_CACHE="1", JAXRL_CACHE_DIR=str(tmp_path)) == ["None", "None", "None", "False"]
    (tmp_path / "a_file").write_text("")  # a folder that cannot be made: off, with a warning
    assert _show(JAXRL_CACHE_DIR=str(tmp_path / "a_file")) == ["None", "None", "None", "False"]


def test_enable_after_jax_is_imported_caches_later_programs(tmp_path):
    code = ("import jax, jax.numpy as jnp; jnp.ones(3).sum(); "
            "from jaxrl.compile_cache import enable_compilation_cache, cache_counts; "
            f"path = enable_compilation_cache({str(tmp_path)!r}); cache_counts(); "
            "jax.jit(lambda x: x * 2 + 1)(jnp.ones(3)); "
            "print(path == jax.config.jax_compilation_cache_dir, *cache_counts())")
    first, second = [subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True,
                                    timeout=60) for _ in range(2)]
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert first.stdout.split() == ["True", "1", "0"] and second.stdout.split() == ["True", "1", "1"]
    assert "cpu_aot_loader" not in second.stderr


def test_no_compile_cache_flag(monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "enable_compilation_cache", lambda enabled=True: calls.append(enabled))
    for command in (["train"], ["bench"], ["sweep", "--grid", "lr=1e-3"]):
        # an unknown config key is refused before anything compiles, after the cache is set up
        assert cli.main([*command[:1], "ppo_cartpole", "bogus_key=1", *command[1:], "--no-compile-cache"]) == 2
        assert cli.main([*command[:1], "ppo_cartpole", "bogus_key=1", *command[1:]]) == 2
    assert calls == [False, True] * 3


@pytest.mark.parametrize("value", ["", "0"])
def test_switch_values_that_keep_the_cache_on(tmp_path, value):
    assert _show(JAXRL_NO_COMPILE_CACHE=value, JAXRL_CACHE_DIR=str(tmp_path))[0] == str(tmp_path / cpu_tag())


def test_no_lookups_are_counted_without_a_cache():
    code = ("import jax; from jaxrl.compile_cache import cache_counts; cache_counts(); "
            "jax.jit(lambda x: x + 1)(1.0); print(*cache_counts())")
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "0"]  # JAX itself reports a cache request per compile even then
