"""PQN: seed i of a vmapped batch equals a single run, and bad configs fail before compiling.
(Probes, truncations included: test_probes.py; Q(lambda) against NumPy: test_returns.py;
learning: test_learning.py.)"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import jaxrl
from jaxrl.algos import pqn
from jaxrl.config import ConfigError

SMALL = dict(total_steps=8 * 4 * 16, num_envs=4, num_steps=16, update_epochs=2, num_minibatches=4, hidden=[16, 16])


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def test_seed_i_in_vmapped_batch_equals_single_run():
    config = jaxrl.load_config("pqn_cartpole", **SMALL)
    train = jaxrl.make_train(config)
    batched = jax.jit(jax.vmap(train))(jaxrl.seed_keys(config.seed, 2))
    single = jax.jit(train)(jax.random.key(config.seed + 1))
    _assert_trees_close(jax.tree.map(lambda x: x[1], batched.state.agent), single.state.agent, rtol=1e-4, atol=1e-5)
    _assert_trees_close(jax.tree.map(lambda x: x[1], batched.metrics), single.metrics, rtol=1e-4, atol=1e-5)
    params = jax.tree.leaves(batched.state.agent.params)
    assert any(not np.allclose(x[0], x[1]) for x in params)  # seeds really differ
    assert np.isfinite(single.metrics["loss"]).all()
    eps = np.asarray(single.metrics["epsilon"])  # DQN's schedule: 1 -> eps_end over eps_fraction of the run
    assert eps[0] == config.eps_start and eps[-1] == pytest.approx(config.eps_end) and (np.diff(eps) <= 0).all()


@pytest.mark.parametrize("overrides, message", [
    ({"num_minibatches": 3}, "does not divide into num_minibatches = 3"),
    ({"update_epochs": 0}, "update_epochs must be >= 1"),
    ({"q_lambda": 1.5}, r"q_lambda must be in \[0, 1\]"),
    ({"eps_start": 0.1, "eps_end": 0.2}, "need 0 <= eps_end <= eps_start <= 1"),
    ({"eps_fraction": 0.0}, "eps_fraction must be > 0"),
    ({"lr": 0.0}, "lr must be > 0"),
    ({"max_grad_norm": -1.0}, "max_grad_norm must be >= 0"),
    ({"total_steps": 2**31}, "more than pqn supports"),
    ({"target_update_interval": 10}, "unknown config key 'target_update_interval'"),  # no target network
])
def test_bad_configs_fail_before_compiling(overrides, message):
    with pytest.raises(ConfigError, match=message):
        jaxrl.load_config("pqn_cartpole", **overrides)


def test_environment_checks_fail_before_compiling():
    with pytest.raises(ConfigError, match="pqn needs a discrete action space"):
        jaxrl.make_train(jaxrl.load_config("pqn_cartpole", env="Pendulum-v1"))
    config = jaxrl.load_config("pqn_cartpole", num_envs=2, num_steps=3, num_minibatches=2, total_steps=600)
    spec = jaxrl.make_train(config).spec
    with pytest.raises(ConfigError, match="3 transitions, which do not divide into num_minibatches = 2"):
        pqn.check(config, spec, devices=2)  # data parallel: each device's share is minibatched
