"""PPO's objective options (KL penalty, SPO, MDPO, DPO, user drift) and PPO-EWMA: each learns
CartPole-v1, its state and schedule do what the papers say, bad settings fail before compiling.

The objectives' formulas are tested on their own in test_objectives.py; here they are tested as
PPO uses them.
"""

from __future__ import annotations

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrl
from jaxrl import losses
from jaxrl.algos import ppo
from jaxrl.config import ConfigError
from jaxrl.metrics import final_return
from jaxrl.runner import train_seeds
from tests.conftest import context, run
from tests.test_checkpoint import Interrupted, assert_same_run

CONFIGS = ["ppo_kl_cartpole", "spo_cartpole", "mdpo_cartpole", "dpo_cartpole", "ppo_ewma_cartpole"]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", CONFIGS)
def test_objective_learns_cartpole(name):
    # 195 iterations (~1e5 steps): PPO's clip reaches ~290 here, random play ~22, a policy
    # pushed against its advantages ~10
    config = jaxrl.load_config(name, total_steps=195 * 512)
    _, out = run(config, seeds=2)
    final = final_return(out.metrics, 20)
    assert np.nanmean(final) >= 150.0, f"{name}: final returns {final}"
    assert (out.state.diverged_at == -1).all()


def test_default_objective_is_the_clipped_surrogate_without_extra_state():
    config = jaxrl.load_config("ppo_cartpole")
    assert config.objective == "clip" and config.ewma_decay == 0.0
    agent = ppo.init(context(jaxrl.make_train(config)), jax.random.key(0))
    assert agent.kl_coef is None and agent.prox_params is None and agent.prox_weight is None


def test_adaptive_kl_coefficient_is_agent_state():
    config = jaxrl.load_config("ppo_kl_cartpole", total_steps=40 * 512, kl_target=0.003)
    _, out = run(config, seeds=1, hparams={"kl_coef": jnp.float32(4.0)})  # traced: its initial value
    coef, kl = out.metrics["kl_coef"][0], out.metrics["update_kl"][0]  # the coefficient each update used
    assert coef[0] == 4.0
    np.testing.assert_array_equal(coef[1:], losses.adapt_kl_coef(coef[:-1], kl[:-1], 0.003))
    assert len(np.unique(coef)) > 1  # it did adapt
    assert out.state.agent.kl_coef[0] == losses.adapt_kl_coef(coef[-1], kl[-1], 0.003)


def test_kl_and_ewma_state_resume_bit_identically(tmp_path):
    config = jaxrl.load_config("ppo_kl_cartpole", total_steps=16 * 256, num_steps=64, update_epochs=1,
                               ewma_decay=0.8)
    full = train_seeds(config, 2, chunk_size=4)

    def stop(done, metrics, seconds):
        if done > 8:
            raise Interrupted

    with pytest.raises(Interrupted):
        train_seeds(config, 2, chunk_size=4, on_chunk=stop, checkpoint_dir=tmp_path)
    resumed = train_seeds(config, 2, checkpoint_dir=tmp_path, resume=True)
    assert resumed.resumed_from == 8
    assert_same_run(full, resumed)
    assert resumed.state.agent.prox_params is not None and resumed.state.agent.kl_coef.shape == (2,)


def _categoricals(key, n=64, actions=3):
    k = jax.random.split(key, 4)
    pi = distrax.Categorical(logits=jax.random.normal(k[0], (n, actions)))
    reference = distrax.Categorical(logits=jax.random.normal(k[1], (n, actions)))
    action = jax.random.randint(k[2], (n,), 0, actions)
    return pi, reference, action, jax.random.normal(k[3], (n,))


@pytest.mark.parametrize("iteration", [0, 50, 90])
def test_mdpo_weighs_the_kl_to_the_previous_policy_by_one_over_t_k(iteration):
    train = jaxrl.make_train(jaxrl.load_config("mdpo_cartpole", total_steps=100 * 512))
    ctx = context(train)._replace(iteration=jnp.int32(iteration))
    pi, reference, action, adv = _categoricals(jax.random.key(0))
    ratio = jnp.exp(pi.log_prob(action) - reference.log_prob(action))
    kl = np.sum(pi.probs * (np.log(pi.probs) - np.log(reference.probs)), -1)  # KL[new, old], by hand
    expected = -np.mean(ratio * adv - kl / (1 - iteration / 100))
    got = ppo.objective_loss(ctx, ratio, adv, pi, reference, None)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_kl_objective_penalises_kl_from_the_old_policy():
    ctx = context(jaxrl.make_train(jaxrl.load_config("ppo_kl_cartpole", total_steps=512 * 4)))
    pi, reference, action, adv = _categoricals(jax.random.key(1))
    ratio = jnp.exp(pi.log_prob(action) - reference.log_prob(action))
    kl = np.sum(reference.probs * (np.log(reference.probs) - np.log(pi.probs)), -1)  # KL[old, new]
    got = ppo.objective_loss(ctx, ratio, adv, pi, reference, jnp.float32(3.0))
    np.testing.assert_allclose(got, -np.mean(ratio * adv - 3.0 * kl), rtol=1e-5)


