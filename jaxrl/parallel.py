"""Data parallelism for one run: its ``num_envs`` envs split over the devices of a 1-D mesh.

``make_train(config, data_parallel=D)`` runs the training loop under ``jax.shard_map``: each
device steps ``num_envs / D`` envs and computes gradients on its share of every minibatch; the
gradients are averaged across devices (:func:`jaxrl.optim.gradient_step`), so the replicated
parameters stay identical everywhere. The helpers here say what is per device and what is
shared, so :mod:`jaxrl.loop` keeps one iteration body for both cases.

What is global (identical on every device, replicated in the output): the agent's parameters,
optimizer and target network, the observation and reward statistics (batch statistics merged
across devices), the iteration counter, the train key and every reported metric. What is per
device (sharded over the env axis): env states, last observations, each env's running return,
and the contents of replay buffers (each device keeps the transitions its own envs produced).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from jaxrl.config import ConfigError
from jaxrl.core import map_per_device

AXIS = "data"  # the mesh axis a data-parallel run's envs are split over

DataParallel = int | Sequence[jax.Device] | Mesh


def make_mesh(data_parallel: DataParallel) -> Mesh:
    """A 1-D mesh named :data:`AXIS` from a device count (the first ``n`` of ``jax.devices()``),
    a list of devices, or a mesh (which must have exactly that one axis)."""
    if isinstance(data_parallel, Mesh):
        if data_parallel.axis_names != (AXIS,):
            raise ConfigError(f"a data-parallel mesh needs the single axis {AXIS!r}, got {data_parallel.axis_names}")
        return data_parallel
    if isinstance(data_parallel, (int, np.integer)) and not isinstance(data_parallel, bool):
        available = jax.devices()
        if not 1 <= data_parallel <= len(available):
            raise ConfigError(f"data_parallel={data_parallel} devices requested; {len(available)} available "
                              f"({available[0].platform})")
        devices = available[:data_parallel]
    else:
        devices = list(data_parallel)
        if not devices or not all(isinstance(d, jax.Device) for d in devices):
            raise ConfigError(f"data_parallel must be a device count, a list of devices or a Mesh, "
                              f"got {data_parallel!r}")
    return Mesh(np.array(devices), (AXIS,))


def agent_specs(agent: Any) -> Any:
    """Partition specs for an agent's state (``agent`` may be abstract, from ``jax.eval_shape``):
    replicated, except under :func:`jaxrl.core.per_device` fields, whose arrays are split over
    the devices along their leading (env) axis (their scalars, equal everywhere, stay replicated)."""
    return map_per_device(agent, lambda x: PartitionSpec(),
                          lambda x: PartitionSpec(AXIS) if len(x.shape) else PartitionSpec())


def to_varying(tree: Any, specs: Any, axis: str) -> Any:
    """Mark the leaves of ``tree`` that ``specs`` shard over ``axis`` as device-varying.

    Freshly created per-device state (an empty replay buffer) is device-invariant to
    ``shard_map``'s type check until data flows into it; casting it up front lets the loop's
    ``scan`` and ``cond`` see the same types before and after an iteration.
    """

    def cast(spec: PartitionSpec, sub: Any) -> Any:
        if axis not in spec:
            return sub
        return jax.tree.map(
            lambda x: x if axis in jax.typeof(x).vma else jax.lax.pcast(x, axis, to="varying"), sub)

    return jax.tree.map(cast, specs, tree, is_leaf=lambda x: isinstance(x, PartitionSpec))


def local_key(key: jax.Array, axis: str | None) -> jax.Array:
    """A key of this device's own stream (rollout noise, minibatch shuffles, replay sampling).

    With one device (or none) the key is returned unchanged, so a one-device mesh draws exactly
    what the plain run draws.
    """
    if axis is None or jax.lax.axis_size(axis) == 1:
        return key
    return jax.random.fold_in(key, jax.lax.axis_index(axis))


def use_cpu_cores(count: int | None = None) -> int:
    """Give JAX one CPU device per core (``count``, default: the cores this process may run on),
    so that the seeds of a run, a sweep or a benchmark run side by side, one share per core.

    JAX's CPU backend is one device, and XLA runs the small matrix products of RL networks on
    one thread: a 16-seed program keeps one core busy however many there are. Split over
    devices (:func:`seed_mesh`), each core runs its share of the seeds. Like
    ``jax_num_cpu_devices`` itself, this must come before JAX's first computation. Returns the
    count set, or 0 where it changed nothing: JAX already running, a count already configured
    (``XLA_FLAGS=--xla_force_host_platform_device_count``, ``jax_num_cpu_devices``), or
    ``JAXRL_CPU_DEVICES=1``. ``JAXRL_CPU_DEVICES=N`` (N > 1) overrides ``count``. Other
    platforms' devices (a GPU, a TPU) are unaffected.
    """
    configured = os.environ.get("JAXRL_CPU_DEVICES")
    if configured is not None:
        count = int(configured)
        if count <= 1:
            return 0
    elif count is None:
        count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if (count <= 1 or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
            or jax.config.jax_num_cpu_devices > 0):
        return 0
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # JAX has already started its backends
        return 0
    return count


def seed_mesh(num_seeds: int, devices: Sequence[jax.Device] | None = None, count: int | None = None) -> Mesh | None:
    """A 1-D mesh (axis ``"seeds"``) to shard a vmapped batch of seeds over: the first ``count``
    of ``devices`` (default: ``jax.devices()``; default count: as many as divide ``num_seeds``
    evenly); None for one device."""
    devices = list(devices or jax.devices())
    if count is None:
        count = max(d for d in range(1, len(devices) + 1) if num_seeds % d == 0)
    elif count > len(devices) or num_seeds % count:
        raise ConfigError(f"cannot split {num_seeds} seeds over {count} devices ({len(devices)} available; "
                          "on a CPU, JAXRL_CPU_DEVICES sets how many the command line creates)")
    return None if count == 1 else Mesh(np.array(devices[:count]), ("seeds",))
