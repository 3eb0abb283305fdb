"""Saved runs: load a run folder's checkpoint and evaluate it (``jaxrl eval``).

A run folder (``jaxrl train --out DIR``) holds ``config.yaml``, ``metrics.jsonl``,
``summary.json`` and ``checkpoints/`` (see :mod:`jaxrl.checkpoint`). This module turns it back
into a trained state and plays evaluation episodes with it, with the same episode player the
training loop evaluates with.
"""

from __future__ import annotations

import datetime
import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl import envs, stats
from jaxrl.algos import algo_module
from jaxrl.checkpoint import CHECKPOINT_SUBDIR, Checkpointer
from jaxrl.config import Config, ConfigError, build
from jaxrl.core import Context, Spec
from jaxrl.evaluate import make_play
from jaxrl.loop import TrainState, compiler_options, make_train, seed_keys
from jaxrl.sweeps import check_env_value


def abstract_state(config: Config, num_seeds: int, hparams: dict | None = None) -> Any:
    """Shapes/dtypes of the vmapped ``TrainState`` of ``config`` (no computation, no compile)."""
    train = make_train(config)
    keys = seed_keys(config.seed, num_seeds)
    return jax.eval_shape(jax.vmap(train.init, in_axes=(0, None)), keys, hparams)


def context(config: Config, state: TrainState, spec: Spec | None = None, hparams: dict | None = None) -> Context:
    """The algorithm context of one seed's saved ``state`` (its iteration and observation
    statistics); ``hparams`` are the run's traced hyperparameters (default: the config's),
    ``spec`` the env's (default: made from the config)."""
    spec = make_train(config).spec if spec is None else spec
    hp = {**config.hparams(), **{k: jnp.asarray(v, jnp.float32) for k, v in (hparams or {}).items()}}
    return Context(config, spec, hp, state.iteration, obs_stats=state.obs_stats)


def load_policy(run_dir: str | Path, step: int | str | None = None) -> tuple[Any, Any]:
    """Load a trained run for inference: ``(state, config)``.

    ``run_dir`` is a ``jaxrl train`` run folder (its checkpoints are in ``run_dir/checkpoints``)
    or a checkpoint directory itself. ``step``: an iteration count, ``"best"``, or None for the
    latest. ``state`` is the whole ``TrainState`` with a leading seeds axis; ``state.agent``
    holds the agent (params etc.). To act greedily with seed ``i`` (``obs``: ``(envs, ...)``)::

        state, config = load_policy(run_dir)
        seed_i = jax.tree.map(lambda x: x[i], state)
        ctx = runs.context(config, seed_i)
        algo = jaxrl.algos.algo_module(config.algo)
        carry = jax.tree.map(lambda x: jnp.broadcast_to(x, (len(obs),) + x.shape), algo.init_carry(ctx)) \
            if hasattr(algo, "init_carry") else ()
        action, carry = algo.policy(ctx, seed_i.agent, carry, ctx.normalize(obs), key, True)
    """
    path = Path(run_dir)
    if (path / CHECKPOINT_SUBDIR).is_dir():
        path = path / CHECKPOINT_SUBDIR
    ckpt = Checkpointer(path, read_only=True, async_save=False)
    try:
        if step == "best":
            step = ckpt.best_step()
        elif step is None:
            step = ckpt.latest_step()
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {path}")
        meta = ckpt.meta(step)
        data = meta["config"]
        config = build(algo_module(data["algo"]).Config, data)
        restored = ckpt.restore(abstract_state(config, meta["num_seeds"], meta["hparams"]), step)
    finally:
        ckpt.close()
    return restored.state, config


