"""`envs.check` and environments made from an import path (`make("package.module:factory")`).

The checker must find each kind of contract violation, report all of them in one message, and
pass every bundled env family. Import paths must import from the current directory, explain
every way they can go wrong with a ValueError (a ConfigError in jaxrl), and check an env once
per factory and arguments.
"""

from __future__ import annotations

import sys
import textwrap
import uuid

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct
from jax.experimental import io_callback

import jaxrl
from jaxrl import envs
from jaxrl.envs import Box, Discrete, EnvCheckError, Environment, check, registry

# --------------------------------------------------------------------------- a correct env and broken variants


@struct.dataclass
class WalkState:
    x: jax.Array
    t: jax.Array


class Walk(Environment):
    """A correct env: obs = x in R^2, random start; terminates after 3 steps."""

    def reset(self, key, params):
        x = jax.random.uniform(key, (2,))
        return x, WalkState(x, jnp.int32(0))

    def step(self, key, state, action, params):
        x = state.x + 0.1 * action + 0.01 * jax.random.normal(key, (2,))
        t = state.t + 1
        return x, WalkState(x, t), jnp.sum(x), t >= 3, jnp.bool_(False), {"t": t}

    def observation_space(self, params):
        return Box(-jnp.inf, jnp.inf, (2,))

    def action_space(self, params):
        return Discrete(2)


def variant(step=None, reset=None, **methods):
    """A Walk subclass with `step`/`reset` post-processing what Walk returns, or other methods."""
    attrs = dict(methods)
    if step is not None:
        attrs["step"] = lambda self, key, state, action, params: step(self, Walk.step(self, key, state, action,
                                                                                     params))
    if reset is not None:
        attrs["reset"] = lambda self, key, params: reset(self, Walk.reset(self, key, params))
    return type("Variant", (Walk,), attrs)()


class PythonBranch(Walk):
    def step(self, key, state, action, params):
        if state.t > 2:  # a Python branch on a traced value: not jittable
            return Walk.step(self, key, state, action, params)
        return Walk.step(self, key, state, action, params)


class TraceCounter(Walk):
    """Impure: a counter on self, updated while tracing, is baked into each compiled program."""

    calls = 0

    def step(self, key, state, action, params):
        self.calls += 1
        obs, state, reward, terminated, truncated, info = Walk.step(self, key, state, action, params)
        return obs, state, reward + self.calls, terminated, truncated, info


class HostRandom(Walk):
    """Impure at run time: the reward comes from NumPy's global generator."""

    def step(self, key, state, action, params):
        obs, state, _, terminated, truncated, info = Walk.step(self, key, state, action, params)
        reward = jax.pure_callback(lambda: np.float32(np.random.rand()), jax.ShapeDtypeStruct((), jnp.float32),
                                   vmap_method="sequential")
        return obs, state, reward, terminated, truncated, info


class OrderedCallback(Walk):
    """Jittable but not vmappable."""

    def step(self, key, state, action, params):
        t = io_callback(lambda t: np.int32(t), jax.ShapeDtypeStruct((), jnp.int32), state.t, ordered=True)
        return Walk.step(self, key, WalkState(state.x, t), action, params)


@struct.dataclass
class ModeParams:
    mode: str = "easy"


BROKEN = {  # name: (env, text the violation message must contain)
    "not an Environment": (object(), "is not a jaxrl.envs.Environment"),
    "five values": (variant(step=lambda self, out: (out[0], out[1], out[2], out[3] | out[4], out[5])),
                    "step returned 5 values; it must return six"),
    "reset three values": (variant(reset=lambda self, out: (*out, {})), "reset returned 3 values"),
    "python branch": (PythonBranch(), "fails under jax.jit: TracerBoolConversionError"),
    "trace-time state": (TraceCounter(), "step under jax.vmap differs from step of each env alone: reward"),
    "run-time impurity": (HostRandom(), "step is not pure: called twice with the same key"),
    "not vmappable": (OrderedCallback(), "step under jax.vmap fails"),
    "both flags": (variant(step=lambda self, out: (*out[:3], jnp.bool_(True), jnp.bool_(True), out[5])),
                   "terminated and truncated both true"),
    "nan obs": (variant(reset=lambda self, out: (out[0] * jnp.nan, out[1])), "reset returned a non-finite obs"),
    "str params": (variant(default_params=ModeParams()), "params.mode is a str"),
    "foreign space": (variant(action_space=lambda self, params: "Discrete(2)"), "action_space(params) returned"),
    "obs space dtype": (variant(observation_space=lambda self, params: Box(0, 1, (2,), jnp.int32)),
                        "observation_space has dtype int32"),
    "float actions": (variant(action_space=lambda self, params: Box(-1.0, 1.0, (3,))),
                      "with the state from reset and an action from Box"),
}


def test_check_passes_a_correct_env():
    assert check(Walk()) is None
    assert check(Walk(), Walk().default_params) is None


@pytest.mark.parametrize("name", list(BROKEN))
def test_check_finds_each_violation(name):
    env, expected = BROKEN[name]
    with pytest.raises(EnvCheckError) as err:
        check(env)
    assert expected in str(err.value)
    assert isinstance(err.value, ValueError)  # so jaxrl turns it into a ConfigError


