"""The one training loop: ``make_train(config)`` builds a pure ``train(key, hparams, inputs)``.

An algorithm module supplies ``Config``, ``init``, ``act`` and ``learn`` (see :mod:`jaxrl.core`
for the protocol); everything else — the rollout (:mod:`jaxrl.rollout`), each env's carry,
episode statistics, observation normalisation, reward scaling, evaluation, divergence detection,
metrics and iteration — lives here, once, for every algorithm.

One iteration = a rollout of ``num_steps`` steps in each of ``num_envs`` envs (``lax.scan``),
then ``learn`` on that raw time-major batch; an offline algorithm (``num_steps: 0``) skips the
rollout and learns from ``inputs``. Observation statistics are frozen during an iteration (the
agent acts and learns with the same ones) and updated from the rollout at its end. ``train``
scans iterations; the same iteration body also runs in chunks (``train.run_chunk``) so a host
driver can report progress between them.

Data parallel (``make_train(config, data_parallel=D)``, see :mod:`jaxrl.parallel`): the same
iteration body runs under ``jax.shard_map`` on each device's ``num_envs / D`` envs, with
``Context.axis`` naming the mesh axis; the config keeps the run's global sizes, so env-step
counts and schedules count every device's steps.
"""

from __future__ import annotations

import functools
import os
import types
import warnings
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jax.sharding import Mesh, PartitionSpec

from jaxrl import envs, networks, parallel, rng
from jaxrl.algos import algo_module
from jaxrl.config import Config, ConfigError, RoundingWarning
from jaxrl.core import Context, Metrics, Spec, map_per_device, nan_like
from jaxrl.evaluate import make_evaluate
from jaxrl.normalize import RewardScaler, RunningStats
from jaxrl.rollout import EnvSide, make_rollout


class TrainState(struct.PyTreeNode):
    """All state that changes during training, in one pytree (checkpoint it whole).

    ``diverged_at`` is the first iteration after which the learner's state was not finite (a
    NaN or infinity in parameters, optimizer or target state, normaliser statistics, or an
    infinite learning metric), -1 while everything is finite: see :func:`finite`.
    """

    agent: Any
    env: EnvSide  # per env: env states, last observations, episode starts, the agent's carry
    obs_stats: RunningStats
    reward_scaler: RewardScaler
    key: jax.Array
    iteration: jax.Array
    diverged_at: jax.Array


class TrainOutput(struct.PyTreeNode):
    state: TrainState
    metrics: Metrics  # each of shape (num_iterations,) (plus leading vmap axes)


def finite(agent: Any, stats: Any, learn_metrics: Metrics) -> jax.Array:
    """Whether a learner is still healthy: every float in ``agent`` and ``stats`` is finite and
    no metric ``learn`` reported is infinite (a NaN metric can be by design, e.g. before a
    replay buffer has filled; a NaN loss makes NaN parameters one step later anyway).

    Per-device state (:func:`jaxrl.core.per_device`, e.g. replay buffers) is left out: it holds
    data, not learned state, and is the one part of an agent whose size grows with the run
    (checking it every iteration would cost time).
    """
    floats: list[jax.Array] = []

    def keep(x: jax.Array) -> None:
        if jnp.issubdtype(x.dtype, jnp.floating):
            floats.append(x.astype(jnp.float32).ravel())

    map_per_device((agent, stats), keep, lambda x: None)
    # One concatenated vector, one reduction: a check per leaf compiles into many small kernels
    # (PPO CartPole, 16 seeds, 3 interleaved compiles: 5.95 s per leaf against 5.41 s concatenated).
    # x * 0 is 0 for a finite x and NaN for an infinite or NaN one (XLA keeps float products by 0),
    # so the sum is finite exactly when every float is: one fused multiply-and-sum, where
    # isfinite(...).all() wrote a boolean per float and reduced those apart. DQN with dqn.py's
    # settings (10 envs, a 44k-float learner), one replay warm-up iteration on one core (median
    # of 3): 34 us checked that way, 26 us this way, 15 us unchecked.
    healthy = jnp.isfinite(jnp.sum(jnp.concatenate(floats) * 0)) if floats else jnp.bool_(True)
    metrics = [v.astype(jnp.float32).ravel() for v in learn_metrics.values() if jnp.issubdtype(v.dtype, jnp.floating)]
    return healthy & ~jnp.isinf(jnp.concatenate(metrics)).any() if metrics else healthy


