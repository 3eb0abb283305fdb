"""Sweeps: hyperparameter settings x seeds trained as one compiled program.

Every (setting, seed) pair becomes one entry of a flat batch axis; ``jax.vmap(train)`` runs
them all at once and the batch axis is sharded over every available device with a ``Mesh`` and
``NamedSharding``. A batch that does not divide the device count (or the chosen ``batch_size``)
is padded by repeating its last entry, and the padding is dropped from the results. A sweep
larger than memory runs as consecutive batches of the same compiled program. On several hosts
(after ``jax.distributed.initialize()``) the same code runs on every host: each feeds only its
own devices' shards, and the results are all-gathered so every host returns the whole sweep.

Only traced hyperparameters, and numeric env params named ``env.<name>`` (e.g. ``env.gravity``),
can share a program. Static keys (shapes, switches) are refused, unless ``separate=True`` asks
for one program per static combination.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
import os
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxrl.config import ON_DIVERGENCE, Config, ConfigError, suggest
from jaxrl.loop import (ENV_PREFIX, DivergenceWarning, compiler_options, env_param_values, hparam_dtype, make_env,
                        make_train, seed_keys)
from jaxrl.metrics import FINAL_EPISODES, final_return


@dataclasses.dataclass
class SweepResult:
    """Labelled results: ``metrics[name]`` has shape ``(settings, seeds, iterations)``.

    ``settings[i]`` is the dict of swept values of row ``i``; ``state`` is the final train state
    with leading axes ``(settings, seeds)``. With ``separate=True`` settings may differ in
    iteration count (shorter ones are NaN-padded at the end) and in state shapes (``state`` is
    then a list with one pytree per setting). ``diverged_at`` ``(settings, seeds)`` is each run's
    first iteration with a non-finite learner state (-1: finite throughout); ``stopped`` says the
    sweep ended early on a divergence (``on_divergence="stop"``) and holds only the settings
    that ran.
    """

    config: Config
    settings: list[dict[str, Any]]
    seeds: list[int]
    metrics: dict[str, np.ndarray]
    state: Any
    compile_seconds: float
    run_seconds: float
    diverged_at: np.ndarray
    stopped: bool = False

    def __len__(self) -> int:
        return len(self.settings)

    def __getitem__(self, index: int | slice | Sequence[int]) -> "SweepResult":
        rows = list(range(len(self)))[index] if isinstance(index, slice) else (
            [index] if isinstance(index, numbers.Integral) else list(index))
        take = lambda x: np.asarray(x)[np.asarray(rows, dtype=int)]  # noqa: E731
        state = ([self.state[r] for r in rows] if isinstance(self.state, list)
                 else jax.tree.map(take, self.state))
        return dataclasses.replace(self, settings=[self.settings[r] for r in rows],
                                   metrics={k: take(v) for k, v in self.metrics.items()}, state=state,
                                   diverged_at=take(self.diverged_at))

    def diverged(self) -> list[dict[str, Any]]:
        """One row per diverged run: its swept values, ``seed`` and first non-finite ``iteration``."""
        return [{**self.settings[i], "seed": self.seeds[j], "iteration": int(self.diverged_at[i, j])}
                for i, j in zip(*np.nonzero(self.diverged_at >= 0))]

    def sel(self, **values: Any) -> "SweepResult":
        """The settings whose swept values equal ``values`` (e.g. ``sel(lr=3e-4)``)."""
        unknown = set(values) - set(self.settings[0] if self.settings else {})
        if unknown:
            raise KeyError(f"not swept: {sorted(unknown)}; swept keys: {sorted(self.settings[0])}")
        rows = [i for i, s in enumerate(self.settings)
                if all(np.isclose(s[k], v) if isinstance(v, float) else s[k] == v for k, v in values.items())]
        if not rows:
            raise KeyError(f"no setting matches {values}; settings: {self.settings}")
        return self[rows]

    def final_return(self, episodes: int = FINAL_EPISODES) -> np.ndarray:
        """``(settings, seeds)`` mean return of each run's last ``episodes`` finished episodes
        (see :func:`jaxrl.metrics.final_return`)."""
        return final_return(self.metrics, episodes)

    def best(self, episodes: int = FINAL_EPISODES) -> dict[str, Any]:
        """The setting with the highest mean final return over seeds, among the settings none of
        whose seeds diverged (among all settings if every one had a diverged seed)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a setting without any finished episode
            means = np.nanmean(self.final_return(episodes), axis=1)
        healthy = np.where((self.diverged_at < 0).all(axis=1), means, np.nan)
        return self.settings[int(np.nanargmax(healthy if np.isfinite(healthy).any() else means))]

    def rows(self, per_iteration: bool = False) -> Iterator[dict[str, Any]]:
        """Tidy rows: one per (setting, seed) with the final return, or one per iteration too."""
        final = self.final_return()
        for i, setting in enumerate(self.settings):
            for j, seed in enumerate(self.seeds):
                head = {**setting, "seed": seed}
                if not per_iteration:
                    diverged = int(self.diverged_at[i, j])
                    yield {**head, "final_return": float(final[i, j]), "diverged_at": None if diverged < 0 else diverged}
                    continue
                for t in range(self.metrics["env_steps"].shape[-1]):
                    yield {**head, "iteration": t, **{k: float(v[i, j, t]) for k, v in self.metrics.items()}}

    def to_dataframe(self, per_iteration: bool = False):
        """A pandas DataFrame of :meth:`rows` (pandas is imported only here)."""
        import pandas as pd

        frame = pd.DataFrame(list(self.rows(per_iteration)))
        if "diverged_at" in frame:  # an iteration, or missing (<NA>) for a run that stayed finite
            frame["diverged_at"] = frame["diverged_at"].astype("Int64")
        return frame