def test_ewma_is_the_bias_corrected_average_of_the_parameter_sequence():
    config = jaxrl.load_config("ppo_ewma_cartpole", ewma_decay=0.7)
    ctx = context(jaxrl.make_train(config))
    agent = ppo.init(ctx, jax.random.key(0))
    sequence = [agent.params] + [jax.tree.map(lambda x, i=i: x + i + 1.0, agent.params) for i in range(5)]
    for params in sequence[1:]:
        agent = ppo.ewma(ctx, agent.replace(params=params))
    weights = 0.7 ** np.arange(5, -1, -1)  # the newest parameters weigh 1, the initial ones 0.7^5
    expected = jax.tree.map(lambda *xs: sum(w * x for w, x in zip(weights, xs)) / weights.sum(), *sequence)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), agent.prox_params, expected)
    assert float(agent.prox_weight) == pytest.approx(weights.sum())


def test_ewma_clips_around_the_proximal_policy_and_weights_advantages_behaviour_to_proximal():
    config = jaxrl.load_config("ppo_ewma_cartpole", normalize_advantages=False)
    ctx = context(jaxrl.make_train(config))
    params = ppo.init(ctx, jax.random.key(0)).params
    k = jax.random.split(jax.random.key(1), 3)
    obs = jax.random.normal(k[0], (32, 4))
    action = jax.random.randint(k[1], (32,), 0, 2)
    log_prob = ppo.network(ctx).apply(params, obs, method=ppo.ActorCritic.policy).log_prob(action)
    behaviour = log_prob + 0.3 * jax.random.normal(k[2], (32,))  # the rollout's log-probs differ
    adv = jnp.linspace(-1.0, 1.0, 32)
    mb = {"obs": obs, "action": action, "log_prob": behaviour, "value": jnp.zeros(32),
          "advantage": adv, "target": jnp.zeros(32)}
    _, metrics = ppo.loss(ctx, params, mb, reference=params)  # proximal = current: ratio 1
    assert float(metrics["clip_fraction"]) == 0.0
    np.testing.assert_allclose(metrics["policy_loss"], -np.mean(np.exp(log_prob - behaviour) * adv), rtol=1e-5)


def dpo_again(ratio, advantage, ctx):
    """A user drift: the published one, through the user-drift path."""
    return losses.dpo_drift(ratio, advantage, ctx.hp["dpo_alpha"], ctx.hp["dpo_beta"])


def no_drift(ratio, advantage, ctx):
    return jnp.zeros_like(ratio)


def test_a_user_drift_function_replaces_the_published_one():
    config = jaxrl.load_config("dpo_cartpole", total_steps=8 * 512)
    ctx = context(jaxrl.make_train(config))
    pi, reference, action, adv = _categoricals(jax.random.key(2))
    ratio = jnp.exp(pi.log_prob(action) - reference.log_prob(action))

    def loss_with(drift):
        return ppo.objective_loss(ctx._replace(config=config.replace(drift=drift)), ratio, adv, pi, None, None)

    builtin = ppo.objective_loss(ctx, ratio, adv, pi, None, None)
    np.testing.assert_allclose(loss_with("tests.test_ppo_objectives.dpo_again"), builtin, rtol=1e-6)
    np.testing.assert_allclose(loss_with("tests.test_ppo_objectives.no_drift"), -np.mean(ratio * adv), rtol=1e-6)
    assert abs(float(builtin) + float(np.mean(ratio * adv))) > 1e-3  # the drift matters on this batch
    _, out = run(config.replace(drift="tests.test_ppo_objectives.dpo_again"))  # and trains in the loop
    assert (out.state.diverged_at == -1).all()


