"""Property-based (hypothesis) fuzzing of configs and of the command-line parsers.

For every algorithm (``algo_names()``) and every field of its ``Config``, values are drawn from
the field's type and default (valid ones in small ranges, and invalid ones: wrong types,
negatives, zero, NaN/inf, huge numbers, strings, None, lists, bools, unknown keys). Each config
must either be rejected with ``ConfigError`` before compiling, or be accepted with exactly the
values asked for (up to the documented coercions) and then run with finite metrics (NaN only
where it is by design). The parsers of ``key=value`` overrides and of ``--grid`` items take any
text to a dict or a ConfigError quoting the text, and round-trip well-formed items. A sweep
takes any grid to a ConfigError or to a program whose traced values are exactly the grid's.

Strategies come from the dataclass fields (type hints, defaults, the ``traced`` mark), so new
fields and algorithms are fuzzed without editing this file; ``VALID_HINTS`` and ``TINY`` only
narrow some names to ranges that run fast.

CI runs a fixed, small set of examples (``derandomize=True``: reproducible, but the same inputs
each time). To hunt for bugs, run many fresh ones now and then, e.g.
``JAXRL_FUZZ_RANDOM=1 JAXRL_FUZZ_SCALE=20 pytest tests/test_fuzz.py``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from typing import Any

import jax
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

import jaxrl
from jaxrl.algos import algo_module, algo_names
from jaxrl.config import ACTIVATIONS, ConfigError, build, parse_grid, parse_overrides

ALGOS = algo_names()
SCALE = float(os.environ.get("JAXRL_FUZZ_SCALE", "1"))


def fuzz(examples: int) -> settings:
    """Hypothesis settings: ``examples`` (times JAXRL_FUZZ_SCALE), no deadline (compiling takes
    seconds), reproducible unless JAXRL_FUZZ_RANDOM=1, no example database."""
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=None, database=None,
                    derandomize=os.environ.get("JAXRL_FUZZ_RANDOM") != "1",
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ----------------------------------------------------------------------------- value strategies
def f32(low: float, high: float) -> st.SearchStrategy:
    """float32 values in [low, high] (traced values are float32)."""
    return st.floats(float(np.float32(low)), float(np.float32(high)), width=32, allow_subnormal=False)


NAMES = st.from_regex(r"[a-z_][a-z0-9_]{0,11}", fullmatch=True)
ENV_KWARGS = st.sampled_from([{}, {"max_steps_in_episode": 3}, {"max_steps_in_episode": 40}])

# Names whose valid values are narrowed so a run stays tiny; every other field is drawn from its
# type around its default (a fallback that works for fields added later).
VALID_HINTS: dict[str, st.SearchStrategy] = {
    "env": st.sampled_from(["CartPole-v1", "Pendulum-v1", "Acrobot-v1"]),
    "env_kwargs": ENV_KWARGS,
    "eval_env_kwargs": ENV_KWARGS,
    "activation": st.sampled_from(ACTIVATIONS),
    "seed": st.integers(-(2**31), 2**31 - 1),
    "num_envs": st.integers(1, 4),
    "num_steps": st.integers(1, 8),
    "hidden": st.lists(st.integers(1, 8), min_size=1, max_size=3) | st.integers(1, 8),
    "conv": st.just(()),  # the fuzzed envs have vector observations (conv: tests/test_networks.py, test_minatar.py)
    "eval_every": st.integers(0, 3),
    "eval_episodes": st.integers(1, 3),
    "eval_max_steps": st.integers(1, 64),
    "update_epochs": st.integers(1, 2),
    "num_minibatches": st.integers(1, 4),
    "buffer_size": st.integers(1, 256),
    "batch_size": st.integers(1, 16),
    "learning_starts": st.integers(1, 64),
    "updates_per_iteration": st.integers(1, 3),
    "target_update_interval": st.integers(1, 4),
    "lr": f32(1e-5, 1e-2),
    "max_grad_norm": f32(1e-6, 1e6),
    "ent_coef": f32(0.0, 0.1),
    "vf_coef": f32(0.0, 2.0),
    "clip_eps": f32(1e-6, 1e3),
}
# Sizes of a tiny runnable config; a callable gets num_envs * num_steps. Names a Config lacks
# are skipped. A new algorithm whose defaults + these sizes do not build needs an entry here
# (test_tiny_base_builds says so).
TINY: dict[str, Any] = {
    "num_envs": 2, "num_steps": 4, "hidden": (8,), "eval_episodes": 2, "eval_max_steps": 32,
    "update_epochs": 1, "num_minibatches": 2,
    "buffer_size": lambda batch: 8 * batch, "learning_starts": lambda batch: batch, "batch_size": 8,
    "target_update_interval": 1,
}


def fields_of(cls: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    """name -> (field, type hint) of a Config class."""
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls)}


def default_of(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def valid_values(name: str, field: dataclasses.Field, hint: Any) -> st.SearchStrategy:
    """Values that should usually be accepted (cross-field rules may still refuse some)."""
    if name in VALID_HINTS:
        return VALID_HINTS[name]
    default = default_of(field)
    origin = typing.get_origin(hint)
    if hint is bool:
        return st.booleans()
    if hint is int:
        near = [v for v in (default, default // 2, 2 * default, 1) if isinstance(v, int) and 0 <= v <= 64]
        return st.sampled_from(near or [1]) | st.integers(0, 8)
    if hint is float:  # around the default, and the ends of [0, 1] (many floats are fractions)
        near = [default, default / 2, min(2 * default, 1.0)] if isinstance(default, float) else []
        return st.sampled_from(near + [0.0, 1.0]) | f32(0.0, 1.0)
    if hint is str:
        return st.just(default) if isinstance(default, str) else st.text(max_size=8)
    if hint is dict or origin is dict:
        return st.just({})
    if origin is tuple:
        return st.lists(st.integers(1, 8), min_size=1, max_size=3).map(tuple)
    return st.just(default)


BAD_COMMON = st.sampled_from([None, "fast", "", [1], {"a": 1}, float("nan"), float("inf"), -float("inf"), True])


def invalid_values(hint: Any) -> st.SearchStrategy:
    """Values of wrong types and out-of-range numbers for a field of type ``hint`` (some happen
    to be valid, e.g. ``"5e5"`` for an int: the property holds either way)."""
    origin = typing.get_origin(hint)
    if hint is bool:
        specific = st.sampled_from([0, 1, 1.0, "yes", "true", "false", [True]])
    elif hint is int:
        specific = (st.integers(-(2**70), 0) | st.integers(2**31 - 8, 2**70)
                    | st.sampled_from([2.5, 5.0, 1e300, 10**400, -(10**400), "5e5", "1_000", " 7 ", "0x10",
                                       "12345678901234567890123", "nan", "inf", 1e-300])
                    | st.floats(allow_nan=True, allow_infinity=True))
    elif hint is float:
        specific = (st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True)
                    | st.sampled_from([0.0, -0.0, -1.0, 1e39, -1e39, 1e-50, 1e-39, 3.4e38, 1e300, 10**400,
                                       "1e-3", "nan", "inf", "-Infinity", 7])
                    | st.integers(-(2**70), 2**70))
    elif hint is str:
        specific = st.text(max_size=12) | st.sampled_from([1, 2.5, ["tanh"], {"a": "b"}])
    elif hint is dict or origin is dict:
        specific = (st.sampled_from([[1], "x", 5, {1: 2}, {"no_such_kwarg": 1}, {None: 1}, {"max_steps_in_episode": -3}])
                    | st.dictionaries(st.text(max_size=6), st.integers(), max_size=2))
    elif origin is tuple:
        specific = (st.lists(st.integers(-3, 2**40), max_size=4)
                    | st.lists(st.floats(allow_nan=True), min_size=1, max_size=2)
                    | st.sampled_from(["64", [1.5], [[8]], [True], {}, (), 0, -4, 2.0, [2**31], 10**400]))
    else:
        specific = st.nothing()
    return specific | BAD_COMMON


@st.composite
def field_changes(draw: st.DrawFn, cls: type, invalid_share: float, max_fields: int) -> dict[str, Any]:
    """A few fields of ``cls`` (not ``algo``) with drawn values; each value is invalid with
    probability ``invalid_share``."""
    fields = {n: fh for n, fh in fields_of(cls).items() if n != "algo"}
    names = draw(st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=max_fields, unique=True))
    changes = {}
    for name in names:
        field, hint = fields[name]
        bad = draw(st.floats(0, 1)) < invalid_share
        changes[name] = draw(invalid_values(hint) if bad else valid_values(name, field, hint))
    return changes


def tiny_base(cls: type, num_envs: Any = None, num_steps: Any = None, iterations: int = 2) -> dict[str, Any]:
    """A small runnable config of ``cls`` as a dict: its defaults with TINY sizes (spi-dependent
    ones computed from the given or tiny ``num_envs * num_steps``), ``iterations`` iterations."""
    fields = fields_of(cls)
    data = {"algo": default_of(fields["algo"][0])}
    ne = num_envs if _positive_int(num_envs) else TINY["num_envs"]
    ns = num_steps if _positive_int(num_steps) else TINY["num_steps"]
    spi = int(ne) * int(ns)
    for name, value in TINY.items():
        if name in fields:
            data[name] = value(spi) if callable(value) else value
    data["total_steps"] = iterations * spi
    return data


def _positive_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= 64


# ----------------------------------------------------------------------------- the config property
def coerced(value: Any, hint: Any) -> Any:
    """What an accepted ``value`` may become: the documented coercions only (a whole number for
    an int, ``"5e5"`` YAML-1.1 strings as numbers, a single int for a one-element tuple, None
    for an empty mapping)."""
    origin = typing.get_origin(hint)
    if hint is int:
        if isinstance(value, str):
            return int(float(value)) if float(value).is_integer() and abs(float(value)) < 2**53 else int(value)
        return int(value)
    if hint is float:
        return float(value)
    if origin is tuple:
        items = [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value
        return tuple(coerced(v, typing.get_args(hint)[0]) for v in items)
    if (hint is dict or origin is dict) and value is None:
        return {}
    return value


def assert_exactly_as_asked(config: Any, changes: dict[str, Any]) -> None:
    fields = fields_of(type(config))
    for name, value in changes.items():
        hint = fields[name][1]
        got = getattr(config, name)
        assert got == coerced(value, hint), f"{name}: asked {value!r}, config has {got!r}"
        if hint in (bool, int, float, str):
            assert type(got) is hint, f"{name}: asked {value!r}, config has {got!r} ({type(got).__name__})"
        if hint in (int, float) or typing.get_origin(hint) is tuple:
            assert not isinstance(value, bool) and not (isinstance(value, (list, tuple)) and any(
                isinstance(v, bool) for v in value)), f"{name}: a bool {value!r} was taken as a number"
    for name in type(config).traced_names():  # traced values enter the program as float32, unchanged
        value = getattr(config, name)
        as32 = np.float32(value)
        assert np.isfinite(as32) and (value == 0) == (as32 == 0), f"{name}={value!r} is {as32!r} in float32"


@pytest.mark.parametrize("algo", ALGOS)
def test_tiny_base_builds(algo):
    cls = algo_module(algo).Config
    build(cls, tiny_base(cls))  # else: give the new algorithm's sizes in TINY


def plain(value: Any) -> Any:
    """``value`` with tuples as lists (what YAML can write)."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def make_config(cls: type, base: dict[str, Any], changes: dict[str, Any], route: str, folder: str) -> Any:
    """``base`` with ``changes`` through ``build``, through ``load_config`` of a YAML file with
    keyword overrides, or as ``key=value`` text through ``parse_overrides`` (the command line)."""
    if route == "build":
        return build(cls, {**base, **changes})
    path = os.path.join(folder, "base.yaml")
    with open(path, "w") as file:
        yaml.safe_dump(plain(base), file)
    if route == "load_config":
        return jaxrl.load_config(path, **changes)
    return jaxrl.load_config(path, **parse_overrides([f"{k}={dump(plain(v))}" for k, v in changes.items()]))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("algo", ALGOS)
