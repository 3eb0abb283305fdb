"""Full-state checkpoints of a (vmapped) training run, for exact resume and for inference.

A checkpoint is one orbax step directory ``<dir>/<iterations_done>/`` holding three items:

- ``state``: the whole ``TrainState`` with its leading seeds axis (agent params, optimizer state,
  target params, replay buffer, env state, last observation, normaliser statistics, RNG keys,
  iteration counter), packed into one flat vector per dtype (``{"float32": ..., "int32": ...}``).
  Typed PRNG keys are stored as their raw ``key_data`` (uint32) and wrapped again on restore.
- ``history``: every per-iteration metric so far (``(seeds, iterations_done)`` each), packed the
  same way.
- ``meta`` (JSON): ``format`` (:data:`FORMAT`), ``iterations_done``, ``num_seeds``,
  ``chunk_size``, the resolved config as a dict, the traced ``hparams`` overrides, accumulated
  ``run_seconds``, the ``score``, ``diverged`` (per seed: None while that seed's learner is
  finite, else the first iteration at which it was not), ``state_leaves`` (per state leaf, in
  ``jax.tree`` order: its path, shape, dtype and PRNG impl or None), ``metrics`` (name -> shape,
  dtype, in packing order) and ``devices`` (how many devices each seed's envs were split over).

Why packed, and not through tensorstore: orbax 0.12.8 with tensorstore 0.1.86 (the newest
releases) keeps host memory on every save that is never given back, ~0.5-2 KB per saved array
plus ~5 KB per array item (kvstore specs built per array, allocator memory). Saving a PPO or DQN
state one array per leaf (~35-40 leaves, ~15 metric arrays) grew a process by ~40-200 KiB per
save without bound. So ``state`` and ``history`` are each a handful of flat vectors (one per
dtype, however many leaves the state has), written by :class:`_VectorsHandler` as plain files
with NumPy; orbax still provides the step directories, their atomic commit, listing and
clean-up. Measured: ~1-2 KiB per save (what orbax's step bookkeeping alone costs), and saves
~2.5x faster. The layout in ``meta`` is checked against the abstract target before any array is
read, so a checkpoint of another structure, or of the previous one-array-per-leaf format
(without ``format``), is refused with an :class:`IncompatibleCheckpointError` naming the first
difference, instead of being misread or skipped for an older step.

Atomicity: orbax writes each step into ``<step>.orbax-checkpoint-tmp-*`` and renames it to
``<step>`` only once every item is written (a rename is atomic on a local file system), so a
process killed mid-save leaves at most a tmp directory, which is never listed as a step and is
removed the next time a :class:`Checkpointer` is opened. On top of that, :meth:`Checkpointer.restore`
falls back to the next older step if the newest cannot be read (e.g. damaged by hand or by a
failing disk), warning about it. Once an older step has been restored, each newer one that was
skipped is renamed aside to ``<step>.damaged-<id>`` (kept for inspection, never listed as a step
nor deleted), so the resumed run can write that step again.

Retention is ours, not orbax's, and is derived only from what is on disk, so a resumed run keeps
exactly the steps an uninterrupted one keeps. After each successful save, every step on disk is
kept that is

- one of the last ``keep`` steps;
- the best one (with ``keep_best``): the highest ``score`` in its ``meta``, which is the mean over
  seeds of :func:`jaxrl.metrics.final_return` of the metrics so far; a step whose score is NaN (no
  episode finished yet for any seed) ranks below every other, and ties go to the later step
  (:meth:`Checkpointer.best_step`);
- the last finite one: the newest step in which no seed had diverged
  (:meth:`Checkpointer.last_finite_step`), so a run that blew up can go back to before it did.

The others are deleted, each by renaming it to a tmp directory first (atomic: a reader never lists
a half-deleted step; one left over by a kill is removed like any tmp directory) and then removing
that. Scores and divergence are read from each step's ``meta`` once and cached; a new
:class:`Checkpointer` (e.g. on resume) reads them again from disk. A step that fails all three
tests never passes one again once newer steps are saved, so pruning after every save keeps the
same steps as pruning once at the end: an interrupted run (pruned at other times, or once less)
ends with the same steps as an uninterrupted one.

Saving in the background (``async_save=True``, what the runner uses): :meth:`Checkpointer.save`
copies the state to host memory (small: parameters, optimizer moments, env states) and hands it to
one writer thread of our own, then returns, so training goes on while orbax writes. One save is in
flight at a time (the next save first waits for the previous one); :meth:`Checkpointer.wait`
joins it and re-raises its error on the calling thread. Leaving the Checkpointer's ``with``
block on an error or Ctrl-C still finishes the save in flight (for at most
``ABANDON_SAVE_SECONDS``). The writer is a daemon thread, so a save that is abandoned (a second
Ctrl-C, a stuck disk, SIGKILL) never keeps the process from exiting: it is left as a tmp
directory (see Atomicity) and the previous checkpoint stays the newest. (Orbax's own async
saving is not used: it hung at process exit after an exception.)

Restoring is always done against an abstract target (``jax.eval_shape`` of the vmapped
``train.init``), so the restored pytree has exactly the structure and dtypes of a live
``TrainState``: optax NamedTuples stay NamedTuples, flax struct nodes stay struct nodes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import threading
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

from jaxrl import metrics as M
from jaxrl.config import ConfigError

CHECKPOINT_SUBDIR = "checkpoints"  # where ``jaxrl train`` keeps them inside a run folder
NAN_SCORE = -1e30  # what a NaN score ranks as for "best"
ABANDON_SAVE_SECONDS = 60.0  # after an error, how long to wait for a background save to finish
TMP_DIR_SUFFIX = ocp.path.step.TMP_DIR_SUFFIX  # marks a directory orbax neither lists nor keeps

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- packed layout
FORMAT = 2  # meta["format"] of the packed layout; checkpoints without one are the older per-leaf format


class IncompatibleCheckpointError(ConfigError):
    """A checkpoint that cannot be restored into this train state: written in another format (by
    an older jaxrl) or holding a state of another structure. Not damage: restoring does not fall
    back to an older step for it (those were written the same way)."""


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _host_leaves(state: Any) -> tuple[list[list[Any]], list[np.ndarray]]:
    """What a save stores of ``state``: its layout, per leaf in ``jax.tree`` order
    ``[path, shape, dtype name, impl]``, and its leaves as host arrays. A typed PRNG key is stored
    as its raw key data, ``impl`` naming its impl (None for other leaves)."""
    layout, arrays = [], []
    for path, x in jax.tree_util.tree_flatten_with_path(state)[0]:
        impl = None
        if _is_key(x):
            impl, x = str(jax.random.key_impl(x)), jax.random.key_data(x)
        x = np.asarray(x)
        layout.append([jax.tree_util.keystr(path), list(x.shape), x.dtype.name, impl])
        arrays.append(x)
    return layout, arrays


def _target_layout(abstract: Any) -> list[list[Any]]:
    """The layout (see :func:`_host_leaves`) of a checkpoint of the abstract state ``abstract``.
    An abstract key does not tell its impl: ``impl`` is ``"?"`` there (the restored key's dtype,
    which includes its impl, is checked instead)."""
    layout = []
    for path, x in jax.tree_util.tree_flatten_with_path(abstract)[0]:
        impl = None
        if _is_key(x):
            impl, x = "?", jax.eval_shape(jax.random.key_data, x)
        layout.append([jax.tree_util.keystr(path), list(x.shape), np.dtype(x.dtype).name, impl])
    return layout


def _pack(arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
    """``arrays`` as one flat vector per dtype name, concatenated in order (always a copy, so later
    device computations cannot change what a background save writes)."""
    groups: dict[str, list[np.ndarray]] = {}
    for a in arrays:
        groups.setdefault(a.dtype.name, []).append(a.ravel())
    return {name: np.concatenate(parts) for name, parts in groups.items()}


def _unpack(vectors: dict[str, np.ndarray], specs: list[tuple[list[int], str]]) -> list[np.ndarray]:
    """Inverse of :func:`_pack`: the arrays of ``specs`` (shape, dtype name), cut from ``vectors``.
    Raises ValueError if the vectors do not hold exactly those values (a damaged checkpoint)."""
    sizes: dict[str, int] = {}
    for shape, dtype in specs:
        sizes[dtype] = sizes.get(dtype, 0) + math.prod(shape)
    held = {name: (v.dtype.name, v.size) for name, v in vectors.items()}
    wanted = {name: (name, n) for name, n in sizes.items()}
    if held != wanted:
        raise ValueError(f"damaged: the packed vectors hold {held} (name: (dtype, values)), "
                         f"the layout says {wanted}")
    offsets = dict.fromkeys(sizes, 0)
    out = []
    for shape, dtype in specs:
        n, start = math.prod(shape), offsets[dtype]
        out.append(vectors[dtype][start:start + n].reshape(shape))
        offsets[dtype] = start + n
    return out


class _VectorsHandler(ocp.CheckpointHandler):
    """An orbax item of flat NumPy vectors, one raw file ``<dtype name>.bin`` each (native byte
    order, synced to disk), written and read with NumPy alone: tensorstore, which orbax's array
    items go through, keeps host memory on every save (see "Why packed")."""

    def save(self, directory: Any, args: "_VectorsSave") -> None:
        for name, vector in args.vectors.items():
            with open(Path(os.fspath(directory)) / f"{name}.bin", "wb") as f:
                vector.tofile(f)
                f.flush()
                os.fsync(f.fileno())

    def restore(self, directory: Any, args: "_VectorsRestore | None" = None) -> dict[str, np.ndarray]:
        return {path.stem: np.fromfile(path, jnp.dtype(path.stem))
                for path in sorted(Path(os.fspath(directory)).glob("*.bin"))}


@ocp.args.register_with_handler(_VectorsHandler, for_save=True)
@dataclasses.dataclass
class _VectorsSave(ocp.args.CheckpointArgs):
    vectors: dict[str, np.ndarray]  # dtype name -> 1-D vector of that dtype


@ocp.args.register_with_handler(_VectorsHandler, for_restore=True)
@dataclasses.dataclass
class _VectorsRestore(ocp.args.CheckpointArgs):
    pass


def _check_layout(saved: list[list[Any]], target: list[list[Any]], where: Path) -> None:
    """Refuse a checkpoint whose state layout is not the target's (names the first difference)."""
    if len(saved) != len(target):
        raise IncompatibleCheckpointError(
            f"checkpoint {where} holds a state of {len(saved)} arrays, the train state has {len(target)}: "
            "it was saved by another algorithm, config or version")
    for (path, shape, dtype, impl), (t_path, t_shape, t_dtype, t_impl) in zip(saved, target):
        if (path, shape, dtype) != (t_path, t_shape, t_dtype) or (impl is None) != (t_impl is None):
            raise IncompatibleCheckpointError(
                f"checkpoint {where} does not match the train state: it has {path} {tuple(shape)} {dtype}"
                f"{' (PRNG key data)' if impl else ''} where the train state has {t_path} {tuple(t_shape)} {t_dtype}"
                f"{' (PRNG key data)' if t_impl else ''}")


