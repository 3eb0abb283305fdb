"""Persistent compilation cache: a second identical `jaxrl train` loads its programs instead of
compiling them; where the cache goes, and when jaxrl leaves JAX's settings alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from jaxrl import cli
from jaxrl.compile_cache import BoundedCache, cpu_tag, parse_size
from jaxrl.config import ConfigError

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
    # JAX's variables are set before jax is imported (then, to hand JAX jaxrl's bounded store)
    assert _show(JAXRL_CACHE_DIR=str(tmp_path / "mine")) == [ours, ours, "0.0", "True"]
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

    def enable(enabled=True):  # stands in for the cache, then stops the command before it compiles
        calls.append(enabled)
        raise ConfigError("stop here")

    monkeypatch.setattr(cli, "enable_compilation_cache", enable)
    for command in (["train"], ["bench"], ["sweep", "--grid", "lr=1e-3"]):
        assert cli.main([*command[:1], "ppo_cartpole", *command[1:], "--no-compile-cache"]) == 2
        assert cli.main([*command[:1], "ppo_cartpole", *command[1:]]) == 2
        # a bad config is refused before the cache is turned on (which imports jax)
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


# Programs named by the arguments, each compiled (or loaded) in turn; prints lookups and hits.
_PROGRAMS = ("import sys, time, numpy as np; from jaxrl.compile_cache import enable_compilation_cache, cache_counts; "
             "enable_compilation_cache(sys.argv[1]); import jax, jax.numpy as jnp; cache_counts()\n"
             "for name in sys.argv[2:]:\n"
             "    c = float(sum(map(ord, name)))\n"
             "    def f(x): return jnp.sin(x) * c + x\n"
             "    f.__name__ = name; time.sleep(0.05)  # apart on a file system's coarse clock\n"
             "    assert np.allclose(jax.jit(f)(np.ones(8, np.float32)), np.sin(1) * c + 1, rtol=1e-5)\n"
             "print(*cache_counts())")


def _compile(cache: Path, *names: str, **env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-c", _PROGRAMS, str(cache), *names], env=_env(**env),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _entries(cache: Path) -> dict[str, int]:
    """Program name -> size of its cache entry."""
    return {p.name.removeprefix("jit_").split("-")[0]: p.stat().st_size for p in (cache / cpu_tag()).glob("*-cache")}


def test_the_cache_keeps_the_most_recently_used_programs_within_its_size_bound(tmp_path):
    cache = tmp_path / "cache"
    _compile(cache, "pa", "pb", "pc", JAXRL_CACHE_MAX_SIZE="-1")  # -1: no bound
    sizes = _entries(cache)
    assert sorted(sizes) == ["pa", "pb", "pc"]
    bound = int(3.5 * max(sizes.values()))  # room for three of these programs, not four
    # pa, the oldest, is used again before pd and pe are added: pb and pc are the least recently used
    proc = _compile(cache, "pa", "pd", "pe", JAXRL_CACHE_MAX_SIZE=str(bound))
    assert proc.stdout.split() == ["3", "1"] and not proc.stderr
    entries = _entries(cache)
    assert sorted(entries) == ["pa", "pd", "pe"]
    assert sum(entries.values()) <= bound


def test_a_truncated_entry_costs_one_compile_and_no_warning(tmp_path):
    cache = tmp_path / "cache"
    _compile(cache, "pa", "pb")
    complete = _entries(cache)
    for name, keep in (("pa", 0.5), ("pb", 0)):  # as a write killed midway leaves it (even before it began)
        (entry,) = (cache / cpu_tag()).glob(f"jit_{name}-*-cache")
        entry.write_bytes(entry.read_bytes()[:int(keep * complete[name])])
    healing = _compile(cache, "pa", "pb")
    assert healing.stdout.split() == ["2", "0"] and not healing.stderr  # compiled again, quietly
    rewritten = _entries(cache)
    assert rewritten.keys() == complete.keys() and all(rewritten[k] > 0.9 * complete[k] for k in complete)
    healed = _compile(cache, "pa", "pb")
    assert healed.stdout.split() == ["2", "2"] and not healed.stderr


def test_processes_sharing_a_bounded_cache(tmp_path):
    cache, bound = tmp_path / "cache", 8192  # room for about three of these programs
    runs = [subprocess.Popen([sys.executable, "-c", _PROGRAMS, str(cache), *[f"{p}{i}" for i in range(5)]],
                             env=_env(JAXRL_CACHE_MAX_SIZE="8K"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for p in ("q", "r")]
    for run in runs:
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0 and out.split() == ["5", "0"] and not err, out + err
    files = list((cache / cpu_tag()).iterdir())
    assert files and all(f.name.endswith("-cache") for f in files)  # no partial writes left
    assert sum(f.stat().st_size for f in files) <= bound


def test_a_cache_dir_given_to_jax_keeps_jaxs_own_store(tmp_path):
    theirs = tmp_path / "theirs"  # a 1-byte bound would keep nothing, were it applied there
    proc = _compile(tmp_path / "mine", "pa", JAX_COMPILATION_CACHE_DIR=str(theirs), JAXRL_CACHE_MAX_SIZE="1",
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    assert not proc.stderr and not (tmp_path / "mine").exists()
    assert [p.name.split("-")[0] for p in theirs.iterdir()] == ["jit_pa"]


def _entry(size: int) -> bytes:
    """A cache entry that decompresses, about ``size`` bytes long (random bytes do not compress)."""
    from jax._src.compilation_cache import compress_executable

    return compress_executable(os.urandom(size))


def test_bounded_cache_drops_least_recently_used_files_first(tmp_path):
    store = BoundedCache(tmp_path, max_size=3500)
    for key in "abc":
        store.put(key, _entry(1000))
    stale = tmp_path / ".partial-1-0"  # a write killed midway, long ago
    stale.write_bytes(b"x" * 300)
    for age, name in enumerate(["c-cache", "b-cache", "a-cache", stale.name]):  # oldest last
        then = time.time_ns() - (age + 1) * 10**9
        os.utime(tmp_path / name, ns=(then, then))
    assert store.get("a") == (tmp_path / "a-cache").read_bytes()  # a is used: now the newest
    store.put("d", _entry(1000))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-cache", "c-cache", "d-cache"]
    store.max_size = 2500  # a lower bound holds from the next write, or from shrink()
    store.shrink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-cache", "d-cache"]
    with pytest.warns(UserWarning, match="exceed the cache's bound"):
        store.put("e", _entry(3000))  # too large to keep: not stored
    assert store.get("e") is None and store.get("d") is not None


def test_bounded_cache_damaged_entries_and_interrupted_writes(tmp_path, monkeypatch):
    store = BoundedCache(tmp_path, max_size=-1)  # -1: no bound
    entry = _entry(50_000)
    (tmp_path / "cut-cache").write_bytes(entry[:20_000])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert store.get("cut") is None and not (tmp_path / "cut-cache").exists()
    store.put("cut", entry)
    assert store.get("cut") == entry

    def killed(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        store.put("new", entry)
    assert [p.name for p in tmp_path.iterdir()] == ["cut-cache"]  # no entry, no partial file


def test_parse_size():
    assert parse_size("2G") == parse_size("2 GiB") == parse_size("2gb") == 2 * 1024**3
    assert parse_size("500M") == 500 * 1024**2 and parse_size("1.5k") == 1536 and parse_size(4096) == 4096
    assert parse_size("-1") == parse_size(-1) == -1
    for bad in ("0", "-2", "lots", "2X", "", "1e9"):
        with pytest.raises(ConfigError, match="expected a cache size"):
            parse_size(bad)


def test_a_bad_size_bound_is_refused_before_anything_runs(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "jaxrl.cli", "train", "ppo_cartpole", "--out", str(tmp_path / "runs")],
                          env=_env(JAXRL_CACHE_MAX_SIZE="lots", JAXRL_CACHE_DIR=str(tmp_path / "cache")),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "jaxrl: error: JAXRL_CACHE_MAX_SIZE='lots': expected a cache size" in proc.stderr
    assert list(tmp_path.iterdir()) == []
