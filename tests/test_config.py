"""Configs: bundled files load and validate; bad input fails early with a clear message."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

import jaxrl
from jaxrl.config import ConfigError, config_names, parse_overrides


@pytest.mark.parametrize("name", config_names())
def test_bundled_configs_load(name):
    config = jaxrl.load_config(name)
    assert config.algo in name
    assert config.num_iterations >= 1


def test_overrides_are_typed_and_merged(tmp_path):
    config = jaxrl.load_config("ppo_cartpole", **parse_overrides(
        ["lr=1e-3", "total_steps=5e5", "hidden=[32, 16]", "anneal_lr=false", "env_kwargs.max_steps_in_episode=200"]))
    assert config.lr == 1e-3 and isinstance(config.lr, float)
    assert config.total_steps == 500_000 and isinstance(config.total_steps, int)
    assert config.hidden == (32, 16) and config.anneal_lr is False
    assert config.env_kwargs == {"max_steps_in_episode": 200}
    path = tmp_path / "mine.yaml"
    path.write_text("algo: dqn\nenv: CartPole-v1\ntotal_steps: 20000\nlearning_starts: 1000\n")
    assert jaxrl.load_config(path).algo == "dqn"


def test_traced_and_static_fields():
    config = jaxrl.load_config("ppo_cartpole")
    assert {"lr", "gamma", "gae_lambda", "clip_eps", "ent_coef", "vf_coef", "max_grad_norm"} <= set(config.hparams())
    assert "num_envs" not in config.hparams() and "hidden" not in config.hparams()


@pytest.mark.parametrize("name, overrides, message", [
    ("ppo_cartpole", {"learning_rate": 1e-3}, "unknown config key 'learning_rate'.*did you mean 'lr'"),
    ("ppo_cartpole", {"num_envs": 3, "num_steps": 5, "num_minibatches": 4}, "does not divide into num_minibatches"),
    ("ppo_cartpole", {"num_envs": 2.5}, "num_envs' must be an integer"),
    ("ppo_cartpole", {"lr": "fast"}, "'lr' must be a number"),
    ("ppo_cartpole", {"anneal_lr": "yes please"}, "must be true or false"),
    ("ppo_cartpole", {"total_steps": 100}, "less than one iteration"),
    ("ppo_cartpole", {"gamma": 1.5}, "gamma must be in"),
    ("ppo_cartpole", {"activation": "sigmoidal"}, "activation must be one of"),
    ("ppo_cartpole", {"algo": "ppp"}, "unknown algo 'ppp'.*did you mean 'ppo'"),
    ("dqn_cartpole", {"buffer_size": 100}, "learning_starts"),
    ("dqn_cartpole", {"tau": 0.0}, "tau must be in"),
    ("ppo_cartpol", {}, "unknown config 'ppo_cartpol'.*did you mean 'ppo_cartpole'"),
])
def test_bad_configs_raise_clear_errors(name, overrides, message):
    with pytest.raises(ConfigError, match=message):
        jaxrl.load_config(name, **overrides)


def test_missing_file_and_bad_override_syntax():
    with pytest.raises(ConfigError, match="does not exist"):
        jaxrl.load_config("no/such/file.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["lr"])


def test_unknown_env_and_incompatible_action_space_fail_before_compiling():
    with pytest.raises(ConfigError, match="CartPole-v1"):
        jaxrl.make_train(jaxrl.load_config("ppo_cartpole", env="CartPol-v1"))
    with pytest.raises(ConfigError, match="discrete action space"):
        jaxrl.make_train(jaxrl.load_config("dqn_cartpole", env="Pendulum-v1"))


def test_unknown_traced_hyperparameter():
    train = jaxrl.make_train(jaxrl.load_config("ppo_cartpole", total_steps=512))
    with pytest.raises(ConfigError, match="unknown traced hyperparameter"):
        train.init(jaxrl.seed_keys(0, 1)[0], {"num_envs": 3.0})


def test_cli_reports_config_errors_fast():
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "jaxrl.cli", "train", "ppo_cartpole", "lr=-1"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "lr must be > 0" in proc.stderr
    assert time.perf_counter() - start < 20  # no jax compile happened
