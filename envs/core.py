"""The functional environment interface every jaxrl environment implements.

An environment object holds only static configuration; everything that changes lives in the
`state` pytree and everything tunable in the `params` pytree. Both `reset` and `step` are pure
functions of their arguments, so they can be `jit`-ed, `vmap`-ed over keys, states and params,
and run inside `lax.scan`.
"""

from __future__ import annotations

import abc
from typing import Any

import jax
from flax import struct

from .spaces import Space

# Type aliases for readability; all of these are pytrees of JAX arrays.
Params = Any
State = Any
Info = dict[str, jax.Array]
StepResult = tuple[jax.Array, State, jax.Array, jax.Array, jax.Array, Info]


@struct.dataclass
class EmptyParams:
    """Params of an environment that has nothing to tune (an empty pytree)."""


class Environment(abc.ABC):
    """A pure, batchable environment (gymnax-style).

    Contract for `step`: `reward` is a float32 scalar; `terminated` (the MDP ended, do not
    bootstrap) and `truncated` (cut off by a time limit, bootstrap from the returned obs) are
    bool scalars that are never both true; `info` is a dict of arrays with the same keys and
    shapes on every step. Observations are float32 arrays. `step` does not reset: wrap with
    `AutoReset` to continue after an episode ends.
    """

    @property
    def default_params(self) -> Params:
        """Default parameters (a pytree, so a batch of them can be vmapped)."""
        return EmptyParams()

    @abc.abstractmethod
    def reset(self, key: jax.Array, params: Params) -> tuple[jax.Array, State]:
        """Starts an episode: returns `(obs, state)`."""

    @abc.abstractmethod
    def step(
        self, key: jax.Array, state: State, action: jax.Array, params: Params
    ) -> StepResult:
        """Advances one step: returns `(obs, state, reward, terminated, truncated, info)`."""

    @abc.abstractmethod
    def observation_space(self, params: Params) -> Space:
        """The space observations live in."""

    @abc.abstractmethod
    def action_space(self, params: Params) -> Space:
        """The space of valid actions."""

    @property
    def name(self) -> str:
        """A human-readable name (the registry name where there is one)."""
        return type(self).__name__

    @property
    def unwrapped(self) -> Environment:
        """The innermost environment, below all wrappers."""
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"
