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

Two options (keyword arguments of `make`, e.g. `make("probe/constant", max_steps=5)`):

- `max_steps=N` (a time limit) tests bootstrapping at truncations: the episode never
  terminates and is *truncated* after N steps. Every step pays the reward of the table (the
  random sign of `obs`/`obs-action` is drawn once per episode; `discount` pays 0 on its first
  step and +1 on every later one, its obs staying [1]). The time left is not observed, so the
  value a learner should find is the infinite-horizon one: every V and Q above becomes
  `r / (1 - γ)` for the per-step reward r (V = 1/(1-γ) in `constant`, `obs`/(1-γ) in `obs`,
  γ/(1-γ) then 1/(1-γ) in `discount`; Q*(a) = r(a) + γ/(1-γ) in the action probes). A learner
  that treats truncation as termination learns the mean of partial sums instead, much lower.
- `constant_obs=True` shows the observation [0] whatever the state, hiding the random sign of
  `obs`/`obs-action` and the step of `discount`. V*([0]) is then the expectation over the
  hidden sign (0 in `obs`; in `obs-action` 0 for discrete actions, any of which is as good,
  and 1 - 0.5² = 0.75 per step at a* = 0 for continuous ones); in `discount` it depends on the
  hidden step, so there is no single V*([0]).

`optimal_value` and `optimal_action` compute the optima (taking the same options), so tests
can compare learned values and actions against them.

Which probe it is lives in the env's params too (`ProbeParams.kind`, the index in `PROBES`),
so one compiled program can play every probe: a sweep over `env.kind` (or `train(key,
{"env.kind": k})`) trains an agent on each probe with the same program, whatever probe the
registry name made.
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
# Keyword arguments every probe takes (see the module docstring).
PROBE_OPTIONS: tuple[str, ...] = ("max_steps", "constant_obs")


def optimal_value(
    kind: str,
    obs: jax.Array,
    gamma: float,
    *,
    max_steps: int | None = None,
    constant_obs: bool = False,
    continuous: bool = False,
) -> jax.Array:
    """V*(obs) of probe `kind` under discount `gamma` (obs is the probe's `(…, 1)` obs).

    `max_steps` and `constant_obs` are the probe's options (see the module docstring): with a
    time limit the value is the infinite-horizon one, whatever `max_steps` is. `continuous`
    matters only for `obs-action` with `constant_obs`.
    """
    if kind not in PROBES:
        raise ValueError(f"Unknown probe {kind!r}; available: {list(PROBES)}")
    if constant_obs and kind == "discount":
        raise ValueError("probe/discount with constant_obs has no single V*([0]): the value depends "
                         "on the hidden step (γ on the first, 1 after)")
    if max_steps is not None and not 0.0 <= gamma < 1.0:
        raise ValueError(f"With a time limit (max_steps) the value is infinite-horizon: needs 0 <= gamma < 1, "
                         f"got {gamma}")
    x = jnp.asarray(obs, jnp.float32)[..., 0]
    # Stationary rewards summed over an unbounded horizon: r, r, r, ... is worth r / (1 - γ).
    horizon_scale = 1.0 if max_steps is None else 1.0 / (1.0 - gamma)
    if kind == "obs":
        per_step = jnp.zeros_like(x) if constant_obs else x
    elif kind == "discount":
        per_step = jnp.where(x == 0.0, gamma, 1.0)  # [0] pays 0 then +1 from the next step on
    elif kind == "obs-action" and constant_obs:  # the best action blind to the sign
        per_step = jnp.full_like(x, 1.0 - CONTINUOUS_TARGET**2 if continuous else 0.0)
    else:
        per_step = jnp.ones_like(x)
    return per_step * horizon_scale


def optimal_action(
    kind: str,
    obs: jax.Array,
    continuous: bool,
    *,
    max_steps: int | None = None,
    constant_obs: bool = False,
) -> jax.Array:
    """The unique best action in `obs` for the action-dependent probes.

    A time limit (`max_steps`) does not change it. With `constant_obs`, `obs-action`'s best
    continuous action is 0 (the sign is hidden) and no discrete action is better than the other.
    """
    del max_steps  # accepted so the probe's keyword arguments can be passed through
    if kind not in _ACTION_DEPENDENT:
        raise ValueError(f"Every action is optimal in probe {kind!r}; try {_ACTION_DEPENDENT}")
    x = jnp.asarray(obs, jnp.float32)[..., 0]
    if kind == "obs-action" and constant_obs:
        if not continuous:
            raise ValueError("probe/obs-action with constant_obs: both discrete actions are equally good "
                             "(expected reward 0), so there is no unique best action")
        return jnp.zeros_like(x)[..., None]
    sign = x if kind == "obs-action" else jnp.ones_like(x)
    if continuous:
        return (CONTINUOUS_TARGET * sign)[..., None]
    return (sign > 0).astype(jnp.int32)


@struct.dataclass
class ProbeState:
    obs: jax.Array
    time: jax.Array