def evaluate_run(run_dir: str | Path, *, episodes: int = 16, deterministic: bool = True,
                 env_kwargs: dict[str, Any] | None = None, seeds: Sequence[int] | None = None,
                 step: int | str | None = None, key: int = 0, write: bool = True,
                 grid: dict[str, Sequence[float]] | None = None) -> dict[str, Any]:
    """Evaluate the checkpoint of a ``jaxrl train`` run folder; per seed, ``episodes`` episodes.

    The eval env is the run's (``env_kwargs`` updated by ``eval_env_kwargs``) with ``env_kwargs``
    applied on top. ``seeds``: seed values of the run to evaluate (default all). ``step``:
    ``None`` (latest checkpoint), ``"best"`` or an iteration count. Every seed plays from the same
    initial states (one PRNG ``key``), so seeds are compared on equal terms. Returns a dict with
    per-seed ``return_mean``, ``return_std``, ``length_mean``, ``finished`` and ``returns``
    (each episode; None for one cut by ``eval_max_steps``), and writes it to ``RUN_DIR/eval.json``
    when ``write``. Raises FileNotFoundError for a folder without checkpoints.

    ``grid`` (env param -> values, e.g. ``{"gravity": [5, 10, 15], "length": [0.25, 0.5, 1]}``)
    evaluates the policy on every point of the cross product instead, in one program: see
    :func:`robustness_grid` for what is returned (written to ``RUN_DIR/robustness.json``).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{str(run_dir)!r} is not a folder")
    if episodes < 1:
        raise ConfigError(f"episodes must be >= 1, got {episodes}")
    folder = run_dir / CHECKPOINT_SUBDIR if (run_dir / CHECKPOINT_SUBDIR).is_dir() else run_dir
    with Checkpointer(folder, read_only=True) as ckpt:
        saved = ckpt.steps()
    if not saved:
        raise FileNotFoundError(
            f"no checkpoint in {str(run_dir)!r} (a `jaxrl train --out DIR` run keeps them in "
            f"RUN_DIR/{CHECKPOINT_SUBDIR}; a run trained with --checkpoint-every -1 has none)")
    if step not in (None, "best") and step not in saved:
        raise FileNotFoundError(f"no checkpoint after {step} iterations in {str(run_dir)!r}; saved: "
                                + ", ".join(map(str, saved)))
    state, config = load_policy(run_dir, step)
    num_seeds = int(jax.tree.leaves(state)[0].shape[0])
    all_seeds = list(range(config.seed, config.seed + num_seeds))
    seeds = all_seeds if seeds is None else [int(s) for s in seeds]
    missing = [s for s in seeds if s not in all_seeds]
    if missing or not seeds:
        raise ConfigError(f"seeds {missing or seeds} are not in this run; it trained seeds "
                          f"{all_seeds[0]}..{all_seeds[-1]}")
    env_kwargs = {**config.env_kwargs, **config.eval_env_kwargs, **(env_kwargs or {})}
    algo, spec = algo_module(config.algo), make_train(config).spec
    play = make_play(config, algo, spec, episodes=episodes, deterministic=deterministic,
                     env_kwargs=env_kwargs, max_steps=config.eval_max_steps)
    points = _grid_points(grid, play.params) if grid is not None else None
    chosen = jax.tree.map(lambda x: x[np.asarray(seeds) - config.seed], state)
    play_seed = lambda s, k, p: play(context(config, s, spec), s.agent, k, p)  # noqa: E731
    play_seeds = jax.vmap(play_seed, in_axes=(0, None, None))  # (seeds, episodes)
    if points is not None:  # (points, seeds, episodes): every point plays from the same initial keys
        play_seeds = jax.vmap(play_seeds, in_axes=(None, None, 0))
    out = jax.device_get(jax.jit(play_seeds, compiler_options=compiler_options())(chosen, jax.random.key(key), points))
    returns = np.where(out.finished, out.returns, np.nan)
    lengths = np.where(out.finished, out.lengths, np.nan)
    iteration = int(np.asarray(state.iteration).reshape(-1)[0])
    result = {
        "run_dir": str(run_dir), "algo": config.algo, "env": config.env, "env_kwargs": env_kwargs,
        "iteration": iteration, "env_steps_per_seed": iteration * config.steps_per_iteration,
        "episodes": episodes, "deterministic": deterministic, "max_steps": config.eval_max_steps, "key": key,
        "seeds": seeds,
    }
    if points is not None:
        result.update(robustness_grid(grid, returns, out.finished))
    else:
        result.update(_per_seed_summary(returns, lengths, out.finished))
    result["date"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    if write:
        (run_dir / ("robustness.json" if points is not None else "eval.json")).write_text(
            json.dumps(result, indent=2) + "\n")
    return result


def _per_seed_summary(returns: np.ndarray, lengths: np.ndarray, finished: np.ndarray) -> dict[str, Any]:
    """Per seed (rows of ``(seeds, episodes)`` arrays, NaN where an episode was cut): mean and std
    return, mean length, episodes finished, every return; the mean and std of the seeds' means."""
    means = _per_row(np.nanmean, returns)
    finite_means = [m for m in means if m is not None]
    return {
        "return_mean": means, "return_std": _per_row(np.nanstd, returns), "length_mean": _per_row(np.nanmean, lengths),
        "finished": [int(f.sum()) for f in finished], "returns": [[_number(x) for x in row] for row in returns],
        "mean_over_seeds": _number(np.mean(finite_means)) if finite_means else None,
        "std_over_seeds": _number(np.std(finite_means)) if finite_means else None,
    }


