"""The one training loop: ``make_train(config)`` builds a pure ``train(key, hparams)``.

An algorithm module supplies ``Config``, ``init(ctx, key)``, ``act(ctx, agent, obs, key)`` and
``learn(ctx, agent, traj, key)`` (plus an optional ``check(config, spec, devices)``); everything else —
the rollout (:mod:`jaxrl.rollout`), episode statistics, observation normalisation, reward
scaling, metrics and iteration — lives here, once.

One iteration = a rollout of ``num_steps`` steps in each of ``num_envs`` envs (``lax.scan``),
then ``learn`` on that time-major batch. ``train`` scans iterations; the same iteration body
also runs in chunks (``train.run_chunk``) so a host driver can report progress between them.

Data parallel (``make_train(config, data_parallel=D)``, see :mod:`jaxrl.parallel`): the same
iteration body runs under ``jax.shard_map`` on each device's ``num_envs / D`` envs, with
``Context.axis`` naming the mesh axis; the config keeps the run's global sizes, so env-step
counts and schedules count every device's steps.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct
from jax.sharding import Mesh, PartitionSpec

from jaxrl import envs, parallel, replay
from jaxrl.config import ON_DIVERGENCE, Config, ConfigError, RoundingWarning, algo_module
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

    ``axis`` names the mesh axis of a data-parallel run (None otherwise): the data an algorithm
    sees (rollout, minibatches, its replay buffer) is then this device's share, and
    :func:`jaxrl.optim.gradient_step` with ``axis=ctx.axis`` averages gradients over devices.
    """

    config: Config
    spec: Spec
    hp: dict[str, jax.Array]  # traced hyperparameters
    iteration: jax.Array  # int32 index of the current iteration
    axis: str | None = None

    @property
    def devices(self) -> int:
        """Devices the run is split over (1 unless data parallel): local shares of the
        configured sizes (a minibatch, a replay buffer) are ``1 / devices`` of them."""
        return 1 if self.axis is None else jax.lax.axis_size(self.axis)

    def sum(self, tree: Any) -> Any:
        """Sums of each array of ``tree`` over every device's data."""
        sums = jax.tree.map(jnp.sum, tree)
        return sums if self.axis is None else jax.lax.psum(sums, self.axis)

    def mean(self, x: jax.Array) -> jax.Array:
        """Mean of ``x`` over every device's data (equal shares on every device)."""
        return x.mean() if self.axis is None else jax.lax.pmean(x.mean(), self.axis)

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
    """All state that changes during training, in one pytree (checkpoint it whole).

    ``diverged_at`` is the first iteration after which the learner's state was not finite (a
    NaN or infinity in parameters, optimizer or target state, normaliser statistics, or an
    infinite learning metric), -1 while everything is finite: see :func:`finite`.
    """

    agent: Any
    env_state: Any
    obs: jax.Array
    obs_stats: RunningStats
    reward_scaler: RewardScaler
    key: jax.Array
    iteration: jax.Array
    diverged_at: jax.Array


class TrainOutput(struct.PyTreeNode):
    state: TrainState
    metrics: Metrics  # each of shape (num_iterations,) (plus leading vmap axes)


def nan_like(shapes: Any) -> Any:
    """NaN-filled arrays shaped like ``shapes`` (from ``jax.eval_shape``): the metrics of a step
    that was skipped (a ``lax.cond`` branch that did not run)."""
    return jax.tree.map(lambda s: jnp.full(s.shape, jnp.nan, s.dtype), shapes)


def finite(agent: Any, stats: Any, learn_metrics: Metrics) -> jax.Array:
    """Whether a learner is still healthy: every float in ``agent`` and ``stats`` is finite and
    no metric ``learn`` reported is infinite (a NaN metric can be by design, e.g. before a
    replay buffer has filled; a NaN loss makes NaN parameters one step later anyway).

    Replay buffers are left out: they hold data, not learned state, and are the one part of an
    agent whose size grows with the run (checking them every iteration would cost time).
    """
    is_buffer = lambda x: isinstance(x, replay.Buffer)  # noqa: E731
    leaves = [x for x in jax.tree.leaves((agent, stats), is_leaf=is_buffer)
              if not is_buffer(x) and jnp.issubdtype(x.dtype, jnp.floating)]
    checks = [jnp.isfinite(x).all() for x in leaves]
    checks += [~jnp.isinf(v).any() for v in learn_metrics.values() if jnp.issubdtype(v.dtype, jnp.floating)]
    return jnp.stack(checks).all() if checks else jnp.bool_(True)


class DivergenceWarning(UserWarning):
    """A run's learner (parameters, optimizer state, ...) became NaN or infinite."""


