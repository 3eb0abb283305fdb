"""Host driver: trains N vmapped seeds by running one compiled chunk of iterations repeatedly.

Compilation is done ahead of time and timed on its own; between chunks the host only copies
the chunk's small metrics rows back (for progress and logging), so the env steps/s reported
measure training, not compiling. Checkpoints are written by a background thread while the next
chunks run, so only copying the state to host memory (and the final save) costs training time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxrl import metrics as M
from jaxrl.compile_cache import counting, describe
from jaxrl.config import ON_DIVERGENCE, Config, ConfigError
from jaxrl.loop import DivergenceWarning, TrainState, compiler_options, divergence_note, make_train, seed_keys
from jaxrl.parallel import DataParallel, seed_mesh
from jaxrl.population import PBTResult, build_pbt


@dataclasses.dataclass
class Run:
    """What a finished run returns to the host."""

    config: Config
    num_seeds: int
    state: TrainState  # leading axis: seeds
    metrics: dict[str, np.ndarray]  # each (seeds, iterations)
    compile_seconds: float
    run_seconds: float  # chunks and checkpoint saves, over all sessions of a resumed run
    checkpoint_seconds: float = 0.0  # part of run_seconds spent saving (this session)
    resumed_from: int = 0  # iterations restored from a checkpoint (0: fresh run)
    cache_lookups: int = 0  # programs looked up in the persistent compilation cache while compiling
    cache_hits: int = 0  # ... and found there (loaded, not compiled)
    diverged_at: np.ndarray | None = None  # (seeds,) first non-finite iteration per seed, -1: finite
    stopped: bool = False  # stopped early because a seed diverged (on_divergence="stop")
    last_finite_step: int | None = None  # newest checkpoint in which every seed was finite

    @property
    def iterations_done(self) -> int:
        return int(next(iter(self.metrics.values())).shape[1])

    @property
    def diverged(self) -> dict[int, int]:
        """``{seed value: first non-finite iteration}`` of the seeds that diverged."""
        if self.diverged_at is None:
            return {}
        return {self.config.seed + i: int(d) for i, d in enumerate(self.diverged_at) if d >= 0}

    @property
    def compile_note(self) -> str:
        """How compile_seconds came about, e.g. ``"all 3 programs from the compilation cache"``."""
        return describe(self.cache_lookups, self.cache_hits)

    @property
    def env_steps(self) -> int:
        """Env steps taken by all seeds together."""
        return self.num_seeds * self.iterations_done * self.config.steps_per_iteration

    @property
    def steps_per_second(self) -> float:
        return self.env_steps / max(self.run_seconds, 1e-9)


Progress = Callable[[int, dict[str, np.ndarray], float], None]



def _tqdm() -> Any:
    """``tqdm.auto.tqdm`` in a notebook or on a terminal; None without tqdm or when stderr is
    redirected (a log file reads better as plain lines than as carriage-return redraws)."""
    try:
        import tqdm.asyncio
        import tqdm.auto
    except ImportError:
        return None
    in_notebook = tqdm.auto.tqdm is not tqdm.asyncio.tqdm
    return tqdm.auto.tqdm if in_notebook or sys.stderr.isatty() else None


class ProgressBar:
    """Progress between chunks: a ``tqdm.auto`` bar (notebook aware) when tqdm is installed and
    there is a notebook or terminal to draw it in, otherwise one plain line per chunk on stdout;
    env steps/s and the mean return over seeds of the latest finished episodes in both."""

    def __init__(self, total: int, done: int, num_seeds: int, steps_per_iteration: int,
                 desc: str = "train"):
        self.total, self.num_seeds, self.steps_per_iteration = total, num_seeds, steps_per_iteration
        tqdm = _tqdm()
        self.bar = None if tqdm is None else tqdm(total=total, initial=done, desc=desc, unit="iter",
                                                   dynamic_ncols=True)

    def update(self, done: int, metrics: dict[str, np.ndarray], run_seconds: float,
               diverged: int = 0) -> None:
        """``diverged``: how many seeds have diverged so far (shown when any has)."""
        steps = done * self.steps_per_iteration
        rate = self.num_seeds * steps / max(run_seconds, 1e-9)
        latest = M.latest(metrics["episode_return"])
        finite = latest[np.isfinite(latest)]
        mean_return = float(finite.mean()) if finite.size else float("nan")
        note = f"{diverged}/{self.num_seeds}" if diverged else None
        if self.bar is None:
            print(f"  iter {done:>6}/{self.total}  env steps {steps:>11,}/seed  "
                  f"{rate:>11,.0f} steps/s  return {mean_return:9.2f}"
                  + (f"  diverged {note}" if note else ""), flush=True)
            return
        self.bar.set_postfix({"env steps/s": f"{rate:,.0f}", "return": f"{mean_return:.2f}",
                              **({"diverged": note} if note else {})}, refresh=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def default_chunk_size(num_iterations: int, reports: int = 20) -> int:
    """Iterations per chunk so that a run reports progress about ``reports`` times."""
    return max(1, math.ceil(num_iterations / reports))


def train_seeds(
    config: Config,
    num_seeds: int = 1,
    chunk_size: int | None = None,
    hparams: dict[str, Any] | None = None,
    on_chunk: Progress | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 1,
    resume: bool = False,
    keep: int = 2,
    checkpoint_min_seconds: float = 0.0,
    on_resume: Callable[[int, dict[str, np.ndarray]], None] | None = None,
    progress: bool = False,
    data_parallel: DataParallel | None = None,
    on_divergence: str = "stop",
    inputs: Any = None,
) -> Run:
    """Train seeds ``config.seed .. config.seed + num_seeds - 1`` in one compiled program.

    ``on_chunk(iterations_done, chunk_metrics, run_seconds_so_far)`` is called after every
    chunk with that chunk's ``(seeds, iterations)`` metrics as NumPy arrays.

    Checkpoints (see :mod:`jaxrl.checkpoint`): with ``checkpoint_dir``, the whole state and the
    metrics so far are saved after every ``checkpoint_every`` chunks (but not sooner than
    ``checkpoint_min_seconds`` of wall-clock time after the previous save, which bounds what
    saving costs) and after the last one, keeping the last ``keep`` plus the best. With ``resume=True`` the newest readable checkpoint
    in ``checkpoint_dir`` is restored (its config, seed count and hparams must match; a missing
    ``chunk_size`` is taken from it) and training continues from its ``iterations_done`` with
    the same compiled chunk, so the result is bit-identical to an uninterrupted run;
    ``on_resume(iterations_done, restored_metrics)`` is then called once before the first chunk.
    Without any checkpoint, ``resume=True`` starts from scratch. Saving happens after
    ``on_chunk``, so progress written by ``on_chunk`` may run ahead of the last checkpoint.
    Saves are written in the background while the next chunks run (one at a time); the last
    one is on disk before this returns, and one in flight when an error interrupts the run is
    finished first.

    ``progress=True`` shows a progress bar (tqdm, or plain lines without it). Compile the
    programs once for all processes with :func:`jaxrl.compile_cache.enable_compilation_cache`;
    ``Run.cache_hits`` says how many came from that cache.

    ``data_parallel`` (a device count, devices or a mesh) splits every seed's envs over those
    devices (see :mod:`jaxrl.parallel`); a run resumes only on as many devices as it was saved from.
    Without it, the seeds are split over as many devices as divide them (``seed_mesh``; on a CPU
    see :func:`jaxrl.parallel.use_cpu_cores`), each running its share side by side; a resumed
    run keeps the split it was saved with (per-seed results can differ in the last bits
    between splits, so resuming stays bit-identical).

    Divergence (a NaN or infinity in a seed's learner, detected inside the compiled program, see
    ``TrainState.diverged_at``) is checked after every chunk. ``on_divergence="stop"`` ends the
    run after the chunk in which a seed diverged (``Run.stopped``; that state is still saved, and
    the newest checkpoint in which every seed was finite is kept: ``Run.last_finite_step``);
    ``"warn"`` goes on. Either way each newly diverged seed is reported once with a
    :class:`DivergenceWarning`, and ``Run.diverged_at`` / ``Run.diverged`` say which and when.

    ``inputs`` (a dataset, meta-parameters: see :func:`jaxrl.loop.make_train`) is shared by every
    seed and not checkpointed; a checkpoint records its fingerprint (shapes, dtypes and a hash of
    the values), and a run resumes only with the same inputs.
    """
    if on_divergence not in ON_DIVERGENCE:
        raise ValueError(f"on_divergence must be one of {', '.join(ON_DIVERGENCE)}, got {on_divergence!r}")
    if num_seeds < 1:
        raise ValueError(f"num_seeds must be >= 1, got {num_seeds}")
    if checkpoint_every < 0:
        raise ValueError(f"checkpoint_every must be >= 0 (0: only at the end), got {checkpoint_every}")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs a checkpoint_dir")
    train = make_train(config, data_parallel)
    devices = 1 if train.mesh is None else train.mesh.size
    n_iters = train.num_iterations
    keys = seed_keys(config.seed, num_seeds)
    split = None  # how many devices the seeds are split over: from the checkpoint when resuming

    restored = None
    fingerprint = inputs_fingerprint(inputs) if checkpoint_dir is not None else None
    with contextlib.ExitStack() as cleanup:  # on any exit: close the bar, then finish the last save
        ckpt = None
        if checkpoint_dir is not None:
            from jaxrl.checkpoint import Checkpointer

            ckpt = cleanup.enter_context(Checkpointer(checkpoint_dir, keep=keep, async_save=True))
        newest = ckpt.latest_readable_meta() if resume else None
        if newest is not None:
            _check_resumable(newest, config, num_seeds, hparams, devices, fingerprint)  # before any restoring
            split = newest.get("seed_devices", 1)
        mesh = None if train.mesh is not None else seed_mesh(num_seeds, count=split)
        if mesh is not None:
            keys = jax.device_put(keys, NamedSharding(mesh, PartitionSpec("seeds")))
        if newest is not None:
            abstract = jax.eval_shape(jax.vmap(train.init, in_axes=(0, None, None)), keys, hparams, inputs)
            restored = ckpt.restore(abstract)
            _check_resumable(restored.meta, config, num_seeds, hparams, devices, fingerprint)
            chunk_size = chunk_size or restored.meta["chunk_size"]
        chunk_size = chunk_size or default_chunk_size(n_iters)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        chunk_size = min(chunk_size, n_iters)

        start = time.perf_counter()
        with counting() as cache:
            init_shardings = chunk_shardings = {}
            if mesh is not None:  # seeds split over devices: every leaf of the state and the metrics
                # keeps its seed axis sharded, chunk after chunk (left to XLA, one could come back replicated)
                seeded, shared = NamedSharding(mesh, PartitionSpec("seeds")), NamedSharding(mesh, PartitionSpec())
                init_shardings = dict(in_shardings=(seeded, shared, shared), out_shardings=seeded)
                chunk_shardings = dict(in_shardings=(seeded, shared, shared, shared), out_shardings=(seeded, seeded))
            init = jax.jit(jax.vmap(train.init, in_axes=(0, None, None)), **init_shardings,
                           compiler_options=compiler_options())
            init = init.lower(keys, hparams, inputs).compile()
            # a restored state goes where a fresh one would be (data parallel: sharded over the mesh)
            state = (init(keys, hparams, inputs) if restored is None
                     else jax.device_put(restored.state, init.output_shardings))
            run_chunk = functools.partial(train.run_chunk, length=chunk_size)
            chunk = jax.jit(jax.vmap(run_chunk, in_axes=(0, None, None, None)), **chunk_shardings,
                            compiler_options=compiler_options())
            chunk = chunk.lower(state, hparams, jnp.int32(0), inputs).compile()
            jax.block_until_ready(state)
        compile_seconds = time.perf_counter() - start

        seed_devices = 1 if mesh is None else mesh.size
        pieces: list[dict[str, np.ndarray]] = []
        run_seconds = checkpoint_seconds = 0.0
        done = 0
        if restored is not None:
            done = restored.iterations_done
            pieces.append(restored.metrics)
            run_seconds = float(restored.meta.get("run_seconds", 0.0))
            if on_resume is not None:
                on_resume(done, restored.metrics)
        if progress:
            bar = ProgressBar(n_iters, done, num_seeds, config.steps_per_iteration)
            cleanup.callback(bar.close)
        saved = done if restored is not None else -1
        diverged_at = np.asarray(jax.device_get(state.diverged_at)).reshape(num_seeds)
        stopped = on_divergence == "stop" and bool((diverged_at >= 0).any())  # resumed after diverging
        reported = diverged_at >= 0
        if reported.any():
            warnings.warn(f"resumed a run that had diverged: {_diverged_note(config, diverged_at, reported)}"
                          + ("; not continuing it (on_divergence='stop')" if stopped else "; going on"),
                          DivergenceWarning, stacklevel=2)

        @contextlib.contextmanager
        def checkpoint_time() -> Iterator[None]:
            """Host time spent on checkpoints: counted as run time, and reported apart."""
            nonlocal run_seconds, checkpoint_seconds
            t0 = time.perf_counter()
            yield
            dt = time.perf_counter() - t0
            run_seconds += dt
            checkpoint_seconds += dt

        last_save = time.perf_counter()
        for n_chunk, first in enumerate(range(done, n_iters if not stopped else done, chunk_size), 1):
            t0 = time.perf_counter()
            state, metrics = chunk(state, hparams, jnp.int32(first), inputs)
            metrics, diverged_at = jax.device_get((metrics, state.diverged_at))  # blocks until done
            run_seconds += time.perf_counter() - t0
            valid = min(chunk_size, n_iters - first)
            metrics = {k: np.asarray(v)[:, :valid] for k, v in metrics.items()}
            pieces.append(metrics)
            done = first + valid
            diverged_at = np.asarray(diverged_at).reshape(num_seeds)
            new = (diverged_at >= 0) & ~reported
            if new.any():
                reported |= new
                stopped = on_divergence == "stop"
                warnings.warn(f"diverged (NaN or infinity in the learner): {_diverged_note(config, diverged_at, new)}"
                              + ("; stopping the run (on_divergence='stop')" if stopped else "; going on"),
                              DivergenceWarning, stacklevel=2)
            if on_chunk is not None:
                on_chunk(done, metrics, run_seconds)
            if progress:
                bar.update(done, metrics, run_seconds, int(reported.sum()))
            due = (checkpoint_every and n_chunk % checkpoint_every == 0
                   and time.perf_counter() - last_save >= checkpoint_min_seconds)
            if ckpt is not None and (due or done == n_iters or stopped):
                last_save = time.perf_counter()
                # saved in the background: the host copy and the wait for the previous save count here
                with checkpoint_time():
                    _save(ckpt, state, pieces, config, num_seeds, chunk_size, hparams, run_seconds, devices,
                          diverged_at, fingerprint, seed_devices)
                saved = done
            if stopped:
                break
        if ckpt is not None and saved != done:  # e.g. resumed from a checkpoint of a finished run
            _save(ckpt, state, pieces, config, num_seeds, chunk_size, hparams, run_seconds, devices, diverged_at,
                  fingerprint, seed_devices)
        last_finite = None
        if ckpt is not None:
            with checkpoint_time():
                ckpt.wait()  # the last save must be on disk before we return (re-raises its error)
            if reported.any():
                last_finite = ckpt.last_finite_step()
    merged = _merge(pieces)
    return Run(config, num_seeds, state, merged, compile_seconds, run_seconds, checkpoint_seconds,
               restored.iterations_done if restored is not None else 0, cache.lookups, cache.hits,
               diverged_at, stopped, last_finite)


def _diverged_note(config: Config, diverged_at: np.ndarray, which: np.ndarray) -> str:
    """:func:`divergence_note` of the seeds selected by the mask ``which``."""
    return divergence_note({config.seed + int(i): int(diverged_at[i]) for i in np.flatnonzero(which)})


def _merge(pieces: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The chunks' metrics joined along the iteration axis; ``pieces`` becomes that one piece
    (so the host-side list stays short however many chunks a run has)."""
    merged = {k: np.concatenate([p[k] for p in pieces], axis=1) for k in pieces[0]}
    pieces[:] = [merged]
    return merged


