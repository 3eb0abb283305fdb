"""Learning tests: thresholds a broken implementation cannot reach, several seeds vmapped each.

The default run has PPO's CartPole config at its full budget and one short-budget test each for
PPO on Pendulum, DQN and SAC (random play scores about -1200 on Pendulum-v1 and 22 on
CartPole-v1; the PPO objectives' short tests are in test_ppo_objectives.py); the variants' short
tests, the other full budgets and the issue's thresholds are in the slow suite (``pytest -m
slow``). The CartPole PPO run (4 vmapped seeds x 976 iterations) doubles as the regression test
for the CPU deadlock seen with jax 0.10 on 2 cores: it must finish (pytest-timeout guards it).
"""

from __future__ import annotations

import numpy as np
import pytest

import jaxrl
from jaxrl.metrics import final_return
from tests.conftest import run

SLOW = pytest.mark.slow
# DQN's variants learn CartPole in 5e4 env steps with learning from 1000 steps on, epsilon's decay
# over the first 20% and lr 1e-3 (2 gradient steps per 10 env steps): 2 seeds measured 258 (c51),
# 219 (qr), 175 (iqn; 265 with the 3-step returns iqn_cartpole has now), 185 (munchausen), 226
# (plain double DQN: 211, 241); C51 whose projection ignored terminations scored 9.5
DQN_SHORT = {"total_steps": 50_000, "learning_starts": 1_000, "eps_fraction": 0.2, "lr": 1e-3,
             "updates_per_iteration": 2}
DQN_SHORT_THRESHOLD = 120.0
# MemoryChain pays +1 for recalling the context bit at the query step, -1 for the wrong action (random
# play and any policy without memory: 0); ppo_gru_memory_chain measured 0.996 over 4 seeds (1.0 / 0.984 /
# 1.0 / 1.0), its deterministic evaluations 1.0
MEMORY_CHAIN_THRESHOLD = 0.9


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("name, overrides, seeds, episodes, threshold", [
    ("ppo_cartpole", {}, 4, 100, 475.0),
    # 2e5 of the config's 5e5 steps (measured: -238 over 4 seeds, -165 at the full budget; random
    # play about -1200); the full budget and the threshold in the slow suite
    ("ppo_pendulum", {"total_steps": 100 * 2048}, 4, 100, -400.0),
    pytest.param("ppo_pendulum", {}, 4, 100, -250.0, marks=SLOW),
    ("dqn_cartpole", DQN_SHORT, 2, 100, DQN_SHORT_THRESHOLD),  # the full budget (83 s on CI) in the slow suite
    pytest.param("dqn_cartpole", {}, 4, 100, 400.0, marks=SLOW),
    # DQN's variants on a short budget (5e4 steps, faster settings): the mean of the last 100 episodes.
    # The default run's time is capped (~20 minutes on 2 cores): one short learning test per family
    # runs there (plain DQN above, SAC below), the variants' short tests are in the slow suite and
    # their probes in the default run (C51's short test took ~40 s, IQN's ~100 s)
    pytest.param("c51_cartpole", DQN_SHORT, 2, 100, DQN_SHORT_THRESHOLD, marks=SLOW),
    pytest.param("qrdqn_cartpole", DQN_SHORT, 2, 100, DQN_SHORT_THRESHOLD, marks=SLOW),
    pytest.param("iqn_cartpole", {**DQN_SHORT, "num_acting_taus": 8}, 2, 100, DQN_SHORT_THRESHOLD, marks=SLOW),
    pytest.param("mdqn_cartpole", DQN_SHORT, 2, 100, DQN_SHORT_THRESHOLD, marks=SLOW),
    # the off-policy actor-critics on a short budget: the mean of the last 20 episodes
    ("sac_pendulum", {"total_steps": 12_000}, 2, 20, -400.0),
    # TD3, DDPG (a TD3 option), TQC and discrete SAC (SAC options): short tests in the slow suite
    pytest.param("td3_pendulum", {"total_steps": 12_000}, 2, 20, -400.0, marks=SLOW),
    pytest.param("ddpg_pendulum", {"total_steps": 12_000}, 2, 20, -400.0, marks=SLOW),
    pytest.param("tqc_pendulum", {"total_steps": 12_000}, 2, 20, -400.0, marks=SLOW),
    pytest.param("sac_discrete_cartpole", {"total_steps": 12_000}, 2, 20, 100.0, marks=SLOW),
    # the full budgets (slow suite)
    pytest.param("sac_pendulum", {}, 4, 100, -250.0, marks=SLOW),
    pytest.param("td3_pendulum", {}, 4, 100, -250.0, marks=SLOW),
    pytest.param("ddpg_pendulum", {}, 4, 100, -250.0, marks=SLOW),
    pytest.param("tqc_pendulum", {}, 4, 100, -250.0, marks=SLOW),
    pytest.param("sac_discrete_cartpole", {}, 4, 100, 400.0, marks=SLOW),
    pytest.param("c51_cartpole", {}, 4, 100, 400.0, marks=SLOW),
    pytest.param("qrdqn_cartpole", {}, 4, 100, 400.0, marks=SLOW),
    pytest.param("iqn_cartpole", {}, 4, 100, 400.0, marks=SLOW),
    pytest.param("mdqn_cartpole", {}, 4, 100, 400.0, marks=SLOW),
    pytest.param("rainbow_cartpole", {}, 4, 100, 400.0, marks=SLOW),
    pytest.param("pqn_cartpole", {}, 4, 100, 475.0, marks=SLOW),
    pytest.param("trpo_cartpole", {}, 4, 100, 475.0, marks=SLOW),
    pytest.param("trpo_pendulum", {}, 4, 100, -250.0, marks=SLOW),
    pytest.param("trpo_gru_cartpole_masked", {}, 4, 100, 400.0, marks=SLOW),  # recurrent TRPO, velocities hidden
    pytest.param("impala_cartpole", {}, 4, 100, 475.0, marks=SLOW),  # the acting policy 4 updates behind
    # every PPO objective (short CartPole tests in test_ppo_objectives.py), A2C and REINFORCE
    *(pytest.param(f"{name}_cartpole", {}, 4, 100, 475.0, marks=SLOW)
      for name in ("ppo_kl", "spo", "mdpo", "dpo", "ppo_ewma")),
    *(pytest.param(f"{name}_pendulum", {}, 4, 100, -250.0, marks=SLOW)
      for name in ("ppo_kl", "spo", "mdpo", "dpo", "ppo_ewma")),
    pytest.param("a2c_cartpole", {}, 4, 100, 400.0, marks=SLOW),
    pytest.param("reinforce_cartpole", {}, 4, 100, 400.0, marks=SLOW),
])
def test_learns(name, overrides, seeds, episodes, threshold):
    config = jaxrl.load_config(name, **overrides)
    _, out = run(config, seeds=seeds)
    final = final_return(out.metrics, episodes)
    assert final.shape == (seeds,)
    assert np.nanmean(final) >= threshold, f"{name}: final returns {final}"
    assert out.metrics["env_steps"][0, -1] <= config.total_steps
    assert (out.state.diverged_at == -1).all()