# --------------------------------------------------------------------------- score
def score(metrics: dict[str, np.ndarray]) -> float:
    """Checkpoint ranking: mean over seeds of the final return of the metrics so far (NaN-aware)."""
    final = M.final_return(metrics)
    return float(np.nanmean(final)) if not np.all(np.isnan(final)) else float("nan")


class _Rank(NamedTuple):
    """What retention needs to know of one step, read from its ``meta``."""

    score: float  # NAN_SCORE for a NaN score, -inf for a step whose meta cannot be read
    finite: bool  # no seed had diverged (False for an unreadable meta: not known to be)


def _rank_of(meta: dict[str, Any]) -> _Rank:
    s = meta.get("score")
    finite = all(d is None for d in meta.get("diverged") or [])  # missing: an older checkpoint
    return _Rank(NAN_SCORE if s is None or math.isnan(s) else float(s), finite)


def _check_diverged(diverged: Sequence[int | None] | None, num_seeds: int) -> list[int | None] | None:
    """``diverged`` as plain JSON (ints and Nones), or a ValueError if it is not one entry per seed."""
    if diverged is None:
        return None
    diverged = list(diverged)
    if len(diverged) != num_seeds:
        raise ValueError(f"diverged must have one entry per seed ({num_seeds}), got {len(diverged)}")
    for d in diverged:
        if d is not None and (isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 0):
            raise ValueError(f"diverged entries must be None (finite) or an iteration >= 0, got {diverged}")
    return [None if d is None else int(d) for d in diverged]


