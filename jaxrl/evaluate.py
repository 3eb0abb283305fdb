"""Evaluation: a fixed number of episodes on separate environments, in the loop or from a run.

``episodes`` environments each play exactly one episode with the algorithm's ``policy``
(greedy / mean action when deterministic, sampled otherwise), observations normalised with the
train state's statistics. Env steps taken here do not count as training steps. A bounded
``lax.while_loop`` stops as soon as every episode has ended.

The same episode player serves both uses: :func:`make_evaluate` inside the compiled training
loop (every ``eval_every`` iterations), and :func:`evaluate_run` for the checkpoint of a saved
run folder (``jaxrl eval RUN_DIR``).
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl import envs
from jaxrl.config import Config, ConfigError


class Episodes(NamedTuple):
    """One episode per eval env: return, length, and whether it ended within the step bound."""

    returns: jax.Array  # (episodes,) float32
    lengths: jax.Array  # (episodes,) float32
    finished: jax.Array  # (episodes,) bool; False: cut by max_steps, not a result


def make_play(config: Config, algo: Any, context: Callable[..., Any], *, episodes: int, deterministic: bool,
              env_kwargs: dict[str, Any], max_steps: int) -> Callable[..., Episodes]:
    """Build ``play(state, hp, key) -> Episodes``: ``episodes`` parallel episodes of ``config.env``
    made with ``env_kwargs``, acting with ``algo.policy``.

    ``context(hp, iteration)`` builds the algorithm Context; ``algo.policy(ctx, agent, obs, key,
    deterministic)`` chooses actions. ``state`` is one (unbatched) TrainState.
    """
    if not hasattr(algo, "policy"):
        raise ConfigError(f"algo {config.algo!r} defines no policy function, so it cannot be evaluated")
    if episodes < 1 or max_steps < 1:
        raise ConfigError(f"evaluation needs episodes >= 1 and max_steps >= 1, got {episodes} and {max_steps}")
    try:
        env, params = envs.make(config.env, **env_kwargs)
    except ValueError as err:
        raise ConfigError(f"eval env: {err}") from None
    env = envs.EpisodeStats(env)
    n = episodes
    reset = jax.vmap(env.reset, in_axes=(0, None))
    step = jax.vmap(env.step, in_axes=(0, 0, 0, None))

    def play(state: Any, hp: dict, key: jax.Array) -> Episodes:
        ctx = context(hp, state.iteration)
        normalize = state.obs_stats.normalize if config.normalize_obs else (lambda x: x)
        key, k_reset = jax.random.split(key)
        obs, env_state = reset(jax.random.split(k_reset, n), params)
        zeros = jnp.zeros(n, jnp.float32)
        carry = (obs, env_state, jnp.zeros(n, bool), zeros, zeros, key, jnp.int32(0))

        def running(carry):
            done, t = carry[2], carry[6]
            return (~done.all()) & (t < max_steps)

        def one_step(carry):
            obs, env_state, done, ret, length, key, t = carry
            key, k_act, k_env = jax.random.split(key, 3)
            action = algo.policy(ctx, state.agent, normalize(obs), k_act, deterministic)
            obs, env_state, _, _, _, info = step(jax.random.split(k_env, n), env_state, action, params)
            ended = info["episode_done"] & ~done  # record each env's first episode only
            ret = jnp.where(ended, info["episode_return"], ret)
            length = jnp.where(ended, info["episode_length"].astype(jnp.float32), length)
            return obs, env_state, done | ended, ret, length, key, t + 1

        _, _, done, ret, length, _, _ = jax.lax.while_loop(running, one_step, carry)
        return Episodes(ret, length, done)

    return play


def summarize(episodes: Episodes) -> dict[str, jax.Array]:
    """``eval_return`` (mean), ``eval_return_std`` and ``eval_length`` over finished episodes
    (NaN when none finished)."""
    finished = jnp.where(episodes.finished, 1.0, jnp.nan)
    return {"eval_return": jnp.nanmean(episodes.returns * finished),
            "eval_return_std": jnp.nanstd(episodes.returns * finished),
            "eval_length": jnp.nanmean(episodes.lengths * finished)}


def make_evaluate(config: Config, algo: Any, context: Callable[..., Any]) -> Callable[..., dict[str, jax.Array]]:
    """Build the in-loop ``evaluate(state, hp, key) -> {"eval_return", "eval_return_std", "eval_length"}``.

    Eval envs use ``config.env`` with ``config.env_kwargs`` updated by ``config.eval_env_kwargs``
    (e.g. other physics parameters); ``eval_episodes``, ``eval_deterministic`` and
    ``eval_max_steps`` set the rest.
    """
    play = make_play(config, algo, context, episodes=config.eval_episodes,
                     deterministic=config.eval_deterministic, max_steps=config.eval_max_steps,
                     env_kwargs={**config.env_kwargs, **config.eval_env_kwargs})
    return lambda state, hp, key: summarize(play(state, hp, key))


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
    from jaxrl.checkpoint import CHECKPOINT_SUBDIR, Checkpointer, load_policy
    from jaxrl.config import algo_module
    from jaxrl.loop import Context, make_train

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
    train = make_train(config)
    algo = algo_module(config.algo)
    play = make_play(config, algo, lambda hp, i: Context(config, train.spec, hp, i), episodes=episodes,
                     deterministic=deterministic, env_kwargs=env_kwargs, max_steps=config.eval_max_steps)
    chosen = jax.tree.map(lambda x: x[np.asarray(seeds) - config.seed], state)
    out = jax.device_get(jax.jit(jax.vmap(play, in_axes=(0, None, None)))(
        chosen, config.hparams(), jax.random.key(key)))
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
