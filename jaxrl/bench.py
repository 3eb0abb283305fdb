"""Throughput benchmark: compile seconds and env steps/s of the whole training program.

For each seed count the full ``jax.jit(jax.vmap(train))`` (plain ``jax.jit(train)`` for one
seed) is compiled ahead of time (timed alone), then run ``repeats`` times; the fastest run is
reported, so a first-run warm-up never counts.

Scaling curves: seed counts are measured in ascending order (:func:`seed_counts` reads
``"1:4096"`` as 1, 2, 4, ..., 4096). Before a count runs, its compiled program's memory
analysis (arguments + outputs + temporaries) is compared with the memory the device has free
(host RAM for a CPU device) or with ``memory_limit``; the first count that would not fit, or
that XLA refuses with RESOURCE_EXHAUSTED, ends that config's curve, and ``stopped`` records
which count and why. On a CPU this check is what keeps an oversized run from being killed by
the operating system, which XLA cannot report as an error.

Report layout (:func:`benchmark_all`, what ``jaxrl bench --json`` writes): ``date``, ``device``,
``versions``, ``machine`` and ``benchmarks``, a list with one entry per config (``config_name``,
``algo``, ``env``, ``config``, ``env_steps_per_seed``, ``repeats``, ``results`` (one row per seed
count) and ``stopped``). With a single config its entry's fields are also at the top level, as
in the one-config reports of earlier versions.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jaxrl.config import Config, ConfigError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

GIB = 2**30
MAX_SEED_COUNTS = 64  # a --seeds spec expanding to more counts than this is surely a typo

Row = dict[str, Any]


# --------------------------------------------------------------------------- seed counts
def seed_counts(spec: str) -> list[int]:
    """Parse a seed-count spec into ascending, distinct counts.

    Comma-separated items, each a count ``N`` or a geometric range ``START:MAX[:FACTOR]``:
    ``START, START*FACTOR, START*FACTOR**2, ...`` up to and including ``MAX`` when it is on the
    progression (``FACTOR`` defaults to 2). ``"1:4096"`` -> 1, 2, 4, ..., 4096;
    ``"1:1000:10"`` -> 1, 10, 100, 1000; ``"1,3,1:8"`` -> 1, 2, 3, 4, 8.
    Counts are sorted so a curve grows, and the first one that does not fit ends it.
    """
    counts: set[int] = set()
    items = [item.strip() for item in str(spec).split(",")]
    if not any(items):
        raise ConfigError("--seeds is empty: give counts like 1,8,64 or a range like 1:4096")
    for item in items:
        if not re.fullmatch(r"\d+(:\d+){0,2}", item):
            raise ConfigError(f"--seeds item {item!r} is neither a count N nor a range START:MAX[:FACTOR] "
                              f"of positive integers (in {spec!r})")
        numbers = [int(x) for x in item.split(":")]
        if min(numbers[:2]) < 1:
            raise ConfigError(f"--seeds needs positive seed counts, got {item!r}")
        if len(numbers) == 1:
            counts.add(numbers[0])
            continue
        start, stop, factor = (numbers + [2])[:3]
        if stop < start:
            raise ConfigError(f"--seeds range {item!r} ends below its start")
        if factor < 2:
            raise ConfigError(f"--seeds range {item!r}: the factor must be an integer >= 2")
        n = start
        while n <= stop:
            counts.add(n)
            n *= factor
        if len(counts) > MAX_SEED_COUNTS:
            break
    if len(counts) > MAX_SEED_COUNTS:
        raise ConfigError(f"--seeds {spec!r} gives more than {MAX_SEED_COUNTS} seed counts")
    return sorted(counts)


# --------------------------------------------------------------------------- metadata
def metadata() -> dict[str, Any]:
    """Where and with what a benchmark ran: date, device, library versions, machine."""
    import importlib.metadata

    import jax

    def version(package: str) -> str | None:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    device = jax.devices()[0]
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": {"platform": device.platform, "kind": device.device_kind, "count": jax.device_count()},
        "versions": {"jax": jax.__version__, "jaxlib": version("jaxlib"), "jaxrl": version("jaxrl"),
                     "python": platform.python_version()},
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": _cpu_count()},
    }


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)


# --------------------------------------------------------------------------- memory
def program_bytes(compiled: Any) -> int | None:
    """Device memory a compiled program needs (arguments, outputs, temporaries, code), or None
    when the backend gives no memory analysis."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if stats is None:
        return None
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
               + stats.generated_code_size_in_bytes - stats.alias_size_in_bytes)


def _out_of_memory(err: BaseException) -> bool:
    """XLA's RESOURCE_EXHAUSTED (a device allocation failed) or a host MemoryError."""
    return isinstance(err, MemoryError) or "RESOURCE_EXHAUSTED" in str(err)


