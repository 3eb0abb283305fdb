"""Saved runs: load a run folder's checkpoint and evaluate it (``jaxrl eval``).

A run folder (``jaxrl train --out DIR``) holds ``config.yaml``, ``metrics.jsonl``,
``summary.json`` and ``checkpoints/`` (see :mod:`jaxrl.checkpoint`). This module turns it back
into a trained state and plays evaluation episodes with it, with the same episode player the
training loop evaluates with.
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl.algos import algo_module
from jaxrl.checkpoint import CHECKPOINT_SUBDIR, Checkpointer
from jaxrl.config import Config, ConfigError, build
from jaxrl.core import Context, Spec
from jaxrl.evaluate import make_play
from jaxrl.loop import TrainState, make_train, seed_keys


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
                 step: int | str | None = None, key: int = 0, write: bool = True) -> dict[str, Any]:
    """Evaluate the checkpoint of a ``jaxrl train`` run folder; per seed, ``episodes`` episodes.

    The eval env is the run's (``env_kwargs`` updated by ``eval_env_kwargs``) with ``env_kwargs``
    applied on top. ``seeds``: seed values of the run to evaluate (default all). ``step``:
    ``None`` (latest checkpoint), ``"best"`` or an iteration count. Every seed plays from the same
    initial states (one PRNG ``key``), so seeds are compared on equal terms. Returns a dict with
    per-seed ``return_mean``, ``return_std``, ``length_mean``, ``finished`` and ``returns``
    (each episode; None for one cut by ``eval_max_steps``), and writes it to ``RUN_DIR/eval.json``
    when ``write``. Raises FileNotFoundError for a folder without checkpoints.
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
    chosen = jax.tree.map(lambda x: x[np.asarray(seeds) - config.seed], state)
    play_seed = lambda s, k: play(context(config, s, spec), s.agent, k)  # noqa: E731
    out = jax.device_get(jax.jit(jax.vmap(play_seed, in_axes=(0, None)))(chosen, jax.random.key(key)))
    returns = np.where(out.finished, out.returns, np.nan)
    lengths = np.where(out.finished, out.lengths, np.nan)

    def per_seed(stat: Callable[[np.ndarray], Any], values: np.ndarray) -> list[float | None]:
        return [_number(stat(row)) if np.isfinite(row).any() else None for row in values]

    iteration = int(np.asarray(state.iteration).reshape(-1)[0])
    means = per_seed(np.nanmean, returns)
    finite_means = [m for m in means if m is not None]
    result = {
        "run_dir": str(run_dir), "algo": config.algo, "env": config.env, "env_kwargs": env_kwargs,
        "iteration": iteration, "env_steps_per_seed": iteration * config.steps_per_iteration,
        "episodes": episodes, "deterministic": deterministic, "max_steps": config.eval_max_steps, "key": key,
        "seeds": seeds, "return_mean": means, "return_std": per_seed(np.nanstd, returns),
        "length_mean": per_seed(np.nanmean, lengths), "finished": [int(f.sum()) for f in out.finished],
        "returns": [[_number(x) for x in row] for row in returns],
        "mean_over_seeds": _number(np.mean(finite_means)) if finite_means else None,
        "std_over_seeds": _number(np.std(finite_means)) if finite_means else None,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    if write:
        (run_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _number(x: Any) -> float | None:
    """A JSON-safe float: NaN becomes None."""
    x = float(x)
    return None if math.isnan(x) else x
