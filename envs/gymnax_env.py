"""Adapter from gymnax environments to the jaxrl `Environment` interface.

It calls gymnax's non-resetting `reset_env`/`step_env` (gymnax's own `step` auto-resets, which
would hide episode boundaries from our `AutoReset`), splits gymnax's time limit out as
`truncated`, and casts observations and rewards to float32. Discrete observations (FrozenLake)
become one-hot float vectors. gymnax is imported lazily: it takes seconds to import.
"""

from __future__ import annotations

import dataclasses
import inspect
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .core import Environment, Params, StepResult
from .spaces import Box, Discrete, Space

# Every environment gymnax 1.0 ships, by its gymnax id (the registry uses the same names).
GYMNAX_ENVS: tuple[str, ...] = (
    "CartPole-v1",
    "Pendulum-v1",
    "Acrobot-v1",
    "MountainCar-v0",
    "MountainCarContinuous-v0",
    "Asterix-MinAtar",
    "Breakout-MinAtar",
    "Freeway-MinAtar",
    "Seaquest-MinAtar",
    "SpaceInvaders-MinAtar",
    "Catch-bsuite",
    "DeepSea-bsuite",
    "MemoryChain-bsuite",
    "UmbrellaChain-bsuite",
    "DiscountingChain-bsuite",
    "MNISTBandit-bsuite",
    "SimpleBandit-bsuite",
    "FourRooms-misc",
    "MetaMaze-misc",
    "PointRobot-misc",
    "BernoulliBandit-misc",
    "GaussianBandit-misc",
    "Reacher-misc",
    "Swimmer-misc",
    "Pong-misc",
    "FrozenLake-misc",
)

# gymnax classes whose observations leave their declared observation_space (e.g. negative
# values under a low of 0, unnormalised time steps): we declare them unbounded instead.
_WRONG_OBS_BOUNDS = frozenset({"GaussianBandit", "MemoryChain", "MetaMaze", "UmbrellaChain"})

# gymnax builds these by downloading data from the internet in the constructor.
_NEEDS_DOWNLOAD = {
    "MNISTBandit-bsuite": "it downloads the MNIST dataset from the internet when constructed",
}


def convert_space(space: Any) -> Space:
    """Converts a gymnax `Discrete` or `Box` space to ours (Boxes become float32)."""
    from gymnax.environments import spaces as gymnax_spaces

    if isinstance(space, gymnax_spaces.Discrete):
        return Discrete(space.n)
    if isinstance(space, gymnax_spaces.Box):
        return Box(space.low, space.high, tuple(space.shape), jnp.float32)
    raise NotImplementedError(f"No jaxrl equivalent for gymnax space {space!r}")


class GymnaxEnv(Environment):
    """Wraps a gymnax environment instance.

    Args:
        env: the gymnax environment.
        name: its registry name (defaults to gymnax's `env.name`).
        param_overrides: fields of gymnax's `EnvParams` to replace in `default_params`
            (e.g. `max_steps_in_episode`).
    """

    def __init__(
        self,
        env: Any,
        name: str | None = None,
        param_overrides: dict[str, Any] | None = None,
    ):
        self.env = env
        self._name = name or env.name
        self._param_overrides = dict(param_overrides or {})
        # Categorical observations are one-hot encoded so every obs is a float vector.
        observation_space = convert_space(env.observation_space(self.default_params))
        self._one_hot = observation_space.n if isinstance(observation_space, Discrete) else None

    @property
    def default_params(self) -> Params:
        return self.env.default_params.replace(**self._param_overrides)

    @property
    def name(self) -> str:
        return self._name

    def _obs(self, obs: jax.Array) -> jax.Array:
        if self._one_hot is not None:
            return jax.nn.one_hot(obs, self._one_hot, dtype=jnp.float32)
        return jnp.asarray(obs, jnp.float32)

    def reset(self, key: jax.Array, params: Params) -> tuple[jax.Array, Any]:
        obs, state = self.env.reset_env(key, params)
        return self._obs(obs), state

    def step(self, key: jax.Array, state: Any, action: jax.Array, params: Params) -> StepResult:
        obs, state, reward, terminated, info = self.env.step_env(key, state, action, params)
        terminated = jnp.asarray(terminated, jnp.bool_)
        truncated = jnp.asarray(self.env.is_truncated(state, params), jnp.bool_) & ~terminated
        info = {k: jnp.asarray(v) for k, v in info.items()}
        reward = jnp.asarray(reward, jnp.float32)
        return self._obs(obs), state, reward, terminated, truncated, info

    def observation_space(self, params: Params) -> Box:
        if self._one_hot is not None:
            return Box(0.0, 1.0, (self._one_hot,))
        space = convert_space(self.env.observation_space(params))
        if type(self.env).__name__ in _WRONG_OBS_BOUNDS:
            return Box(-jnp.inf, jnp.inf, space.shape)
        return space

    def action_space(self, params: Params) -> Space:
        return convert_space(self.env.action_space(params))


def make_gymnax(env_id: str, **kwargs: Any) -> GymnaxEnv:
    """Builds a gymnax env by id.

    Keyword arguments name either constructor arguments of the gymnax env class (e.g.
    `use_minimal_action_set`, `map_name`) or fields of its `EnvParams` (e.g.
    `max_steps_in_episode=200`), which replace those defaults.
    """
    if env_id in _NEEDS_DOWNLOAD:
        raise ValueError(
            f"{env_id} is not supported: {_NEEDS_DOWNLOAD[env_id]}, and jaxrl.envs never "
            "downloads data at run time. Use another bsuite env (e.g. Catch-bsuite)."
        )
    import gymnax

    env = gymnax.make(env_id)[0]
    if not kwargs:
        return GymnaxEnv(env, env_id)

    init_names = {
        name
        for name, p in inspect.signature(type(env).__init__).parameters.items()
        if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    init_kwargs = {k: v for k, v in kwargs.items() if k in init_names}
    if init_kwargs:
        env = gymnax.make(env_id, **init_kwargs)[0]
    param_names = {f.name for f in dataclasses.fields(env.default_params)}
    param_kwargs = {k: v for k, v in kwargs.items() if k not in init_names}
    unknown = sorted(set(param_kwargs) - param_names)
    if unknown:
        raise ValueError(
            f"Unknown keyword argument(s) {unknown} for {env_id}. Valid: EnvParams fields "
            f"{sorted(param_names)} and constructor arguments {sorted(init_names)}."
        )
    for name, value in param_kwargs.items():
        _check_param_value(env_id, name, value, getattr(env.default_params, name))
    return GymnaxEnv(env, env_id, param_kwargs)


def _check_param_value(env_id: str, name: str, value: Any, default: Any) -> None:
    """A clear error now for an ``EnvParams`` value of the wrong kind (``max_steps_in_episode="x"``
    would otherwise fail deep inside the traced env step)."""
    if np.ndim(default) != 0 or not isinstance(default, (numbers.Number, np.generic, jax.Array)):
        return  # array or structured params: left to the env
    dtype = np.asarray(default).dtype
    if np.issubdtype(dtype, np.bool_):
        ok, kind = isinstance(value, (bool, np.bool_)), "true or false"
    elif np.issubdtype(dtype, np.integer):
        ok, kind = isinstance(value, numbers.Integral) and not isinstance(value, bool), "an integer"
    else:
        ok, kind = isinstance(value, numbers.Real) and not isinstance(value, bool), "a number"
    if not ok:
        raise ValueError(f"{env_id}: {name}={value!r} must be {kind} (its default is {np.asarray(default).item()!r})")