# --------------------------------------------------------------------------- benchmark
def benchmark(config: Config, seed_counts: Sequence[int], repeats: int = 2, *,
              memory_limit: int | None = None, name: str | None = None, baseline: bool = False,
              on_result: Callable[[Row], None] | None = None) -> dict[str, Any]:
    """Compile seconds and env steps/s of ``config`` for each seed count, ascending.

    ``memory_limit``: bytes a program may need (default: what the device has free when each
    count is about to run). The first count whose compiled program needs more, or whose compile
    or run fails with RESOURCE_EXHAUSTED, is not run and ends the curve: ``stopped`` is then
    ``{"seeds", "reason": "memory" | "resource_exhausted", "message", ...}``, else None.
    ``on_result(row)`` is called after each measured count (for progress output). A row's
    ``compile_cached`` is True when the program came from JAX's persistent compilation cache
    (then ``compile_seconds`` timed loading it, not compiling).
    ``baseline``: each row also gets ``baseline`` (see :func:`_baseline`): the same program
    with random actions and no learning (the env alone, through the same wrappers and vmaps),
    and with the agent acting but not learning, so the time splits into env stepping, acting
    and learning, and training throughput is a fraction of the env's.
    Returns one config's entry (see the module docstring) with :func:`metadata` merged in.
    """
    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec

    from jaxrl.compile_cache import counting
    from jaxrl.loop import compiler_options, make_train, seed_keys
    from jaxrl.metrics import final_return
    from jaxrl.parallel import seed_mesh
    from jaxrl.sweeps import free_memory

    counts = sorted(set(int(n) for n in seed_counts))
    if not counts or counts[0] < 1:
        raise ConfigError(f"seed counts must be positive integers, got {list(seed_counts)}")
    if repeats < 1:
        raise ConfigError(f"repeats must be >= 1, got {repeats}")
    if memory_limit is not None and memory_limit <= 0:
        raise ConfigError(f"memory_limit must be a positive number of bytes, got {memory_limit}")
    train = make_train(config)
    steps_per_seed = config.num_iterations * config.steps_per_iteration
    device = jax.devices()[0]
    results: list[Row] = []
    stopped = None
    for n in counts:
        mesh = seed_mesh(n)  # several devices (e.g. one per CPU core): each runs a share of the seeds
        if n == 1:
            fn, keys = jax.jit(train, compiler_options=compiler_options()), jax.random.key(config.seed)
        else:
            fn, keys = jax.jit(jax.vmap(train), compiler_options=compiler_options()), seed_keys(config.seed, n)
            if mesh is not None:
                keys = jax.device_put(keys, NamedSharding(mesh, PartitionSpec("seeds")))
        try:
            t0 = time.perf_counter()
            with counting() as cache:
                compiled = fn.lower(keys).compile()
            compile_seconds = time.perf_counter() - t0
            cached = cache.hits > 0  # loaded from the persistent compilation cache
            needed = program_bytes(compiled)
            available = memory_limit if memory_limit is not None else free_memory(device)
            if needed is not None and needed > available:
                limit = "the memory limit" if memory_limit is not None else f"free on {device.device_kind}"
                stopped = {"seeds": n, "reason": "memory", "memory_bytes": needed, "available_bytes": int(available),
                           "compile_seconds": round(compile_seconds, 3),
                           "message": f"needs {needed / GIB:.3g} GiB, {available / GIB:.3g} GiB {limit}"}
                break
            times, out = _timed_runs(compiled, keys, repeats)
        except Exception as err:  # noqa: BLE001 - only running out of memory ends a curve
            if not _out_of_memory(err):
                raise
            stopped = {"seeds": n, "reason": "resource_exhausted",
                       "message": str(err).strip().splitlines()[0][:500]}
            break
        run_seconds = min(times)
        final = np.atleast_1d(final_return(jax.device_get(out.metrics)))
        del out, compiled  # free the device before the next (larger) count
        row = {
            "seeds": n,
            "compile_seconds": round(compile_seconds, 3),
            "compile_cached": cached,
            "run_seconds": round(run_seconds, 6),
            "all_run_seconds": [round(t, 6) for t in times],
            "env_steps_per_second": round(n * steps_per_seed / run_seconds, 1),
            "final_return_mean": None if np.all(np.isnan(final)) else float(np.nanmean(final)),
            "memory_bytes": needed,
            "devices": 1 if mesh is None else mesh.size,
        }
        if baseline:
            row["baseline"] = _baseline(config, n, keys, run_seconds, repeats)
        results.append(row)
        if on_result is not None:
            on_result(row)
    return {
        "config_name": name or config.algo, "algo": config.algo, "env": config.env, "config": config.to_dict(),
        "env_steps_per_seed": steps_per_seed, "repeats": repeats, "results": results, "stopped": stopped,
        **metadata(),
    }


def _timed_runs(program: Any, keys: Any, repeats: int) -> tuple[list[float], Any]:
    """Seconds of each of ``repeats`` runs of a compiled ``program`` (each up to
    ``block_until_ready``), and the last run's outputs."""
    import jax

    times, out = [], None
    for _ in range(repeats):
        out = None  # the previous run's outputs go before the next run allocates its own
        t0 = time.perf_counter()
        out = jax.block_until_ready(program(keys))
        times.append(time.perf_counter() - t0)
    return times, out


