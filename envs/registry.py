"""Name -> environment registry: `make`, `registered`, `register`.

Names: every gymnax id (`CartPole-v1`, `Breakout-MinAtar`, ...), `brax/<name>` for brax envs,
and `probe/<kind>[-continuous]`. `make` returns the adapted env with its time limit and action
clipping but without `AutoReset`/`EpisodeStats`: the training loop adds those with
`wrap_for_training`. Factories import gymnax/brax only when called, so importing this is cheap.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable
from typing import Any

from .brax_env import BRAX_ENVS, make_brax
from .core import Environment, Params
from .gymnax_env import GYMNAX_ENVS, make_gymnax
from .probes import make_probe, probe_names
from .spaces import Box
from .wrappers import ClipAction, TimeLimit

Factory = Callable[..., Environment]

_REGISTRY: dict[str, Factory] = {}


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

    Keyword arguments go to the env's factory: for gymnax envs, `EnvParams` fields or
    constructor arguments; for brax envs `backend=`, `episode_length=` (default 1000, `None`
    for no limit) and arguments of `brax.envs.get_environment`.
    """
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=5, cutoff=0.5)
        hint = f" Did you mean {close}?" if close else " See jaxrl.envs.registered()."
        raise ValueError(f"Unknown environment {name!r}.{hint}")
    env = _REGISTRY[name](**kwargs)
    if not isinstance(env, Environment):
        raise TypeError(f"Factory for {name!r} returned {type(env).__name__}, not Environment")
    return env, env.default_params


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
    if kwargs:
        raise ValueError(f"Probe {name!r} takes no keyword arguments, got {sorted(kwargs)}")
    return make_probe(name)


for _name in GYMNAX_ENVS:
    register(_name, functools.partial(_gymnax_factory, _name))
for _name in BRAX_ENVS:
    register(f"brax/{_name}", functools.partial(_brax_factory, _name))
for _name in probe_names():
    register(_name, functools.partial(_probe_factory, _name))
del _name
