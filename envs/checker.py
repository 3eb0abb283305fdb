"""`check(env, params)`: does an environment keep the contract the training loop relies on?

The loop vmaps `reset` and `step` over thousands of envs inside one compiled program, so an env
that breaks the contract fails there with an error deep in a traced program, or worse, trains
on wrong data without an error (an int reward, a `done` where `terminated` and `truncated`
belong, a step that reads Python state baked in at trace time). `check` runs the env for a few
steps, outside any training program, and reports every violation it finds in one message:

- `default_params` is a pytree of numbers/arrays (it is an input of compiled programs);
  `observation_space`/`action_space` are jaxrl spaces (`Box`, and `Discrete` or `Box`);
- `reset(key, params)` traces under `jax.jit` and returns two values `(obs, state)`;
- `step(key, state, action, params)`, on a state from `reset` and an action sampled from the
  action space, traces under `jax.jit` and returns exactly six values
  `(obs, state, reward, terminated, truncated, info)`;
- observations are float32 with the observation space's shape (from `reset` and `step`), and
  finite; `reward` is a finite float32 scalar; `terminated`/`truncated` are bool scalars and
  never both true; `info` is a dict; the state `step` returns has the structure, shapes and
  dtypes of the one `reset` returns (the loop selects between them at auto-resets);
- purity: the compiled `reset`/`step` give bit-identical results for the same inputs, and
- vmappability: `jax.vmap`-ed `reset`/`step` give what a loop over the envs gives. The two are
  separately traced programs, so this also catches a step that depends on Python state that
  changes between traces (an attribute of `self` updated in `step`, NumPy randomness).

It costs one compilation each of `reset`, `step` and their vmapped versions, and a few steps.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .core import Environment, Params
from .spaces import Box, Discrete, Space

# Tolerance of the vmap-versus-loop comparison: the two are differently compiled programs, and
# XLA may order float operations differently in each (a bug differs by far more).
_RTOL, _ATOL = 1e-4, 1e-5
_STEP_VALUES = "(obs, state, reward, terminated, truncated, info)"


class EnvCheckError(ValueError):
    """An environment breaks the contract; `violations` lists every problem found."""

    def __init__(self, subject: str, violations: list[str]):
        self.subject = subject
        self.violations = list(violations)
        count = f"{len(self.violations)} problem" + ("s" if len(self.violations) != 1 else "")
        lines = "\n".join(f"  - {v}" for v in self.violations)
        super().__init__(
            f"environment {subject} fails jaxrl.envs.check ({count}):\n{lines}\n"
            "(the contract: jaxrl.envs.Environment, and 'Your own environments' in the README)"
        )


class _Violations:
    """Collects violation messages, one per kind (the first found), in the order found."""

    def __init__(self) -> None:
        self.messages: dict[str, str] = {}

    def add(self, kind: str, message: str) -> None:
        self.messages.setdefault(kind, message)

    def __bool__(self) -> bool:
        return bool(self.messages)


def check(env: Environment, params: Params | None = None, *, num_envs: int = 3, num_steps: int = 5,
          seed: int = 0) -> None:
    """Checks that `env` keeps the environment contract; raises `EnvCheckError` listing every
    violation found (see the module docstring for what is checked).

    `params` defaults to `env.default_params`. The env is stepped `num_steps` times in a batch
    of `num_envs` with random actions (envs whose episode ended are reset).
    """
    subject = repr(getattr(env, "name", type(env).__name__))
    if not isinstance(env, Environment):
        raise EnvCheckError(subject, [f"{type(env).__name__} is not a jaxrl.envs.Environment (subclass it)"])
    found = _Violations()
    try:
        _check(env, params, num_envs, num_steps, seed, found)
    except _Stop:
        pass
    if found:
        raise EnvCheckError(subject, list(found.messages.values()))


class _Stop(Exception):
    """Raised inside `_check` when a violation leaves nothing further to check."""


def _check(env: Environment, params: Params | None, num_envs: int, num_steps: int, seed: int,
           found: _Violations) -> None:
    if params is None:
        try:
            params = env.default_params
        except Exception as err:  # noqa: BLE001 - user code: report whatever it raises
            found.add("params", f"default_params raises {describe_error(err)}")
            raise _Stop from None
    _check_params(params, found)
    obs_space = _space(env.observation_space, params, "observation_space", (Space,), found)
    action_space = _space(env.action_space, params, "action_space", (Discrete, Box), found)
    if found:
        raise _Stop
    if obs_space.dtype != jnp.float32:
        found.add("obs_space_dtype", f"observation_space has dtype {obs_space.dtype}; observations must be float32")

    # Tracing (no compilation): the structure of what reset and step return.
    key = jax.random.key(seed)
    reset_shape = _trace(env.reset, (key, params), "reset(key, params)", found)
    if not isinstance(reset_shape, (tuple, list)) or len(reset_shape) != 2:
        found.add("reset_values", f"reset returned {_count(reset_shape)}; it must return two: (obs, state)")
        raise _Stop
    obs_shape, state_shape = reset_shape
    _check_obs("reset", obs_shape, obs_space, found)
    action_shape = jax.eval_shape(action_space.sample, key)
    step_shape = _trace(env.step, (key, state_shape, action_shape, params),
                        f"step(key, state, action, params) with the state from reset and an action from "
                        f"{action_space}", found)
    if not isinstance(step_shape, (tuple, list)) or len(step_shape) != 6:
        hint = " (a gym-style `done` must be split into `terminated` and `truncated`)" if _count(
            step_shape) == "5 values" else ""
        found.add("step_values", f"step returned {_count(step_shape)}; it must return six: {_STEP_VALUES}{hint}")
        raise _Stop
    obs, state, reward, terminated, truncated, info = step_shape
    _check_obs("step", obs, obs_space, found)
    _check_scalar("reward", reward, jnp.float32, "float32", found)
    _check_scalar("terminated", terminated, jnp.bool_, "bool", found)
    _check_scalar("truncated", truncated, jnp.bool_, "bool", found)
    if not isinstance(info, dict):
        found.add("info", f"step's info is a {type(info).__name__}; it must be a dict of arrays (may be empty)")
    state_diff = _structure_difference(state_shape, state)
    if state_diff:
        found.add("state", f"step returns a state unlike the one reset returns ({state_diff}); both must have "
                           "the same structure, shapes and dtypes")
    if found:  # running would only repeat these problems, or fail on them
        raise _Stop
    _run(env, params, action_space, num_envs, num_steps, key, found)


def _run(env: Environment, params: Params, action_space: Space, num_envs: int, num_steps: int,
         key: jax.Array, found: _Violations) -> None:
    """Runs the compiled reset/step alone and vmapped; checks values, purity and vmap."""
    reset_one, step_one = jax.jit(env.reset), jax.jit(env.step)
    reset_batch = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))
    step_batch = jax.jit(jax.vmap(env.step, in_axes=(0, 0, 0, None)))
    sample_batch = jax.jit(jax.vmap(action_space.sample))

    key, k_reset = jax.random.split(key)
    reset_keys = jax.random.split(k_reset, num_envs)
    obs, state = _call(reset_batch, (reset_keys, params), "reset under jax.vmap", found)
    _check_finite("reset", "obs", obs, found)
    alone = [_call(reset_one, (k, params), "reset", found) for k in reset_keys]
    pure = _compare_bitwise("reset", alone[0], reset_one(reset_keys[0], params), found)
    pure = pure and _compare_bitwise("reset", (obs, state), reset_batch(reset_keys, params), found)
    if pure:  # an impure reset differs from itself anyway
        for i, one in enumerate(alone):
            _compare_alone_and_batched("reset", one, _index((obs, state), i), found)

    for _ in range(num_steps):
        key, k_act, k_step, k_reset = jax.random.split(key, 4)
        actions = sample_batch(jax.random.split(k_act, num_envs))
        step_keys = jax.random.split(k_step, num_envs)
        inputs = (step_keys, state, actions, params)
        out = _call(step_batch, inputs, "step under jax.vmap", found)
        inputs_alone = [(step_keys[i], _index(state, i), actions[i], params) for i in range(num_envs)]
        alone = [_call(step_one, args, "step", found) for args in inputs_alone]
        pure = _compare_bitwise("step", alone[0], step_one(*inputs_alone[0]), found)
        pure = pure and _compare_bitwise("step", out, step_batch(*inputs), found)
        if pure:
            for i, one in enumerate(alone):
                _compare_alone_and_batched("step", one, _index(out, i), found)
        next_obs, next_state, reward, terminated, truncated, _ = out
        _check_finite("step", "obs", next_obs, found)
        _check_finite("step", "reward", reward, found)
        both = np.asarray(terminated & truncated)
        if both.any():
            found.add("both_done", f"step returned terminated and truncated both true (in {int(both.sum())} of "
                                   f"{num_envs} envs); a step that terminates is not also truncated")
        # Continue ended episodes from a fresh reset: stepping past the end is undefined.
        done = np.asarray(terminated | truncated)
        reset_obs, reset_state = reset_batch(jax.random.split(k_reset, num_envs), params)
        obs, state = jax.tree.map(lambda r, x: jnp.where(done.reshape(-1, *[1] * (x.ndim - 1)), r, x),
                                  (reset_obs, reset_state), (next_obs, next_state))


# --------------------------------------------------------------------------- pieces


def _check_params(params: Params, found: _Violations) -> None:
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if not isinstance(leaf, (int, float, bool, complex, np.ndarray, np.generic, jax.Array)):
            found.add("params", f"params{jax.tree_util.keystr(path)} is a {type(leaf).__name__}: params must be "
                                "a pytree of numbers and arrays (an input of compiled programs; static "
                                "settings belong on the env object)")
            return


def _space(method: Callable[[Params], Any], params: Params, name: str, kinds: tuple[type, ...],
           found: _Violations) -> Any:
    try:
        space = method(params)
    except Exception as err:  # noqa: BLE001
        found.add(name, f"{name}(params) raises {describe_error(err)}")
        return None
    if not isinstance(space, kinds):
        allowed = " or ".join(f"jaxrl.envs.{k.__name__}" for k in kinds)
        found.add(name, f"{name}(params) returned {space!r}; it must be a {allowed}")
    return space


def _trace(fn: Callable[..., Any], args: tuple, what: str, found: _Violations) -> Any:
    """`fn`'s output shapes and dtypes from tracing it as `jax.jit` does; stops on failure."""
    try:
        return jax.eval_shape(fn, *args)
    except Exception as err:  # noqa: BLE001
        found.add(what, f"{what} fails under jax.jit: {describe_error(err)}")
        raise _Stop from None


