"""Shared helpers for the test suite."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import pytest

import jaxrl
from jaxrl.core import Context

# In-process `jaxrl train/sweep/bench` calls must not turn on the persistent compilation cache in
# ~/.cache for the whole test process (test_compile_cache.py runs subprocesses with their own).
os.environ.setdefault("JAXRL_NO_COMPILE_CACHE", "1")


def run(config, seeds: int = 1, hparams=None):
    """Train ``seeds`` vmapped seeds of ``config``; returns (train, output) on the host."""
    train = jaxrl.make_train(config)
    out = jax.jit(jax.vmap(train, in_axes=(0, None)))(jaxrl.seed_keys(config.seed, seeds), hparams)
    return train, jax.device_get(out)


def context(train) -> Context:
    """A Context for calling an algorithm's network functions outside the loop."""
    return Context(train.config, train.spec, train.config.hparams(), jnp.int32(0))


@pytest.fixture(autouse=True)
def _no_rounding_warnings(recwarn):
    yield
