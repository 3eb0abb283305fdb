"""A device-resident replay buffer that keeps every env's transitions in time order.

The buffer is a pytree of fixed-size arrays inside the agent's state, so adding and sampling are
part of the compiled program (no host round trip) and the buffer is checkpointed and vmapped
like any other state. Each leaf is ``(envs, capacity, ...)``: one time-ordered ring per env,
all written together (a rollout adds ``T`` steps of every env). Keeping time order is what makes
n-step returns and sequences possible (:func:`sample_windows`); keeping the env axis first makes
the buffer splittable over devices with the envs (declare it with :func:`jaxrl.core.per_device`).

Observations are stored raw, as the env produced them: normalise them when sampling (with
``ctx.normalize``), so stored data never goes stale when the statistics move on.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct

from jaxrl import config as cfg
from jaxrl.core import Context, Transition, nan_like
from jaxrl.returns import nstep_window


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(cfg.Config):
    """The settings every algorithm that learns from a replay buffer shares."""

    num_envs: int = 1
    num_steps: int = 1
    buffer_size: int = 100_000  # transitions, all envs together (a multiple of num_envs)
    batch_size: int = 256
    learning_starts: int = 1_000  # env steps stored before the first gradient step
    updates_per_iteration: int = 1  # gradient steps per iteration (of num_envs * num_steps env steps)
    n_step: int = 1  # n-step returns from the buffer (cut at episode ends; bootstrapped at time limits)

    def validate(self) -> None:
        super().validate()
        for name in ("buffer_size", "batch_size", "updates_per_iteration", "n_step"):
            cfg.require(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        cfg.require(self.buffer_size % self.num_envs == 0,
                    f"buffer_size={self.buffer_size} is not a multiple of num_envs={self.num_envs} (the buffer "
                    f"keeps buffer_size / num_envs steps of every env)")
        cfg.require(self.batch_size <= self.buffer_size,
                    f"batch_size={self.batch_size} is larger than buffer_size={self.buffer_size}")
        cfg.require(self.buffer_size >= self.steps_per_iteration,
                    f"buffer_size={self.buffer_size} cannot hold one iteration's "
                    f"num_envs * num_steps = {self.steps_per_iteration} transitions")
        cfg.require(self.steps_per_iteration <= self.learning_starts <= self.buffer_size,
                    f"learning_starts={self.learning_starts} must lie between one iteration's "
                    f"{self.steps_per_iteration} transitions and buffer_size={self.buffer_size}")
        run_steps = self.num_iterations * self.steps_per_iteration
        cfg.require(self.learning_starts <= run_steps,
                    f"learning_starts={self.learning_starts} is more than the {run_steps} env steps the run takes "
                    f"({self.num_iterations} iterations of num_envs * num_steps = {self.steps_per_iteration}), "
                    f"so it would never learn")
        cfg.require(self.learning_starts >= self.n_step * self.num_envs,
                    f"learning_starts={self.learning_starts} stores fewer than n_step={self.n_step} steps of each "
                    f"of the {self.num_envs} envs before learning starts")
        cfg.require(self.n_step <= self.buffer_size // self.num_envs,
                    f"n_step={self.n_step} is longer than the {self.buffer_size // self.num_envs} steps the "
                    f"buffer keeps per env")


class Buffer(struct.PyTreeNode):
    """``data`` leaves are ``(envs, capacity, ...)``; ``pos`` is the next time slot to write,
    ``size`` the number of filled time slots (per env)."""

    data: Any
    pos: jax.Array
    size: jax.Array

    @property
    def num_envs(self) -> int:
        return jax.tree.leaves(self.data)[0].shape[0]

    @property
    def capacity(self) -> int:
        """Time slots per env."""
        return jax.tree.leaves(self.data)[0].shape[1]


def create(example: Any, num_envs: int, capacity: int) -> Buffer:
    """An empty buffer of ``capacity`` time steps for each of ``num_envs`` envs, for items shaped
    like ``example`` (one transition of one env, no batch axes)."""
    data = jax.tree.map(lambda x: jnp.zeros((num_envs, capacity) + jnp.shape(x), jnp.asarray(x).dtype), example)
    return Buffer(data, jnp.int32(0), jnp.int32(0))


def add(buffer: Buffer, items: Any) -> Buffer:
    """Append a time-major rollout ``(T, envs, ...)`` (T <= capacity), overwriting the oldest steps."""
    steps = jax.tree.leaves(items)[0].shape[0]
    if steps > buffer.capacity:
        raise ValueError(f"cannot add {steps} steps to a buffer of {buffer.capacity} steps per env")
    slots = (buffer.pos + jnp.arange(steps)) % buffer.capacity
    data = jax.tree.map(lambda d, x: d.at[:, slots].set(jnp.swapaxes(x, 0, 1).astype(d.dtype)), buffer.data, items)
    return Buffer(data, (buffer.pos + steps) % buffer.capacity, jnp.minimum(buffer.size + steps, buffer.capacity))


def _oldest(buffer: Buffer) -> jax.Array:
    return (buffer.pos - buffer.size) % buffer.capacity


def sample(buffer: Buffer, key: jax.Array, batch_size: int) -> Any:
    """``batch_size`` transitions drawn uniformly, with replacement, from the filled part: items
    shaped ``(batch_size, ...)``."""
    k_env, k_time = jax.random.split(key)
    env = jax.random.randint(k_env, (batch_size,), 0, buffer.num_envs)
    offset = jax.random.randint(k_time, (batch_size,), 0, jnp.maximum(buffer.size, 1))
    slot = (_oldest(buffer) + offset) % buffer.capacity
    return jax.tree.map(lambda d: d[env, slot], buffer.data)


def sample_windows(buffer: Buffer, key: jax.Array, batch_size: int, length: int) -> Any:
    """``batch_size`` windows of ``length`` consecutive steps of one env each, drawn uniformly
    from the windows that lie in the filled part (never across the write position, where the
    newest step meets the oldest): items shaped ``(batch_size, length, ...)``. Needs at least
    ``length`` filled steps. Windows may cross episode boundaries: the ``terminated``,
    ``truncated`` and ``first`` flags they hold say where."""
    k_env, k_time = jax.random.split(key)
    env = jax.random.randint(k_env, (batch_size,), 0, buffer.num_envs)
    starts = jax.random.randint(k_time, (batch_size,), 0, jnp.maximum(buffer.size - length + 1, 1))
    slot = (_oldest(buffer) + starts[:, None] + jnp.arange(length)) % buffer.capacity
    return jax.tree.map(lambda d: d[env[:, None], slot], buffer.data)


STORED = ("obs", "action", "reward", "terminated", "truncated", "next_obs")  # what off-policy learners keep


def transitions(traj: Transition) -> dict[str, jax.Array]:
    """The fields of a rollout a replay buffer stores (raw observations)."""
    return {name: getattr(traj, name) for name in STORED}


def example_transition(ctx: Context) -> dict[str, jax.Array]:
    """One env's transition (zeros) shaped as :func:`transitions` stores it, for :func:`create`."""
    obs = jnp.zeros(ctx.spec.obs_shape, jnp.float32)
    action = (jnp.int32(0) if ctx.spec.discrete
              else jnp.zeros(ctx.spec.action_space.shape, jnp.float32))
    return {"obs": obs, "action": action, "reward": jnp.float32(0), "terminated": jnp.bool_(False),
            "truncated": jnp.bool_(False), "next_obs": obs}