# --------------------------------------------------------------------------- checkpointer
@dataclasses.dataclass
class Restored:
    step: int  # = iterations_done
    state: Any  # TrainState with a leading seeds axis
    metrics: dict[str, np.ndarray]  # each (seeds, iterations_done)
    meta: dict[str, Any]

    @property
    def iterations_done(self) -> int:
        return self.step


class Checkpointer:
    """Saves and restores training checkpoints in ``directory`` (an orbax CheckpointManager).

    ``keep``: how many of the latest steps to keep; the best-scoring step is kept as well when
    ``keep_best``, and the last finite one always (see the module's Retention). ``async_save``:
    write in a background thread while training goes on (each save first waits for the previous
    one; :meth:`wait` re-raises a failed save; use it as a context manager or call :meth:`close`
    at the end, which waits for the last save).
    """

    def __init__(self, directory: str | Path, keep: int = 2, keep_best: bool = True,
                 async_save: bool = False, read_only: bool = False):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory).absolute()
        self.keep, self.keep_best = keep, keep_best
        self._read_only = read_only
        # orbax deletes nothing: its preservation policies rank by metrics it keeps only in memory
        # (unless given a best_fn), so after a reopen they no longer knew the best step; we prune
        # ourselves from what is on disk (see _prune)
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocm.preservation_policy.PreserveAll(),
            enable_async_checkpointing=False, cleanup_tmp_directories=not read_only,
            create=not read_only, read_only=read_only)
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._ranks: dict[int, _Rank] = {}  # per step on disk, read from its meta once
        self._async = async_save
        self._writer: threading.Thread | None = None
        # set by the writer when its save is over; waited on instead of Thread.join, which a
        # Ctrl-C landing inside it can leave reporting a still-running thread as finished
        # (CPython 3.11), so the run would exit mid-save
        self._saved = threading.Event()
        self._error: BaseException | None = None

    # -- queries
    def steps(self) -> list[int]:
        """Complete checkpoints, oldest first (tmp directories of unfinished saves excluded)."""
        self.wait()
        return self._steps_on_disk()

    def _steps_on_disk(self) -> list[int]:
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def meta(self, step: int | None = None) -> dict[str, Any]:
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        self.wait()
        return self._read_meta(step)

    def latest_readable_meta(self) -> dict[str, Any] | None:
        """The ``meta`` of the newest step whose ``meta`` can be read (None without any), as
        :meth:`restore` falls back past a damaged newest step: what a resume will restore."""
        for step in self.steps()[::-1]:
            try:
                return self._read_meta(step)
            except Exception as err:  # noqa: BLE001 - damaged: an older step may do
                warnings.warn(f"checkpoint {self.directory / str(step)} has unreadable metadata "
                              f"({type(err).__name__}: {err}); looking at an older one", stacklevel=2)
        return None

    def _read_meta(self, step: int) -> dict[str, Any]:
        return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def best_step(self) -> int | None:
        """The step with the highest score (NaN ranks lowest; ties go to the later step)."""
        self.wait()
        steps = self._steps_on_disk()
        return self._best(steps, self._ranks_of(steps))

    def last_finite_step(self) -> int | None:
        """The newest step in which no seed had diverged (None if there is none)."""
        self.wait()
        steps = self._steps_on_disk()
        return self._last_finite(steps, self._ranks_of(steps))

    # -- retention (see the module docstring)
    def _ranks_of(self, steps: list[int]) -> dict[int, _Rank]:
        """Rank of each of ``steps``: from the cache, else read from its meta (and cached)."""
        for gone in set(self._ranks) - set(steps):
            del self._ranks[gone]
        for step in steps:
            if step not in self._ranks:
                try:
                    self._ranks[step] = _rank_of(self._read_meta(step))
                except Exception as err:  # noqa: BLE001 - a damaged step must not stop the others
                    warnings.warn(f"checkpoint {self.directory / str(step)} has no readable meta "
                                  f"({type(err).__name__}: {err}); ranking it lowest", stacklevel=2)
                    self._ranks[step] = _Rank(-math.inf, False)
        return {step: self._ranks[step] for step in steps}

    @staticmethod
    def _best(steps: list[int], ranks: dict[int, _Rank]) -> int | None:
        best, best_score = None, -math.inf
        for step in steps:  # oldest first: ">=" gives ties to the later step
            if ranks[step].score >= best_score:
                best, best_score = step, ranks[step].score
        return best

    @staticmethod
    def _last_finite(steps: list[int], ranks: dict[int, _Rank]) -> int | None:
        return next((step for step in reversed(steps) if ranks[step].finite), None)

    def _retained(self, steps: list[int]) -> set[int]:
        """Which of ``steps`` (oldest first) retention keeps."""
        ranks = self._ranks_of(steps)
        keep = set(steps[-self.keep:])
        if self.keep_best:
            keep.add(self._best(steps, ranks))
        keep.add(self._last_finite(steps, ranks))
        keep.discard(None)
        return keep

    def _prune(self) -> None:
        """Delete the steps retention does not keep (called right after each save)."""
        steps = self._steps_on_disk()
        keep = self._retained(steps)
        try:
            for step in steps:
                if step not in keep:
                    self._delete(step)
                    del self._ranks[step]
        finally:
            self._manager.reload()  # the manager's list of steps follows the disk again

    def _delete(self, step: int) -> None:
        """Delete one step: renamed to a tmp directory first (atomic; the name alone hides it from
        every reader, and one left behind by a kill is cleaned up on the next open), then removed."""
        path = self.directory / str(step)
        doomed = path.with_name(f"{step}{TMP_DIR_SUFFIX}-deleted-{uuid.uuid4().hex[:8]}")
        try:
            path.rename(doomed)
            shutil.rmtree(doomed)
        except OSError as err:
            raise OSError(f"could not delete the old checkpoint {path} (kept by no retention rule): "
                          f"{err}") from err

    # -- save / restore
    def save(self, state: Any, metrics: dict[str, np.ndarray], *, config: dict[str, Any],
             num_seeds: int, chunk_size: int, hparams: dict[str, Any] | None = None,
             run_seconds: float = 0.0, devices: int = 1,
             diverged: Sequence[int | None] | None = None, inputs: dict | None = None,
             seed_devices: int = 1) -> int:
        """Save at step ``iterations_done`` (= the metrics' second axis); returns that step.

        ``devices``: how many devices each seed's envs were split over (data parallel);
        ``seed_devices``: how many devices the seeds were split over.

        ``inputs``: a JSON description of the run's ``inputs`` (which are not saved), kept in
        ``meta`` so that a resume can check it has the same ones.

        ``diverged``: one entry per seed, None while that seed's state is finite, else the first
        iteration at which it diverged (NaN/inf); None (not checked) counts as all finite. Once
        saved, steps retention does not keep are deleted (see the module docstring).

        With ``async_save`` this returns once the state is copied to host memory and the previous
        save has finished (re-raising its error); the write and the pruning go on in the background.
        """
        diverged = _check_diverged(diverged, num_seeds)
        metrics = {k: np.asarray(v) for k, v in metrics.items()}
        step = int(next(iter(metrics.values())).shape[1])
        s = score(metrics)
        layout, arrays = _host_leaves(state)
        meta = {
            "format": FORMAT,
            "iterations_done": step, "num_seeds": int(num_seeds), "chunk_size": int(chunk_size),
            "config": config, "run_seconds": float(run_seconds), "devices": int(devices),
            "seed_devices": int(seed_devices),
            "hparams": None if hparams is None else {k: np.asarray(v).tolist() for k, v in hparams.items()},
            "score": None if math.isnan(s) else s,
            "diverged": diverged, "inputs": inputs,
            "state_leaves": layout,
            "metrics": {k: [list(v.shape), v.dtype.name] for k, v in metrics.items()},
        }
        # a handful of packed vectors, not one array per leaf, and no tensorstore (see "Why packed")
        items = ocp.args.Composite(state=_VectorsSave(_pack(arrays)),
                                   history=_VectorsSave(_pack(list(metrics.values()))),
                                   meta=ocp.args.JsonSave(meta))
        rank = _rank_of(meta)
        self.wait()  # one save in flight at a time
        if not self._async:
            self._save_and_prune(step, items, rank)
            return step
        self._saved.clear()
        self._writer = threading.Thread(target=self._write, args=(step, items, rank),
                                        name=f"jaxrl-checkpoint-{step}", daemon=True)
        self._writer.start()
        return step

    def _save_and_prune(self, step: int, items: Any, rank: _Rank) -> None:
        self._manager.save(step, args=items, force=True)
        self._ranks[step] = rank  # known without reading it back
        self._prune()

    def _write(self, step: int, items: Any, rank: _Rank) -> None:
        """Body of the writer thread: its error is kept for :meth:`wait` to re-raise."""
        try:
            self._save_and_prune(step, items, rank)
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            self._error = err
        finally:
            self._saved.set()

    def restore(self, abstract_state: Any, step: int | None = None) -> Restored | None:
        """Restore ``step`` (default: the newest readable one) against ``abstract_state``.

        Without ``step``, a newest checkpoint that cannot be read is skipped with a warning and
        the next older one is tried; once one is restored, the skipped ones are renamed aside to
        ``<step>.damaged-<id>`` (unless ``read_only``), so that a resumed run can save those steps
        again. Returns None when there is no checkpoint at all. A checkpoint of another format
        or structure raises :class:`IncompatibleCheckpointError` at once (no fallback).
        """
        self.wait()
        steps = [step] if step is not None else self.steps()[::-1]
        skipped: list[int] = []
        for i, s in enumerate(steps):
            try:
                restored = self._restore(abstract_state, s)
            except IncompatibleCheckpointError:
                raise
            except Exception as err:  # noqa: BLE001 - fall back to an older checkpoint
                if step is not None or i == len(steps) - 1:
                    raise
                warnings.warn(f"checkpoint {self.directory / str(s)} could not be restored "
                              f"({type(err).__name__}: {err}); trying an older one", stacklevel=2)
                skipped.append(s)
                continue
            if skipped and not self._read_only:
                self._set_aside(skipped)
            return restored
        return None

    def _set_aside(self, steps: list[int]) -> None:
        """Rename unreadable steps to ``<step>.damaged-<id>``: no longer steps (so they can be saved
        again), but kept, since nothing a run produced is deleted."""
        try:
            for step in steps:
                path = self.directory / str(step)
                aside = path.with_name(f"{step}.damaged-{uuid.uuid4().hex[:8]}")
                try:
                    path.rename(aside)
                except OSError as err:
                    raise OSError(f"could not move the unreadable checkpoint {path} aside: {err}; a run "
                                  f"resumed from an older step cannot save step {step} while it is there") from err
                self._ranks.pop(step, None)
                warnings.warn(f"moved the unreadable checkpoint {path} aside to {aside} (kept, not deleted)",
                              stacklevel=3)
        finally:
            self._manager.reload()

    def _restore(self, abstract_state: Any, step: int) -> Restored:
        where = self.directory / str(step)
        meta = self.meta(step)
        if meta.get("format") != FORMAT:
            written = ("by an older jaxrl (one array per leaf)" if "format" not in meta
                       else f"in checkpoint format {meta['format']!r}")
            raise IncompatibleCheckpointError(
                f"checkpoint {where} was written {written}; this jaxrl reads checkpoint format {FORMAT} "
                "only: start a new run")
        layout = meta["state_leaves"]
        _check_layout(layout, _target_layout(abstract_state), where)
        out = self._manager.restore(step, args=ocp.args.Composite(state=_VectorsRestore(),
                                                                  history=_VectorsRestore()))
        leaves = _unpack(out["state"], [(shape, dtype) for _, shape, dtype, _ in layout])
        targets, treedef = jax.tree.flatten(abstract_state)
        state = []
        for leaf, target, (path, *_, impl) in zip(leaves, targets, layout):
            leaf = jax.device_put(leaf) if impl is None else jax.random.wrap_key_data(leaf, impl=impl)
            if leaf.shape != target.shape or leaf.dtype != target.dtype:
                raise IncompatibleCheckpointError(
                    f"checkpoint {where}: {path} restores as {leaf.shape} {leaf.dtype}, the train state has "
                    f"{target.shape} {target.dtype}")
            state.append(leaf)
        metrics = dict(zip(meta["metrics"], _unpack(out["history"], list(meta["metrics"].values()))))
        return Restored(step, jax.tree.unflatten(treedef, state), metrics, meta)

    def wait(self, timeout: float | None = None) -> None:
        """Block until a background save has finished; re-raise its error here if it failed.

        With ``timeout``: raise TimeoutError if the save is still running after that long.
        """
        if self._writer is not None:
            if not self._saved.wait(timeout):
                raise TimeoutError(f"a checkpoint save in {self.directory} is still running after {timeout} s")
            self._writer = None
        if self._error is not None:
            err, self._error = self._error, None
            raise RuntimeError(f"saving a checkpoint in {self.directory} failed: {err}") from err

    def close(self) -> None:
        """Wait for the last save (re-raising its error), then release the manager."""
        try:
            self.wait()
        finally:
            self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        # Already failing (an error, Ctrl-C): finish the save in flight, but without hiding the
        # first error and without hanging on a stuck disk.
        try:
            self.wait(timeout=ABANDON_SAVE_SECONDS)
        except TimeoutError as err:  # the writer is a daemon thread: it will not block the exit
            warnings.warn(f"{err}; abandoning it (the previous checkpoint stays the newest)", stacklevel=2)
            return  # the manager is still in use by the writer: leave it open
        except Exception as err:  # noqa: BLE001
            warnings.warn(f"{err} (while handling {exc_type.__name__})", stacklevel=2)
        self._manager.close()
