"""MinAtar with the CNN torso (config ``conv``): the bundled MinAtar configs build, a tiny run
trains convolutions end to end, and (slow suite) PQN and PPO learn Breakout-, SpaceInvaders-,
Asterix- and Freeway-MinAtar.

The convolution itself is tested against NumPy in test_networks.py.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import jaxrl
from jaxrl.config import config_names
from jaxrl.metrics import final_return
from tests.conftest import run

MINATAR = [name for name in config_names() if name.endswith("_minatar")]


@pytest.mark.parametrize("name", MINATAR)
def test_minatar_configs_use_the_cnn_on_images(name):
    config = jaxrl.load_config(name)
    train = jaxrl.make_train(config)  # refuses conv on vector observations: no compile needed
    assert config.conv and train.spec.obs_shape[:2] == (10, 10)


def test_a_tiny_cnn_pqn_run_trains_its_convolutions():
    config = jaxrl.load_config("pqn_breakout_minatar", total_steps=2 * 8 * 16, num_envs=8, num_steps=16,
                               num_minibatches=2, update_epochs=1, hidden=[16], conv=[[4, 3, 2]])
    train = jaxrl.make_train(config)
    before = jax.jit(train.init)(jaxrl.seed_keys(config.seed, 1)[0]).agent.params["params"]
    _, out = run(config, seeds=1)
    after = jax.tree.map(lambda x: x[0], out.state.agent.params["params"])
    assert set(after) >= {"MLP_0"} and "Conv_0" in after["MLP_0"], list(after)
    kernel = after["MLP_0"]["Conv_0"]["kernel"]
    assert kernel.shape == (3, 3, 4, 4) and np.isfinite(kernel).all()
    assert not np.allclose(kernel, before["MLP_0"]["Conv_0"]["kernel"])  # the gradients reached it


@pytest.mark.slow
@pytest.mark.timeout(7200)
@pytest.mark.parametrize("name, threshold", [
    # PQN, 3e6 steps: 18.7 / 27.5 measured (10.0 / 9.0 at 5e5); random play scores ~0.4
    ("pqn_breakout_minatar", 15.0),
    # PPO, 2e6 steps: 23.8 / 20.0 measured (21.2 / 20.0 at 5e5)
    ("ppo_breakout_minatar", 15.0),
    # double DQN, 3e6 steps: 17.2 / 14.5 measured (about 6 / 7 at 5e5)
    ("dqn_breakout_minatar", 10.0),
    # SpaceInvaders (random play 4.1; gymnax's PPO 131): PQN 3e6 121.6 / 112.5, PPO 2e6 161.6 / 162.9
    ("pqn_spaceinvaders_minatar", 80.0),
    ("ppo_spaceinvaders_minatar", 110.0),
    # Asterix (random 0.5; gymnax's PPO 15): PQN 3e6 51.1 / 49.4, PPO 2e6 29.4 / 33.8
    ("pqn_asterix_minatar", 30.0),
    ("ppo_asterix_minatar", 20.0),
    # Freeway (random 0.3; gymnax's PPO 58): PQN 3e6 58.5 / 59.1, PPO 2e6 60.5 / 60.1
    ("pqn_freeway_minatar", 45.0),
    ("ppo_freeway_minatar", 45.0),
])
def test_learns_minatar(name, threshold):
    """PQN and PPO (and DQN on Breakout) reach the published order on MinAtar within a few million steps
    (gymnax's PPO baselines; a policy that does not use the image stays near random play)."""
    config = jaxrl.load_config(name)
    _, out = run(config, seeds=2)
    final = final_return(out.metrics, 100)
    assert np.mean(final) >= threshold, f"{name}: final returns {final}"
    assert (out.state.diverged_at == -1).all()