def _call(fn: Callable[..., Any], args: tuple, what: str, found: _Violations) -> Any:
    try:
        return jax.block_until_ready(fn(*args))
    except Exception as err:  # noqa: BLE001
        found.add(what, f"{what} fails when compiled and run: {describe_error(err)}")
        raise _Stop from None


def _check_obs(where: str, obs: Any, space: Space, found: _Violations) -> None:
    shape, dtype = getattr(obs, "shape", None), getattr(obs, "dtype", None)
    if shape is None:
        found.add(f"{where}_obs", f"{where}'s obs is a {type(obs).__name__}; it must be an array")
        return
    if tuple(shape) != tuple(space.shape):
        found.add(f"{where}_obs_shape", f"{where}'s obs has shape {tuple(shape)}, but observation_space has "
                                        f"shape {tuple(space.shape)}")
    if dtype != jnp.float32:
        found.add(f"{where}_obs_dtype", f"{where}'s obs has dtype {dtype}; observations must be float32")


def _check_scalar(name: str, value: Any, dtype: Any, dtype_name: str, found: _Violations) -> None:
    shape, actual = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is None:
        found.add(name, f"step's {name} is a {type(value).__name__}; it must be a {dtype_name} scalar array")
        return
    problems = []
    if tuple(shape) != ():
        problems.append(f"shape {tuple(shape)}")
    if actual != dtype:
        problems.append(f"dtype {actual}")
    if problems:
        found.add(name, f"step's {name} has {' and '.join(problems)}; it must be a {dtype_name} scalar "
                        f"(shape ())")


