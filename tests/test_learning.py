"""Learning tests: thresholds a broken implementation cannot reach, 4 seeds vmapped each.

The CartPole PPO run (4 vmapped seeds x 976 iterations) doubles as the regression test for the
CPU deadlock seen with jax 0.10 on 2 cores: it must finish (pytest-timeout guards it).
"""

from __future__ import annotations

import numpy as np
import pytest

import jaxrl
from jaxrl.metrics import final_return
from tests.conftest import run


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name, overrides, threshold", [
    ("ppo_cartpole", {}, 475.0),
    ("ppo_pendulum", {}, -250.0),
    ("dqn_cartpole", {}, 400.0),
])
def test_learns(name, overrides, threshold):
    config = jaxrl.load_config(name, **overrides)
    _, out = run(config, seeds=4)
    final = final_return(out.metrics)
    assert final.shape == (4,)
    assert np.nanmean(final) >= threshold, f"{name}: final returns {final}"
    assert out.metrics["env_steps"][0, -1] <= config.total_steps