@SLOW
@pytest.mark.timeout(3600)
def test_recurrent_ppo_learns_masked_cartpole_where_feed_forward_ppo_cannot():
    """CartPole-v1 with the velocities hidden (CartPole-v1-masked): recurrent PPO reaches 400 over
    4 seeds, while feed-forward PPO with its tuned CartPole settings stays below 200 (both
    measured here, on the same env: 471.7 and 50.0 on the 2-core x86 CPU of the README; with
    the CLI's XLA options 463.7 and 50.1)."""
    recurrent = jaxrl.load_config("ppo_gru_cartpole_masked")
    feed_forward = jaxrl.load_config("ppo_cartpole", env="CartPole-v1-masked")
    finals = {}
    for name, config in (("recurrent", recurrent), ("feed-forward", feed_forward)):
        _, out = run(config, seeds=4)
        finals[name] = final_return(out.metrics, 100)
        assert (out.state.diverged_at == -1).all()
    assert np.mean(finals["recurrent"]) >= 400.0, finals
    assert np.mean(finals["feed-forward"]) < 200.0, finals


@SLOW
@pytest.mark.timeout(3600)
def test_recurrent_ppo_learns_memory_chain():
    """bsuite's MemoryChain (memory_length 16): the context bit is seen at an episode's start
    only and must be recalled at its end (reward +1 or -1, random play 0). The final
    deterministic evaluation (in the loop, with the carry) recalls it for every seed."""
    config = jaxrl.load_config("ppo_gru_memory_chain")
    _, out = run(config, seeds=4)
    final = final_return(out.metrics, 100)
    assert np.mean(final) >= MEMORY_CHAIN_THRESHOLD, final
    assert (np.asarray(out.metrics["eval_return"])[:, -1] >= MEMORY_CHAIN_THRESHOLD).all()
