"""Throughput benchmark: compile seconds and env steps/s of the whole training program.

For each seed count the full ``jax.jit(jax.vmap(train))`` (plain ``jax.jit(train)`` for one
seed) is compiled ahead of time (timed alone), then run ``repeats`` times; the fastest run is
reported, so a first-run warm-up never counts.
"""

from __future__ import annotations

import platform
import time
from typing import Any

import jax
import numpy as np

from jaxrl.config import Config
from jaxrl.loop import make_train, seed_keys
from jaxrl.metrics import final_return


def benchmark(config: Config, seed_counts: list[int], repeats: int = 2) -> dict[str, Any]:
    train = make_train(config)
    steps_per_seed = config.num_iterations * config.steps_per_iteration
    results = []
    for n in seed_counts:
        if n == 1:
            fn, keys = jax.jit(train), jax.random.key(config.seed)
        else:
            fn, keys = jax.jit(jax.vmap(train)), seed_keys(config.seed, n)
        t0 = time.perf_counter()
        compiled = fn.lower(keys).compile()
        compile_seconds = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = jax.block_until_ready(compiled(keys))
            times.append(time.perf_counter() - t0)
        run_seconds = min(times)
        final = np.atleast_1d(final_return(jax.device_get(out.metrics)))
        results.append({
            "seeds": n,
            "compile_seconds": round(compile_seconds, 3),
            "run_seconds": round(run_seconds, 4),
            "all_run_seconds": [round(t, 4) for t in times],
            "env_steps_per_second": round(n * steps_per_seed / run_seconds, 1),
            "final_return_mean": float(np.nanmean(final)) if not np.all(np.isnan(final)) else float("nan"),
        })
    device = jax.devices()[0]
    return {
        "algo": config.algo, "env": config.env, "config": config.to_dict(),
        "env_steps_per_seed": steps_per_seed, "repeats": repeats, "results": results,
        "device": {"platform": device.platform, "kind": device.device_kind, "count": jax.device_count()},
        "versions": {"jax": jax.__version__, "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else None,
                     "python": platform.python_version()},
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": _cpu_count()},
    }


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)