class DivergenceWarning(UserWarning):
    """A run's learner (parameters, optimizer state, ...) became NaN or infinite."""


def divergence_note(diverged: dict[Any, int]) -> str:
    """``"seed 2 (iteration 57), seed 3 (iteration 60)"`` for ``{seed: first iteration}``."""
    return ", ".join(f"seed {s} (iteration {i})" for s, i in diverged.items())


ENV_PREFIX = "env."  # hparams key prefix of a traced env param, e.g. "env.gravity"


def env_param_values(params: Any) -> dict[str, jax.Array]:
    """The numeric scalar fields of an env's params: the env params a sweep can vary."""
    return envs.numeric_params(params)


def hparam_dtype(name: str, env_values: dict[str, jax.Array]) -> jnp.dtype:
    """float32 for a hyperparameter; an ``env.<name>`` param keeps its own dtype (e.g. int32
    step limits). ``env_values`` is :func:`env_param_values` of the env's params."""
    if name.startswith(ENV_PREFIX):
        return env_values[name.removeprefix(ENV_PREFIX)].dtype
    return jnp.dtype(jnp.float32)


def make_env(config: Config) -> tuple[envs.Environment, Any]:
    """The training env (auto-reset, episode statistics; each episode's params drawn from
    ``config.env_randomize``) and its nominal params, or a ConfigError."""
    try:
        env, params = envs.make(config.env, **config.env_kwargs)
        return envs.wrap_for_training(env, config.env_randomize, params, config.episode_start), params
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _broadcast(tree: Any, n: int) -> Any:
    """``tree`` (one env's value) repeated for ``n`` envs along a new leading axis."""
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (n,) + jnp.shape(x)), tree)


PHASES = ("all", "act", "env")  # see make_train's ``phases``