def _baseline(config: Config, seeds: int, keys: Any, train_seconds: float, repeats: int) -> dict[str, Any]:
    """How far training is from the hardware's limit: the fastest of ``repeats`` runs of the
    ``phases="env"`` program (random actions, no learning) and of the ``phases="act"`` one (the
    agent acts, no learning), as env steps/s and as a split of the training run's seconds:
    ``env`` (the env-only run), ``acting`` (what acting adds) and ``learning`` (the rest). The
    split adds up to the training run: where noise makes a partial program time slower than the
    whole run (a 12 ms run's acting-only program measured 15.8 ms), its seconds are capped at the
    run's, and the parts after it are 0."""
    import jax

    from jaxrl.loop import compiler_options, make_train

    steps = seeds * config.num_iterations * config.steps_per_iteration
    seconds = {}
    for phases in ("env", "act"):
        train = make_train(config, phases=phases)
        program = jax.jit(train if seeds == 1 else jax.vmap(train), compiler_options=compiler_options())
        program = program.lower(keys).compile()
        seconds[phases] = min(_timed_runs(program, keys, repeats)[0])
    env_s, act_s = seconds["env"], max(seconds["act"], seconds["env"])
    env_part, act_part = min(env_s, train_seconds), min(act_s, train_seconds)
    return {
        "env_steps_per_second": round(steps / env_s, 1),
        "acting_env_steps_per_second": round(steps / seconds["act"], 1),
        "fraction_of_env": round(env_s / train_seconds, 4),
        "seconds": {"env": round(env_part, 6), "acting": round(act_part - env_part, 6),
                    "learning": round(train_seconds - act_part, 6)},
    }


def benchmark_all(configs: Mapping[str, Config], seed_counts: Sequence[int], repeats: int = 2, *,
                  memory_limit: int | None = None, baseline: bool = False,
                  on_result: Callable[[str, Row], None] | None = None) -> dict[str, Any]:
    """:func:`benchmark` for each named config, one after the other, as one report.

    ``on_result(name, row)`` is called after each measured seed count.
    """
    if not configs:
        raise ConfigError("no config to benchmark")
    entries = []
    for name, config in configs.items():
        report = benchmark(config, seed_counts, repeats, memory_limit=memory_limit, name=name, baseline=baseline,
                           on_result=None if on_result is None else (lambda row, name=name: on_result(name, row)))
        entries.append(report)
    meta = metadata()
    entries = [{k: v for k, v in e.items() if k not in meta} for e in entries]
    report = {**meta, "benchmarks": entries}
    if len(entries) == 1:  # the one-config layout of earlier versions, kept for their readers
        report = {**entries[0], **report}
    return report


# --------------------------------------------------------------------------- plot
def plot_scaling(report: Mapping[str, Any]) -> Figure:
    """Two panels against the seed count (log-x): env steps/s, and compile seconds.

    ``report`` is what :func:`benchmark_all` or :func:`benchmark` returns (or its JSON); one
    line per config, and a config whose curve stopped early says at which count and why.
    """
    from jaxrl.plots import pyplot

    entries = report.get("benchmarks", [report])
    if not any(e["results"] for e in entries):
        raise ValueError("nothing to plot: no seed count was measured")
    fig, (ax_speed, ax_compile) = pyplot().subplots(1, 2, figsize=(10, 4))
    measured = sorted({r["seeds"] for e in entries for r in e["results"]})
    for entry in entries:
        rows = entry["results"]
        label = entry.get("config_name") or entry["algo"]
        if entry.get("stopped"):
            label += f" (stopped at {entry['stopped']['seeds']} seeds: {entry['stopped']['reason']})"
        seeds = [r["seeds"] for r in rows]
        (line,) = ax_speed.plot(seeds, [r["env_steps_per_second"] for r in rows], marker="o", label=label)
        ax_compile.plot(seeds, [r["compile_seconds"] for r in rows], marker="o", color=line.get_color(),
                        label=label)
    for ax, ylabel in ((ax_speed, "env steps/s (all seeds together)"), (ax_compile, "compile seconds")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(measured, [str(n) for n in measured])
        ax.minorticks_off()
        ax.set_xlabel("seeds (vmapped in one program)")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    ax_speed.legend(fontsize="small")
    if "device" in report:  # where it ran, so a saved figure says what it measured
        device, cpus = report["device"], report.get("machine", {}).get("cpus")
        where = device["platform"] if device["kind"] == device["platform"] else device["kind"]
        fig.suptitle(f"one {where} device, {cpus} CPU cores, jax {report['versions']['jax']}", fontsize="medium")
    fig.tight_layout()
    return fig


def save_plot(report: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """:func:`plot_scaling` written as a PNG at ``path``."""
    from jaxrl import plots

    return plots.save(plot_scaling(report), path, close=True)