@struct.dataclass
class ProbeParams:
    kind: jax.Array  # int32 index in PROBES: which probe this is


def kind_index(kind: str) -> int:
    """The index of probe `kind` in `PROBES` (the value of `ProbeParams.kind`)."""
    return PROBES.index(kind)


class ProbeEnv(Environment):
    """One probe MDP (see the module docstring for the table of rewards, optima and options).

    `state.obs` is the true observation (the random sign, or the step of `discount`); with
    `constant_obs` the agent is shown [0] instead.
    """

    def __init__(
        self,
        kind: str,
        continuous: bool = False,
        max_steps: int | None = None,
        constant_obs: bool = False,
    ):
        if kind not in PROBES:
            raise ValueError(f"Unknown probe {kind!r}; available: {list(PROBES)}")
        if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int)
                                      or max_steps < 1):
            raise ValueError(f"Probe max_steps must be an integer >= 1 (or None for no time limit), "
                             f"got {max_steps!r}")
        if not isinstance(constant_obs, bool):
            raise ValueError(f"Probe constant_obs must be true or false, got {constant_obs!r}")
        self.kind = kind
        self.continuous = continuous
        self.horizon = HORIZON.get(kind, 1)
        self.max_steps = max_steps
        self.constant_obs = constant_obs

    @property
    def name(self) -> str:
        return f"probe/{self.kind}" + ("-continuous" if self.continuous else "")

    @property
    def default_params(self) -> ProbeParams:
        return ProbeParams(jnp.int32(kind_index(self.kind)))

    def _shown(self, obs: jax.Array) -> jax.Array:
        """What the agent observes of the true observation `obs`."""
        return jnp.zeros_like(obs) if self.constant_obs else obs

    def reset(self, key: jax.Array, params: ProbeParams) -> tuple[jax.Array, ProbeState]:
        signed = _is(params, *_SIGNED_OBS)
        obs = jnp.where(signed & jax.random.bernoulli(key), 1.0, jnp.where(signed, -1.0, 0.0))
        obs = obs[None].astype(jnp.float32)
        return self._shown(obs), ProbeState(obs, jnp.zeros((), jnp.int32))

    def _reward(self, state: ProbeState, action: jax.Array, params: ProbeParams) -> jax.Array:
        sign = jnp.where(_is(params, "obs-action"), state.obs[0], 1.0)  # action probes: a* = f(sign)
        if self.continuous:
            action_reward = 1.0 - jnp.sum(jnp.square(jnp.asarray(action, jnp.float32) - CONTINUOUS_TARGET * sign))
        else:
            action_reward = jnp.where(action == (sign > 0), 1.0, -1.0)
        return jnp.select(
            [_is(params, "constant"), _is(params, "obs"), _is(params, "discount")],
            [jnp.ones(()), state.obs[0], jnp.where(state.time >= 1, 1.0, 0.0)],  # discount: 0, then +1
            action_reward)

    def step(
        self, key: jax.Array, state: ProbeState, action: jax.Array, params: ProbeParams
    ) -> StepResult:
        time = state.time + 1
        # Only the two-step probe moves: [0] -> [1].
        discount = _is(params, "discount")
        obs = jnp.where(discount, jnp.ones((1,), jnp.float32), state.obs)
        reward = self._reward(state, action, params).astype(jnp.float32)
        if self.max_steps is None:
            terminated = time >= jnp.where(discount, HORIZON["discount"], 1)
            truncated = jnp.zeros((), jnp.bool_)
        else:  # a time limit instead of the end of the MDP
            terminated = jnp.zeros((), jnp.bool_)
            truncated = time >= self.max_steps
        return self._shown(obs), ProbeState(obs, time), reward, terminated, truncated, {}

    def observation_space(self, params: Params) -> Box:
        return Box(-1.0, 1.0, (1,))

    def action_space(self, params: Params) -> Space:
        return Box(-1.0, 1.0, (1,)) if self.continuous else Discrete(2)


def _is(params: ProbeParams, *kinds: str) -> jax.Array:
    """Whether the probe `params` select is one of `kinds` (a traced bool)."""
    return jnp.isin(params.kind, jnp.array([kind_index(k) for k in kinds]))


def probe_names() -> list[str]:
    """Registry names of all probes, discrete then continuous for each."""
    return [f"probe/{kind}{suffix}" for kind in PROBES for suffix in ("", "-continuous")]


def make_probe(name: str, max_steps: int | None = None, constant_obs: bool = False) -> ProbeEnv:
    """Builds a probe from its registry name, e.g. `probe/action-continuous`, with its options."""
    kind = name.removeprefix("probe/")
    continuous = kind.endswith("-continuous")
    return ProbeEnv(kind.removesuffix("-continuous"), continuous, max_steps, constant_obs)


__all__ = [
    "CONTINUOUS_TARGET",
    "PROBES",
    "PROBE_OPTIONS",
    "ProbeEnv",
    "ProbeParams",
    "ProbeState",
    "kind_index",
    "make_probe",
    "optimal_action",
    "optimal_value",
    "probe_names",
]