def make_train(config: Config, data_parallel: parallel.DataParallel | None = None, *,
               phases: str = "all") -> types.FunctionType:
    """Build ``train(key, hparams=None, inputs=None) -> TrainOutput`` for ``config``.

    ``hparams`` maps traced hyperparameter names to (possibly batched) values; missing names
    take the config's values. Keys ``env.<name>`` replace numeric fields of the env params
    (e.g. ``env.gravity``), so environment variations can be vmapped and swept too. ``inputs``
    is any pytree the algorithm reads as ``ctx.inputs`` (a dataset, meta-parameters); vmap over
    seeds with ``in_axes=None`` for it so it is shared, not copied. The returned function also
    carries ``init(key, hparams, inputs)``, ``run_chunk(state, hparams, start, inputs, length=)``
    and ``num_iterations`` for chunked drivers.

    ``data_parallel`` (a device count, a list of devices or a 1-D mesh, see
    :mod:`jaxrl.parallel`) splits the run's envs over those devices: ``train``, ``init`` and
    ``run_chunk`` then run under ``jax.shard_map`` (jit them as usual; vmapping over seeds still
    works). The state they return has the env side sharded over its env axis and the rest
    replicated; metrics are global and shaped as in a plain run.

    ``phases`` builds a partial program for throughput measurements (:mod:`jaxrl.bench`):
    ``"act"`` runs the rollouts with the agent acting but never learns (the agent stays as
    initialised), ``"env"`` also replaces the agent's actions by uniformly random ones from the
    action space, through the same wrappers and vmaps: the hardware's limit for this env and
    ``num_envs``. Both keep every loop piece (episode statistics, normalisers, metrics).
    """
    if phases not in PHASES:
        raise ConfigError(f"phases must be one of {PHASES}, got {phases!r}")
    config.validate()
    if phases != "all" and config.num_steps == 0:
        raise ConfigError(f"phases={phases!r} measures rollouts; {config.algo} takes no env steps")
    if config.rounding_note():
        warnings.warn(config.rounding_note(), RoundingWarning, stacklevel=2)
    algo = algo_module(config.algo)
    env, env_params = make_env(config)
    spec = Spec(tuple(env.observation_space(env_params).shape), env.action_space(env_params))
    mesh = None if data_parallel is None else parallel.make_mesh(data_parallel)
    devices = 1 if mesh is None else mesh.size
    axis = None if mesh is None else parallel.AXIS
    if config.num_envs % devices:
        raise ConfigError(f"num_envs={config.num_envs} does not divide over {devices} devices "
                          f"(data parallel: every device steps an equal share of the envs)")
    if config.conv:
        try:
            networks.conv_output_shape(spec.obs_shape, config.conv)
        except ValueError as err:
            raise ConfigError(f"{config.env}: {err}") from None
    if hasattr(algo, "check"):
        algo.check(config, spec, devices)
    n_envs, n_iters = config.num_envs, config.num_iterations
    n_local = n_envs // devices  # envs per device
    online = config.num_steps > 0  # offline algorithms learn from inputs alone
    rollout = make_rollout(env, n_local, config.num_steps) if online else None
    init_carry = getattr(algo, "init_carry", lambda ctx: ())
    evaluate = make_evaluate(config, algo, spec) if config.eval_every else None
    env_defaults = env_param_values(env_params)

    def hparams_of(hparams: dict | None) -> dict[str, jax.Array]:
        names = config.traced_names()
        hparams = dict(hparams or {})
        unknown = set(hparams) - set(names) - {ENV_PREFIX + k for k in env_defaults}
        if unknown:
            raise ConfigError(
                f"unknown traced hyperparameter(s) {sorted(unknown)}; traced: {list(names)}; env params "
                f"(as {ENV_PREFIX}<name>): {sorted(env_defaults)}")
        both = sorted(k for k in hparams
                      if k.startswith(ENV_PREFIX) and k.removeprefix(ENV_PREFIX) in config.env_randomize)
        if both:
            raise ConfigError(f"{both} are swept but also randomized by env_randomize, which would replace "
                              f"the swept values every episode: sweep or randomize each param, not both")
        hp = config.hparams()
        hp.update({k: jnp.asarray(v, hparam_dtype(k, env_defaults)) for k, v in hparams.items()})
        return hp

    def params_of(hp: dict[str, jax.Array]) -> Any:
        """The env params with the swept ``env.<name>`` values of ``hp`` put in."""
        swept = {k.removeprefix(ENV_PREFIX): v for k, v in hp.items() if k.startswith(ENV_PREFIX)}
        return env_params.replace(**swept) if swept else env_params

    def context(hp: dict, i: jax.Array, inputs: Any = None, obs_stats: Any = None) -> Context:
        return Context(config, spec, hp, i, axis, inputs, obs_stats)

    specs = None
    if mesh is not None:  # what is per device (sharded over the env axis) and what is replicated
        P, sharded = PartitionSpec, PartitionSpec(axis)
        # (the agent's structure, traced as on one device: only which leaves are per device matters)
        example = jax.eval_shape(lambda k: algo.init(Context(config, spec, config.hparams(), jnp.int32(0)), k),
                                 jax.random.key(0))
        specs = TrainState(parallel.agent_specs(example), sharded, P(), RewardScaler(sharded, P()), P(), P(), P())

    def init(key: jax.Array, hparams: dict | None = None, inputs: Any = None) -> TrainState:
        hp = hparams_of(hparams)
        # (the state keeps the caller's kind of key; draws use straight-line threefry if asked)
        key, k_env, k_agent = rng.split(key, 3, config.straight_rng)
        env_keys = jax.random.split(k_env, n_envs)  # this device's slice of the run's env keys
        if axis is not None:
            env_keys = jax.lax.dynamic_slice_in_dim(env_keys, jax.lax.axis_index(axis) * n_local, n_local)
        obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(env_keys, params_of(hp))
        ctx = context(hp, jnp.int32(0), inputs)
        agent = algo.init(ctx, k_agent)  # same key on every device: same params
        side = EnvSide(env_state, obs, jnp.ones(n_local, bool), _broadcast(init_carry(ctx), n_local))
        state = TrainState(agent, side, RunningStats.create(spec.obs_shape), RewardScaler.create(n_local), key,
                           jnp.int32(0), jnp.int32(-1))
        return state if axis is None else parallel.to_varying(state, specs, axis)

    def iteration(state: TrainState, hp: dict, i: jax.Array, inputs: Any) -> tuple[TrainState, Metrics]:
        ctx = context(hp, i, inputs, state.obs_stats)  # statistics frozen for the iteration
        key, k_roll, k_learn, k_eval = rng.split(state.key, 4, config.straight_rng)
        k_roll, k_learn = parallel.local_key(k_roll, axis), parallel.local_key(k_learn, axis)
        side, obs_stats, scaler, traj, episode_metrics = state.env, state.obs_stats, state.reward_scaler, None, {}
        if online:
            def act(carry: Any, obs: jax.Array, k: jax.Array):
                if phases == "env":  # uniformly random actions, one key per env
                    keys = jax.random.split(k, obs.shape[0])
                    return jax.vmap(spec.action_space.sample)(keys), carry, {}
                return algo.act(ctx, state.agent, carry, ctx.normalize(obs), k)

            initial = _broadcast(init_carry(ctx), n_local)
            side, traj, episodes = rollout(state.env, initial, act, k_roll, params_of(hp))
            if config.normalize_obs:
                obs_stats = obs_stats.update(traj.obs, axis)
            if config.normalize_reward:
                scaler, scaled = scaler.scale(traj.reward, traj.terminated | traj.truncated, hp["gamma"], axis)
                traj = traj.replace(reward=scaled)
            episode_metrics = _episode_metrics(ctx, episodes)

        if phases == "all":
            agent, metrics = algo.learn(ctx, state.agent, traj, k_learn)
        else:  # a measurement without learning; the rewards are kept so the rollout is too
            agent, metrics = state.agent, {"reward_sum": traj.reward.sum()}
        healthy = finite(agent, (obs_stats, scaler.stats), metrics)
        diverged_at = jnp.where((state.diverged_at < 0) & ~healthy, i, state.diverged_at)
        metrics = {"env_steps": ctx.env_steps + config.steps_per_iteration, **episode_metrics, **metrics}
        new_state = TrainState(agent, side, obs_stats, scaler, key, state.iteration + 1, diverged_at)
        if evaluate is not None:  # after the update, on iterations eval_every, 2*eval_every, ...
            # (data parallel: every device plays the same episodes with the same key and the same
            # replicated params, so the result is replicated too)
            due = (i + 1) % config.eval_every == 0
            eval_ctx = context(hp, i + 1, inputs, obs_stats)
            play = lambda: evaluate(eval_ctx, new_state.agent, k_eval)  # noqa: E731
            metrics |= jax.lax.cond(due, play, lambda: nan_like(jax.eval_shape(play)))
        return new_state, metrics

    def run_chunk(state: TrainState, hparams: dict | None, start: jax.Array, inputs: Any = None, *,
                  length: int) -> tuple[TrainState, Metrics]:
        """``length`` iterations from iteration ``start``; those past the end are skipped.

        ``start`` is an unbatched int32, so one compiled chunk serves every chunk of a run,
        the last (partial) one included; skipped iterations return NaN metrics.
        """
        hp = hparams_of(hparams)
        empty = nan_like(jax.eval_shape(iteration, state, hp, jnp.int32(0), inputs)[1])

        def body(state, i):
            return jax.lax.cond(i < n_iters, lambda s: iteration(s, hp, i, inputs), lambda s: (s, empty), state)

        return jax.lax.scan(body, state, start + jnp.arange(length, dtype=jnp.int32))

    def train(key: jax.Array, hparams: dict | None = None, inputs: Any = None) -> TrainOutput:
        hp = hparams_of(hparams)

        def body(carry, _):  # the index rides in the carry: no per-iteration input array
            state, i = carry
            state, metrics = iteration(state, hp, i, inputs)
            return (state, i + 1), metrics

        (state, _), metrics = jax.lax.scan(body, (init(key, hp, inputs), jnp.int32(0)), length=n_iters)
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


