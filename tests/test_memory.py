"""Memory does not grow with the number of env steps beyond one small metrics row per iteration."""

from __future__ import annotations

import jax
import pytest

import jaxrl


def program_bytes(config) -> tuple[int, int, int]:
    """(iterations, output bytes, temporary bytes) of the whole compiled training program."""
    train = jaxrl.make_train(config)
    stats = jax.jit(train).lower(jax.random.key(0)).compile().memory_analysis()
    return train.num_iterations, stats.output_size_in_bytes, stats.temp_size_in_bytes


# DQN's in the slow suite: the default run's time is capped, and the loop's metrics are the same code
@pytest.mark.parametrize("name", ["ppo_cartpole", pytest.param("dqn_cartpole", marks=pytest.mark.slow)])
def test_1e8_step_run_costs_one_row_per_iteration(name):
    small = program_bytes(jaxrl.load_config(name, total_steps=1_000_000))
    huge = program_bytes(jaxrl.load_config(name, total_steps=100_000_000))
    rows = huge[0] - small[0]
    row_bytes = (huge[1] - small[1]) / rows
    n_metrics = len(jax.eval_shape(jaxrl.make_train(jaxrl.load_config(name)), jax.random.key(0)).metrics)
    assert row_bytes == 4 * n_metrics  # one float32 per metric per iteration, nothing per env step
    assert huge[2] == small[2]  # the working memory does not depend on the run's length