@pytest.mark.parametrize("overrides, match", [
    ({"objective": "klpen"}, "objective must be one of clip, kl, spo, mdpo, dpo, pg, got 'klpen'"),
    ({"objective": "kl", "kl_target": 0.0}, "kl_target must be > 0"),
    ({"objective": "kl", "kl_coef": -1.0}, "kl_coef must be > 0"),
    ({"objective": "dpo", "dpo_alpha": 0.0}, "dpo_alpha must be > 0"),
    ({"objective": "dpo", "dpo_beta": -0.6}, "dpo_beta must be > 0"),
    ({"ewma_decay": 1.0}, r"ewma_decay must be in \[0, 1\)"),
    ({"ewma_decay": -0.1}, r"ewma_decay must be in \[0, 1\)"),
    ({"drift": "tests.test_ppo_objectives.dpo_again"}, "used only by objective 'dpo', not 'clip'"),
    ({"objective": "dpo", "drift": "no_such_module.drift"}, "drift 'no_such_module.drift' cannot be imported"),
    ({"objective": "dpo", "drift": "tests.test_ppo_objectives.nothing"}, "cannot be imported"),
    ({"objective": "dpo", "drift": "tests.test_ppo_objectives.CONFIGS"}, "import path of a function"),
    ({"objective": "dpo", "drift": "dpo_again"}, "import path of a function"),
])
def test_bad_settings_fail_before_compiling(overrides, match):
    with pytest.raises(ConfigError, match=match):
        jaxrl.load_config("ppo_cartpole", **overrides)


# ------------------------------------------------------------------ A2C and REINFORCE (objective pg)
@pytest.mark.timeout(600)
@pytest.mark.parametrize("name, steps", [("a2c_cartpole", 100_096), ("reinforce_cartpole", 100_000)])
def test_a2c_and_reinforce_learn_cartpole(name, steps):
    config = jaxrl.load_config(name, total_steps=steps)
    _, out = run(config, seeds=2)
    final = final_return(out.metrics, 20)
    assert np.nanmean(final) >= 150.0, f"{name}: final returns {final}"
    assert (out.state.diverged_at == -1).all()


def test_pg_objective_has_the_policy_gradient_at_the_data_policy():
    """-r A at r = 1 (one epoch, one minibatch) has REINFORCE's gradient -A grad log pi."""
    logits = jnp.array([[0.3, -0.2, 0.5], [1.0, 0.0, -1.0]])
    actions, adv = jnp.array([2, 0]), jnp.array([1.5, -0.7])

    def surrogate(lg):
        log_prob = distrax.Categorical(logits=lg).log_prob(actions)
        return losses.policy_gradient(jnp.exp(log_prob - jax.lax.stop_gradient(log_prob)), adv)

    reinforce = lambda lg: -(distrax.Categorical(logits=lg).log_prob(actions) * adv).mean()  # noqa: E731
    np.testing.assert_allclose(jax.grad(surrogate)(logits), jax.grad(reinforce)(logits), rtol=1e-6)
    np.testing.assert_allclose(losses.policy_gradient(jnp.array([1.0, 2.0]), adv), -(1.5 - 1.4) / 2, rtol=1e-6)


@pytest.mark.parametrize("baseline", [True, False])
def test_reinforce_advantages_are_the_returns(monkeypatch, baseline):
    """baseline: false hands the policy loss the lambda-returns themselves, not returns - values."""
    config = jaxrl.load_config("reinforce_cartpole", baseline=baseline, num_steps=6, num_envs=2)
    train = jaxrl.make_train(config)
    ctx = context(train)
    agent = ppo.init(ctx, jax.random.key(0))
    t, n = 6, 2
    obs = jax.random.normal(jax.random.key(1), (t, n, 4))
    done = jnp.zeros((t, n), bool).at[3, 0].set(True)
    traj = jaxrl.core.Transition(obs, jnp.zeros((t, n), jnp.int32), jnp.ones((t, n)), done, jnp.zeros((t, n), bool),
                                 jnp.roll(obs, -1, 0), jnp.zeros((t, n), bool), {})
    seen = {}

    def spy(step, agent, data, key, epochs, minibatches, sequences=False):
        seen.update(data)
        return agent, {}

    monkeypatch.setattr(ppo.batching, "epochs", spy)
    ppo.learn(ctx, agent, traj, jax.random.key(2))
    gap = np.asarray(seen["advantage"] - seen["target"])
    if baseline:
        np.testing.assert_allclose(gap, -np.asarray(seen["value"]), rtol=1e-5, atol=1e-6)
    else:
        assert (gap == 0).all()
