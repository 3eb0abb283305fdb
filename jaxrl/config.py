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
import struct
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import yaml


ACTIVATIONS = ("tanh", "relu", "elu", "gelu", "silu")  # names of flax.linen activation functions
# Where episodes start after the first: envs.wrap_for_training (whose EPISODE_STARTS a test keeps equal;
# importing envs here would import jax before the compilation cache is set up).
EPISODE_STARTS = ("fresh", "first")
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1  # integers enter the compiled program as int32
FLOAT32_MAX, FLOAT32_TINY = 3.4028234663852886e38, 1.1754943508222875e-38  # largest, smallest normal
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
    # domain randomization: env param -> [low, high], drawn anew for every training episode
    env_randomize: dict = dataclasses.field(default_factory=dict)
    # where an episode starts when one ends: "fresh" (a new reset draw every episode) or "first"
    # (each env replays its first reset state: brax's AutoResetWrapper and PureJaxRL; cheaper
    # where resets are costly, as brax's physics, but every episode of an env starts alike)
    episode_start: str = "fresh"
    seed: int = 0
    total_steps: int = 500_000
    num_envs: int = 4
    num_steps: int = 128  # env steps per env per iteration
    hidden: tuple[int, ...] = (64, 64)
    # image observations (H, W, C): convolutions [features, kernel, stride] ('VALID' padding, each
    # followed by the activation) before the hidden dense layers, in every network of the algorithm
    conv: tuple[tuple[int, ...], ...] = ()
    activation: str = "tanh"
    normalize_obs: bool = False
    normalize_reward: bool = False
    eval_every: int = 0  # evaluate every N iterations inside the compiled loop (0: never)
    eval_episodes: int = 16  # episodes per evaluation, played in parallel
    eval_deterministic: bool = True  # greedy / mean actions; false samples from the policy
    eval_env_kwargs: dict = dataclasses.field(default_factory=dict)  # eval env = env_kwargs updated by these
    eval_max_steps: int = 100_000  # bound on one evaluation's env steps per episode
    # draw random numbers with JAX's threefry hash unrolled on the CPU (same bits, fewer kernels,
    # slower compiles where a program draws in many places: see jaxrl.rng)
    straight_rng: bool = False
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
        self._validate_types()
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
        require(self.num_iterations <= INT32_MAX,
                 f"total_steps={self.total_steps} makes {self.num_iterations} iterations; the iteration counter "
                 f"is int32 (at most {INT32_MAX})")
        require(len(self.hidden) >= 1 and all(h >= 1 for h in self.hidden),
                 f"hidden must list positive layer widths, got {self.hidden}")
        require(all(len(layer) == 3 and min(layer) >= 1 for layer in self.conv),
                 f"conv must list convolutions as [features, kernel, stride] of positive integers, got "
                 f"{[list(layer) for layer in self.conv]}")
        require_one_of("activation", self.activation, ACTIVATIONS)
        require_one_of("episode_start", self.episode_start, EPISODE_STARTS)
        require(self.episode_start == "fresh" or not self.env_randomize,
                "episode_start: first replays each env's first reset state, so env_randomize's per-episode draws "
                "would never happen: use episode_start: fresh")
        require(self.eval_every >= 0, f"eval_every must be >= 0, got {self.eval_every}")
        require(self.eval_every <= self.num_iterations,
                 f"eval_every={self.eval_every} is more than the run's {self.num_iterations} iterations, "
                 f"so it would never evaluate")
        require(self.eval_episodes >= 1, f"eval_episodes must be >= 1, got {self.eval_episodes}")
        require(self.eval_max_steps >= 1, f"eval_max_steps must be >= 1, got {self.eval_max_steps}")
        require(0.0 <= self.gamma <= 1.0, f"gamma must be in [0, 1], got {self.gamma}")

    def _validate_types(self) -> None:
        """Every field has its declared type (as :func:`build` ensures, but a Config can also be
        constructed directly), every int fits in the compiled program's int32 (``total_steps``
        only through its iteration count), every traced value fits in float32 without becoming
        infinite or zero, and ``algo`` names this class's algorithm."""
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            name, value, hint = field.name, getattr(self, field.name), hints[field.name]
            if _type_name(hint) is None:
                continue  # a type build() does not know; the subclass's validate checks it
            _coerce(name, value, hint)
            is_ints = hint is int or typing.get_origin(hint) is tuple and int in _leaves(typing.get_args(hint))
            ints = ([value] if hint is int else list(_leaves(value))) if is_ints else []
            if name != "total_steps" and not all(INT32_MIN <= v <= INT32_MAX for v in ints):
                raise ConfigError(f"{name}={value!r} does not fit in int32 (integers in the compiled program "
                                  f"lie in [{INT32_MIN}, {INT32_MAX}])")
            if field.metadata.get("traced") and not _fits_float32(float(value)):
                raise ConfigError(f"{name}={value!r} does not fit in float32, the type of traced hyperparameters "
                                  f"(0, or a magnitude between {FLOAT32_TINY:.4g} and {FLOAT32_MAX:.4g})")
        algo = next(f for f in dataclasses.fields(self) if f.name == "algo").default
        require(algo is dataclasses.MISSING or self.algo == algo,
                 f"algo {self.algo!r} does not match {type(self).__module__}.{type(self).__name__} "
                 f"(the config of {algo!r})")

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
        """Plain YAML-safe dict (tuples, nested ones too, become lists)."""
        as_list = lambda v: [as_list(x) for x in v] if isinstance(v, tuple) else v  # noqa: E731
        return {k: as_list(v) for k, v in dataclasses.asdict(self).items()}


