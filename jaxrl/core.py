"""The shared vocabulary of jaxrl: what algorithms, building blocks and the loop pass each other.

An algorithm module (``jaxrl/algos/<family>.py``) defines ``Config`` and four functions, all pure
and traced once inside the compiled training program:

- ``init(ctx, key) -> agent``: parameters, optimizer states, buffers, counters: one pytree.
- ``act(ctx, agent, carry, obs, key) -> (action, carry, extras)`` on a batch of envs: ``obs`` is
  ``(envs, ...)`` (normalised when ``normalize_obs``), ``carry`` the per-env memory (a recurrent
  state, per-env noise; ``()`` for feed-forward agents), ``extras`` what ``learn`` will want
  back from the rollout (log-probabilities, values).
- ``learn(ctx, agent, traj, key) -> (agent, metrics)``: ``traj`` is the time-major rollout
  :class:`Transition` ``(T, envs, ...)`` with RAW observations (``ctx.normalize`` them), or None
  for an offline algorithm (a config with ``num_steps: 0``), which learns from ``ctx.inputs``.
- optional ``init_carry(ctx) -> carry`` of ONE env (the loop broadcasts it over the envs and puts
  it back wherever an episode starts), ``policy(ctx, agent, carry, obs, key, deterministic) ->
  (action, carry)`` for evaluation, and ``check(config, spec, devices)`` for checks that need the
  environment (raise ``ConfigError``).

State that belongs to each device in a data-parallel run (a replay buffer holding the
transitions of that device's envs) is declared with :func:`per_device` where it is defined.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

Metrics = dict[str, jax.Array]


class Spec(NamedTuple):
    """What an algorithm needs to know about the environment."""

    obs_shape: tuple[int, ...]
    action_space: Any  # jaxrl.envs.Discrete | jaxrl.envs.Box

    @property
    def discrete(self) -> bool:
        return hasattr(self.action_space, "n")

    @property
    def action_dim(self) -> int:
        """Number of actions (discrete) or action vector size (continuous)."""
        space = self.action_space
        return int(space.n) if self.discrete else math.prod(space.shape)

    @property
    def action_bounds(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(low, high)`` of a continuous action space, flattened to ``action_dim`` floats."""
        space = self.action_space  # NumPy, not jnp: concrete values, also while tracing
        low = np.broadcast_to(np.asarray(space.low, np.float32), space.shape).reshape(-1)
        high = np.broadcast_to(np.asarray(space.high, np.float32), space.shape).reshape(-1)
        return tuple(float(x) for x in low), tuple(float(x) for x in high)


class Context(NamedTuple):
    """Everything an algorithm function may read: the static config and spec, traced values.

    ``hp`` holds the traced hyperparameters (a sweep vmaps over them). ``iteration`` comes from
    the scan over iterations, not from the (possibly vmapped) train state, so it is unbatched
    across seeds and conditionals on it stay real branches. ``axis`` names the mesh axis of a
    data-parallel run (None otherwise): the data an algorithm sees (rollout, minibatches, its
    replay buffer) is then this device's share. ``inputs`` is the pytree given to
    ``train(key, hparams, inputs)`` (a dataset, meta-parameters): shared by every seed, never
    checkpointed. ``obs_stats`` are the observation statistics of this iteration: frozen while it
    runs, so what ``act`` saw and what ``learn`` normalises agree.
    """

    config: Any  # jaxrl.config.Config
    spec: Spec
    hp: dict[str, jax.Array]
    iteration: jax.Array  # int32 index of the current iteration
    axis: str | None = None
    inputs: Any = None
    obs_stats: Any = None  # jaxrl.normalize.RunningStats, or None outside the training loop

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

    def normalize(self, obs: jax.Array) -> jax.Array:
        """``obs`` normalised with this iteration's statistics (unchanged without
        ``normalize_obs``): apply it to raw observations from a rollout or a replay buffer."""
        if not self.config.normalize_obs or self.obs_stats is None:
            return obs
        return self.obs_stats.normalize(obs)

    @property
    def progress(self) -> jax.Array:
        """Fraction of training done at the start of this iteration, in [0, 1)."""
        return self.iteration.astype(jnp.float32) / self.config.num_iterations

    @property
    def env_steps(self) -> jax.Array:
        """Env steps taken before this iteration (float32), every device's envs counted."""
        return self.iteration.astype(jnp.float32) * self.config.steps_per_iteration


