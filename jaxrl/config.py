"""Typed run configuration: YAML files, ``key=value`` overrides and validation before compiling.

A config is a frozen dataclass. Each algorithm subclasses :class:`Config` with its own fields.
Fields are either *static* (shapes, counts, switches: changing them means a new compiled
program) or *traced* hyperparameters (declared with :func:`traced`), which enter the compiled
``train(key, hparams)`` as float32 arrays and can therefore be vmapped over in a sweep.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import math
import re
import typing
from pathlib import Path
from typing import Any, ClassVar

import yaml


ACTIVATIONS = ("tanh", "relu", "elu", "gelu", "silu")  # names of flax.linen activation functions
ON_DIVERGENCE = ("stop", "warn")  # what a host driver does when a run's learner turns non-finite


class ConfigError(ValueError):
    """A config that cannot run, reported before anything is compiled."""


class RoundingWarning(UserWarning):
    """total_steps is not a whole number of iterations, so the run takes fewer steps."""


def traced(default: float) -> Any:
    """A hyperparameter that is an input of the compiled program, not a constant in it."""
    return dataclasses.field(default=default, metadata={"traced": True})


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Fields every algorithm shares; each algorithm subclasses it with its own.

    An offline algorithm (one that learns from ``inputs`` and takes no env steps) sets the
    class attribute ``offline = True``, takes ``num_steps: 0`` and defines ``num_iterations``.
    """

    offline: ClassVar[bool] = False
    algo: str
    env: str = "CartPole-v1"
    env_kwargs: dict = dataclasses.field(default_factory=dict)
    seed: int = 0
    total_steps: int = 500_000
    num_envs: int = 4
    num_steps: int = 128  # env steps per env per iteration
    hidden: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    normalize_obs: bool = False
    normalize_reward: bool = False
    eval_every: int = 0  # evaluate every N iterations inside the compiled loop (0: never)
    eval_episodes: int = 16  # episodes per evaluation, played in parallel
    eval_deterministic: bool = True  # greedy / mean actions; false samples from the policy
    eval_env_kwargs: dict = dataclasses.field(default_factory=dict)  # eval env = env_kwargs updated by these
    eval_max_steps: int = 100_000  # bound on one evaluation's env steps per episode
    gamma: float = traced(0.99)

    # ----------------------------------------------------------------- derived sizes
    @property
    def steps_per_iteration(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def num_iterations(self) -> int:
        """``total_steps // (num_envs * num_steps)`` (an offline algorithm defines its own)."""
        return self.total_steps // self.steps_per_iteration

    # ----------------------------------------------------------------- traced part
    @classmethod
    def traced_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("traced"))

    def hparams(self) -> dict[str, Any]:
        """The traced hyperparameters as float32 scalars (the default ``hparams`` of train)."""
        import jax.numpy as jnp

        return {name: jnp.float32(getattr(self, name)) for name in self.traced_names()}

    # ----------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise :class:`ConfigError` for settings that cannot run; subclasses extend it."""
        for name in ("total_steps", "num_envs"):
            require(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        if self.offline:
            require(self.num_steps == 0, f"algo {self.algo!r} learns offline (no env steps): num_steps must be 0, "
                                         f"got {self.num_steps}")
        else:
            require(self.num_steps >= 1, f"num_steps must be >= 1, got {self.num_steps}")
            require(
                self.total_steps >= self.steps_per_iteration,
                f"total_steps={self.total_steps} is less than one iteration "
                f"(num_envs * num_steps = {self.steps_per_iteration})",
            )
        require(len(self.hidden) >= 1 and all(h >= 1 for h in self.hidden),
                 f"hidden must list positive layer widths, got {self.hidden}")
        require(self.activation in ACTIVATIONS,
                 f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        require(self.eval_every >= 0, f"eval_every must be >= 0, got {self.eval_every}")
        require(self.eval_episodes >= 1, f"eval_episodes must be >= 1, got {self.eval_episodes}")
        require(self.eval_max_steps >= 1, f"eval_max_steps must be >= 1, got {self.eval_max_steps}")
        require(0.0 <= self.gamma <= 1.0, f"gamma must be in [0, 1], got {self.gamma}")

    def rounding_note(self) -> str | None:
        """Why the run takes fewer env steps than ``total_steps`` asked for, if it does."""
        if self.offline or self.total_steps % self.steps_per_iteration == 0:
            return None
        return (f"total_steps={self.total_steps} is not a multiple of num_envs * num_steps = "
                f"{self.steps_per_iteration}: running {self.num_iterations} iterations = "
                f"{self.num_iterations * self.steps_per_iteration} env steps")

    def replace(self, **changes: Any) -> "Config":
        """A copy with ``changes`` applied, coerced and validated like a loaded config."""
        return build(type(self), {**dataclasses.asdict(self), **changes})

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-safe dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


# Names other RL libraries use for our keys, so a user coming from them gets pointed right.
SYNONYMS = {"learning_rate": "lr", "n_envs": "num_envs", "n_steps": "num_steps", "n_epochs": "update_epochs",
            "total_timesteps": "total_steps", "clip_range": "clip_eps", "clip_coef": "clip_eps",
            "batch_size": "num_minibatches", "gae_lam": "gae_lambda", "vf_coeff": "vf_coef",
            "ent_coeff": "ent_coef", "buffer_capacity": "buffer_size", "target_update_freq": "target_update_interval"}


def suggest(word: str, options: list[str]) -> str:
    synonym = SYNONYMS.get(word)
    close = [synonym] if synonym in options else difflib.get_close_matches(word, options, n=3)
    return f" (did you mean {', '.join(map(repr, close))}?)" if close else ""


# --------------------------------------------------------------------------- loading
def config_names() -> list[str]:
    """Names of the bundled configs in ``configs/`` (usable as ``jaxrl train NAME``)."""
    files = importlib.resources.files("jaxrl.configs")
    return sorted(p.name[: -len(".yaml")] for p in files.iterdir() if p.name.endswith(".yaml"))


def read_yaml(name_or_path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML file, or in the bundled config of that name."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        text = path.read_text()
    else:
        names = config_names()
        if str(name_or_path) not in names:
            raise ConfigError(
                f"unknown config {str(name_or_path)!r}; bundled configs: {', '.join(names)}"
                + suggest(str(name_or_path), names)
            )
        text = (importlib.resources.files("jaxrl.configs") / f"{name_or_path}.yaml").read_text()
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {str(name_or_path)!r} must be a YAML mapping, got {type(data).__name__}")
    return data


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["lr=3e-4", "hidden=[32,32]", "env_kwargs.backend=spring"]`` -> a dict (YAML-typed values)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        value = yaml.safe_load(raw) if raw else ""
        if "." in key:
            head, _, sub = key.partition(".")
            out.setdefault(head, {})[sub] = value
        else:
            out[key] = value
    return out


def parse_grid(items: list[str]) -> dict[str, list]:
    """``["lr=1e-4,3e-4", "hidden=[32,32],[64,64]"]`` -> ``{"lr": [1e-4, 3e-4], "hidden": [[32, 32], [64, 64]]}``."""
    grid: dict[str, list] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key or not raw:
            raise ConfigError(f"--grid item {item!r} is not of the form key=v1,v2,...")
        grid[key] = [_grid_value(v) for v in re.split(r",(?![^\[]*\])", raw)]
    return grid


def _grid_value(text: str):
    try:
        return float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        return yaml.safe_load(text)


def build(cls: type[Config], data: dict[str, Any]) -> Config:
    """Construct ``cls`` from a plain dict: reject unknown keys, coerce types, validate."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        raise ConfigError(
            f"unknown config key {key!r} for algo {data.get('algo')!r}" + suggest(key, list(fields))
            + f"; valid keys: {', '.join(fields)}"
        )
    hints = typing.get_type_hints(cls)
    values = {k: _coerce(k, v, hints[k]) for k, v in data.items()}
    try:
        config = cls(**values)
    except TypeError as err:  # a required field is missing
        raise ConfigError(str(err)) from None
    config.validate()
    return config


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the field's type; accept lossless conversions (``5e5`` for an int)."""
    origin = typing.get_origin(hint)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        number = _number(value)
        if number is not None and not isinstance(value, bool) and float(number).is_integer():
            return int(number)
    elif hint is float:
        number = _number(value)
        if number is not None and not isinstance(value, bool) and math.isfinite(number):
            return float(number)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        if value is None:
            return {}
    elif origin is tuple:
        items = [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value
        if isinstance(items, (list, tuple)):
            inner = typing.get_args(hint)[0]
            return tuple(_coerce(name, v, inner) for v in items)
    raise ConfigError(f"config key {name!r} must be {_type_name(hint)}, got {value!r} ({type(value).__name__})")


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):  # YAML 1.1 reads "5e5" as a string
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is tuple:
        return f"a list of {typing.get_args(hint)[0].__name__}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        hint, "a mapping"
    )