def require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def require_one_of(name: str, value: Any, options: Sequence[str]) -> None:
    """A :class:`ConfigError` naming the options (and the close ones) unless ``value`` is one."""
    require(value in options, f"{name} must be one of {', '.join(options)}, got {value!r}"
            + suggest(str(value), list(options)))


def _fits_float32(x: float) -> bool:
    """Whether ``x`` stays finite and, unless 0, nonzero and normal when rounded to float32
    (XLA on CPU flushes subnormals to zero)."""
    try:
        rounded = struct.unpack("f", struct.pack("f", x))[0]
    except OverflowError:
        return False
    return math.isfinite(rounded) and (x == 0 or abs(rounded) >= FLOAT32_TINY)


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


def read_yaml(name_or_path: str | Path, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The mapping in a YAML file, or in the bundled config of that name.

    A file may start from another config with ``base: NAME`` (a bundled name, or a path relative to
    the file): the base's keys, with this file's keys on top (a mapping such as ``env_kwargs`` is
    merged key by key). So a variant of a config states only what differs.
    """
    data = _read_one(name_or_path)
    if "base" not in data:
        return data
    base = data.pop("base")
    if not isinstance(base, str) or not base:
        raise ConfigError(f"config {str(name_or_path)!r}: 'base' must be a config name or a path, got {base!r}")
    if Path(base).suffix in (".yaml", ".yml") and not Path(base).is_absolute() and Path(name_or_path).is_file():
        base = str(Path(name_or_path).parent / base)
    chain = (*_seen, _identity(name_or_path))
    if _identity(base) in chain:
        raise ConfigError(f"config bases form a cycle: {' -> '.join((*chain, _identity(base)))}")
    return merge_on_top(read_yaml(base, chain), data)


def merge_on_top(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``base``'s keys with ``top``'s on top; a mapping in both (``env_kwargs``) is merged key by
    key, so a variant or an override that sets one env kwarg keeps the others."""
    out = dict(base)
    for key, value in top.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = {**out[key], **value} if both else value
    return out


def _identity(name_or_path: str | Path) -> str:
    """One spelling per config: a file's resolved path, else the bundled name."""
    path = Path(name_or_path)
    return str(path.resolve()) if path.is_file() else str(name_or_path)


def _read_one(name_or_path: str | Path) -> dict[str, Any]:
    """The mapping in one YAML file or bundled config, as written."""
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
    try:
        data = yaml.safe_load(text) or {}
    except (yaml.YAMLError, ValueError, OverflowError, RecursionError) as err:
        raise ConfigError(f"config {str(name_or_path)!r} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {str(name_or_path)!r} must be a YAML mapping, got {type(data).__name__}")
    return data


# --------------------------------------------------------------------------- command-line text
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # a config key, an env kwarg or an env param


def _split_item(item: str, what: str, form: str) -> tuple[str, str]:
    """``"key=text"`` -> ``("key", "text")``; a ConfigError quoting ``item`` when it is malformed:
    no ``=``, a key that is not NAME or NAME.NAME, or nothing after the ``=``."""
    if not isinstance(item, str):
        raise ConfigError(f"{what} {item!r} is not of the form {form}")
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"{what} {item!r} is not of the form {form}")
    parts = key.split(".")
    if len(parts) > 2 or not all(_NAME.fullmatch(part) for part in parts):
        raise ConfigError(f"{what} {item!r}: {key!r} is not a key (a name of letters, digits and _, "
                          f"or NAME.KEY for a key inside the mapping NAME)")
    if not text.strip():
        raise ConfigError(f"{what} {item!r} has no value after '=' (an empty string is written {key}=\"\")")
    return key, text