@fuzz(300)
@given(data=st.data())
def test_configs_are_rejected_or_taken_exactly(algo, data, tmp_path_factory):
    """Many configs, no compiling: ConfigError (from building or make_train) or exactly what was asked."""
    cls = algo_module(algo).Config
    changes = data.draw(field_changes(cls, invalid_share=0.5, max_fields=4), label="changes")
    if data.draw(st.integers(0, 9), label="unknown key?") == 7:
        changes[data.draw(NAMES.filter(lambda n: n not in fields_of(cls)), label="unknown key")] = 1
    base = tiny_base(cls, changes.get("num_envs"), changes.get("num_steps"))
    route = data.draw(st.sampled_from(["build", "load_config", "command line"]), label="route")
    try:
        config = make_config(cls, base, changes, route, str(tmp_path_factory.getbasetemp()))
    except ConfigError as err:
        assert str(err)
        return
    assert_exactly_as_asked(config, changes)
    try:
        jaxrl.make_train(config)  # builds the env and checks the config against it; compiles nothing
    except ConfigError:
        pass


# ----------------------------------------------------------------------------- running accepted configs
def learning_iterations(config: Any) -> np.ndarray:
    """Whether each iteration may learn: False during a replay warm-up (``learning_starts``)."""
    spi = config.steps_per_iteration
    after = (np.arange(config.num_iterations) + 1) * spi
    return after >= getattr(config, "learning_starts", 0)


