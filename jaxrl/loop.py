"""The one training loop: ``make_train(config)`` builds a pure ``train(key, hparams)``.

An algorithm module supplies ``Config``, ``init(ctx, key)``, ``act(ctx, agent, obs, key)`` and
``learn(ctx, agent, traj, key)`` (plus an optional ``check(config, spec)``); everything else —
the rollout (:mod:`jaxrl.rollout`), episode statistics, observation normalisation, reward
scaling, metrics and iteration — lives here, once.

One iteration = a rollout of ``num_steps`` steps in each of ``num_envs`` envs (``lax.scan``),
then ``learn`` on that time-major batch. ``train`` scans iterations; the same iteration body
also runs in chunks (``train.run_chunk``) so a host driver can report progress between them.
"""

from __future__ import annotations

import dataclasses
import math
import types
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from jaxrl import envs
from jaxrl.config import Config, ConfigError, RoundingWarning, algo_module
from jaxrl.normalize import RewardScaler, RunningStats
from jaxrl.rollout import Transition, make_rollout

Metrics = dict[str, jax.Array]


class Spec(NamedTuple):
    """What an algorithm needs to know about the environment."""

    obs_shape: tuple[int, ...]
    action_space: Any  # envs.Discrete | envs.Box

    @property
    def discrete(self) -> bool:
        return isinstance(self.action_space, envs.Discrete)

    @property
    def action_dim(self) -> int:
        """Number of actions (discrete) or action vector size (continuous)."""
        space = self.action_space
        return int(space.n) if self.discrete else math.prod(space.shape)


class Context(NamedTuple):
    """Everything an algorithm function may read: static config and spec, traced values.

    ``iteration`` comes from the scan over iterations, not from the (possibly vmapped) train
    state, so it is unbatched across seeds: conditionals on it stay real branches.
    """

    config: Config
    spec: Spec
    hp: dict[str, jax.Array]  # traced hyperparameters
    iteration: jax.Array  # int32 index of the current iteration

    @property
    def progress(self) -> jax.Array:
        """Fraction of training done at the start of this iteration, in [0, 1)."""
        return self.iteration.astype(jnp.float32) / self.config.num_iterations

    @property
    def env_steps(self) -> jax.Array:
        """Env steps taken before this iteration (float32)."""
        return self.iteration.astype(jnp.float32) * self.config.steps_per_iteration

    def learning_rate(self) -> jax.Array:
        """``lr``, linearly annealed to 0 over training when ``config.anneal_lr``."""
        if self.config.anneal_lr:
            return self.hp["lr"] * (1.0 - self.progress)
        return self.hp["lr"]


class TrainState(struct.PyTreeNode):
    """All state that changes during training, in one pytree (checkpoint it whole)."""

    agent: Any
    env_state: Any
    obs: jax.Array
    obs_stats: RunningStats
    reward_scaler: RewardScaler
    key: jax.Array
    iteration: jax.Array


class TrainOutput(struct.PyTreeNode):
    state: TrainState
    metrics: Metrics  # each of shape (num_iterations,) (plus leading vmap axes)


def nan_like(shapes: Any) -> Any:
    """NaN-filled arrays shaped like ``shapes`` (from ``jax.eval_shape``): the metrics of a step
    that was skipped (a ``lax.cond`` branch that did not run)."""
    return jax.tree.map(lambda s: jnp.full(s.shape, jnp.nan, s.dtype), shapes)


ENV_PREFIX = "env."  # hparams key prefix of a traced env param, e.g. "env.gravity"


def env_param_values(params: Any) -> dict[str, jax.Array]:
    """The numeric scalar fields of an env's params: the env params a sweep can vary."""
    if not dataclasses.is_dataclass(params):
        return {}
    values = {}
    for field in dataclasses.fields(params):
        value = getattr(params, field.name)
        numeric = isinstance(value, (int, float)) or (hasattr(value, "shape") and jnp.ndim(value) == 0)
        if numeric and not jnp.issubdtype(jnp.asarray(value).dtype, jnp.bool_):
            values[field.name] = jnp.asarray(value)
    return values


def make_env(config: Config) -> tuple[envs.Environment, Any]:
    """The training env (auto-reset, episode statistics) and its params, or a ConfigError."""
    try:
        env, params = envs.make(config.env, **config.env_kwargs)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return envs.wrap_for_training(env), params