def _yaml_value(item: str, text: str, what: str) -> Any:
    """``text`` read as a YAML value, or a ConfigError quoting ``item``."""
    try:
        return yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, OverflowError, RecursionError) as err:
        # ValueError: a date-like value such as 2024-13-01
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{what} {item!r}: {text!r} is not a valid YAML value ({problem})") from None


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["lr=3e-4", "hidden=[32,32]", "env_kwargs.backend=spring"]`` -> a dict (YAML-typed values).

    ``NAME.KEY=value`` sets KEY inside the mapping NAME; it combines with ``NAME={...}`` when they
    set different keys. A key given twice (``lr=1 lr=2``, or ``env_kwargs.x`` twice, or in both
    forms), an empty value, a value that is not YAML or a malformed item is a ConfigError that
    quotes the items concerned: nothing the user typed is silently dropped.
    """
    out: dict[str, Any] = {}
    given: dict[str, str] = {}  # key ("lr", "env_kwargs.x") -> the item that set it
    for item in items:
        key, text = _split_item(item, "override", "key=value")
        value = _yaml_value(item, text, "override")
        if key in given:
            raise ConfigError(f"{key!r} is given twice: {given[key]!r} and {item!r}")
        head, dot, sub = key.partition(".")
        if dot:  # one key inside the mapping ``head``
            if head in given and not isinstance(out[head], dict):
                raise ConfigError(f"{item!r} sets {sub!r} inside {head}, but {given[head]!r} gives {head} "
                                  f"a value that is not a mapping")
            if head in given and sub in out[head]:
                raise ConfigError(f"{key!r} is given twice: in {given[head]!r} and as {item!r}")
            out.setdefault(head, {})[sub] = value
        else:
            inner = {k.partition(".")[2]: given[k] for k in given if k.startswith(head + ".")}
            if inner and not isinstance(value, dict):
                raise ConfigError(f"{item!r} gives {head} a value that is not a mapping, but "
                                  f"{next(iter(inner.values()))!r} sets a key inside it")
            clash = [k for k in inner if k in value] if inner else []
            if clash:
                raise ConfigError(f"'{head}.{clash[0]}' is given twice: in {item!r} and as {inner[clash[0]]!r}")
            out[head] = {**value, **out[head]} if inner else value
        given[key] = item
    return out


def parse_grid(items: list[str]) -> dict[str, list]:
    """``["lr=1e-4,3e-4", "hidden=[32,32],[64,64]"]`` -> ``{"lr": [1e-4, 3e-4], "hidden": [[32, 32], [64, 64]]}``.

    Values are separated by commas outside brackets, braces and quotes; each is a number
    (``1e-4`` included) or else a YAML value. A key given twice, an empty value, unbalanced
    brackets, a non-finite number or a malformed item is a ConfigError quoting the item.
    """
    grid: dict[str, list] = {}
    given: dict[str, str] = {}
    for item in items:
        key, text = _split_item(item, "--grid item", "key=v1,v2,...")
        if key in given:
            raise ConfigError(f"--grid key {key!r} is given twice: {given[key]!r} and {item!r}")
        grid[key] = [_grid_value(item, value) for value in _split_values(item, text)]
        given[key] = item
    return grid


def _split_values(item: str, text: str) -> list[str]:
    """The comma-separated values of a --grid item, each stripped of surrounding spaces: split at
    the commas outside brackets and braces, and outside a value that starts with a quote."""
    pairs = {"[": "]", "{": "}"}
    values, start, opened, quote = [], 0, [], None
    for i, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"" and not opened and not text[start:i].strip():
            quote = char  # a quoted value: commas inside it do not split
        elif char in pairs:
            opened.append(char)
        elif char in "]}":
            if not opened or pairs[opened.pop()] != char:
                raise ConfigError(f"--grid item {item!r}: unbalanced {char!r}")
        elif char == "," and not opened:
            values.append(text[start:i].strip())
            start = i + 1
    if opened or quote:
        raise ConfigError(f"--grid item {item!r}: unclosed {quote or opened[-1]!r}")
    values.append(text[start:].strip())
    if not all(values):
        raise ConfigError(f"--grid item {item!r} has an empty value (values are separated by commas)")
    return values


def _grid_value(item: str, text: str) -> Any:
    """One --grid value: ``1e-4`` and ``3`` as numbers (YAML would read ``1e-4`` as a string),
    anything else as YAML; a non-finite number is refused."""
    try:
        value = (float(text) if any(c in text for c in ".eE") else int(text)) if text.isascii() else None
    except ValueError:
        value = None
    if value is None:
        value = _yaml_value(item, text, "--grid item")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"--grid item {item!r}: {text!r} is not a finite number")
    return value


def build(cls: type[Config], data: dict[str, Any]) -> Config:
    """Construct ``cls`` from a plain dict: reject unknown keys, coerce types, validate."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        raise ConfigError(
            f"unknown config key {key!r} for algo {data.get('algo')!r}"
            + (suggest(key, list(fields)) if isinstance(key, str) else "") + f"; valid keys: {', '.join(fields)}"
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
    """Check ``value`` against the field's type; accept lossless conversions only: a whole
    number for an int (``5e5``, also as the string YAML 1.1 makes of it), an int for a float, a
    single int for a one-element list, None for an empty mapping. Nothing is rounded or clamped."""
    origin = typing.get_origin(hint)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        number = _number(value)
        if isinstance(number, int):
            return number
        if isinstance(number, float) and number.is_integer():
            return int(number)
    elif hint is float:
        number = _number(value)
        if number is not None:
            try:
                number = float(number)
            except OverflowError:  # an int beyond float range
                number = math.inf
            if math.isfinite(number):
                return number
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is dict or origin is dict:
        if isinstance(value, dict):
            bad = [k for k in value if not isinstance(k, str)]
            if bad:
                raise ConfigError(f"config key {name!r} must be a mapping with string keys, got key {bad[0]!r} "
                                  f"in {value!r}")
            return dict(value)
        if value is None:
            return {}
    elif origin is tuple:
        items = [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value
        if isinstance(items, (list, tuple)):
            inner = typing.get_args(hint)[0]
            try:
                return tuple(_coerce(name, v, inner) for v in items)
            except ConfigError:
                pass  # reported below, with the whole value
    raise ConfigError(f"config key {name!r} must be {_type_name(hint) or hint}, got {value!r} ({type(value).__name__})")


def _leaves(value: tuple) -> Any:
    """The items of a nested tuple, depth first; of a type hint's args too (``tuple[tuple[int,
    ...], ...]`` -> int, ...)."""
    for item in value:
        nested = typing.get_args(item) if typing.get_origin(item) is tuple else item if isinstance(item, tuple) else None
        yield from _leaves(nested) if nested is not None else (item,)


def _number(value: Any) -> int | float | None:
    """``value`` as an int or float (YAML 1.1 reads ``5e5`` as a string), None if it is not a
    number; bools are not numbers here."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str) and value.strip().isascii():
        for parse in (int, float):
            try:
                return parse(value)
            except (ValueError, OverflowError):
                pass
    return None


def _type_name(hint: Any) -> str | None:
    """How messages name a field type that build() coerces; None for any other type."""
    if typing.get_origin(hint) is tuple:
        inner = typing.get_args(hint)[0]
        return f"a list of {'lists of ' + typing.get_args(inner)[0].__name__ if typing.get_origin(inner) is tuple else inner.__name__}"
    if hint is dict or typing.get_origin(hint) is dict:
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint)