def divergence_note(diverged: dict[Any, int]) -> str:
    """``"seed 2 (iteration 57), seed 3 (iteration 60)"`` for ``{seed: first iteration}``."""
    return ", ".join(f"seed {s} (iteration {i})" for s, i in diverged.items())


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


def hparam_dtype(name: str, env_values: dict[str, jax.Array]) -> jnp.dtype:
    """float32 for a hyperparameter; an ``env.<name>`` param keeps its own dtype (e.g. int32
    step limits). ``env_values`` is :func:`env_param_values` of the env's params."""
    if name.startswith(ENV_PREFIX):
        return env_values[name.removeprefix(ENV_PREFIX)].dtype
    return jnp.dtype(jnp.float32)


def make_env(config: Config) -> tuple[envs.Environment, Any]:
    """The training env (auto-reset, episode statistics) and its params, or a ConfigError."""
    try:
        env, params = envs.make(config.env, **config.env_kwargs)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return envs.wrap_for_training(env), params


def make_train(config: Config, data_parallel: parallel.DataParallel | None = None) -> types.FunctionType:
    """Build ``train(key, hparams=None) -> TrainOutput`` for ``config``.

    ``hparams`` maps traced hyperparameter names to (possibly batched) values; missing names
    take the config's values. Keys ``env.<name>`` replace numeric fields of the env params
    (e.g. ``env.gravity``), so environment variations can be vmapped and swept too. The
    returned function also carries ``init(key, hparams)``, ``run_chunk(state, hparams, start,
    length)`` and ``num_iterations`` for chunked drivers.

    ``data_parallel`` (a device count, a list of devices or a 1-D mesh, see
    :mod:`jaxrl.parallel`) splits the run's envs over those devices: ``train``, ``init`` and
    ``run_chunk`` then run under ``jax.shard_map`` (jit them as usual; vmapping over seeds still
    works). The state they return has the env side sharded over its env axis and the rest
    replicated; metrics are global and shaped as in a plain run.
    """
    config.validate()
    if config.rounding_note():
        warnings.warn(config.rounding_note(), RoundingWarning, stacklevel=2)
    algo = algo_module(config.algo)
    env, env_params = make_env(config)
    obs_space = env.observation_space(env_params)
    spec = Spec(tuple(obs_space.shape), env.action_space(env_params))
    mesh = None if data_parallel is None else parallel.make_mesh(data_parallel)
    devices = 1 if mesh is None else mesh.size
    axis = None if mesh is None else parallel.AXIS
    if config.num_envs % devices:
        raise ConfigError(f"num_envs={config.num_envs} does not divide over {devices} devices "
                          f"(data parallel: every device steps an equal share of the envs)")
    if hasattr(algo, "check"):
        algo.check(config, spec, devices)
    n_envs, n_steps, n_iters = config.num_envs, config.num_steps, config.num_iterations
    n_local = n_envs // devices  # envs per device
    rollout = make_rollout(env, n_local, n_steps)
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
        hp.update({k: jnp.asarray(v, hparam_dtype(k, env_defaults)) for k, v in hparams.items()})
        return hp

    def params_of(hp: dict[str, jax.Array]) -> Any:
        """The env params with the swept ``env.<name>`` values of ``hp`` put in."""
        swept = {k.removeprefix(ENV_PREFIX): v for k, v in hp.items() if k.startswith(ENV_PREFIX)}
        return env_params.replace(**swept) if swept else env_params

    specs = None
    if mesh is not None:  # what is per device (sharded over the env axis) and what is replicated
        P, sharded = PartitionSpec, PartitionSpec(axis)
        example = jax.eval_shape(lambda k: algo.init(Context(config, spec, config.hparams(), jnp.int32(0)), k),
                                 jax.random.key(0))
        specs = parallel.state_specs(
            TrainState(None, sharded, sharded, P(), RewardScaler(sharded, P()), P(), P(), P()), example, sharded)

    def init(key: jax.Array, hparams: dict | None = None) -> TrainState:
        hp = hparams_of(hparams)
        key, k_env, k_agent = jax.random.split(key, 3)
        env_keys = jax.random.split(k_env, n_envs)  # this device's slice of the run's env keys
        if axis is not None:
            env_keys = jax.lax.dynamic_slice_in_dim(env_keys, jax.lax.axis_index(axis) * n_local, n_local)
        obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(env_keys, params_of(hp))
        agent = algo.init(Context(config, spec, hp, jnp.int32(0), axis), k_agent)  # same key: same params
        state = TrainState(agent, env_state, obs, RunningStats.create(spec.obs_shape),
                           RewardScaler.create(n_local), key, jnp.int32(0), jnp.int32(-1))
        return state if axis is None else parallel.to_varying(state, specs, axis)

    def iteration(state: TrainState, hp: dict, i: jax.Array) -> tuple[TrainState, Metrics]:
        ctx = Context(config, spec, hp, i, axis)
        key, k_roll, k_learn, k_eval = jax.random.split(state.key, 4)
        k_roll, k_learn = parallel.local_key(k_roll, axis), parallel.local_key(k_learn, axis)
        normalize = state.obs_stats.normalize if config.normalize_obs else (lambda x: x)

        def act(obs: jax.Array, k: jax.Array) -> tuple[jax.Array, dict]:
            return algo.act(ctx, state.agent, normalize(obs), k)

        (env_state, obs), traj, episodes = rollout(state.env_state, state.obs, act, k_roll, params_of(hp))

        obs_stats, scaler = state.obs_stats, state.reward_scaler
        if config.normalize_obs:  # learn on exactly what the policy saw (the old statistics)
            obs_stats = obs_stats.update(traj.obs, axis)
            traj = traj.replace(obs=normalize(traj.obs), next_obs=normalize(traj.next_obs))
        if config.normalize_reward:
            scaler, scaled = scaler.scale(traj.reward, traj.terminated | traj.truncated, hp["gamma"], axis)
            traj = traj.replace(reward=scaled)

        agent, metrics = algo.learn(ctx, state.agent, traj, k_learn)
        healthy = finite(agent, (obs_stats, scaler.stats), metrics)
        diverged_at = jnp.where((state.diverged_at < 0) & ~healthy, i, state.diverged_at)
        done = episodes.done
        finished, returns, lengths = ctx.sum(  # over every device's envs
            (done, episodes.returns * done, episodes.lengths.astype(jnp.float32) * done))
        mean_of_finished = lambda total: jnp.where(finished > 0, total / jnp.maximum(finished, 1), jnp.nan)  # noqa: E731
        metrics = {
            "env_steps": ctx.env_steps + config.steps_per_iteration,
            "episodes": finished.astype(jnp.float32),
            "episode_return": mean_of_finished(returns),
            "episode_length": mean_of_finished(lengths),
            **metrics,
        }
        new_state = TrainState(agent, env_state, obs, obs_stats, scaler, key, state.iteration + 1, diverged_at)
        if evaluate is not None:  # after the update, on iterations eval_every, 2*eval_every, ...
            # (data parallel: every device plays the same episodes with the same key and the same
            # replicated params, so the result is replicated too)
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

        def body(carry, _):  # the index rides in the carry: no per-iteration input array
            state, i = carry
            state, metrics = iteration(state, hp, i)
            return (state, i + 1), metrics

        (state, _), metrics = jax.lax.scan(body, (init(key, hp), jnp.int32(0)), length=n_iters)
        return TrainOutput(state, metrics)

    # data parallel: the same functions, each device running them on its share (under new names:
    # ``train`` itself calls the per-device ``init``)
    entry = (train, init, run_chunk) if mesh is None else _shard_mapped(mesh, specs, train, init, run_chunk)
    out = entry[0]
    out.init, out.run_chunk = entry[1], entry[2]
    out.num_iterations = n_iters
    out.config = config
    out.spec = spec
    out.mesh = mesh
    out.state_specs = specs
    return out


