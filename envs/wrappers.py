"""Composable environment wrappers.

Each wrapper holds the wrapped environment in `self.env` and delegates what it does not change.
Wrappers that need memory keep it in a flax dataclass that wraps the inner state, so the whole
stack stays one pytree. The training stack is `EpisodeStats(AutoReset(env))`
(`wrap_for_training`), with `RandomizeParams` inside the auto-reset for domain randomization.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from .core import Environment, Params, State, StepResult
from .spaces import Box, Space


def _select(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
    """Leafwise `where(pred, on_true, on_false)` over two pytrees of the same structure."""
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


class Wrapper(Environment):
    """Base wrapper: forwards everything to `self.env`, including unknown attributes."""

    def __init__(self, env: Environment):
        self.env = env

    @property
    def default_params(self) -> Params:
        return self.env.default_params

    def reset(self, key: jax.Array, params: Params) -> tuple[jax.Array, State]:
        return self.env.reset(key, params)

    def step(
        self, key: jax.Array, state: State, action: jax.Array, params: Params
    ) -> StepResult:
        return self.env.step(key, state, action, params)

    def observation_space(self, params: Params) -> Space:
        return self.env.observation_space(params)

    def action_space(self, params: Params) -> Space:
        return self.env.action_space(params)

    @property
    def name(self) -> str:
        return self.env.name

    @property
    def unwrapped(self) -> Environment:
        return self.env.unwrapped

    def __getattr__(self, attr: str) -> Any:
        # Only reached for attributes missing here; guard `env` so a half-built or
        # unpickled wrapper does not recurse forever.
        if attr == "env":
            raise AttributeError(attr)
        return getattr(self.env, attr)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.env!r})"


class AutoReset(Wrapper):
    """Starts a new episode whenever one ends, so a rollout can step forever.

    On `terminated | truncated` the returned obs and state come from `reset` with a fresh key
    split from the step key (never a cached first state, so consecutive episodes differ).
    `info["final_obs"]` always holds the observation the step produced before any reset (equal
    to `obs` when the episode goes on): learners bootstrap from it at truncations.
    """

    def step(
        self, key: jax.Array, state: State, action: jax.Array, params: Params
    ) -> StepResult:
        key_step, key_reset = jax.random.split(key)
        obs, state, reward, terminated, truncated, info = self.env.step(
            key_step, state, action, params
        )
        reset_obs, reset_state = self.env.reset(key_reset, params)
        done = terminated | truncated
        # Compute both and select leafwise (what `cond` turns into under vmap anyway). A NaN in
        # the discarded branch never leaks into the selected values.
        info = {**info, "final_obs": obs}
        obs, state = _select(done, (reset_obs, reset_state), (obs, state))
        return obs, state, reward, terminated, truncated, info


@struct.dataclass
class FirstStartState:
    env_state: Any
    first_obs: jax.Array
    first_state: Any


class ResetToFirst(Wrapper):
    """Starts a new episode whenever one ends, from the state the env's first `reset` drew.

    The episode starts of brax's `AutoResetWrapper` (and of PureJaxRL, which uses it): no reset
    is computed while stepping, which saves where resets are costly (brax's physics: +2% env
    steps/s for PPO on hopper with PureJaxRL's settings at 16 seeds), at the price of less
    diverse starts: each env replays one initial state. `info["final_obs"]` as in `AutoReset`.
    Chosen with the config's `episode_start: first`.
    """

    def reset(self, key: jax.Array, params: Params) -> tuple[jax.Array, FirstStartState]:
        obs, state = self.env.reset(key, params)
        return obs, FirstStartState(state, obs, state)

    def step(
        self, key: jax.Array, state: FirstStartState, action: jax.Array, params: Params
    ) -> StepResult:
        obs, env_state, reward, terminated, truncated, info = self.env.step(
            key, state.env_state, action, params
        )
        info = {**info, "final_obs": obs}
        obs, env_state = _select(
            terminated | truncated, (state.first_obs, state.first_state), (obs, env_state)
        )
        return obs, state.replace(env_state=env_state), reward, terminated, truncated, info


@struct.dataclass
class EpisodeStatsState:
    env_state: Any
    episode_return: jax.Array
    episode_length: jax.Array


class EpisodeStats(Wrapper):
    """Tracks the undiscounted return and length of the running episode.

    Adds to `info`: `episode_return` (float32) and `episode_length` (int32), the running totals
    including this step, so where `episode_done` (`terminated | truncated`) is true they are
    the totals of the episode that just ended. Counters restart after a done step, so it works
    both outside `AutoReset` (the usual stack) and inside it.
    """

    def reset(self, key: jax.Array, params: Params) -> tuple[jax.Array, EpisodeStatsState]:
        obs, env_state = self.env.reset(key, params)
        zero_return, zero_length = jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32)
        return obs, EpisodeStatsState(env_state, zero_return, zero_length)

    def step(
        self, key: jax.Array, state: EpisodeStatsState, action: jax.Array, params: Params
    ) -> StepResult:
        obs, env_state, reward, terminated, truncated, info = self.env.step(
            key, state.env_state, action, params
        )
        episode_return = state.episode_return + reward.astype(jnp.float32)
        episode_length = state.episode_length + 1
        done = terminated | truncated
        info = {
            **info,
            "episode_return": episode_return,
            "episode_length": episode_length,
            "episode_done": done,
        }
        state = EpisodeStatsState(
            env_state,
            jnp.where(done, 0.0, episode_return),
            jnp.where(done, 0, episode_length),
        )
        return obs, state, reward, terminated, truncated, info


@struct.dataclass
class TimeLimitState:
    env_state: Any
    steps: jax.Array


class TimeLimit(Wrapper):
    """Truncates episodes after `max_steps` steps (unless that step also terminates)."""

    def __init__(self, env: Environment, max_steps: int):
        super().__init__(env)
        if int(max_steps) < 1:
            raise ValueError(f"TimeLimit needs max_steps >= 1, got {max_steps}")
        self.max_steps = int(max_steps)

    def reset(self, key: jax.Array, params: Params) -> tuple[jax.Array, TimeLimitState]:
        obs, env_state = self.env.reset(key, params)
        return obs, TimeLimitState(env_state, jnp.zeros((), jnp.int32))

    def step(
        self, key: jax.Array, state: TimeLimitState, action: jax.Array, params: Params
    ) -> StepResult:
        obs, env_state, reward, terminated, truncated, info = self.env.step(
            key, state.env_state, action, params
        )
        steps = state.steps + 1
        truncated = (truncated | (steps >= self.max_steps)) & ~terminated
        return obs, TimeLimitState(env_state, steps), reward, terminated, truncated, info


@struct.dataclass
class RandomizedState:
    env_state: Any
    params: Any  # the params this episode was drawn with


class RandomizeParams(Wrapper):
    """Domain randomization: every episode runs with numeric env params drawn anew.

    `ranges` maps a scalar numeric field of the env's params to `(low, high)`; `reset` draws
    each uniformly from its range (integer fields: an integer in `[low, high]`), keeps the drawn
    params in the state, and every `step` of the episode uses them (the `params` passed to `step`
    only supply the fields not randomized). Under `AutoReset` each new episode draws again, and
    under `vmap` each env draws its own. Observation and action spaces are those of the nominal
    params: randomize only fields the spaces do not depend on.
    """

    def __init__(self, env: Environment, ranges: dict[str, Any], params: Params):
        super().__init__(env)
        fields = {k: v.dtype for k, v in numeric_params(params).items()}
        if not ranges:
            raise ValueError("RandomizeParams needs at least one field to randomize")
        checked = {}
        for name, bounds in ranges.items():
            if name not in fields:
                raise ValueError(f"{env.name}: no numeric param {name!r} to randomize; its numeric params: "
                                 f"{sorted(fields) or 'none'}")
            if (not isinstance(bounds, (list, tuple)) or len(bounds) != 2
                    or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)):
                raise ValueError(f"randomized param {name!r} needs a range [low, high] of two numbers, got {bounds!r}")
            low, high = bounds
            if not (jnp.isfinite(low) and jnp.isfinite(high) and low <= high):
                raise ValueError(f"randomized param {name!r}: need finite low <= high, got [{low}, {high}]")
            if jnp.issubdtype(fields[name], jnp.integer) and (low != int(low) or high != int(high)):
                raise ValueError(f"randomized param {name!r} is an integer; its range needs integers, got {bounds!r}")
            checked[name] = (low, high, fields[name])
        self.ranges = checked

    def draw(self, key: jax.Array, params: Params) -> Params:
        """`params` with every randomized field drawn from its range."""
        keys = jax.random.split(key, len(self.ranges))
        drawn = {}
        for k, (name, (low, high, dtype)) in zip(keys, self.ranges.items()):
            if jnp.issubdtype(dtype, jnp.integer):
                drawn[name] = jax.random.randint(k, (), int(low), int(high) + 1, dtype)
            else:
                drawn[name] = jax.random.uniform(k, (), dtype, low, high)
        return params.replace(**drawn)

    def reset(self, key: jax.Array, params: Params) -> tuple[jax.Array, RandomizedState]:
        key_draw, key_reset = jax.random.split(key)
        params = self.draw(key_draw, params)
        obs, env_state = self.env.reset(key_reset, params)
        return obs, RandomizedState(env_state, params)

    def step(
        self, key: jax.Array, state: RandomizedState, action: jax.Array, params: Params
    ) -> StepResult:
        obs, env_state, reward, terminated, truncated, info = self.env.step(
            key, state.env_state, action, state.params
        )
        return obs, RandomizedState(env_state, state.params), reward, terminated, truncated, info


def numeric_params(params: Params) -> dict[str, jax.Array]:
    """The scalar numeric (not boolean) fields of a dataclass of env params, as arrays: the
    params a sweep can vary and `RandomizeParams` can draw."""
    if not dataclasses.is_dataclass(params):
        return {}
    values = {}
    for field in dataclasses.fields(params):
        value = getattr(params, field.name)
        numeric = isinstance(value, (int, float)) or (hasattr(value, "shape") and jnp.ndim(value) == 0)
        if numeric and not jnp.issubdtype(jnp.asarray(value).dtype, jnp.bool_):
            values[field.name] = jnp.asarray(value)
    return values


class FlattenObservation(Wrapper):
    """Reshapes observations to 1-D (e.g. MinAtar images for an MLP)."""

    def observation_space(self, params: Params) -> Box:
        space = self.env.observation_space(params)
        if not isinstance(space, Box):
            raise TypeError(f"FlattenObservation needs a Box observation space, got {space}")
        return Box(space.low.reshape(-1), space.high.reshape(-1), dtype=space.dtype)

    def reset(self, key: jax.Array, params: Params) -> tuple[jax.Array, State]:
        obs, state = self.env.reset(key, params)
        return obs.reshape(-1), state

    def step(
        self, key: jax.Array, state: State, action: jax.Array, params: Params
    ) -> StepResult:
        obs, state, reward, terminated, truncated, info = self.env.step(
            key, state, action, params
        )
        if "final_obs" in info:
            info = {**info, "final_obs": info["final_obs"].reshape(-1)}
        return obs.reshape(-1), state, reward, terminated, truncated, info


class MaskObservation(Wrapper):
    """Keeps only the observation entries at `indices` (along the observation's last axis, in
    the given order): a partially observed version of any env with a Box observation space.

    E.g. CartPole-v1 with `indices=(0, 2)` observes the cart position and the pole angle but
    not their velocities, so a policy must remember past observations to act well. Every
    environment takes it as `make(name, obs_mask=[...])` (a config's `env_kwargs: {obs_mask:
    [0, 2]}`).
    """

    def __init__(self, env: Environment, indices: Any):
        super().__init__(env)
        space = env.observation_space(env.default_params)
        if not isinstance(space, Box) or not space.shape:
            raise ValueError(f"obs_mask needs a Box observation space with at least one axis, "
                             f"got {space} for {env.name}")
        size = space.shape[-1]
        valid = (isinstance(indices, (list, tuple)) and len(indices) > 0
                 and all(isinstance(i, int) and not isinstance(i, bool) for i in indices))
        if not valid:
            raise ValueError(f"obs_mask must be a non-empty list of observation indices (integers), "
                             f"got {indices!r}")
        if not all(0 <= i < size for i in indices) or len(set(indices)) != len(indices):
            raise ValueError(f"obs_mask {list(indices)} must list distinct indices in [0, {size}) "
                             f"(the last axis of {env.name}'s observations, shape {space.shape})")
        self.indices = tuple(indices)

    def _mask(self, obs: jax.Array) -> jax.Array:
        return obs[..., jnp.asarray(self.indices)]

    def observation_space(self, params: Params) -> Box:
        space = self.env.observation_space(params)
        index = np.asarray(self.indices)  # bounds are NumPy, or JAX arrays when traced: both index alike
        return Box(space.low[..., index], space.high[..., index], dtype=space.dtype)

    def reset(self, key: jax.Array, params: Params) -> tuple[jax.Array, State]:
        obs, state = self.env.reset(key, params)
        return self._mask(obs), state

    def step(
        self, key: jax.Array, state: State, action: jax.Array, params: Params
    ) -> StepResult:
        obs, state, reward, terminated, truncated, info = self.env.step(key, state, action, params)
        if "final_obs" in info:  # when wrapped around an AutoReset
            info = {**info, "final_obs": self._mask(info["final_obs"])}
        return self._mask(obs), state, reward, terminated, truncated, info

    def __repr__(self) -> str:
        return f"MaskObservation({self.env!r}, {list(self.indices)})"


def _box_action_space(env: Environment, wrapper: str) -> Box:
    """The env's (default-params) action space, checked to be a Box."""
    space = env.action_space(env.default_params)
    if not isinstance(space, Box):
        raise TypeError(f"{wrapper} needs a Box action space, got {space} for {env.name}")
    return space


class ClipAction(Wrapper):
    """Clips continuous actions to the action Box before the inner step."""

    def __init__(self, env: Environment):
        super().__init__(env)
        _box_action_space(env, "ClipAction")

    def step(
        self, key: jax.Array, state: State, action: jax.Array, params: Params
    ) -> StepResult:
        space = self.env.action_space(params)
        return self.env.step(key, state, jnp.clip(action, space.low, space.high), params)


class RescaleAction(Wrapper):
    """Lets the agent act in `[low, high]`, mapped affinely onto the inner action Box.

    Out-of-range actions are extrapolated by the same affine map, not clipped; put a
    `ClipAction` inside this wrapper if the inner env needs in-range actions.
    """

    def __init__(self, env: Environment, low: float = -1.0, high: float = 1.0):
        super().__init__(env)
        if not low < high:
            raise ValueError(f"RescaleAction needs low < high, got [{low}, {high}]")
        if not _box_action_space(env, "RescaleAction").is_bounded:
            raise ValueError(f"RescaleAction needs a bounded action Box for {env.name}")
        self.low, self.high = float(low), float(high)

    def action_space(self, params: Params) -> Box:
        inner = self.env.action_space(params)
        return Box(self.low, self.high, inner.shape, inner.dtype)

    def step(
        self, key: jax.Array, state: State, action: jax.Array, params: Params
    ) -> StepResult:
        inner = self.env.action_space(params)
        fraction = (action - self.low) / (self.high - self.low)
        inner_action = inner.low + fraction * (inner.high - inner.low)
        return self.env.step(key, state, inner_action.astype(inner.dtype), params)


EPISODE_STARTS = ("fresh", "first")  # AutoReset, ResetToFirst


def check_episode_start(episode_start: str, randomize: dict[str, Any] | None = None) -> None:
    """A ValueError unless `episode_start` is one of `EPISODE_STARTS` and works with `randomize`
    (`"first"` never resets, so per-episode draws would never happen)."""
    if episode_start not in EPISODE_STARTS:
        raise ValueError(f"episode_start must be one of {', '.join(EPISODE_STARTS)}, got {episode_start!r}")
    if episode_start == "first" and randomize:
        raise ValueError("episode_start: first replays each env's first reset state, so env_randomize's "
                         "per-episode draws would never happen: use episode_start: fresh")


def wrap_for_training(env: Environment, randomize: dict[str, Any] | None = None,
                      params: Params | None = None, episode_start: str = "fresh") -> Environment:
    """The standard training stack: auto-reset with episode statistics on top; with `randomize`
    (field -> `(low, high)` of `params`), every episode's params are drawn anew
    (:class:`RandomizeParams`, inside the auto-reset). `episode_start="first"` restarts each
    env from its first reset state instead (:class:`ResetToFirst`; not with `randomize`, whose
    draws happen at resets)."""
    check_episode_start(episode_start, randomize)
    if episode_start == "first":
        return EpisodeStats(ResetToFirst(env))
    if randomize:
        env = RandomizeParams(env, randomize, env.default_params if params is None else params)
    return EpisodeStats(AutoReset(env))
