"""Evaluation inside the compiled program: a fixed number of episodes on separate environments.

``eval_episodes`` environments each play exactly one episode with the algorithm's ``policy``
(greedy / mean action when deterministic, sampled otherwise), observations normalised with the
train state's statistics. Env steps taken here do not count as training steps. A bounded
``lax.while_loop`` stops as soon as every episode has ended.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxrl import envs
from jaxrl.config import Config, ConfigError


def make_evaluate(config: Config, algo: Any, context: Callable[..., Any]) -> Callable[..., dict[str, jax.Array]]:
    """Build ``evaluate(state, hp, key) -> {"eval_return", "eval_return_std", "eval_length"}``.

    ``context(hp, iteration)`` builds the algorithm Context; ``algo.policy(ctx, agent, obs, key,
    deterministic)`` chooses actions. Eval envs use ``config.env`` with ``config.env_kwargs``
    updated by ``config.eval_env_kwargs`` (e.g. other physics parameters).
    """
    if not hasattr(algo, "policy"):
        raise ConfigError(f"algo {config.algo!r} defines no policy function, so it cannot be evaluated")
    try:
        env, params = envs.make(config.env, **{**config.env_kwargs, **config.eval_env_kwargs})
    except ValueError as err:
        raise ConfigError(f"eval env: {err}") from None
    env = envs.EpisodeStats(env)
    n, max_steps = config.eval_episodes, config.eval_max_steps
    reset = jax.vmap(env.reset, in_axes=(0, None))
    step = jax.vmap(env.step, in_axes=(0, 0, 0, None))

    def evaluate(state: Any, hp: dict, key: jax.Array) -> dict[str, jax.Array]:
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
            action = algo.policy(ctx, state.agent, normalize(obs), k_act, config.eval_deterministic)
            obs, env_state, _, _, _, info = step(jax.random.split(k_env, n), env_state, action, params)
            ended = info["episode_done"] & ~done  # record each env's first episode only
            ret = jnp.where(ended, info["episode_return"], ret)
            length = jnp.where(ended, info["episode_length"].astype(jnp.float32), length)
            return obs, env_state, done | ended, ret, length, key, t + 1

        _, _, done, ret, length, _, _ = jax.lax.while_loop(running, one_step, carry)
        finished = jnp.where(done, 1.0, jnp.nan)  # an episode cut by eval_max_steps is not a result
        return {"eval_return": jnp.nanmean(ret * finished), "eval_return_std": jnp.nanstd(ret * finished),
                "eval_length": jnp.nanmean(length * finished)}

    return evaluate