def _save(ckpt, state, pieces, config, num_seeds, chunk_size, hparams, run_seconds, devices,
          diverged_at: np.ndarray, fingerprint: dict | None, seed_devices: int) -> None:
    ckpt.save(state, _merge(pieces), config=config.to_dict(), num_seeds=num_seeds, chunk_size=chunk_size,
              hparams=hparams, run_seconds=run_seconds, devices=devices, seed_devices=seed_devices,
              diverged=[None if d < 0 else int(d) for d in diverged_at], inputs=fingerprint)


def inputs_fingerprint(inputs: Any) -> dict | None:
    """What a checkpoint records of ``inputs`` (which it does not store): each leaf's shape and
    dtype and one SHA-256 of all their values (None for no inputs)."""
    leaves = jax.tree.leaves(inputs)
    if not leaves:
        return None
    digest = hashlib.sha256()
    for leaf in leaves:
        digest.update(np.ascontiguousarray(jax.device_get(leaf)).tobytes())
    return {"leaves": [[list(np.shape(x)), str(np.result_type(x))] for x in leaves], "sha256": digest.hexdigest()}


def _check_resumable(meta: dict, config: Config, num_seeds: int, hparams: dict | None, devices: int,
                     fingerprint: dict | None) -> None:
    saved = meta["config"]
    now = config.to_dict()
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if changed:
        raise ValueError("cannot resume: the config differs from the checkpoint's in "
                         + ", ".join(f"{k} ({saved.get(k)!r} -> {now.get(k)!r})" for k in changed))
    if meta["num_seeds"] != num_seeds:
        raise ValueError(f"cannot resume: the checkpoint has {meta['num_seeds']} seed(s), not {num_seeds}")
    if meta.get("devices", 1) != devices:  # the envs' split, replay buffers and key streams depend on it
        raise ValueError(f"cannot resume: the run was split over {meta.get('devices', 1)} device(s) "
                         f"(data parallel), not {devices}")
    now_hp = None if hparams is None else {k: np.asarray(v).tolist() for k, v in hparams.items()}
    if meta.get("hparams") != now_hp:
        raise ValueError(f"cannot resume: hparams {now_hp} differ from the checkpoint's {meta.get('hparams')}")
    if meta.get("inputs") != fingerprint:
        raise ValueError(f"cannot resume: the inputs differ from the ones the run was trained with "
                         f"(checkpoint: {meta.get('inputs')}; now: {fingerprint})")