def test_check_reports_every_violation_in_one_message():
    def break_everything(self, out):
        obs, state, reward, terminated, truncated, info = out
        state = WalkState(state.x[:1], state.t)  # the state changes shape
        return obs[:1].astype(jnp.int32), state, reward[None], terminated.astype(jnp.int32), truncated + 0.0, [info]

    with pytest.raises(EnvCheckError) as err:
        check(variant(step=break_everything))
    expected = [
        "step's obs has shape (1,), but observation_space has shape (2,)",
        "step's obs has dtype int32; observations must be float32",
        "step's reward has shape (1,); it must be a float32 scalar",
        "step's terminated has dtype int32; it must be a bool scalar",
        "step's truncated has dtype float32; it must be a bool scalar",
        "step's info is a list; it must be a dict",
        "step returns a state unlike the one reset returns (state.x is float32[1] after step, float32[2] after "
        "reset)",
    ]
    assert len(err.value.violations) == len(expected), err.value
    for text in expected:
        assert text in str(err.value)
    assert str(err.value).startswith("environment 'Variant' fails jaxrl.envs.check (7 problems):")


@pytest.mark.parametrize("name, kwargs", [
    ("CartPole-v1", {}),
    ("Breakout-MinAtar", {}),
    ("probe/discount", {}),
    ("probe/obs-action-continuous", {"max_steps": 3, "constant_obs": True}),
])
def test_check_passes_bundled_envs(name, kwargs):
    env, params = envs.make(name, **kwargs)
    check(env, params)
    if name.startswith("probe/"):  # the training stack too (its info has arrays)
        check(envs.wrap_for_training(env), params)


# --------------------------------------------------------------------------- import paths

MODULE = '''
import jax.numpy as jnp
from jaxrl import envs


class Coin(envs.Environment):
    def __init__(self, bias=0.5):
        self.bias = bias

    def reset(self, key, params):
        return jnp.zeros((1,)), jnp.int32(0)

    def step(self, key, state, action, params):
        obs = jnp.ones((1,)) * self.bias
        return obs, state + 1, jnp.float32(1.0), state + 1 >= 2, jnp.bool_(False), {}

    def observation_space(self, params):
        return envs.Box(0.0, 1.0, (1,))

    def action_space(self, params):
        return envs.Discrete(2)


class Broken(Coin):
    def step(self, key, state, action, params):
        obs, state, reward, terminated, truncated, info = super().step(key, state, action, params)
        return obs, state, reward[None], terminated, truncated.astype(jnp.int32), info


def make_coin(bias: float = 0.5):
    return Coin(bias)


def make_broken():
    return Broken()


def make_nothing():
    return "not an env"


instance = Coin()
NUMBER = 3


class Nested:
    make = staticmethod(make_coin)
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """The name of a fresh module in a temporary current directory (not otherwise on sys.path)."""
    name = f"user_envs_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    yield name
    sys.modules.pop(name, None)


def test_make_from_import_path(user_module, tmp_path):
    env, params = envs.make(f"{user_module}:make_coin", bias=0.25)
    assert type(env).__name__ == "Coin" and env.bias == 0.25 and params == envs.EmptyParams()
    assert str(tmp_path) not in sys.path  # the current directory was searched for this import only
    assert envs.make(f"{user_module}:Coin")[0].bias == 0.5  # a class is a factory too
    assert envs.make(f"{user_module}:Nested.make", bias=0.75)[0].bias == 0.75
    assert f"{user_module}:make_coin" not in envs.registered()


def test_import_path_checks_once_per_factory_and_arguments(user_module, monkeypatch):
    calls = []
    monkeypatch.setattr(registry, "check", lambda env, params: calls.append(env.bias))
    for _ in range(3):
        envs.make(f"{user_module}:make_coin", bias=0.125)
    envs.make(f"{user_module}:make_coin", bias=0.375)
    assert calls == [0.125, 0.375]


@pytest.mark.parametrize("suffix, expected", [
    (":make_broken", r"(?s)fails jaxrl.envs.check \(2 problems\).*reward has shape \(1,\).*truncated has dtype int32"),
    (":make_coinn", r"has no attribute 'make_coinn'. Did you mean \['make_coin'"),
    (":make_nothing", r"returned str, not a jaxrl.envs.Environment"),
    (":instance", r"is an Environment instance; point at a factory"),
    (":NUMBER", r"is a int, not a factory"),
    (".sub:make", r"no module named '.*\.sub'|importing '.*\.sub' failed"),
])
def test_import_path_errors(user_module, suffix, expected):
    with pytest.raises(ValueError, match=expected):
        envs.make(user_module + suffix)


def test_import_path_errors_without_a_module(user_module, tmp_path):
    with pytest.raises(ValueError, match=r"no module named 'missing_envs' in the current directory"):
        envs.make("missing_envs:make")
    with pytest.raises(ValueError, match=r"neither a registered name nor an import path"):
        envs.make("my-envs:make")
    with pytest.raises(ValueError, match=r"cannot be called with env_kwargs \{'size': 3\}.*unexpected keyword"):
        envs.make(f"{user_module}:make_coin", size=3)
    with pytest.raises(ValueError, match=r"import path, 'package.module:factory'"):
        envs.make("CartPole-v9")  # unknown names mention the import-path form
    (tmp_path / "bad_syntax_envs.py").write_text("def make(:\n")
    with pytest.raises(ValueError, match=r"importing 'bad_syntax_envs' failed: SyntaxError"):
        envs.make("bad_syntax_envs:make")
    sys.modules.pop("bad_syntax_envs", None)


def test_config_with_import_path_trains_or_fails_before_compiling(user_module):
    config = jaxrl.load_config("ppo_cartpole", env=f"{user_module}:make_coin", total_steps=512, num_envs=4,
                               num_steps=16, hidden=[8])
    out = jax.jit(jaxrl.make_train(config))(jax.random.key(0))
    assert np.isfinite(out.metrics["episode_return"]).all()
    with pytest.raises(jaxrl.ConfigError, match="reward has shape"):
        jaxrl.make_train(config.replace(env=f"{user_module}:make_broken"))