def _shard_mapped(mesh: Mesh, specs: Any, train, init, run_chunk) -> tuple:
    """``train``, ``init`` and ``run_chunk`` run per device under ``jax.shard_map``: keys and
    hparams replicated in, the state in and out as ``specs`` say, metrics replicated out.
    Replicated outputs are checked: a value that differs across devices fails to trace."""
    P = PartitionSpec

    def shard(f, in_specs, out_specs):
        return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs)

    def init_all(key: jax.Array, hparams: dict | None = None) -> TrainState:
        return shard(init, (P(), P()), specs)(key, hparams)

    def run_chunk_all(state: TrainState, hparams: dict | None, start: jax.Array,
                      length: int) -> tuple[TrainState, Metrics]:
        chunk = functools.partial(run_chunk, length=length)
        return shard(chunk, (specs, P(), P()), (specs, P()))(state, hparams, start)

    def train_all(key: jax.Array, hparams: dict | None = None) -> TrainOutput:
        return shard(train, (P(), P()), TrainOutput(specs, P()))(key, hparams)

    return train_all, init_all, run_chunk_all


def seed_keys(seed: int, num_seeds: int) -> jax.Array:
    """Keys for seeds ``seed, seed+1, ...``: run ``i`` of a vmapped batch equals a single run
    with ``jax.random.key(seed + i)``."""
    return jax.vmap(jax.random.key)(jnp.arange(seed, seed + num_seeds))
