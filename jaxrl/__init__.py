"""jaxrl: reinforcement learning where environments, rollouts and updates are one compiled JAX program.

    import jax, jaxrl
    config = jaxrl.load_config("ppo_cartpole", total_steps=100_000)
    train = jaxrl.make_train(config)
    out = jax.jit(train)(jax.random.key(0))                          # one run
    outs = jax.jit(jax.vmap(train))(jax.random.split(jax.random.key(0), 64))  # 64 seeds at once

Heavy modules (jax, flax, distrax) load on first use, so the command line starts fast.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from typing import Any

from jaxrl.algos import load_config
from jaxrl.config import Config, ConfigError

__version__ = "0.1.0"


def _avoid_cpu_deadlock() -> None:
    """jaxlib 0.10.0-0.10.2 can deadlock on small CPU machines (see pyproject's pin of 0.9.2).

    If such a jaxlib is installed anyway, turn off the XLA CPU scheduler that triggers it,
    unless the user already chose a value for that flag. XLA reads the flags when the backend
    starts, so this works as long as jaxrl is imported before the first computation.
    """
    flag = "--xla_cpu_enable_concurrency_optimized_scheduler"
    try:
        version = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return
    current = os.environ.get("XLA_FLAGS", "")
    if version.startswith("0.10.") and flag not in current:
        os.environ["XLA_FLAGS"] = f"{current} {flag}=false".strip()


_avoid_cpu_deadlock()
__all__ = ["Config", "ConfigError", "compiler_options", "load_config", "make_train", "meta_train", "pbt", "seed_keys", "sweep", "tune", "TrainOutput",
           "TrainState"]

_LAZY = {"make_train": "jaxrl.loop", "compiler_options": "jaxrl.loop", "TrainOutput": "jaxrl.loop", "TrainState": "jaxrl.loop",
         "seed_keys": "jaxrl.loop", "sweep": "jaxrl.sweeps", "pbt": "jaxrl.population",
         "tune": "jaxrl.hpo", "meta_train": "jaxrl.meta"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jaxrl' has no attribute {name!r}")
