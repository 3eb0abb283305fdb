"""Environments: a functional gymnax-style interface, adapters, wrappers and a registry.

    env, params = jaxrl.envs.make("CartPole-v1")
    env = jaxrl.envs.wrap_for_training(env)
    obs, state = env.reset(key, params)
    obs, state, reward, terminated, truncated, info = env.step(key, state, action, params)

Environments of one's own: subclass `Environment`, then `register("name", factory)`, or name
the factory by its import path, `make("my_envs:make_corridor")`; `check(env, params)` tests an
env against the contract (done automatically for import paths).

Importing this package is cheap: gymnax and brax are imported only when one of their
environments is made.
"""

from .checker import EnvCheckError, check
from .core import EmptyParams, Environment
from .registry import make, register, registered
from .spaces import Box, Discrete, Space
from .wrappers import (
    AutoReset,
    ClipAction,
    EpisodeStats,
    FlattenObservation,
    MaskObservation,
    RandomizeParams,
    RescaleAction,
    ResetToFirst,
    TimeLimit,
    Wrapper,
    numeric_params,
    wrap_for_training,
)

__all__ = [
    "AutoReset",
    "Box",
    "ClipAction",
    "Discrete",
    "EmptyParams",
    "EnvCheckError",
    "Environment",
    "EpisodeStats",
    "FlattenObservation",
    "MaskObservation",
    "RandomizeParams",
    "RescaleAction",
    "ResetToFirst",
    "Space",
    "TimeLimit",
    "Wrapper",
    "check",
    "make",
    "numeric_params",
    "register",
    "registered",
    "wrap_for_training",
]