def _episode_metrics(ctx: Context, episodes: Any) -> Metrics:
    """``episodes`` (finished in the iteration) and their mean ``episode_return`` and
    ``episode_length`` (NaN when none finished), over every device's envs."""
    done = episodes.done
    finished, returns, lengths = ctx.sum((done, episodes.returns * done, episodes.lengths.astype(jnp.float32) * done))
    mean_of_finished = lambda total: jnp.where(finished > 0, total / jnp.maximum(finished, 1), jnp.nan)  # noqa: E731
    return {"episodes": finished.astype(jnp.float32), "episode_return": mean_of_finished(returns),
            "episode_length": mean_of_finished(lengths)}


def _shard_mapped(mesh: Mesh, specs: Any, train, init, run_chunk) -> tuple:
    """``train``, ``init`` and ``run_chunk`` run per device under ``jax.shard_map``: keys, hparams
    and inputs replicated in, the state in and out as ``specs`` say, metrics replicated out.
    Replicated outputs are checked: a value that differs across devices fails to trace."""
    P = PartitionSpec

    def shard(f, in_specs, out_specs):
        return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs)

    def init_all(key: jax.Array, hparams: dict | None = None, inputs: Any = None) -> TrainState:
        return shard(init, (P(), P(), P()), specs)(key, hparams, inputs)

    def run_chunk_all(state: TrainState, hparams: dict | None, start: jax.Array, inputs: Any = None, *,
                      length: int) -> tuple[TrainState, Metrics]:
        chunk = functools.partial(run_chunk, length=length)
        return shard(chunk, (specs, P(), P(), P()), (specs, P()))(state, hparams, start, inputs)

    def train_all(key: jax.Array, hparams: dict | None = None, inputs: Any = None) -> TrainOutput:
        return shard(train, (P(), P(), P()), TrainOutput(specs, P()))(key, hparams, inputs)

    return train_all, init_all, run_chunk_all