def sample_nstep(buffer: Buffer, key: jax.Array, batch_size: int, n: int, gamma: jax.Array) -> dict[str, jax.Array]:
    """A minibatch of TD-target ingredients: ``obs`` and ``action`` of a stored step, ``reward``
    (its n-step return, cut at the first episode end: :func:`jaxrl.returns.nstep_window`),
    ``discount`` (what the bootstrap value is weighed with: 0 after a termination) and
    ``next_obs`` (the observation to bootstrap from). The TD target is
    ``reward + discount * V(next_obs)``. Observations are raw: normalise them at use."""
    if n == 1:
        b = sample(buffer, key, batch_size)
        discount = gamma * (1.0 - b["terminated"].astype(jnp.float32))
        return {"obs": b["obs"], "action": b["action"], "reward": b["reward"], "discount": discount,
                "next_obs": b["next_obs"]}
    w = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), sample_windows(buffer, key, batch_size, n))  # (n, B, ...)
    ret, discount, last = nstep_window(w["reward"], w["terminated"], w["truncated"], gamma)
    next_obs = jnp.take_along_axis(w["next_obs"], last.reshape((1, -1) + (1,) * (w["next_obs"].ndim - 2)), 0)[0]
    return {"obs": w["obs"][0], "action": w["action"][0], "reward": ret, "discount": discount, "next_obs": next_obs}


def update_after_warmup(ctx: Context, agent: Any, key: jax.Array,
                        update: Callable[[Any, jax.Array, jax.Array], tuple[Any, dict]],
                        updates: int, learning_starts: int) -> tuple[Any, dict[str, jax.Array]]:
    """``updates`` calls of ``update(agent, key, step) -> (agent, metrics)`` (a scan; each
    metric is averaged over the calls that reported it, NaN counting as not reported), once
    ``learning_starts`` env steps are stored; before that the agent is unchanged and the
    metrics NaN. ``step`` is the gradient step's index in the run (the same in every seed). The
    warm-up is a real branch (the iteration index is not batched across seeds), so no gradient
    step is computed while it lasts."""
    first = ctx.iteration * updates

    def train(agent: Any) -> tuple[Any, dict]:
        steps = first + jnp.arange(updates, dtype=jnp.int32)
        agent, metrics = jax.lax.scan(lambda a, xs: update(a, *xs), agent, (jax.random.split(key, updates), steps))
        return agent, jax.tree.map(jnp.nanmean, metrics)

    def wait(agent: Any) -> tuple[Any, dict]:
        return agent, nan_like(jax.eval_shape(train, agent)[1])

    ready = ctx.env_steps + ctx.config.steps_per_iteration >= learning_starts
    return jax.lax.cond(ready, train, wait, agent)

