"""Name -> environment registry: `make`, `registered`, `register`.

Names: every gymnax id (`CartPole-v1`, `Breakout-MinAtar`, `MemoryChain-bsuite`, ...),
`brax/<name>` for brax envs, `probe/<kind>[-continuous]`, and partially observed variants
(`CartPole-v1-masked`: velocities hidden; any env takes `obs_mask=[...]`). `make` returns the
adapted env with its time limit and action clipping but without `AutoReset`/`EpisodeStats`:
the training loop adds those with `wrap_for_training`. Factories import gymnax/brax only when
called, so importing this is cheap.

`make` also takes an import path `package.module:factory` (the form a config's `env` takes for
an environment of one's own): the module is imported (the current directory first, as
`python -m` does, since console scripts like `jaxrl` do not put it on `sys.path`), `factory` is
called with the keyword arguments and the env it returns is checked with `envs.check`, once per
factory and arguments.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from .brax_env import BRAX_ENVS, make_brax
from .checker import EnvCheckError, check, describe_error
from .core import Environment, Params
from .gymnax_env import GYMNAX_ENVS, make_gymnax
from .probes import PROBE_OPTIONS, make_probe, probe_names
from .spaces import Box
from .wrappers import ClipAction, MaskObservation, TimeLimit

Factory = Callable[..., Environment]

_REGISTRY: dict[str, Factory] = {}
# `package.module:factory`, each part dotted Python identifiers.
_IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
# (factory, keyword arguments) already made from an import path and checked.
_CHECKED: set[tuple[Any, str]] = set()


def register(name: str, factory: Factory, *, overwrite: bool = False) -> None:
    """Registers `factory(**kwargs) -> Environment` under `name` for `make`.

    Raises `ValueError` if `name` is taken, unless `overwrite=True`.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"Environment name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise TypeError(f"Factory for {name!r} must be callable, got {factory!r}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"{name!r} is already registered (pass overwrite=True to replace it)")
    _REGISTRY[name] = factory


def registered() -> list[str]:
    """All registered environment names, in registration order."""
    return list(_REGISTRY)


def make(name: str, **kwargs: Any) -> tuple[Environment, Params]:
    """Builds environment `name` and returns it with its default params.

    `name` is a registered name or an import path `package.module:factory` (see the module
    docstring). Keyword arguments go to the env's factory: for gymnax envs, `EnvParams` fields
    or constructor arguments; for brax envs `backend=`, `episode_length=` (default 1000, `None`
    for no limit) and arguments of `brax.envs.get_environment`; for probes `max_steps=` and
    `constant_obs=`. Every env also takes `obs_mask=[i, j, ...]`: only those entries of its
    observations are kept (`MaskObservation`, a partially observed variant). Bad names, paths
    and arguments raise `ValueError`; an env from an import path that fails `envs.check`
    raises `EnvCheckError` (a `ValueError`) listing the problems.
    """
    if not isinstance(name, str):
        raise ValueError(f"Environment name must be a string, got {name!r}")
    obs_mask = kwargs.pop("obs_mask", None)
    if name in _REGISTRY:
        env = _REGISTRY[name](**kwargs)
        if not isinstance(env, Environment):
            raise TypeError(f"Factory for {name!r} returned {type(env).__name__}, not Environment")
    elif ":" in name:
        env, _ = _make_from_import_path(name, kwargs)
    else:
        _unknown(name)
    if obs_mask is not None:
        env = MaskObservation(env, obs_mask)
    return env, env.default_params


def _unknown(name: str) -> None:
    close = difflib.get_close_matches(name, _REGISTRY, n=5, cutoff=0.5)
    hint = f" Did you mean {close}?" if close else " See jaxrl.envs.registered()."
    raise ValueError(f"Unknown environment {name!r}.{hint} An environment of your own is named by "
                     "its import path, 'package.module:factory'.")


