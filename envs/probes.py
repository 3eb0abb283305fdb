"""Probe environments: tiny MDPs with known optimal values and actions, for debugging agents.

Each isolates one part of a learner (value fitting, observation use, discounting, policy
improvement, conditioning the policy on observations). Every probe exists with a discrete
action space (`Discrete(2)`) and a continuous one (`Box(-1, 1, (1,))`, name suffix
`-continuous`). Observations have shape `(1,)`, float32.

| name             | obs                 | reward                                 | optimum        |
|------------------|---------------------|----------------------------------------|----------------|
| probe/constant   | [0], 1 step         | +1                                     | V = 1          |
| probe/obs        | [±1] random, 1 step | obs                                    | V = obs        |
| probe/discount   | [0], [1]; 2 steps   | 0 then +1                              | V = γ, then 1  |
| probe/action     | [0], 1 step         | discrete: +1 if a == 1 else -1         | a* = 1         |
|                  |                     | continuous: 1 - (a - 0.5)²             | a* = 0.5       |
| probe/obs-action | [±1] random, 1 step | discrete: +1 if a == (obs > 0) else -1 | a* = (obs > 0) |
|                  |                     | continuous: 1 - (a - 0.5·obs)²         | a* = 0.5·obs   |

In the action probes V = 1 under the optimal action a*. In the discrete action probes
Q*(a*) = +1 and Q*(other action) = -1.

`optimal_value` and `optimal_action` compute the optima, so tests can compare learned values
and actions against them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from .core import Environment, Params, StepResult
from .spaces import Box, Discrete, Space

PROBES: tuple[str, ...] = ("constant", "obs", "discount", "action", "obs-action")
# Probes whose observation is a random sign rather than a fixed [0].
_SIGNED_OBS = ("obs", "obs-action")
# Probes whose reward depends on the action.
_ACTION_DEPENDENT = ("action", "obs-action")
# Optimal continuous action: CONTINUOUS_TARGET in probe/action, CONTINUOUS_TARGET * obs in
# probe/obs-action.
CONTINUOUS_TARGET = 0.5
# Episode lengths of the probes that last more than one step.
HORIZON = {"discount": 2}


def optimal_value(kind: str, obs: jax.Array, gamma: float) -> jax.Array:
    """V*(obs) of probe `kind` under discount `gamma` (obs is the probe's `(…, 1)` obs)."""
    x = jnp.asarray(obs, jnp.float32)[..., 0]
    if kind == "obs":
        return x
    if kind == "discount":
        return jnp.where(x == 0.0, gamma, 1.0)
    if kind in PROBES:
        return jnp.ones_like(x)
    raise ValueError(f"Unknown probe {kind!r}; available: {list(PROBES)}")


def optimal_action(kind: str, obs: jax.Array, continuous: bool) -> jax.Array:
    """The unique best action in `obs` for the action-dependent probes."""
    if kind not in _ACTION_DEPENDENT:
        raise ValueError(f"Every action is optimal in probe {kind!r}; try {_ACTION_DEPENDENT}")
    x = jnp.asarray(obs, jnp.float32)[..., 0]
    sign = x if kind == "obs-action" else jnp.ones_like(x)
    if continuous:
        return (CONTINUOUS_TARGET * sign)[..., None]
    return (sign > 0).astype(jnp.int32)


@struct.dataclass
class ProbeState:
    obs: jax.Array
    time: jax.Array


class ProbeEnv(Environment):
    """One probe MDP (see the module docstring for the table of rewards and optima)."""

    def __init__(self, kind: str, continuous: bool = False):
        if kind not in PROBES:
            raise ValueError(f"Unknown probe {kind!r}; available: {list(PROBES)}")
        self.kind = kind
        self.continuous = continuous
        self.horizon = HORIZON.get(kind, 1)

    @property
    def name(self) -> str:
        return f"probe/{self.kind}" + ("-continuous" if self.continuous else "")

    def reset(self, key: jax.Array, params: Params) -> tuple[jax.Array, ProbeState]:
        if self.kind in _SIGNED_OBS:
            obs = jnp.where(jax.random.bernoulli(key), 1.0, -1.0)[None].astype(jnp.float32)
        else:
            obs = jnp.zeros((1,), jnp.float32)
        return obs, ProbeState(obs, jnp.zeros((), jnp.int32))

    def _reward(self, state: ProbeState, action: jax.Array) -> jax.Array:
        if self.kind == "constant":
            return jnp.ones(())
        if self.kind == "obs":
            return state.obs[0]
        if self.kind == "discount":
            return jnp.where(state.time == self.horizon - 1, 1.0, 0.0)
        best = optimal_action(self.kind, state.obs, self.continuous)
        if self.continuous:
            return 1.0 - jnp.sum(jnp.square(jnp.asarray(action, jnp.float32) - best))
        return jnp.where(action == best, 1.0, -1.0)

    def step(
        self, key: jax.Array, state: ProbeState, action: jax.Array, params: Params
    ) -> StepResult:
        time = state.time + 1
        # Only the two-step probe moves: [0] -> [1].
        obs = jnp.ones((1,), jnp.float32) if self.kind == "discount" else state.obs
        reward = self._reward(state, action).astype(jnp.float32)
        terminated = time >= self.horizon
        truncated = jnp.zeros((), jnp.bool_)
        return obs, ProbeState(obs, time), reward, terminated, truncated, {}

    def observation_space(self, params: Params) -> Box:
        return Box(-1.0, 1.0, (1,))

    def action_space(self, params: Params) -> Space:
        return Box(-1.0, 1.0, (1,)) if self.continuous else Discrete(2)


def probe_names() -> list[str]:
    """Registry names of all probes, discrete then continuous for each."""
    return [f"probe/{kind}{suffix}" for kind in PROBES for suffix in ("", "-continuous")]


def make_probe(name: str) -> ProbeEnv:
    """Builds a probe from its registry name, e.g. `probe/action-continuous`."""
    kind = name.removeprefix("probe/")
    continuous = kind.endswith("-continuous")
    return ProbeEnv(kind.removesuffix("-continuous"), continuous)


__all__ = [
    "CONTINUOUS_TARGET",
    "PROBES",
    "ProbeEnv",
    "ProbeState",
    "make_probe",
    "optimal_action",
    "optimal_value",
    "probe_names",
]