# ----------------------------------------------------------------------------- PBT with checkpoints


def run_pbt(config: Config, population: int, interval: int, explore: dict[str, Any], seeds: int = 1, *,
            checkpoint_dir: str | Path | None = None, checkpoint_every: int = 1, resume: bool = False,
            keep: int = 2, on_save: Callable[[int, float], None] | None = None, inputs: Any = None,
            **options: Any) -> PBTResult:
    """:func:`jaxrl.population.pbt` run ``checkpoint_every`` generations at a time, saving the
    populations' whole state, their PBT keys and hyperparameters, the lineage and the metrics
    so far to ``checkpoint_dir`` after each piece (keeping the last ``keep`` and the best).

    With ``resume=True`` the newest readable checkpoint in ``checkpoint_dir`` is restored (the
    config and every PBT setting must be the same: a :class:`ConfigError` names what differs;
    without a checkpoint the run starts from scratch) and the run continues from its last
    generation with the same compiled program, so the result is bit-identical to an
    uninterrupted run with the same ``checkpoint_every``. ``on_save(generations_done,
    run_seconds)`` is called after each save. ``options`` are :func:`pbt`'s (``fitness``,
    ``truncation``, ``resample_probability``, ``exploit``, ``devices``).
    """
    from jaxrl.checkpoint import Checkpointer  # orbax: imported only when checkpointing

    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise ConfigError(f"checkpoint_every must be a positive number of generations, got {checkpoint_every!r}")
    valid = isinstance(interval, int) and not isinstance(interval, bool) and interval >= 1  # else build_pbt says why
    per_call = min(checkpoint_every, math.ceil(config.num_iterations / interval)) if valid else checkpoint_every
    fitness = options.get("fitness", "return")
    named = lambda v: v if not callable(v) else f"{v.__module__}.{v.__qualname__}"  # noqa: E731
    settings = {"population": population, "interval": interval, "explore": explore, "seeds": seeds,
                "checkpoint_every": per_call, "inputs": inputs_fingerprint(inputs),
                **{k: named(v) for k, v in options.items() if k != "devices"}, "fitness": named(fitness)}
    described = json.loads(json.dumps({"config": config.to_dict(), "pbt": settings}, default=str))
    with contextlib.ExitStack() as stack:
        ckpt = None if checkpoint_dir is None else stack.enter_context(Checkpointer(checkpoint_dir, keep=keep))
        resuming = resume and ckpt is not None and ckpt.latest_step() is not None
        if resuming:  # refused before compiling when anything differs
            saved = ckpt.meta()["config"]
            if saved != described:
                changed = sorted(f"{part}.{k}" for part in ("config", "pbt") for k in
                                 set(saved[part]) | set(described[part]) if saved[part].get(k) != described[part].get(k))
                raise ConfigError(f"cannot resume the PBT run in {checkpoint_dir}: {', '.join(changed)} differ from "
                                  "its checkpoint's")
        program = build_pbt(config, population, interval, explore, seeds, inputs=inputs,
                            generations_per_call=checkpoint_every, **options)
        carry = program.start()
        S, G, P = seeds, program.generations, population
        shape = (S, G, P)
        lineage = {"fitness": np.full(shape, np.nan, np.float32), "parent": np.full(shape, -1, np.int32),
                   "hparams": {k: np.full(shape, np.nan, np.float32) for k in program.specs}}
        metrics: dict[str, np.ndarray] | None = None  # (seeds, generations, members, interval)
        done = 0
        if resuming:
            restored = ckpt.restore({"carry": carry, "lineage": lineage})
            shardings = program.advance_program.input_shardings[0][0]
            carry = jax.device_put(restored.state["carry"], shardings)
            lineage = jax.tree.map(np.array, restored.state["lineage"])  # writable copies
            done = math.ceil(restored.step / interval)
            width = done * interval
            metrics = {k: np.moveaxis(np.pad(np.asarray(v, np.float32).reshape(S, P, -1),
                                             [(0, 0), (0, 0), (0, width - v.shape[1])], constant_values=np.nan
                                             ).reshape(S, P, done, interval), 2, 1)
                       for k, v in restored.metrics.items()}
            program.run_seconds = float(restored.meta["run_seconds"])
        for first in range(done, G, program.per_call):
            carry, (chunk_metrics, fit, hps, parents) = program.advance(carry, first)
            stop = first + fit.shape[1]
            lineage["fitness"][:, first:stop], lineage["parent"][:, first:stop] = fit, parents
            for k in program.specs:
                lineage["hparams"][k][:, first:stop] = hps[k]
            chunk_metrics = {k: np.asarray(v, np.float32) for k, v in chunk_metrics.items()}
            metrics = chunk_metrics if metrics is None else {k: np.concatenate([metrics[k], v], 1)
                                                             for k, v in chunk_metrics.items()}
            if ckpt is not None:
                iterations = min(stop * interval, config.num_iterations)
                flat = {k: np.moveaxis(v, 2, 1).reshape(S * P, -1)[:, :iterations] for k, v in metrics.items()}
                ckpt.save({"carry": carry, "lineage": lineage}, flat, config=described, num_seeds=S * P,
                          chunk_size=program.per_call * interval, run_seconds=program.run_seconds)
                if on_save is not None:
                    on_save(stop, program.run_seconds)
    return program.result(carry, (metrics, lineage["fitness"], lineage["hparams"], lineage["parent"]))