def _check_finite(where: str, name: str, value: jax.Array, found: _Violations) -> None:
    if not bool(jnp.all(jnp.isfinite(value))):
        found.add(f"{where}_{name}_finite", f"{where} returned a non-finite {name} (NaN or inf)")


def _structure_difference(a: Any, b: Any) -> str:
    """'' if pytrees `a` and `b` have the same structure, leaf shapes and dtypes, else the first
    difference."""
    if jax.tree.structure(a) != jax.tree.structure(b):
        return f"structure {jax.tree.structure(b)} instead of {jax.tree.structure(a)}"
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True):
        if (x.shape, x.dtype) != (y.shape, y.dtype):
            return (f"state{jax.tree_util.keystr(path)} is {y.dtype}{list(y.shape)} after step, "
                    f"{x.dtype}{list(x.shape)} after reset")
    return ""


def _index(tree: Any, i: int) -> Any:
    return jax.tree.map(lambda x: x[i], tree)


def _host(x: Any) -> np.ndarray:
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x)


def _compare_bitwise(what: str, first: Any, second: Any, found: _Violations) -> bool:
    """Whether two results of the same call are bit-identical (else reports `what` impure)."""
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(first), jax.tree.leaves(second), strict=True):
        if _host(a).tobytes() != _host(b).tobytes():
            found.add(f"{what}_pure", f"{what} is not pure: called twice with the same key, state, action and "
                                      f"params it returned different {_output_name(what, path)}")
            return False
    return True