def assert_metrics_finite_or_nan_by_design(config: Any, metrics: dict[str, np.ndarray]) -> None:
    n = config.num_iterations
    learning = learning_iterations(config)
    due = np.zeros(n, bool) if not config.eval_every else (np.arange(n) + 1) % config.eval_every == 0
    for name, values in metrics.items():
        values = np.asarray(values, np.float64)
        assert values.shape == (n,), (name, values.shape)
        assert not np.isinf(values).any(), f"{name} is infinite: {values}"
        nan = np.isnan(values)
        if name in ("episode_return", "episode_length"):  # NaN exactly when no episode finished
            assert (nan == (metrics["episodes"] == 0)).all(), (name, values, metrics["episodes"])
        elif name.startswith("eval_"):  # NaN between evaluations (or when every episode was cut)
            assert nan[~due].all(), (name, values)
        else:  # NaN only while the learner waits for its replay buffer to fill
            assert not nan[learning].any(), f"{name} is NaN while learning: {values}"


def assert_state_finite(state: Any) -> None:
    """Every float in the train state is finite, the environments' own state aside."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(state.replace(env=state.env.replace(env_state=None))):
        if jax.numpy.issubdtype(leaf.dtype, jax.numpy.floating):  # (not the PRNG keys)
            assert np.isfinite(np.asarray(leaf)).all(), f"state{jax.tree_util.keystr(path)} is not finite"


WRONG_TYPES = st.sampled_from([None, "fast", [1], {"a": 1}, float("nan"), float("inf"), True, 2.5])
_PROGRAMS: dict[str, Any] = {}  # static part of a config -> its jitted train (traced values go in as hparams)


def compiled_train(config: Any) -> Any:
    """``jax.jit(make_train(config))``, shared by configs that differ only in traced values (as
    in a sweep), so more of them can run in the time budget."""
    static = repr({k: v for k, v in dataclasses.asdict(config).items() if k not in config.traced_names()})
    if static not in _PROGRAMS:
        _PROGRAMS[static] = jax.jit(jaxrl.make_train(config))
    return _PROGRAMS[static]


@st.composite
def runnable_changes(draw: st.DrawFn, cls: type) -> dict[str, Any]:
    """Up to 2 static and up to 4 traced fields of ``cls`` with valid values (occasionally one of
    a wrong type, which must be refused before compiling). ``total_steps`` is left to the base."""
    fields = {n: fh for n, fh in fields_of(cls).items() if n not in ("algo", "total_steps")}
    traced = sorted(n for n in fields if fields[n][0].metadata.get("traced"))
    static = sorted(n for n in fields if n not in traced)
    names = (draw(st.lists(st.sampled_from(static), max_size=2, unique=True), label="static")
             + draw(st.lists(st.sampled_from(traced), max_size=4, unique=True), label="traced"))
    changes = {name: draw(valid_values(name, *fields[name]), label=name) for name in names}
    if names and draw(st.integers(0, 9), label="wrong type?") == 7:
        changes[names[0]] = draw(WRONG_TYPES, label=names[0])
    return changes


@pytest.mark.timeout(600)
@pytest.mark.parametrize("algo", ALGOS)
@fuzz(5)  # each example compiles a program (~2-5 s): 5 per algorithm keeps the default run's time
@given(data=st.data())
def test_accepted_configs_run_with_finite_metrics(algo, data):
    """Fewer configs, compiled and run for 2 iterations. Huge but legal magnitudes (lr=1e30) are
    left to the test above: training with them diverges as asked, which is not a config error."""
    cls = algo_module(algo).Config
    changes = data.draw(runnable_changes(cls), label="changes")
    base = tiny_base(cls, changes.get("num_envs"), changes.get("num_steps"))
    try:
        config = build(cls, {**base, **changes})
    except ConfigError as err:
        event("rejected by build", str(err).split(",")[0][:40])
        return
    assert_exactly_as_asked(config, changes)
    try:
        jaxrl.make_train(config)
    except ConfigError as err:
        event("rejected by make_train", str(err)[:40])
        return
    event("ran")
    event("programs compiled", str(len(_PROGRAMS)))
    note(f"running {config}")
    out = jax.device_get(compiled_train(config)(jax.random.key(0), config.hparams()))
    assert_metrics_finite_or_nan_by_design(config, out.metrics)
    assert_state_finite(out.state)


# ----------------------------------------------------------------------------- the text parsers
STRUCTURED_TEXT = st.text(alphabet="lr_env.=,[]{}'\"-+e0123456789 :#&*!|>%@`?~\\\t", max_size=24)
ITEMS = st.lists(st.text(max_size=24) | STRUCTURED_TEXT | st.from_regex(r"[a-z_.]{1,8}=.{0,12}", fullmatch=True),
                 max_size=4)


@fuzz(400)
@given(items=ITEMS)
def test_override_parser_takes_any_text_to_a_dict_or_a_config_error(items):
    try:
        out = parse_overrides(items)
    except ConfigError as err:
        assert any(repr(item) in str(err) for item in items), str(err)  # quotes what was typed
        return
    assert isinstance(out, dict) and len(out) <= len(items)


@fuzz(400)
@given(items=ITEMS)
def test_grid_parser_takes_any_text_to_a_dict_or_a_config_error(items):
    try:
        grid = parse_grid(items)
    except ConfigError as err:
        assert any(repr(item) in str(err) for item in items), str(err)
        return
    assert len(grid) == len(items) and all(isinstance(v, list) and v for v in grid.values())
    for values in grid.values():
        assert not any(isinstance(v, float) and not math.isfinite(v) for v in values)


def dump(value: Any) -> str:
    """``value`` as YAML text on one line (what a user would type)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9)
    return text.removesuffix("\n").removesuffix("\n...").strip()


