"""Adapter from brax environments to the jaxrl `Environment` interface.

brax envs have no time limit of their own (the registry adds `TimeLimit`) and no auto-reset:
stepping past `done` yields NaNs, which `AutoReset` avoids by resetting on the done step. brax
is imported lazily, with its import-time "Failed to import warp" stdout noise swallowed.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Any

import jax
import jax.numpy as jnp

from .core import Environment, Params, StepResult
from .spaces import Box

# brax 0.14's environments, minus its `fast` unit-test stub (dict obs, Python-side counters).
BRAX_ENVS: tuple[str, ...] = (
    "ant",
    "halfcheetah",
    "hopper",
    "humanoid",
    "humanoidstandup",
    "inverted_pendulum",
    "inverted_double_pendulum",
    "pusher",
    "reacher",
    "swimmer",
    "walker2d",
)
BACKENDS: tuple[str, ...] = ("generalized", "positional", "spring", "mjx")
_BACKEND_LIMITS = {"swimmer": ("generalized",)}


def import_brax_envs() -> Any:
    """Imports `brax.envs` without its stdout noise (missing optional `warp` backend)."""
    with contextlib.redirect_stdout(io.StringIO()):
        from brax import envs
    return envs


class BraxEnv(Environment):
    """Wraps a brax `Env`; the state is brax's own `State`.

    Actions are in `[-1, 1]^action_size` (brax envs scale them to their actuator ranges).
    `terminated` is `state.done > 0.5`; `truncated` is always false here (see `TimeLimit`).
    `info` carries brax's per-step `metrics` (reward terms, positions, velocities).
    """

    def __init__(self, env: Any, name: str | None = None):
        self.env = env
        self._name = name or type(env).__name__
        obs = jax.eval_shape(env.reset, jax.random.PRNGKey(0)).obs
        if not hasattr(obs, "shape"):
            raise TypeError(f"{self._name}: only array observations are supported, got {obs}")
        self._obs_shape = tuple(obs.shape)
        self._action_size = int(env.action_size)

    @property
    def name(self) -> str:
        return self._name

    @staticmethod
    def _normalize(state: Any) -> Any:
        """Gives reward/done fixed float32 dtypes (some envs return Python floats)."""
        return state.replace(
            obs=jnp.asarray(state.obs, jnp.float32),
            reward=jnp.asarray(state.reward, jnp.float32),
            done=jnp.asarray(state.done, jnp.float32),
        )

    def reset(self, key: jax.Array, params: Params) -> tuple[jax.Array, Any]:
        state = self._normalize(self.env.reset(key))
        return state.obs, state

    def step(self, key: jax.Array, state: Any, action: jax.Array, params: Params) -> StepResult:
        state = self._normalize(self.env.step(state, action))
        terminated = state.done > 0.5
        info = {k: jnp.asarray(v, jnp.float32) for k, v in state.metrics.items()}
        return state.obs, state, state.reward, terminated, jnp.zeros((), jnp.bool_), info

    def observation_space(self, params: Params) -> Box:
        return Box(-jnp.inf, jnp.inf, self._obs_shape)

    def action_space(self, params: Params) -> Box:
        return Box(-1.0, 1.0, (self._action_size,))


def make_brax(name: str, backend: str = "generalized", **kwargs: Any) -> BraxEnv:
    """Builds brax env `name` on physics `backend`; `kwargs` go to `brax.envs.get_environment`."""
    if name not in BRAX_ENVS:
        raise ValueError(f"Unknown brax env {name!r}; available: {list(BRAX_ENVS)}")
    allowed = _BACKEND_LIMITS.get(name, BACKENDS)
    if backend not in allowed:
        raise ValueError(f"brax env {name!r} supports backend(s) {list(allowed)}, got {backend!r}")
    envs = import_brax_envs()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Brax System, piplines and environments")
        try:
            env = envs.get_environment(name, backend=backend, **kwargs)
        except TypeError as error:  # an unexpected keyword argument
            message = f"Bad keyword arguments {sorted(kwargs)} for brax env {name!r}: {error}"
            raise ValueError(message) from error
    return BraxEnv(env, f"brax/{name}")