class Transition(struct.PyTreeNode):
    """A time-major rollout ``(T, N, ...)``: at step ``t`` env ``n`` saw ``obs``, took ``action``,
    got ``reward``; ``next_obs`` is the true next observation (the final one at an episode end,
    before the auto-reset: bootstrap from it at truncations); ``first`` marks the first step of an
    episode (where a recurrent state starts afresh). ``carry`` alone has no time axis: each env's
    carry at the rollout's first step ``(N, ...)`` (already reset where ``first[0]``; ``()`` for
    feed-forward agents), from which a recurrent learner replays the rollout."""

    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    next_obs: jax.Array
    first: jax.Array
    extras: dict[str, jax.Array]  # whatever ``act`` returned (log-probs, values, ...)
    carry: Any = ()  # the agent's per-env carry the rollout started from, (N, ...)


def fresh_carry(first: jax.Array, initial: Any, carry: Any) -> Any:
    """``carry`` (batched over envs: leaves ``(N, ...)``) with the envs where ``first`` ``(N,)``
    is set back to ``initial`` (batched like ``carry``, or one env's carry): where an episode
    starts, the agent's memory starts afresh (the rollout, and a recurrent learner's replay)."""

    def select(i: jax.Array, c: jax.Array) -> jax.Array:
        return jnp.where(first.reshape(first.shape + (1,) * (c.ndim - first.ndim)), i, c)

    return jax.tree.map(select, initial, carry)


def nan_like(shapes: Any) -> Any:
    """NaN-filled arrays shaped like ``shapes`` (from ``jax.eval_shape``): the metrics of a step
    that was skipped (a ``lax.cond`` branch that did not run)."""
    return jax.tree.map(lambda s: jnp.full(s.shape, jnp.nan, s.dtype), shapes)


PER_DEVICE = "jaxrl_per_device"


def per_device(**kwargs: Any) -> Any:
    """A field of an agent's state (a ``flax.struct`` dataclass) that each device of a
    data-parallel run keeps for itself, like a replay buffer of its own envs' transitions.

    The arrays under such a field must have the device's envs along their leading axis (they are
    sharded over the devices along it); scalars under it (a write position) must be equal on
    every device and stay replicated. Everything else in an agent is replicated.
    """
    return struct.field(pytree_node=True, metadata={PER_DEVICE: True, **kwargs.pop("metadata", {})}, **kwargs)


def map_per_device(agent: Any, shared: Any, own: Any) -> Any:
    """``agent`` with every leaf replaced: ``own(leaf)`` under :func:`per_device` fields,
    ``shared(leaf)`` elsewhere (how data parallelism and the divergence check tell them apart)."""

    def visit(node: Any, mine: bool) -> Any:
        if _is_dataclass(node):
            return node.replace(**{f.name: visit(getattr(node, f.name), mine or f.metadata.get(PER_DEVICE, False))
                                   for f in dataclasses.fields(node) if f.metadata.get("pytree_node", True)})
        fn = own if mine else shared
        return jax.tree.map(lambda x: visit(x, mine) if _is_dataclass(x) else fn(x), node, is_leaf=_is_dataclass)

    return visit(agent, False)


def _is_dataclass(x: Any) -> bool:
    return dataclasses.is_dataclass(x) and not isinstance(x, type)


def vary_like(x: Any, like: jax.Array) -> Any:
    """``x`` cast to vary over the mesh axes ``like`` varies over (a no-op outside ``shard_map``).

    A ``scan`` carry that starts as a constant (zeros) but takes in per-device data must be
    device-varying from the start, or ``shard_map``'s type check rejects the scan.
    """
    missing = tuple(sorted(jax.typeof(like).vma - jax.typeof(x).vma))
    return jax.lax.pcast(x, missing, to="varying") if missing else x
