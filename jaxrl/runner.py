"""Host driver: trains N vmapped seeds by running one compiled chunk of iterations repeatedly.

Compilation is done ahead of time and timed on its own; between chunks the host only copies
the chunk's small metrics rows back (for progress and logging), so the env steps/s reported
measure training, not compiling.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl.config import Config
from jaxrl.loop import TrainState, make_train, seed_keys


@dataclasses.dataclass
class Run:
    """What a finished run returns to the host."""

    config: Config
    num_seeds: int
    state: TrainState  # leading axis: seeds
    metrics: dict[str, np.ndarray]  # each (seeds, iterations)
    compile_seconds: float
    run_seconds: float

    @property
    def env_steps(self) -> int:
        """Env steps taken by all seeds together."""
        return self.num_seeds * self.config.num_iterations * self.config.steps_per_iteration

    @property
    def steps_per_second(self) -> float:
        return self.env_steps / max(self.run_seconds, 1e-9)


Progress = Callable[[int, dict[str, np.ndarray], float], None]


def default_chunk_size(num_iterations: int, reports: int = 20) -> int:
    """Iterations per chunk so that a run reports progress about ``reports`` times."""
    return max(1, math.ceil(num_iterations / reports))


def train_seeds(
    config: Config,
    num_seeds: int = 1,
    chunk_size: int | None = None,
    hparams: dict[str, Any] | None = None,
    on_chunk: Progress | None = None,
) -> Run:
    """Train seeds ``config.seed .. config.seed + num_seeds - 1`` in one compiled program.

    ``on_chunk(iterations_done, chunk_metrics, run_seconds_so_far)`` is called after every
    chunk with that chunk's ``(seeds, iterations)`` metrics as NumPy arrays.
    """
    if num_seeds < 1:
        raise ValueError(f"num_seeds must be >= 1, got {num_seeds}")
    train = make_train(config)
    n_iters = train.num_iterations
    chunk_size = chunk_size or default_chunk_size(n_iters)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    chunk_size = min(chunk_size, n_iters)
    keys = seed_keys(config.seed, num_seeds)

    start = time.perf_counter()
    init = jax.jit(jax.vmap(train.init, in_axes=(0, None))).lower(keys, hparams).compile()
    state = init(keys, hparams)
    run_chunk = functools.partial(train.run_chunk, length=chunk_size)
    chunk = jax.jit(jax.vmap(run_chunk, in_axes=(0, None, None)))
    chunk = chunk.lower(state, hparams, jnp.int32(0)).compile()
    jax.block_until_ready(state)
    compile_seconds = time.perf_counter() - start

    pieces: list[dict[str, np.ndarray]] = []
    run_seconds = 0.0
    for first in range(0, n_iters, chunk_size):
        t0 = time.perf_counter()
        state, metrics = chunk(state, hparams, jnp.int32(first))
        metrics = jax.device_get(metrics)  # blocks until the chunk is done
        run_seconds += time.perf_counter() - t0
        valid = min(chunk_size, n_iters - first)
        metrics = {k: np.asarray(v)[:, :valid] for k, v in metrics.items()}
        pieces.append(metrics)
        if on_chunk is not None:
            on_chunk(first + valid, metrics, run_seconds)
    merged = {k: np.concatenate([p[k] for p in pieces], axis=1) for k in pieces[0]}
    return Run(config, num_seeds, state, merged, compile_seconds, run_seconds)
