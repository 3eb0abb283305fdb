"""Evaluation inside the compiled loop: when it runs, what it measures, and that it does not
disturb training."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import jaxrl
from jaxrl.config import ConfigError


def _train(name, **overrides):
    config = jaxrl.load_config(name, **overrides)
    return config, jax.device_get(jax.jit(jaxrl.make_train(config))(jax.random.key(0)))


def test_evaluation_runs_every_n_iterations_without_changing_training():
    config, with_eval = _train("ppo_cartpole", total_steps=512 * 6, eval_every=3, eval_episodes=4,
                               env_kwargs={"max_steps_in_episode": 100}, eval_env_kwargs={"max_steps_in_episode": 20})
    ret = with_eval.metrics["eval_return"]
    assert np.isnan(ret[[0, 1, 3, 4]]).all() and np.isfinite(ret[[2, 5]]).all()
    assert np.all(with_eval.metrics["eval_length"][[2, 5]] <= 20)  # the eval env's own time limit
    _, without = _train("ppo_cartpole", total_steps=512 * 6, env_kwargs={"max_steps_in_episode": 100})
    for name, values in without.metrics.items():
        np.testing.assert_array_equal(with_eval.metrics[name], values, err_msg=name)


@pytest.mark.parametrize("name, extra", [
    ("ppo_cartpole", dict(num_envs=16, num_steps=8, lr=3e-3, ent_coef=0.0, anneal_lr=False)),
    ("dqn_cartpole", dict(num_envs=16, num_steps=4, updates_per_iteration=4, buffer_size=4096, learning_starts=512,
                          target_update_interval=20, eps_fraction=0.3, lr=3e-3, anneal_lr=False)),
])
def test_deterministic_evaluation_of_a_solved_probe_is_optimal(name, extra):
    # every eval episode of probe/obs-action scores +1 with the right action, -1 otherwise
    config, out = _train(name, env="probe/obs-action", total_steps=16_384, eval_every=8, eval_episodes=32, **extra)
    assert out.metrics["eval_return"][-1] == 1.0 and out.metrics["eval_return_std"][-1] == 0.0
    assert out.metrics["eval_length"][-1] == 1.0


def test_bad_eval_settings():
    with pytest.raises(ConfigError, match="eval_episodes"):
        jaxrl.load_config("ppo_cartpole", eval_every=10, eval_episodes=0)
    with pytest.raises(ConfigError, match="eval env"):
        jaxrl.make_train(jaxrl.load_config("ppo_cartpole", total_steps=1024, eval_every=1,
                                           eval_env_kwargs={"no_such_param": 1}))