def make_train(config: Config) -> types.FunctionType:
    """Build ``train(key, hparams=None) -> TrainOutput`` for ``config``.

    ``hparams`` maps traced hyperparameter names to (possibly batched) values; missing names
    take the config's values. Keys ``env.<name>`` replace numeric fields of the env params
    (e.g. ``env.gravity``), so environment variations can be vmapped and swept too. The returned function also carries ``init(key, hparams)``,
    ``run_chunk(state, hparams, start, length)`` and ``num_iterations`` for chunked drivers.
    """
    config.validate()
    if config.rounding_note():
        warnings.warn(config.rounding_note(), RoundingWarning, stacklevel=2)
    algo = algo_module(config.algo)
    env, env_params = make_env(config)
    obs_space = env.observation_space(env_params)
    spec = Spec(tuple(obs_space.shape), env.action_space(env_params))
    if hasattr(algo, "check"):
        algo.check(config, spec)
    n_envs, n_steps, n_iters = config.num_envs, config.num_steps, config.num_iterations
    rollout = make_rollout(env, n_envs, n_steps)
    evaluate = None
    if config.eval_every:
        from jaxrl.evaluate import make_evaluate

        evaluate = make_evaluate(config, algo, lambda hp, i: Context(config, spec, hp, i))

    env_defaults = env_param_values(env_params)

    def hparams_of(hparams: dict | None) -> dict[str, jax.Array]:
        names = config.traced_names()
        hparams = dict(hparams or {})
        unknown = set(hparams) - set(names) - {ENV_PREFIX + k for k in env_defaults}
        if unknown:
            raise ConfigError(
                f"unknown traced hyperparameter(s) {sorted(unknown)}; traced: {list(names)}; env params "
                f"(as {ENV_PREFIX}<name>): {sorted(env_defaults)}")
        hp = config.hparams()
        for k, v in hparams.items():
            dtype = env_defaults[k[len(ENV_PREFIX):]].dtype if k.startswith(ENV_PREFIX) else jnp.float32
            hp[k] = jnp.asarray(v, dtype)
        return hp

    def params_of(hp: dict[str, jax.Array]) -> Any:
        """The env params with the swept ``env.<name>`` values of ``hp`` put in."""
        swept = {k[len(ENV_PREFIX):]: v for k, v in hp.items() if k.startswith(ENV_PREFIX)}
        return env_params.replace(**swept) if swept else env_params

    def init(key: jax.Array, hparams: dict | None = None) -> TrainState:
        hp = hparams_of(hparams)
        key, k_env, k_agent = jax.random.split(key, 3)
        obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(k_env, n_envs), params_of(hp))
        agent = algo.init(Context(config, spec, hp, jnp.int32(0)), k_agent)
        return TrainState(agent, env_state, obs, RunningStats.create(spec.obs_shape),
                          RewardScaler.create(n_envs), key, jnp.int32(0))

    def iteration(state: TrainState, hp: dict, i: jax.Array) -> tuple[TrainState, Metrics]:
        ctx = Context(config, spec, hp, i)
        key, k_roll, k_learn, k_eval = jax.random.split(state.key, 4)
        normalize = state.obs_stats.normalize if config.normalize_obs else (lambda x: x)

        def act(obs: jax.Array, k: jax.Array) -> tuple[jax.Array, dict]:
            return algo.act(ctx, state.agent, normalize(obs), k)

        (env_state, obs), traj, episodes = rollout(state.env_state, state.obs, act, k_roll, params_of(hp))

        obs_stats, scaler = state.obs_stats, state.reward_scaler
        if config.normalize_obs:  # learn on exactly what the policy saw (the old statistics)
            obs_stats = obs_stats.update(traj.obs)
            traj = traj.replace(obs=normalize(traj.obs), next_obs=normalize(traj.next_obs))
        if config.normalize_reward:
            scaler, scaled = scaler.scale(traj.reward, traj.terminated | traj.truncated, hp["gamma"])
            traj = traj.replace(reward=scaled)

        agent, metrics = algo.learn(ctx, state.agent, traj, k_learn)
        finished = episodes.done.sum()
        mean_of_finished = lambda x: jnp.where(  # noqa: E731
            finished > 0, (x * episodes.done).sum() / jnp.maximum(finished, 1), jnp.nan)
        metrics = {
            "env_steps": ctx.env_steps + config.steps_per_iteration,
            "episodes": finished.astype(jnp.float32),
            "episode_return": mean_of_finished(episodes.returns),
            "episode_length": mean_of_finished(episodes.lengths.astype(jnp.float32)),
            **metrics,
        }
        new_state = TrainState(agent, env_state, obs, obs_stats, scaler, key, state.iteration + 1)
        if evaluate is not None:  # after the update, on iterations eval_every, 2*eval_every, ...
            due = (i + 1) % config.eval_every == 0
            skipped = nan_like(jax.eval_shape(evaluate, new_state, hp, k_eval))
            metrics |= jax.lax.cond(due, lambda: evaluate(new_state, hp, k_eval), lambda: skipped)
        return new_state, metrics

    def run_chunk(state: TrainState, hparams: dict | None, start: jax.Array, length: int) -> tuple[TrainState, Metrics]:
        """``length`` iterations from iteration ``start``; those past the end are skipped.

        ``start`` is an unbatched int32, so one compiled chunk serves every chunk of a run,
        the last (partial) one included; skipped iterations return NaN metrics.
        """
        hp = hparams_of(hparams)
        empty = nan_like(jax.eval_shape(iteration, state, hp, jnp.int32(0))[1])

        def body(state, i):
            return jax.lax.cond(i < n_iters, lambda s: iteration(s, hp, i), lambda s: (s, empty), state)

        return jax.lax.scan(body, state, start + jnp.arange(length, dtype=jnp.int32))

    def train(key: jax.Array, hparams: dict | None = None) -> TrainOutput:
        hp = hparams_of(hparams)
        state, metrics = jax.lax.scan(lambda s, i: iteration(s, hp, i), init(key, hp),
                                      jnp.arange(n_iters, dtype=jnp.int32))
        return TrainOutput(state, metrics)

    train.init = init
    train.run_chunk = run_chunk
    train.num_iterations = n_iters
    train.config = config
    train.spec = spec
    return train


def seed_keys(seed: int, num_seeds: int) -> jax.Array:
    """Keys for seeds ``seed, seed+1, ...``: run ``i`` of a vmapped batch equals a single run
    with ``jax.random.key(seed + i)``."""
    return jax.vmap(jax.random.key)(jnp.arange(seed, seed + num_seeds))
