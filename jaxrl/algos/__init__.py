"""Algorithms: one module per family, found by name; and configs loaded for them.

A config's ``algo`` is the name of a module in this package (``ppo``, ``dqn``, ``sac``, ...) or
the import path of a module of your own (``mypackage.my_algo``) that defines the same things:
``Config``, ``init``, ``act``, ``learn`` (see :mod:`jaxrl.core`).
"""

from __future__ import annotations

import importlib
import pkgutil
import types
from pathlib import Path
from typing import Any

from jaxrl.config import Config, ConfigError, build, merge_on_top, read_yaml, suggest

PROTOCOL = ("Config", "init", "act", "learn")  # what an algorithm module must define


def algo_names() -> list[str]:
    """The bundled algorithms: one module per family in this package."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def algo_module(name: str) -> types.ModuleType:
    """The module implementing algorithm ``name``: a bundled one, or a dotted import path."""
    if "." not in name:
        names = algo_names()
        if name not in names:
            raise ConfigError(f"unknown algo {name!r}; available: {', '.join(names)}" + suggest(name, names)
                              + " (or the import path of a module of your own, e.g. mypackage.my_algo)")
        name = f"{__name__}.{name}"
    try:
        module = importlib.import_module(name)
    except ImportError as err:
        raise ConfigError(f"algo {name!r} cannot be imported: {err}") from None
    missing = [x for x in PROTOCOL if not hasattr(module, x)]
    if missing:
        raise ConfigError(f"algo module {name!r} does not define {', '.join(missing)} (an algorithm defines "
                          f"{', '.join(PROTOCOL)})")
    return module


def load_config(name_or_path: str | Path, **overrides: Any) -> Config:
    """Load a bundled config by name (``"ppo_cartpole"``) or a YAML path, apply overrides, validate.

    Overrides are keyword arguments (``load_config("ppo_cartpole", lr=1e-3)``); a ``dict`` given
    for a mapping of the file (``env_kwargs``, ``eval_env_kwargs``) is merged into it, so
    ``env_kwargs.x=1`` on the command line keeps the file's other env_kwargs.
    """
    data = read_yaml(name_or_path)
    if "algo" not in data and "algo" not in overrides:
        raise ConfigError(f"config {str(name_or_path)!r} has no 'algo' key; algorithms: {', '.join(algo_names())}")
    data = merge_on_top(data, overrides)
    algo = data.get("algo")
    if not isinstance(algo, str):
        raise ConfigError(f"config key 'algo' must be a string, got {algo!r}")
    return build(algo_module(algo).Config, data)
