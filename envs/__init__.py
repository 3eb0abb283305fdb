"""Environments: a functional gymnax-style interface, adapters, wrappers and a registry.

    env, params = jaxrl.envs.make("CartPole-v1")
    env = jaxrl.envs.wrap_for_training(env)
    obs, state = env.reset(key, params)
    obs, state, reward, terminated, truncated, info = env.step(key, state, action, params)

Importing this package is cheap: gymnax and brax are imported only when one of their
environments is made.
"""

from .core import EmptyParams, Environment
from .registry import make, register, registered
from .spaces import Box, Discrete, Space
from .wrappers import (
    AutoReset,
    ClipAction,
    EpisodeStats,
    FlattenObservation,
    RescaleAction,
    TimeLimit,
    Wrapper,
    wrap_for_training,
)

__all__ = [
    "AutoReset",
    "Box",
    "ClipAction",
    "Discrete",
    "EmptyParams",
    "Environment",
    "EpisodeStats",
    "FlattenObservation",
    "RescaleAction",
    "Space",
    "TimeLimit",
    "Wrapper",
    "make",
    "register",
    "registered",
    "wrap_for_training",
]