def _per_row(stat: Callable[[np.ndarray], Any], values: np.ndarray) -> list[float | None]:
    return [_number(stat(row)) if np.isfinite(row).any() else None for row in values]


def _grid_points(grid: dict[str, Sequence[float]], params: Any) -> Any:
    """``params`` stacked over the cross product of ``grid``'s values (the first key varies
    slowest), or a ConfigError naming what is wrong before anything is compiled."""
    numeric = envs.numeric_params(params)
    if not grid:
        raise ConfigError("a robustness grid needs at least one env param with values")
    for name, values in grid.items():
        if name not in numeric:
            raise ConfigError(f"no numeric env param {name!r} to vary; the eval env's numeric params: "
                              f"{sorted(numeric) or 'none'}")
        if not isinstance(values, (list, tuple)) or not values:
            raise ConfigError(f"grid param {name!r} needs a non-empty list of values, got {values!r}")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"grid param {name!r}: values must be finite numbers, got {v!r}")
            check_env_value(name, v, numeric[name].dtype)  # finite, and the same in the param's dtype
    combos = list(itertools.product(*grid.values()))
    columns = {name: jnp.asarray([c[i] for c in combos], numeric[name].dtype) for i, name in enumerate(grid)}
    stacked = jax.tree.map(lambda x: jnp.broadcast_to(jnp.asarray(x), (len(combos),) + jnp.shape(x)), params)
    return stacked.replace(**columns)


def robustness_grid(grid: dict[str, Sequence[float]], returns: np.ndarray, finished: np.ndarray) -> dict[str, Any]:
    """Summaries of ``returns (points, seeds, episodes)`` played on the cross product of ``grid``
    (NaN where an episode was cut): ``points`` (each a dict of param values), per point the mean
    return over seeds and episodes (``return_mean``) and per seed (``return_per_seed``),
    ``finished`` per point, and ``robustness`` (:func:`jaxrl.stats.robustness` over the points'
    means: mean, worst case, 10% quantile), also per seed (``robustness_per_seed``)."""
    names = list(grid)
    combos = list(itertools.product(*grid.values()))
    per_seed = np.array([[np.nanmean(r) if np.isfinite(r).any() else np.nan for r in point] for point in returns])
    per_point = np.array([np.nanmean(r) if np.isfinite(r).any() else np.nan for r in returns])
    return {
        "grid": {k: list(v) for k, v in grid.items()},
        "points": [dict(zip(names, c)) for c in combos],
        "return_mean": [_number(x) for x in per_point],
        "return_per_seed": [[_number(x) for x in row] for row in per_seed],
        "finished": [int(f.sum()) for f in finished],
        "robustness": {k: _number(v) for k, v in stats.robustness(per_point).items()},
        "robustness_per_seed": [{k: _number(v) for k, v in stats.robustness(col).items()} for col in per_seed.T],
    }


def _number(x: Any) -> float | None:
    """A JSON-safe float: NaN becomes None."""
    x = float(x)
    return None if math.isnan(x) else x
