"""Evaluation episodes, played inside a compiled program: in the training loop, or for a saved run.

``episodes`` environments each play exactly one episode with the algorithm's ``policy``
(greedy / mean action when deterministic, sampled otherwise; recurrent agents keep their carry
through the episode), observations normalised with the context's statistics. Env steps taken
here do not count as training steps. A bounded ``lax.while_loop`` stops as soon as every
episode has ended.

The same episode player serves both uses: :func:`make_evaluate` inside the compiled training
loop (every ``eval_every`` iterations), and :func:`jaxrl.runs.evaluate_run` for the checkpoint
of a saved run folder (``jaxrl eval RUN_DIR``).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxrl import envs
from jaxrl.config import Config, ConfigError
from jaxrl.core import Context, Spec


class Episodes(NamedTuple):
    """One episode per eval env: return, length, and whether it ended within the step bound."""

    returns: jax.Array  # (episodes,) float32
    lengths: jax.Array  # (episodes,) float32
    finished: jax.Array  # (episodes,) bool; False: cut by max_steps, not a result


def make_play(config: Config, algo: Any, spec: Spec, *, episodes: int, deterministic: bool,
              env_kwargs: dict[str, Any], max_steps: int) -> Callable[[Context, Any, jax.Array], Episodes]:
    """Build ``play(ctx, agent, key, params=None) -> Episodes``: ``episodes`` parallel episodes of
    ``config.env`` made with ``env_kwargs``, acting with ``algo.policy(ctx, agent, carry, obs, key,
    deterministic) -> (action, carry)``; ``agent`` is one (unbatched) agent state. ``params``
    replaces the env's params (``play.params``), e.g. to vmap over a grid of dynamics.
    """
    if not hasattr(algo, "policy"):
        raise ConfigError(f"algo {config.algo!r} defines no policy function, so it cannot be evaluated")
    if episodes < 1 or max_steps < 1:
        raise ConfigError(f"evaluation needs episodes >= 1 and max_steps >= 1, got {episodes} and {max_steps}")
    try:
        env, params = envs.make(config.env, **env_kwargs)
    except ValueError as err:
        raise ConfigError(f"eval env: {err}") from None
    if tuple(env.observation_space(params).shape) != spec.obs_shape:
        raise ConfigError(f"eval env: observations of shape {env.observation_space(params).shape}, but the agent "
                          f"is trained on {spec.obs_shape}")
    env = envs.EpisodeStats(env)
    n = episodes
    reset = jax.vmap(env.reset, in_axes=(0, None))
    step = jax.vmap(env.step, in_axes=(0, 0, 0, None))
    init_carry = getattr(algo, "init_carry", lambda ctx: ())

    base_params = params

    def play(ctx: Context, agent: Any, key: jax.Array, params: Any = None) -> Episodes:
        params = base_params if params is None else params  # e.g. one point of a robustness grid
        key, k_reset = jax.random.split(key)
        obs, env_state = reset(jax.random.split(k_reset, n), params)
        zeros = jnp.zeros(n, jnp.float32)
        memory = jax.tree.map(lambda x: jnp.broadcast_to(x, (n,) + jnp.shape(x)), init_carry(ctx))
        carry = (obs, env_state, memory, jnp.zeros(n, bool), zeros, zeros, key, jnp.int32(0))

        def running(carry):
            done, t = carry[3], carry[7]
            return (~done.all()) & (t < max_steps)

        def one_step(carry):
            obs, env_state, memory, done, ret, length, key, t = carry
            key, k_act, k_env = jax.random.split(key, 3)
            action, memory = algo.policy(ctx, agent, memory, ctx.normalize(obs), k_act, deterministic)
            obs, env_state, _, _, _, info = step(jax.random.split(k_env, n), env_state, action, params)
            ended = info["episode_done"] & ~done  # record each env's first episode only
            ret = jnp.where(ended, info["episode_return"], ret)
            length = jnp.where(ended, info["episode_length"].astype(jnp.float32), length)
            return obs, env_state, memory, done | ended, ret, length, key, t + 1

        _, _, _, done, ret, length, _, _ = jax.lax.while_loop(running, one_step, carry)
        return Episodes(ret, length, done)

    play.params = base_params  # the eval env's params
    return play


def summarize(episodes: Episodes) -> dict[str, jax.Array]:
    """``eval_return`` (mean), ``eval_return_std`` and ``eval_length`` over finished episodes
    (NaN when none finished)."""
    finished = jnp.where(episodes.finished, 1.0, jnp.nan)
    return {"eval_return": jnp.nanmean(episodes.returns * finished),
            "eval_return_std": jnp.nanstd(episodes.returns * finished),
            "eval_length": jnp.nanmean(episodes.lengths * finished)}


def make_evaluate(config: Config, algo: Any, spec: Spec) -> Callable[[Context, Any, jax.Array], dict[str, jax.Array]]:
    """Build the in-loop ``evaluate(ctx, agent, key) -> {"eval_return", "eval_return_std", "eval_length"}``.

    Eval envs use ``config.env`` with ``config.env_kwargs`` updated by ``config.eval_env_kwargs``
    (e.g. other physics parameters); ``eval_episodes``, ``eval_deterministic`` and
    ``eval_max_steps`` set the rest.
    """
    play = make_play(config, algo, spec, episodes=config.eval_episodes,
                     deterministic=config.eval_deterministic, max_steps=config.eval_max_steps,
                     env_kwargs={**config.env_kwargs, **config.eval_env_kwargs})
    return lambda ctx, agent, key: summarize(play(ctx, agent, key))