def seed_keys(seed: int, num_seeds: int) -> jax.Array:
    """Keys for seeds ``seed, seed+1, ...``: run ``i`` of a vmapped batch equals a single run
    with ``jax.random.key(seed + i)``."""
    return jax.vmap(jax.random.key)(jnp.arange(seed, seed + num_seeds))


# XLA's CPU backend compiles with LLVM at its default optimisation level; at level 1 jaxrl's
# programs compile 10-40% faster (PPO CartPole 16 seeds: 7.1 s against 11.3 s) and run as fast
# (their time is in matrix products, run by XLA's runtime, and in small fused loops): measured
# per algorithm in the README's Speed section.
CPU_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


def compiler_options(platform: str | None = None) -> dict[str, Any]:
    """The XLA options jaxrl compiles its programs with on ``platform`` (default: JAX's default
    backend): :data:`CPU_COMPILER_OPTIONS` on a CPU, none elsewhere. Pass them to your own
    ``jax.jit(train, compiler_options=jaxrl.compiler_options())`` for the same programs as the
    command line; ``JAXRL_XLA_DEFAULTS=1`` turns them off."""
    if os.environ.get("JAXRL_XLA_DEFAULTS") == "1":
        return {}
    return dict(CPU_COMPILER_OPTIONS) if (platform or jax.default_backend()) == "cpu" else {}