SCALARS = (st.integers(-(10**12), 10**12) | st.floats(allow_nan=False, allow_infinity=False) | st.booleans()
           | st.text(st.characters(codec="ascii", categories=["L", "N", "P", "S", "Zs"]), max_size=10))
YAML_VALUES = SCALARS | st.lists(SCALARS, max_size=3) | st.dictionaries(NAMES, SCALARS, max_size=2)


@fuzz(200)
@given(plain=st.dictionaries(NAMES, YAML_VALUES, max_size=4), inner=st.dictionaries(NAMES, YAML_VALUES, max_size=3))
def test_overrides_round_trip(plain, inner):
    plain.pop("env_kwargs", None)
    items = [f"{k}={dump(v)}" for k, v in plain.items()] + [f"env_kwargs.{k}={dump(v)}" for k, v in inner.items()]
    expected = {**plain, **({"env_kwargs": inner} if inner else {})}
    assert parse_overrides(items) == expected


@fuzz(200)
@given(key=NAMES, first=YAML_VALUES, second=YAML_VALUES, dotted=st.booleans())
def test_a_key_given_twice_is_named(key, first, second, dotted):
    name = f"env_kwargs.{key}" if dotted else key
    items = [f"{name}={dump(first)}", f"{name}={dump(second)}"]
    with pytest.raises(ConfigError, match="given twice") as err:
        parse_overrides(items)
    assert repr(name) in str(err.value) and repr(items[0]) in str(err.value) and repr(items[1]) in str(err.value)
    with pytest.raises(ConfigError, match="given twice"):
        parse_grid([f"{name}=1,2", f"{name}=3"])


