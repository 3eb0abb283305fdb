"""Configs: bundled files load and validate; bad input fails early with a clear message."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

import jaxrl
from jaxrl.config import ConfigError, build, config_names, parse_grid, parse_overrides


@pytest.mark.parametrize("name", config_names())
def test_bundled_configs_load(name):
    config = jaxrl.load_config(name)
    variants = {"ddpg": "td3", "tqc": "sac", "spo": "ppo", "mdpo": "ppo", "dpo": "ppo",
                "c51": "dqn", "qrdqn": "dqn", "iqn": "dqn", "mdqn": "dqn", "rainbow": "dqn", "a2c": "ppo",
                "reinforce": "ppo", "impala": "ppo"}  # named after the variant
    variant = variants.get(name.split("_")[0], name.split("_")[0])
    assert config.algo == variant, (name, config.algo)
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
    ("ppo_cartpole", {"episode_start": "cached"}, "episode_start must be one of fresh, first"),
    ("ppo_cartpole", {"episode_start": "first", "env_randomize": {"gravity": [9.0, 10.0]}},
     "env_randomize's per-episode draws would never happen"),
    ("ppo_cartpole", {"algo": "ppp"}, "unknown algo 'ppp'.*did you mean 'ppo'"),
    ("dqn_cartpole", {"buffer_size": 200}, "learning_starts"),
    ("dqn_cartpole", {"tau": 0.0}, "tau must be in"),
    # DQN's variants: unknown names and combinations that have no meaning
    ("dqn_cartpole", {"distributional": "c52"}, "distributional must be one of none, c51, qr, iqn"),
    ("c51_cartpole", {"v_min": 100.0}, "need v_min < v_max"),
    ("c51_cartpole", {"num_atoms": 1}, "num_atoms must be >= 2"),
    ("c51_cartpole", {"huber": True}, "huber is the scalar TD loss"),
    ("qrdqn_cartpole", {"kappa": -1.0}, "kappa must be >= 0"),
    ("qrdqn_cartpole", {"risk": "cvar", "risk_eta": 0.1}, "risk='cvar' distorts IQN's sampled fractions"),
    ("iqn_cartpole", {"risk": "cvar", "risk_eta": 0.0}, "cvar needs risk_eta in"),
    ("iqn_cartpole", {"risk": "pessimistic"}, "risk must be one of neutral, cvar, wang"),
    ("iqn_cartpole", {"num_taus": 0}, "num_taus must be >= 1"),
    ("qrdqn_cartpole", {"stratified_taus": True}, "stratified_taus draws IQN's acting fractions"),
    ("mdqn_cartpole", {"distributional": "qr", "num_quantiles": 8}, "munchausen works on scalar Q-values"),
    ("mdqn_cartpole", {"double": True}, "set double: false"),
    ("mdqn_cartpole", {"n_step": 3}, "n_step must be 1"),
    ("mdqn_cartpole", {"entropy_tau": 0.0}, "entropy_tau must be > 0"),
    ("mdqn_cartpole", {"log_policy_clip": 0.5}, "log_policy_clip must be <= 0"),
    ("ppo_cartpol", {}, "unknown config 'ppo_cartpol'.*did you mean 'ppo_cartpole'"),
    # the convolutional torso
    ("pqn_cartpole", {"conv": [[16, 3]]}, r"conv must list convolutions as \[features, kernel, stride\]"),
    ("pqn_cartpole", {"conv": [[16, 0, 1]]}, "of positive integers"),
    ("pqn_cartpole", {"conv": "16"}, "must be a list of lists of int"),
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
    with pytest.raises(ConfigError, match=r"conv layers need image observations.*shape \(4,\)"):
        jaxrl.make_train(jaxrl.load_config("ppo_cartpole", conv=[[16, 3, 1]]))


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


# ----------------------------------------------------------------------------- nothing typed is dropped
@pytest.mark.parametrize("parse, items, message", [
    (parse_grid, ["lr=1e-4", "lr=3e-4"], "'lr' is given twice: 'lr=1e-4' and 'lr=3e-4'"),
    (parse_grid, ["lr=,"], "'lr=,' has an empty value"),
    (parse_grid, ["lr=1e-4,"], "'lr=1e-4,' has an empty value"),
    (parse_grid, ["lr="], "'lr=' has no value"),
    (parse_grid, ["hidden=[32,32"], "'hidden=[32,32': unclosed '['"),
    (parse_grid, ["hidden=32]"], "'hidden=32]': unbalanced ']'"),
    (parse_grid, ["lr=1e999"], "'lr=1e999': '1e999' is not a finite number"),
    (parse_grid, ["lr"], "'lr' is not of the form key=v1,v2,..."),
    (parse_overrides, ["lr=1", "lr=2"], "'lr' is given twice: 'lr=1' and 'lr=2'"),
    (parse_overrides, ["env_kwargs.x=1", "env_kwargs.x=2"], "'env_kwargs.x' is given twice: 'env_kwargs.x=1' and "
                                                            "'env_kwargs.x=2'"),
    (parse_overrides, ["env_kwargs={x: 1}", "env_kwargs.x=2"], "'env_kwargs.x' is given twice: in 'env_kwargs={x: 1}'"),
    (parse_overrides, ["env_kwargs.x=2", "env_kwargs={x: 1}"], "'env_kwargs.x' is given twice: in 'env_kwargs={x: 1}'"),
    (parse_overrides, ["lr=1", "lr.x=2"], "'lr.x=2' sets 'x' inside lr, but 'lr=1' gives lr a value that is not a mapping"),
    (parse_overrides, ["env_kwargs.x=1", "env_kwargs=5"], "'env_kwargs=5' gives env_kwargs a value that is not a mapping"),
    (parse_overrides, ["lr="], "'lr=' has no value"),
    (parse_overrides, ["lr=  "], "'lr=  ' has no value"),
    (parse_overrides, ["lr=[1,"], "'lr=[1,': '[1,' is not a valid YAML value"),
    (parse_overrides, ["lr=2024-13-01"], "'lr=2024-13-01': '2024-13-01' is not a valid YAML value"),
    (parse_overrides, ["a.b.c=1"], "'a.b.c=1': 'a.b.c' is not a key"),
    (parse_overrides, ["env_kwargs.=1"], "'env_kwargs.=1': 'env_kwargs.' is not a key"),
    (parse_overrides, ["=1"], "'=1' is not of the form key=value"),
])
def test_repeated_empty_and_malformed_items_fail_quoting_them(parse, items, message):
    with pytest.raises(ConfigError) as err:
        parse(items)
    assert message in str(err.value)


def test_mapping_given_whole_and_by_key_combines_when_the_keys_differ():
    assert parse_overrides(["env_kwargs={x: 1}", "env_kwargs.y=2"]) == {"env_kwargs": {"x": 1, "y": 2}}
    assert parse_overrides(["env_kwargs.y=2", "env_kwargs={x: 1}"]) == {"env_kwargs": {"x": 1, "y": 2}}
    assert parse_grid(['x={a: 1, b: 2},{c: 3}', 'env="a,b",c']) == {"x": [{"a": 1, "b": 2}, {"c": 3}],
                                                                    "env": ["a,b", "c"]}


def test_cli_refuses_a_repeated_key_before_compiling(tmp_path, capsys):
    from jaxrl.cli import main

    assert main(["sweep", "ppo_cartpole", "total_steps=2048", "--grid", "lr=1e-4", "lr=3e-4",
                 "--out", str(tmp_path)]) == 2
    assert "'lr' is given twice: 'lr=1e-4' and 'lr=3e-4'" in capsys.readouterr().err
    assert main(["train", "ppo_cartpole", "lr=1", "lr=2", "--out", str(tmp_path)]) == 2
    assert "'lr' is given twice: 'lr=1' and 'lr=2'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing ran


# ----------------------------------------------------------------------------- found by tests/test_fuzz.py
@pytest.mark.parametrize("name, overrides, message", [
    ("ppo_cartpole", {"env_kwargs": {1: 2}}, "'env_kwargs' must be a mapping with string keys"),
    ("ppo_cartpole", {"lr": 10**400}, "'lr' must be a number"),
    ("ppo_cartpole", {"num_envs": 10**400}, "num_envs=1000"),
    ("ppo_cartpole", {"eval_max_steps": 2**40}, "eval_max_steps=1099511627776 does not fit in int32"),
    ("ppo_cartpole", {"seed": 2**31}, "seed=2147483648 does not fit in int32"),
    ("ppo_cartpole", {"total_steps": 2**40}, "the iteration counter is int32"),
    ("dqn_cartpole", {"total_steps": 2**31}, "total_steps=2147483648 is more than dqn supports"),
    ("ppo_cartpole", {"lr": 1e-50}, "lr=1e-50 does not fit in float32"),
    ("ppo_cartpole", {"lr": 1e39}, "lr=1e+39 does not fit in float32"),
    ("ppo_cartpole", {"total_steps": 1024, "eval_every": 3}, "eval_every=3 is more than the run's 2 iterations"),
    ("dqn_cartpole", {"num_steps": 64, "total_steps": 1000, "learning_starts": 700},
     "learning_starts=700 is more than the 640 env steps the run takes"),
    ("ppo_cartpole", {"ent_coef": -0.01}, "ent_coef must be >= 0"),
    ("ppo_cartpole", {"vf_coef": -1}, "vf_coef must be >= 0"),
])
def test_values_that_crashed_or_changed_silently_are_config_errors(name, overrides, message):
    with pytest.raises(ConfigError) as err:
        jaxrl.load_config(name, **overrides)
    assert message in str(err.value)


def test_float32_extremes_that_fit_are_kept():
    assert jaxrl.load_config("ppo_cartpole", max_grad_norm=3e38).max_grad_norm == 3e38
    assert jaxrl.load_config("ppo_cartpole", lr=2e-38).lr == 2e-38


def test_algo_must_match_the_config_class_and_direct_configs_are_type_checked():
    from jaxrl.algos import ppo

    with pytest.raises(ConfigError, match="algo 'dqn' does not match jaxrl.algos.ppo.Config"):
        build(ppo.Config, {"algo": "dqn", "total_steps": 512})
    with pytest.raises(ConfigError, match="'lr' must be a number, got 'x'"):
        jaxrl.make_train(ppo.Config(lr="x"))


def test_yaml_file_errors_and_mapping_overrides(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("algo: ppo\nlr: [1,\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        jaxrl.load_config(bad)
    odd = tmp_path / "odd.yaml"
    odd.write_text("algo: ppo\n1: 2\n")
    with pytest.raises(ConfigError, match="unknown config key 1"):
        jaxrl.load_config(odd)
    mine = tmp_path / "mine.yaml"
    mine.write_text("algo: ppo\nenv_kwargs: {max_steps_in_episode: 50}\neval_env_kwargs: {max_steps_in_episode: 5}\n")
    config = jaxrl.load_config(mine, **parse_overrides(["env_kwargs.gravity=20.0", "eval_env_kwargs.gravity=5.0"]))
    assert config.env_kwargs == {"max_steps_in_episode": 50, "gravity": 20.0}
    assert config.eval_env_kwargs == {"max_steps_in_episode": 5, "gravity": 5.0}  # was replaced, dropping a key


def test_a_config_states_only_what_differs_from_its_base(tmp_path):
    (tmp_path / "mine.yaml").write_text("base: ppo_cartpole\nenv_kwargs: {max_steps_in_episode: 50}\nlr: 1.0e-3\n")
    (tmp_path / "deeper.yaml").write_text("base: mine.yaml\nenv_kwargs: {gravity: 20.0}\n")  # relative to the file
    config = jaxrl.load_config(tmp_path / "deeper.yaml", num_envs=8)
    plain = jaxrl.load_config("ppo_cartpole")
    assert config.lr == 1e-3 and config.num_envs == 8 and config.gamma == plain.gamma
    assert config.env_kwargs == {**plain.env_kwargs, "max_steps_in_episode": 50, "gravity": 20.0}
    # every bundled variant equals its base with the variant's keys on top
    variant = jaxrl.load_config("pqn_asterix_minatar")
    assert variant == jaxrl.load_config("pqn_breakout_minatar", env="Asterix-MinAtar", total_steps=variant.total_steps)
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="config bases form a cycle: .*a.yaml -> .*b.yaml -> .*a.yaml"):
        jaxrl.load_config(tmp_path / "a.yaml")
    (tmp_path / "e.yaml").write_text("base: ./e.yaml\n")  # another spelling of the same file
    with pytest.raises(ConfigError, match="config bases form a cycle"):
        jaxrl.load_config(tmp_path / "e.yaml")
    (tmp_path / "c.yaml").write_text("base: [ppo_cartpole]\n")
    with pytest.raises(ConfigError, match="'base' must be a config name or a path"):
        jaxrl.load_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("base: ppo_cartpol\n")
    with pytest.raises(ConfigError, match="unknown config 'ppo_cartpol'"):
        jaxrl.load_config(tmp_path / "d.yaml")


@pytest.mark.parametrize("grid, message", [
    ({"env.max_steps_in_episode": [float("inf")]}, "env.max_steps_in_episode=inf is not a finite number"),
    ({"env.max_steps_in_episode": [2**31]}, "env param env.max_steps_in_episode is an integer (int32), got 2147483648"),
    ({"env.gravity": [float("inf")]}, "env.gravity=inf is not a finite number"),
    ({"env.gravity": [1e39]}, "env.gravity=1e+39 does not fit in float32"),
    ({"env.gravity": [1e-50]}, "env.gravity=1e-50 does not fit in float32"),
    ({"lr": [1e-50]}, "lr=1e-50 does not fit in float32"),
    ({1: [0.1]}, "grid keys must be names"),
])
def test_sweep_values_are_checked_before_compiling(grid, message):
    config = jaxrl.load_config("ppo_cartpole", total_steps=512)
    with pytest.raises(ConfigError) as err:
        jaxrl.sweep(config, grid=grid)
    assert message in str(err.value)
    with pytest.raises(ConfigError, match="each sample must map names to values"):
        jaxrl.sweep(config, samples=[0.1, 0.2])
    with pytest.raises(ConfigError, match="seeds must be a positive integer"):
        jaxrl.sweep(config, seeds=True, grid={"lr": [1e-3]})


def test_a_target_network_that_would_never_update_is_flagged(recwarn):
    jaxrl.load_config("dqn_cartpole", total_steps=20_000, learning_starts=10_000, target_update_interval=1001)  # 1001 updates
    assert not [w for w in recwarn if "target network" in str(w.message)]
    with pytest.warns(UserWarning, match="target_update_interval=1002 is more than the 1001 gradient steps"):
        jaxrl.load_config("dqn_cartpole", total_steps=20_000, learning_starts=10_000, target_update_interval=1002)