def expand(grid: Mapping[str, Sequence[Any]] | None = None,
           samples: Sequence[Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The list of settings: the cross product of ``grid`` or the given ``samples``."""
    if grid is not None and samples is not None:
        raise ConfigError("give either grid or samples, not both")
    if grid is not None:
        if not isinstance(grid, Mapping):
            raise ConfigError(f"grid must map names to lists of values, got {type(grid).__name__}")
        for key, values in grid.items():
            if not isinstance(key, str) or not key:
                raise ConfigError(f"grid keys must be names (strings), got {key!r}")
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
                raise ConfigError(f"grid[{key!r}] must be a list of values, got {values!r}")
            if len(values) == 0:
                raise ConfigError(f"grid[{key!r}] is empty: a sweep needs at least one value per key")
        return [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
    if samples is not None:
        if isinstance(samples, (str, bytes, Mapping)) or not isinstance(samples, Sequence):
            raise ConfigError(f"samples must be a list of settings (mappings), got {samples!r}")
        for sample in samples:
            if not isinstance(sample, Mapping):
                raise ConfigError(f"each sample must map names to values, got {sample!r}")
            if not all(isinstance(key, str) and key for key in sample):
                raise ConfigError(f"sample keys must be names (strings), got {list(sample)}")
        settings = [dict(s) for s in samples]
        if not settings:
            raise ConfigError("samples is empty: a sweep needs at least one setting")
        if any(set(s) != set(settings[0]) for s in settings):
            raise ConfigError("every sample must set the same keys")
        return settings
    return [{}]


def sweep(
    config: Config,
    seeds: int = 1,
    grid: Mapping[str, Sequence[Any]] | None = None,
    samples: Sequence[Mapping[str, Any]] | None = None,
    batch_size: int | str | None = None,
    separate: bool = False,
    devices: Sequence[jax.Device] | None = None,
    on_divergence: str = "warn",
    inputs: Any = None,
) -> SweepResult:
    """Train every setting of ``grid`` (cross product) or ``samples`` for ``seeds`` seeds.

    Traced hyperparameters share one compiled program. Keys that are static config fields are
    refused unless ``separate=True``, which runs one program per static combination (the
    results are still labelled together). ``batch_size`` caps how many (setting, seed) runs go
    through the program at once (default: all); ``"auto"`` sizes it from the compiled
    program's memory analysis to use at most half of the free device (or host) memory.
    ``devices`` default to ``jax.devices()``.
    Run ``s`` of a setting equals a single run of that setting with seed ``config.seed + s``.

    ``inputs`` (see :func:`jaxrl.loop.make_train`) is shared by every run: one copy on each
    device, not one per run.

    Runs that diverge (a NaN or infinity in their learner, detected inside the program) are
    reported with a :class:`jaxrl.loop.DivergenceWarning` and in ``SweepResult.diverged_at``.
    ``on_divergence="warn"`` (the default) runs every setting; ``"stop"`` runs no further batch
    (or static group) after the one in which a run diverged, and returns the settings that ran.
    """
    if on_divergence not in ON_DIVERGENCE:
        raise ConfigError(f"on_divergence must be one of {', '.join(ON_DIVERGENCE)}, got {on_divergence!r}")
    if isinstance(seeds, bool) or not isinstance(seeds, numbers.Integral) or seeds < 1:
        raise ConfigError(f"seeds must be a positive integer, got {seeds!r}")
    if not (batch_size is None or batch_size == "auto"
            or (isinstance(batch_size, numbers.Integral) and not isinstance(batch_size, bool) and batch_size >= 1)):
        raise ConfigError(f"batch_size must be a positive integer, 'auto' or None, got {batch_size!r}")
    settings = expand(grid, samples)
    traced = set(config.traced_names())
    fields = {f.name for f in dataclasses.fields(config)}
    env_keys = [k for k in settings[0] if k.startswith(ENV_PREFIX)]
    env_values = env_param_values(make_env(config)[1]) if env_keys else {}
    for key in settings[0]:
        if key.startswith(ENV_PREFIX):
            name = key.removeprefix(ENV_PREFIX)
            if name not in env_values:
                raise ConfigError(f"unknown env param {key!r} for {config.env}" + suggest(name, sorted(env_values))
                                  + f"; numeric env params: {', '.join(sorted(env_values)) or 'none'}")
            traced.add(key)
            continue
        if key not in fields:
            raise ConfigError(f"unknown sweep key {key!r}" + suggest(key, sorted(fields))
                              + f"; traced hyperparameters: {', '.join(sorted(traced))}"
                              + f"; env params are swept as {ENV_PREFIX}<name>")
        if key not in traced and not separate:
            raise ConfigError(
                f"{key!r} is a static field (it changes the compiled program's shapes or structure), "
                f"so its values cannot share one program; traced hyperparameters that can: "
                f"{', '.join(sorted(traced))}. Pass separate=True to compile one program per value.")
    for setting in settings:  # every value type-checked and range-checked before compiling
        for key, value in setting.items():
            if key in traced and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
                raise ConfigError(f"sweep value {key}={value!r} is not a number")
            if key in env_keys:
                check_env_value(key, value, hparam_dtype(key, env_values))
        config.replace(**{k: v for k, v in setting.items() if k not in env_keys})

    static_keys = [k for k in settings[0] if k not in traced]
    groups: dict[tuple, list[int]] = {}
    for i, setting in enumerate(settings):
        groups.setdefault(tuple(repr(setting[k]) for k in static_keys), []).append(i)

    metrics: list[Any] = [None] * len(settings)
    states: list[Any] = [None] * len(settings)
    compile_s = run_s = 0.0
    stop = on_divergence == "stop"
    for rows in groups.values():
        group_config = config.replace(**{k: settings[rows[0]][k] for k in static_keys})
        hp = {k: np.array([settings[r][k] for r in rows], hparam_dtype(k, env_values))
              for k in settings[0] if k in traced}
        out, c, r, diverged = _run(group_config, hp, len(rows), seeds, batch_size, devices, stop, inputs)
        compile_s, run_s = compile_s + c, run_s + r
        for n, row in enumerate(rows[:len(out.metrics["env_steps"])]):
            metrics[row] = jax.tree.map(lambda x: x[n], out.metrics)
            states[row] = jax.tree.map(lambda x: x[n], out.state)
        if stop and diverged:
            break
    ran = [i for i, m in enumerate(metrics) if m is not None]
    stopped = len(ran) < len(settings)
    settings, metrics, states = [settings[i] for i in ran], [metrics[i] for i in ran], [states[i] for i in ran]
    longest = max(m["env_steps"].shape[-1] for m in metrics)
    pad = lambda x: np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, longest - x.shape[-1])],  # noqa: E731
                           constant_values=np.nan)
    metrics = [jax.tree.map(pad, m) for m in metrics]
    same_shapes = all(jax.tree.map(np.shape, s) == jax.tree.map(np.shape, states[0]) for s in states)
    stacked_state = jax.tree.map(lambda *xs: np.stack(xs), *states) if same_shapes else states
    diverged_at = np.stack([np.asarray(s.diverged_at) for s in states])
    result = SweepResult(config, settings, list(range(config.seed, config.seed + seeds)),
                         jax.tree.map(lambda *xs: np.stack(xs), *metrics), stacked_state, compile_s, run_s,
                         diverged_at, stopped)
    if (diverged_at >= 0).any():
        runs = result.diverged()
        listed = "; ".join(", ".join(f"{k}={v}" for k, v in r.items()) for r in runs[:10])
        more = f" and {len(runs) - 10} more" if len(runs) > 10 else ""
        warnings.warn(f"{len(runs)} of {diverged_at.size} runs diverged (NaN or infinity in the learner): "
                      f"{listed}{more}" + ("; the sweep stopped there (on_divergence='stop')" if stopped else ""),
                      DivergenceWarning, stacklevel=2)
    return result


def check_env_value(key: str, value: numbers.Real, dtype: np.dtype) -> None:
    """An env param's value (swept, or a point of a robustness grid) must be finite and stay the same in the param's dtype (no
    rounding of an integer param, no overflow to infinity or underflow to zero)."""
    try:
        as_float = float(value)
    except OverflowError:
        as_float = math.inf
    if not math.isfinite(as_float):
        raise ConfigError(f"value {key}={value!r} is not a finite number")
    if jnp.issubdtype(dtype, jnp.integer):
        info = np.iinfo(dtype)
        if value != int(value) or not info.min <= int(value) <= info.max:
            raise ConfigError(f"env param {key} is an integer ({np.dtype(dtype).name}), got {value!r}")
        return
    with np.errstate(all="ignore"):
        cast = np.asarray(value).astype(dtype)  # inf on overflow, 0 or a subnormal on underflow
    if not np.isfinite(cast) or (value != 0 and (cast == 0 or abs(cast) < np.finfo(dtype).tiny)):
        raise ConfigError(f"value {key}={value!r} does not fit in {np.dtype(dtype).name}, the env param's type")


def _global_array(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from a host array every process holds whole: each process puts only its
    own devices' shards (``device_put`` of the full array would need every device local)."""
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def gather_hosts(tree: Any) -> Any:
    """The whole (batch-sharded) output on every host as NumPy; across hosts via all-gather."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def host_friendly(x: jax.Array) -> jax.Array:
    """Typed PRNG keys become their raw uint32 data, which NumPy can hold."""
    return jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x


def free_memory(device: jax.Device) -> int:
    """Bytes the device can still allocate (host RAM for CPU devices)."""
    stats = device.memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _auto_batch_size(program, keys, flat_hp, inputs, sharding, n_devices: int) -> int:
    """Runs per batch that fit in half the free memory, from a one-run-per-device compile."""
    idx = np.minimum(np.arange(n_devices), len(keys) - 1)
    probe = (keys[idx], {k: v[idx] for k, v in flat_hp.items()}, inputs)
    stats = program.lower(*probe).compile().memory_analysis()
    per_run = (stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes) / n_devices
    fits = int(free_memory(sharding.mesh.devices.flat[0]) * n_devices * 0.5 // max(per_run, 1))
    return max(n_devices, fits)


def _run(config: Config, hp: dict[str, np.ndarray], n_settings: int, seeds: int,
         batch_size: int | str | None, devices: Sequence[jax.Device] | None, stop: bool = False,
         inputs: Any = None):
    """One program over ``n_settings * seeds`` runs: outputs shaped (settings, seeds, ...), compile
    and run seconds, and whether any run diverged.

    With ``stop``, no batch runs after one in which a run diverged (once the settings it began
    have all their seeds); the outputs then hold the settings that ran."""
    train = make_train(config)
    devices = list(devices or jax.devices())
    total = n_settings * seeds
    keys = jnp.tile(jax.random.key_data(seed_keys(config.seed, seeds)), (n_settings, 1))
    flat_hp = {k: np.repeat(v, seeds) for k, v in hp.items()}
    mesh = Mesh(np.array(devices), ("batch",))
    sharding = NamedSharding(mesh, PartitionSpec("batch"))

    def run_batch(key_data, hparams, inputs):
        out = jax.vmap(train, in_axes=(0, 0, None))(jax.random.wrap_key_data(key_data), hparams, inputs)
        return jax.tree.map(host_friendly, out)

    replicated = NamedSharding(mesh, PartitionSpec())
    inputs = jax.tree.map(lambda x: _global_array(np.asarray(x), replicated), inputs)  # once per device
    program = jax.jit(run_batch, in_shardings=(sharding, sharding, replicated), out_shardings=sharding,
                      compiler_options=compiler_options())
    if batch_size == "auto":
        batch_size = _auto_batch_size(program, keys, flat_hp, inputs, sharding, len(devices))
    per_batch = min(batch_size or total, total)
    per_batch = math.ceil(per_batch / len(devices)) * len(devices)  # every device gets equal work
    compiled, compile_s, run_s, outputs, diverged = None, 0.0, 0.0, [], False
    for start in range(0, total, per_batch):
        idx = np.minimum(np.arange(start, start + per_batch), total - 1)  # pad with the last run
        args = (_global_array(np.asarray(keys[idx]), sharding),
                {k: _global_array(v[idx], sharding) for k, v in flat_hp.items()}, inputs)
        if compiled is None:
            t0 = time.perf_counter()
            compiled = program.lower(*args).compile()
            compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = gather_hosts(compiled(*args))
        run_s += time.perf_counter() - t0
        valid = min(per_batch, total - start)
        outputs.append(jax.tree.map(lambda x: x[:valid], out))
        diverged = diverged or bool((outputs[-1].state.diverged_at >= 0).any())
        if stop and diverged and (start + valid) % seeds == 0:  # stop where a setting is complete
            break
    merged = jax.tree.map(lambda *xs: np.concatenate(xs), *outputs)
    done = len(merged.state.diverged_at) // seeds  # settings all of whose seeds ran
    merged = jax.tree.map(lambda x: x[:done * seeds].reshape((done, seeds) + x.shape[1:]), merged)
    return merged, compile_s, run_s, diverged