NUMBERS = st.integers(-(10**9), 10**9) | st.floats(allow_nan=False, allow_infinity=False)
GRID_VALUES = (st.lists(NUMBERS, min_size=1, max_size=4)
               | st.lists(st.lists(st.integers(1, 512), min_size=1, max_size=3), min_size=1, max_size=3)
               | st.lists(st.sampled_from(["CartPole-v1", "tanh", "relu", "brax/ant"]), min_size=1, max_size=3))


def grid_text(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return repr(value) if isinstance(value, float) else str(value)


@fuzz(200)
@given(grid=st.dictionaries(NAMES | NAMES.map("env.{}".format), GRID_VALUES, max_size=4))
def test_grid_round_trip(grid):
    items = [f"{k}=" + ",".join(grid_text(v) for v in values) for k, values in grid.items()]
    assert parse_grid(items) == grid


# ----------------------------------------------------------------------------- sweep input checks
class _WouldCompile(Exception):
    """Raised in place of compiling: the sweep accepted its input."""


SWEEP_VALUES = (st.integers(-(2**40), 2**40) | st.floats(allow_nan=True, allow_infinity=True)
                | st.sampled_from([10**400, 1e-50, 3.4e38, 1e39, float("inf"), float("nan"), 2.5, 0, True, None,
                                   "fast", [1], (64, 64)]))


@fuzz(300)
@given(data=st.data())
def test_sweep_checks_every_value_before_compiling(data):
    """Any grid: a ConfigError, or every traced/env value reaches the program unchanged."""
    from unittest import mock

    from jaxrl import sweeps

    config = jaxrl.load_config("ppo_cartpole", total_steps=512)
    plain = sorted(config.traced_names()) + ["env.gravity", "env.max_steps_in_episode"]
    if data.draw(st.booleans(), label="odd grid?"):  # any keys, any values
        names = st.sampled_from(plain + ["num_envs", "hidden", "env.nope", "nope"]) | NAMES
        keys = data.draw(st.lists(names, min_size=1, max_size=2, unique=True), label="keys")
        grid = {k: data.draw(st.lists(SWEEP_VALUES, min_size=1, max_size=2), label=k) for k in keys}
    else:  # keys that can share a program, with values in range
        keys = data.draw(st.lists(st.sampled_from(plain), min_size=1, max_size=3, unique=True), label="keys")
        grid = {k: data.draw(st.lists(st.integers(1, 400) if k == "env.max_steps_in_episode" else f32(1e-3, 1.0),
                                      min_size=1, max_size=3), label=k) for k in keys}
    separate = data.draw(st.booleans(), label="separate")
    seen = []

    def fake_run(group_config, hp, *args):
        seen.append(hp)
        raise _WouldCompile

    with mock.patch.object(sweeps, "_run", fake_run):
        try:
            sweeps.sweep(config, grid=grid, separate=separate)
        except ConfigError as err:
            assert str(err)
            return
        except _WouldCompile:
            pass
    (hp,) = seen  # the first program's traced values: all settings' when no static key is swept
    event("reached compiling")
    settings = sweeps.expand(grid)
    for key, values in hp.items():
        assert np.isfinite(values).all(), (key, values)
        if set(hp) == set(grid):
            asked = [s[key] for s in settings]
            assert all(float(v) == float(np.asarray(a).astype(values.dtype)) and (a == 0) == (v == 0)
                       for v, a in zip(values, asked)), (key, values, asked)