def _make_from_import_path(path: str, kwargs: dict[str, Any]) -> tuple[Environment, Params]:
    """`make` for `package.module:factory`: import, call, check (once per factory and kwargs)."""
    if not _IMPORT_PATH.fullmatch(path):
        raise ValueError(f"Environment {path!r} is neither a registered name nor an import path of the form "
                         "'package.module:factory' (dotted Python names, e.g. 'my_envs:make_corridor')")
    module_name, attribute = path.split(":")
    module = _import_module(module_name, path)
    factory: Any = module
    for part in attribute.split("."):
        if not hasattr(factory, part):
            names = [n for n in dir(factory) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=5, cutoff=0.5)
            hint = f" Did you mean {close}?" if close else ""
            raise ValueError(f"Environment {path!r}: {getattr(factory, '__name__', module_name)!r} "
                             f"({getattr(module, '__file__', None)}) has no attribute {part!r}.{hint}")
        factory = getattr(factory, part)
    if isinstance(factory, Environment):
        raise ValueError(f"Environment {path!r} is an Environment instance; point at a factory instead (a function "
                         "or class that returns the environment, called with env_kwargs)")
    if not callable(factory):
        raise ValueError(f"Environment {path!r} is a {type(factory).__name__}, not a factory (a function or class "
                         "that returns the environment)")
    _check_arguments(factory, path, kwargs)
    env = factory(**kwargs)
    if not isinstance(env, Environment):
        raise ValueError(f"Environment {path!r} returned {type(env).__name__}, not a jaxrl.envs.Environment "
                         "(subclass it; see 'Your own environments' in the README)")
    params = env.default_params
    checked = (factory, repr(sorted(kwargs.items())))
    if checked not in _CHECKED:
        try:
            check(env, params)
        except EnvCheckError as err:
            raise EnvCheckError(f"{path!r} ({env.name})", err.violations) from None
        _CHECKED.add(checked)
    return env, params


def _import_module(module_name: str, path: str) -> Any:
    """Imports `module_name`, searching the current directory first (only for this import)."""
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path  # "" stands for the current directory
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and (module_name == err.name or module_name.startswith(err.name + ".")):
            top = module_name.split(".")[0]
            raise ValueError(f"Environment {path!r}: no module named {err.name!r} in the current directory ({cwd}) "
                             f"or on sys.path: run from the folder that holds {top}.py (or the package {top}/), "
                             "or add that folder to PYTHONPATH") from None
        raise ValueError(f"Environment {path!r}: importing {module_name!r} failed: {describe_error(err)}") from err
    except Exception as err:  # noqa: BLE001 - the user's module: report whatever it raises
        raise ValueError(f"Environment {path!r}: importing {module_name!r} failed: {describe_error(err)}") from err
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def _check_arguments(factory: Callable[..., Any], path: str, kwargs: dict[str, Any]) -> None:
    """Raises ValueError if `factory` cannot take `kwargs` (before calling it)."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # no signature to check (some builtins): let the call decide
        return
    try:
        signature.bind(**kwargs)
    except TypeError as err:
        raise ValueError(f"Environment {path!r} cannot be called with env_kwargs {kwargs}: {err} "
                         f"(its signature: {signature})") from None


def _clip_if_continuous(env: Environment) -> Environment:
    is_box = isinstance(env.action_space(env.default_params), Box)
    return ClipAction(env) if is_box else env


def _gymnax_factory(env_id: str, **kwargs: Any) -> Environment:
    return _clip_if_continuous(make_gymnax(env_id, **kwargs))


def _brax_factory(
    name: str, episode_length: int | None = 1000, backend: str = "generalized", **kwargs: Any
) -> Environment:
    env = make_brax(name, backend=backend, **kwargs)
    if episode_length is not None:
        env = TimeLimit(env, episode_length)
    return ClipAction(env)


def _probe_factory(name: str, **kwargs: Any) -> Environment:
    unknown = sorted(set(kwargs) - set(PROBE_OPTIONS))
    if unknown:
        raise ValueError(f"Probe {name!r} takes only the keyword arguments {list(PROBE_OPTIONS)}, "
                         f"got {unknown}")
    return make_probe(name, **kwargs)


def _masked_factory(base: str, indices: tuple[int, ...], **kwargs: Any) -> Environment:
    return MaskObservation(make(base, **kwargs)[0], indices)


# Partially observed variants registered by name: name -> (the env, the observation indices kept).
MASKED_ENVS: dict[str, tuple[str, tuple[int, ...]]] = {
    # CartPole's observation is (x, x_dot, theta, theta_dot): positions kept, velocities hidden
    "CartPole-v1-masked": ("CartPole-v1", (0, 2)),
}

for _name in GYMNAX_ENVS:
    register(_name, functools.partial(_gymnax_factory, _name))
for _name in BRAX_ENVS:
    register(f"brax/{_name}", functools.partial(_brax_factory, _name))
for _name in probe_names():
    register(_name, functools.partial(_probe_factory, _name))
for _name, (_base, _indices) in MASKED_ENVS.items():
    register(_name, functools.partial(_masked_factory, _base, _indices))
del _name, _base, _indices