def _compare_alone_and_batched(what: str, alone: Any, batched: Any, found: _Violations) -> None:
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(alone), jax.tree.leaves(batched), strict=True):
        a, b = _host(a), _host(b)
        if np.issubdtype(a.dtype, np.inexact):
            same = np.allclose(a, b, rtol=_RTOL, atol=_ATOL, equal_nan=True)
        else:
            same = np.array_equal(a, b)
        if not same:
            found.add(f"{what}_vmap", (
                f"{what} under jax.vmap differs from {what} of each env alone: {_output_name(what, path)} "
                f"{_preview(b)} batched vs {_preview(a)} alone. It must not depend on Python state that "
                "changes between traces (attributes of self updated in reset/step, globals, NumPy "
                "randomness), and must batch under jax.vmap"))
            return


def _output_name(what: str, path: tuple) -> str:
    names = ("obs", "state") if what.startswith("reset") else ("obs", "state", "reward", "terminated",
                                                               "truncated", "info")
    if path and isinstance(path[0], jax.tree_util.SequenceKey) and path[0].idx < len(names):
        return names[path[0].idx] + jax.tree_util.keystr(path[1:])
    return "output" + jax.tree_util.keystr(path)


def _preview(x: np.ndarray) -> str:
    if x.ndim == 0:
        return str(x)
    flat = np.ravel(x)
    text = np.array2string(flat[:4], precision=6)
    return text[:-1] + ", ...]" if flat.size > 4 else text


def _count(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return f"{len(value)} value" + ("s" if len(value) != 1 else "")
    return "a single array" if hasattr(value, "shape") else f"a single {type(value).__name__}"


def describe_error(err: BaseException) -> str:
    """`Type: message` (its first lines) and where in the env's own code it was raised."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    message = " ".join(lines[:2])
    if len(message) > 400:
        message = message[:400] + " ..."
    text = f"{type(err).__name__}: {message}" if message else type(err).__name__
    location = _user_frame(err)
    return f"{text} (at {location})" if location else text


def _user_frame(err: BaseException) -> str:
    """The innermost traceback frame outside JAX, NumPy and this package, as `file:line`."""
    skip = [os.path.dirname(m.__file__) for m in (jax, np) if getattr(m, "__file__", None)]
    skip.append(os.path.dirname(__file__))
    try:
        import jaxlib

        skip.append(os.path.dirname(jaxlib.__file__))
    except ImportError:  # pragma: no cover
        pass
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if not any(f.filename.startswith(s + os.sep) for s in skip)]
    if not frames:
        return ""
    frame = frames[-1]
    return f"{os.path.basename(frame.filename)}:{frame.lineno}"


__all__ = ["EnvCheckError", "check", "describe_error"]
