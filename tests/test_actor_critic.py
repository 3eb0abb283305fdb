"""DDPG/TD3 and SAC/TQC (continuous and discrete): seed i of a vmapped batch equals a single run,
traced hyperparameters sweep in one program, a killed SAC run resumes bit-identically, and bad
configs fail before compiling. (Probes: test_probes_ac.py; learning: test_learning.py.)"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrl
from jaxrl.config import ConfigError
from jaxrl.runner import train_seeds

SMALL = dict(total_steps=640, num_envs=4, num_steps=2, updates_per_iteration=2, buffer_size=400,
             batch_size=32, learning_starts=64, hidden=[16, 16])


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", ["td3_pendulum", "sac_pendulum", "sac_discrete_cartpole"])
def test_seed_i_in_vmapped_batch_equals_single_run(name):
    config = jaxrl.load_config(name, **SMALL)
    train = jaxrl.make_train(config)
    batched = jax.jit(jax.vmap(train))(jaxrl.seed_keys(0, 2))
    single = jax.jit(train)(jax.random.key(1))
    _assert_trees_close(jax.tree.map(lambda x: x[1], batched.state.agent), single.state.agent, rtol=1e-4, atol=1e-5)
    seeds = jax.tree.leaves(batched.state.agent.actor)
    assert any(not np.allclose(np.asarray(x[0]), np.asarray(x[1])) for x in seeds)  # seeds really differ
    assert np.isfinite(np.asarray(single.metrics["critic_loss"])[-1])


@pytest.mark.parametrize("name, swept", [
    ("td3_pendulum", {"actor_lr": [1e-3, 3e-3], "critic_lr": [1e-3, 2e-3], "tau": [0.01, 0.05],
                      "exploration_noise": [0.1, 0.3], "target_noise": [0.2, 0.1]}),
    ("sac_pendulum", {"actor_lr": [1e-3, 3e-3], "critic_lr": [1e-3, 2e-3], "alpha_lr": [1e-3, 3e-3],
                      "tau": [0.01, 0.05], "alpha": [1.0, 0.5], "target_entropy_scale": [1.0, 0.5]}),
])
def test_traced_hyperparameters_sweep_in_one_program(name, swept):
    """Two settings of every swept hyperparameter as one vmapped program: row 0 holds the config's
    own values and row 1 others in every key, and row 1 equals the config with its values baked
    in (after a few updates, before chaos amplifies rounding); a hyperparameter the program
    ignored would leave row 1 at the config's value and fail the comparison."""
    config = jaxrl.load_config(name, **{**SMALL, "total_steps": 96})  # 12 iterations: 8 warm-up, 4 learning
    assert all(getattr(config, k) == v[0] != v[1] for k, v in swept.items())
    hp = {k: jnp.array(v, jnp.float32) for k, v in swept.items()}
    key = jax.random.key(0)
    sweep = jax.jit(jax.vmap(jaxrl.make_train(config), in_axes=(None, 0)))(key, hp)
    alone = jax.jit(jaxrl.make_train(config.replace(**{k: v[1] for k, v in swept.items()})))(key)
    _assert_trees_close(jax.tree.map(lambda x: x[1], sweep.state.agent), alone.state.agent, rtol=1e-4, atol=1e-5)
    differ = [not np.allclose(np.asarray(x[0]), np.asarray(x[1])) for x in jax.tree.leaves(sweep.state.agent.actor)]
    assert any(differ)


def test_sac_resume_is_bit_identical(tmp_path):
    """All optimizers, targets, the buffer and the temperature are in the checkpoint."""
    config = jaxrl.load_config("sac_pendulum", **SMALL)
    whole = train_seeds(config, num_seeds=2, chunk_size=20)

    class Stop(Exception):
        pass

    def stop_after_first_chunk(done, metrics, seconds):
        if done > 20:  # raised before the second chunk's save: the first is on disk
            raise Stop

    with pytest.raises(Stop):
        train_seeds(config, num_seeds=2, chunk_size=20, checkpoint_dir=tmp_path, on_chunk=stop_after_first_chunk)
    resumed = train_seeds(config, num_seeds=2, checkpoint_dir=tmp_path, resume=True)
    assert resumed.resumed_from == 20
    for a, b in zip(jax.tree.leaves(whole.state), jax.tree.leaves(resumed.state)):
        a, b = np.asarray(jax.random.key_data(a) if jnp.issubdtype(a.dtype, jax.dtypes.prng_key) else a), \
            np.asarray(jax.random.key_data(b) if jnp.issubdtype(b.dtype, jax.dtypes.prng_key) else b)
        np.testing.assert_array_equal(a, b)
    for k in whole.metrics:
        np.testing.assert_array_equal(whole.metrics[k], resumed.metrics[k])


@pytest.mark.parametrize("name, changes, message", [
    ("td3_pendulum", dict(env="CartPole-v1"), "td3 needs a continuous"),
    ("sac_pendulum", dict(env="CartPole-v1", quantiles=5), "TQC .* is for continuous actions"),
    ("td3_pendulum", dict(exploration="ou"), "exploration must be one of gaussian, per_env"),
    ("sac_pendulum", dict(batch_size=512, buffer_size=256, learning_starts=256), "batch_size=512 is larger"),
    ("sac_pendulum", dict(quantiles=5, drop_quantiles=5), "drop_quantiles must be in"),
    ("sac_pendulum", dict(tau=0.0), "tau must be in"),
    ("td3_pendulum", dict(policy_delay=0), "policy_delay must be >= 1"),
    ("sac_pendulum", dict(n_step=3, learning_starts=8, num_steps=1, buffer_size=400), "fewer than n_step=3"),
])
def test_bad_configs_fail_before_compiling(name, changes, message):
    with pytest.raises(ConfigError, match=message):
        jaxrl.make_train(jaxrl.load_config(name, **{**SMALL, **changes}))
