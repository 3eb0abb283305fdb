"""Rainbow's parts as options of dqn: prioritized replay (against NumPy and a chi-square test),
noisy layers (their noise against the factorised formula), and the combination: a checkpoint of a
prioritized buffer, bad configs; in the slow suite (they compile the whole program several
times) a resumed run, vmapped seeds and data parallelism. The rainbow probe test (including its
noisy acting and mean-weight greedy policy) is in test_probes.py, the learning test in
test_learning.py (slow suite)."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import jaxrl
from jaxrl import networks, replay
from jaxrl.algos import dqn
from jaxrl.config import ConfigError
from jaxrl.core import Context, Transition
from jaxrl.checkpoint import Checkpointer
from jaxrl.runner import train_seeds
from tests.conftest import xla_flags
from tests.test_checkpoint import Interrupted, assert_same_run

ALPHA = 0.7
# jitted, each helper compiles once per buffer shape instead of every operation on its own
_add = jax.jit(replay.add)
_update = jax.jit(replay.update_priorities)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _buffer(envs: int, capacity: int, length: int, steps: int) -> replay.Buffer:
    """A prioritized buffer of ``envs`` x ``capacity`` slots after ``steps`` added steps (in
    rollouts of 3 and a shorter last one); item ``t`` of env ``e`` at step ``s`` is ``100 * e + s``."""
    buf = replay.create({"t": jnp.int32(0)}, envs, capacity, prioritized=length)
    for start in range(0, steps, 3):
        s = np.arange(start, min(start + 3, steps))
        buf = replay.add(buf, {"t": jnp.asarray(s[:, None] + 100 * np.arange(envs), jnp.int32)})
    return buf


def _at(env, slot) -> replay.Drawn:
    """Items to write priorities to, as a draw would give them."""
    return replay.Drawn(jnp.asarray(env), jnp.asarray(slot), None, None, None)


def _drawable_items(buf: replay.Buffer) -> tuple[np.ndarray, np.ndarray]:
    ok = np.asarray(replay.drawable(buf, buf.priorities.length))
    return np.nonzero(np.broadcast_to(ok, (buf.num_envs, buf.capacity)))


def _with_random_priorities(buf: replay.Buffer, seed: int = 0) -> replay.Buffer:
    """Every drawable item gets a priority in [0.05, 3] (a spread a uniform draw cannot match)."""
    env, slot = _drawable_items(buf)
    priority = np.random.default_rng(seed).uniform(0.05, 3.0, len(env)).astype(np.float32)
    return _update(buf, _at(env, slot), jnp.asarray(priority), ALPHA)


def _probabilities(buf: replay.Buffer) -> np.ndarray:
    """NumPy's P(i) = p_i^alpha / sum_k p_k^alpha over the drawable items, 0 elsewhere."""
    ok = np.asarray(replay.drawable(buf, buf.priorities.length))
    weight = np.where(ok, np.asarray(buf.priorities.value, np.float64), 0.0)
    return weight / weight.sum()


@jax.jit
def _draws(buf: replay.Buffer, keys: jax.Array) -> tuple[replay.Drawn, jax.Array]:
    """A prioritized draw of 256 items per key, and the drawn windows' ``t``, ``(keys, 256, length)``."""
    length = buf.priorities.length
    drawn = jax.vmap(lambda k: replay.draw(buf, k, 256, length, prioritized=True))(keys)
    return drawn, jax.vmap(lambda d: replay.take(buf, d, length)["t"])(drawn)


def _counts(buf: replay.Buffer, drawn: replay.Drawn) -> np.ndarray:
    counts = np.zeros((buf.num_envs, buf.capacity))
    np.add.at(counts, (np.asarray(drawn.env).ravel(), np.asarray(drawn.slot).ravel()), 1)
    return counts


def _chi_square_p_value(counts: np.ndarray, probabilities: np.ndarray) -> float:
    """The p-value of the counts under the probabilities (the cells of positive probability;
    a count in a cell of probability 0 is an outright failure)."""
    assert counts[probabilities == 0].sum() == 0
    cells = probabilities > 0
    expected = counts.sum() * probabilities[cells]
    statistic = ((counts[cells] - expected) ** 2 / expected).sum()
    return float(stats.chi2.sf(statistic, cells.sum() - 1))


def test_prioritized_draws_follow_p_alpha_and_a_uniform_draw_fails_the_same_test():
    """Windows of 3 steps from a buffer that wrapped around (3 envs x 8 slots, 14 steps added),
    drawn 51200 times."""
    length = 3
    buf = _with_random_priorities(_buffer(3, 8, length, 13))
    # windows never cross the write position: the largest priority so far becomes huge, the next
    # step gets it (the newest step: the end of no drawable window yet), then the item that
    # raised it gets an ordinary priority back
    huge = _at([0], [int(_drawable_items(buf)[1][0])])
    buf = _update(buf, huge, jnp.array([1e6]), ALPHA)
    buf = _add(buf, {"t": jnp.asarray([[13, 113, 213]], jnp.int32)})  # size 8, write position 6
    buf = _update(buf, huge, jnp.array([1.0]), ALPHA)
    newest = [5, 4]  # slots of steps 13 and 12: windows starting there would cross into the oldest
    np.testing.assert_allclose(buf.priorities.value[:, newest[0]], 1e6**ALPHA, rtol=1e-6)
    assert (_probabilities(buf)[:, newest] == 0).all()
    probabilities = _probabilities(buf)
    keys = jax.random.split(jax.random.key(0), 200)  # 51200 draws
    prioritized, windows = _draws(buf, keys)
    assert _chi_square_p_value(_counts(buf, prioritized), probabilities) > 1e-3  # also: none of P = 0
    # the test has the power to tell: as many draws from a uniform sampler fail it outright, and so
    # do draws proportional to p instead of p^alpha
    env, slot = _drawable_items(buf)
    pick = np.random.default_rng(0).integers(len(env), size=len(keys) * 256)
    assert _chi_square_p_value(_counts(buf, _at(env[pick], slot[pick])), probabilities) < 1e-12
    raw = probabilities ** (1 / ALPHA) / (probabilities ** (1 / ALPHA)).sum()
    counts = np.random.default_rng(1).multinomial(len(keys) * 256, raw.ravel()).reshape(raw.shape)
    assert _chi_square_p_value(counts, probabilities) < 1e-12
    windows = np.asarray(windows).reshape(-1, length)
    np.testing.assert_array_equal(np.diff(windows, axis=1), 1)  # consecutive steps of one env
    assert windows[:, -1].max() % 100 == 13 and windows[:, 0].min() % 100 == 6  # steps 6..13 are stored
    # each drawn item's probability and the importance weights, against NumPy
    drawn = jax.tree.map(lambda x: np.asarray(x)[0], prioritized)
    np.testing.assert_allclose(drawn.probability, probabilities[drawn.env, drawn.slot], rtol=1e-5)
    beta, count = 0.4, (probabilities > 0).sum()
    assert int(drawn.count) == count == 3 * (int(buf.size) - length + 1)
    weights = (count * probabilities[drawn.env, drawn.slot]) ** -beta / (count * probabilities[env, slot]).min() ** -beta
    got = replay.importance_weights(drawn, jnp.float32(beta))
    np.testing.assert_allclose(got, weights, rtol=1e-5)
    assert got.max() <= 1.0
    # priorities written with alpha = 0 are all 1: uniform draws over the drawable items, weights 1
    flat = _update(buf, _at(env, slot), jnp.ones(len(env)), 0.0)
    flat_draws, _ = _draws(flat, keys)
    assert _chi_square_p_value(_counts(flat, flat_draws), (probabilities > 0) / count) > 1e-3
    np.testing.assert_allclose(replay.importance_weights(jax.tree.map(lambda x: x[0], flat_draws), 1.0), 1.0, rtol=1e-6)


def test_trees_match_numpy_after_adds_and_updates():
    rng = np.random.default_rng(3)
    buf = _buffer(2, 6, 2, 4)
    for step in range(12):  # wraps twice; rollouts of 1 to 3 steps
        if step % 2:
            env, slot = _drawable_items(buf)
            pick = rng.choice(len(env), 4)  # with repeats
            buf = _update(buf, _at(env[pick], slot[pick]), jnp.asarray(rng.uniform(0.1, 5, 4), jnp.float32), ALPHA)
        else:
            buf = _add(buf, {"t": jnp.zeros((rng.integers(1, 4), 2), jnp.int32)})
        pr = buf.priorities
        value = np.where(np.asarray(replay.drawable(buf, 2)), np.asarray(pr.value), np.nan)
        np.testing.assert_allclose(pr.sums[:, 1], np.nansum(value, 1), rtol=1e-6)
        np.testing.assert_allclose(pr.mins[:, 1], np.nanmin(value, 1), rtol=1e-6)
        sums, leaves = np.asarray(pr.sums), pr.leaves
        np.testing.assert_array_equal(sums[:, 1:leaves], sums[:, 2:2 * leaves:2] + sums[:, 3:2 * leaves:2])
        np.testing.assert_allclose(pr.largest.max(), np.nanmax(np.asarray(pr.value)), rtol=1e-6)
    # the drawn slots only: one drawn twice gets the larger of its two new priorities
    before = np.asarray(buf.priorities.value)
    env, slot = _drawable_items(buf)
    pick = [0, 1, 0, len(env) - 1]
    buf = _update(buf, _at(env[pick], slot[pick]), jnp.array([2.0, 0.5, 7.0, 1.0]), ALPHA)
    expected = before.copy()
    expected[env[pick], slot[pick]] = np.array([7.0, 0.5, 7.0, 1.0]) ** ALPHA
    np.testing.assert_allclose(buf.priorities.value, expected, rtol=1e-6)
    # a slot that cannot be drawn (the newest step: no window of 2 starts there yet) keeps its new
    # value but stays out of the trees
    newest = (int(buf.pos) - 1) % buf.capacity
    assert not replay.drawable(buf, 2)[newest]
    sums, mins = np.asarray(buf.priorities.sums), np.asarray(buf.priorities.mins)
    buf = _update(buf, _at([1], [newest]), jnp.array([9.0]), ALPHA)
    np.testing.assert_allclose(buf.priorities.value[1, newest], 9.0**ALPHA, rtol=1e-6)
    np.testing.assert_array_equal(buf.priorities.sums, sums)
    np.testing.assert_array_equal(buf.priorities.mins, mins)


def test_a_gradient_step_weighs_its_loss_and_sets_the_drawn_items_priorities():
    """dqn with 3-step returns (no noise: the errors are deterministic), one learn step: its loss
    is the mean of the drawn items' losses times their importance weights, and exactly the drawn
    slots get new priorities, (|TD error| + eps)^alpha of their windows computed with the
    parameters before the step; nothing else changed."""
    config = jaxrl.load_config("dqn_cartpole", prioritized=True, n_step=3, num_envs=4, buffer_size=64,
                               batch_size=32, learning_starts=32, total_steps=1000, hidden=[16])
    ctx = Context(config, jaxrl.make_train(config).spec, config.hparams(), jnp.int32(20))
    T, k = 12, jax.random.split(jax.random.key(1), 5)
    stream = {"obs": jax.random.normal(k[0], (T, 4, 4)), "action": jax.random.randint(k[1], (T, 4), 0, 2),
              "reward": jax.random.normal(k[2], (T, 4)), "terminated": jax.random.uniform(k[3], (T, 4)) < 0.1,
              "truncated": jax.random.uniform(k[4], (T, 4)) < 0.1}
    traj = Transition(**stream, next_obs=stream["obs"] + 1.0, first=jnp.zeros((T, 4), bool), extras={})

    @jax.jit
    def step(key: jax.Array) -> tuple:
        # 8 steps stored before with priorities in [0.05, 3], then learn adds 12 more (16 slots:
        # it wraps, the 4 newest of the earlier steps stay): the weights are not all 1
        agent = dqn.init(ctx, key)
        earlier = replay.add(agent.buffer, replay.transitions(jax.tree.map(lambda x: x[:8], traj)))
        everywhere = replay.Drawn(jnp.repeat(jnp.arange(4), 16), jnp.tile(jnp.arange(16), 4), None, None, None)
        earlier = replay.update_priorities(earlier, everywhere, jax.random.uniform(key, (64,), minval=0.05, maxval=3),
                                           ctx.hp["priority_alpha"])
        agent = agent.replace(buffer=earlier)
        stored = replay.add(earlier, replay.transitions(traj))
        learned, metrics = dqn.learn(ctx, agent, traj, jax.random.key(2))
        batch = replay.nstep_at(stored, everywhere, 3, ctx.hp["gamma"])  # every window (some not drawable)
        goal = dqn.td_target(ctx, agent.params, agent.target_params, batch, key)
        error = dqn.item_losses(ctx, agent.params, goal, batch, key)[1].reshape(4, 16)
        # the one gradient step's draw, as learn makes it (update_after_warmup's key of step 0)
        step_key = jax.random.split(jax.random.key(2), config.updates_per_iteration)[0]
        drawn = replay.draw(stored, step_key, 32, 3, prioritized=True)
        weight = replay.importance_weights(drawn, dqn.priority_beta(ctx))
        b = replay.nstep_at(stored, drawn, 3, ctx.hp["gamma"])
        k_online, k_target = dqn.loss_keys(step_key)
        per_item = dqn.item_losses(ctx, agent.params, dqn.td_target(ctx, agent.params, agent.target_params, b,
                                                                     k_target), b, k_online)[0]
        return (stored.priorities.value, learned.buffer.priorities.value, error, replay.drawable(stored, 3),
                drawn, weight, (weight * per_item).mean(), metrics)

    before, after, error, drawable, drawn, weight, loss, metrics = jax.device_get(step(jax.random.key(0)))
    env, slot = np.nonzero(before != after)
    assert drawable[slot].all()
    assert set(zip(env, slot)) == set(zip(drawn.env, drawn.slot))  # the drawn items, all of them
    np.testing.assert_allclose(after[env, slot], (error[env, slot] + config.priority_eps) ** config.priority_alpha,
                               rtol=1e-4)
    assert weight.min() < 0.9  # the priorities differ (a buffer that wrapped): the weights matter
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
    np.testing.assert_allclose(metrics["importance_weight"], weight.mean(), rtol=1e-5)


def test_priority_beta_anneals_linearly_over_training():
    config = jaxrl.load_config("rainbow_cartpole", priority_beta_start=0.2, priority_beta_end=0.8)
    beta = [float(dqn.priority_beta(Context(config, None, config.hparams(), jnp.int32(i))))
            for i in (0, config.num_iterations // 4, config.num_iterations)]
    np.testing.assert_allclose(beta, [0.2, 0.35, 0.8], rtol=1e-6)


def test_a_gradient_steps_noise_and_fractions_do_not_reuse_the_draws_keys():
    """The minibatch is drawn with the step's key: uniformly its two splits (env, time) and their
    splits inside ``randint``, prioritized its own bits. The online and target passes' keys (IQN's
    fractions, the noise: its own stream of them) are none of those. (With JAX's partitionable
    threefry ``split(k, n)[i] == fold_in(k, i)``: ``fold_in(step_key, 1)`` was the time key.)"""
    step_key = jax.random.key(3)
    data = lambda k: tuple(np.asarray(jax.random.key_data(k)).tolist())  # noqa: E731
    children = lambda k: list(jax.random.split(k))  # noqa: E731
    draw = [step_key, *children(step_key)]
    draw += [g for c in children(step_key) for g in children(c)]
    passes = list(dqn.loss_keys(step_key))
    passes += [jax.random.fold_in(k, dqn.NOISE_STREAM) for k in passes]
    passes += [g for k in dqn.loss_keys(step_key) for g in children(k)]  # td_target's (choose, target)
    assert not {data(k) for k in draw} & {data(k) for k in passes}
    assert len({data(k) for k in passes}) == len(passes)


# ------------------------------------------------------------------------------------ noisy nets


def test_noisy_dense_init_mean_weights_and_factorised_noise():
    inputs, features, draws = 6, 3, 40_000
    layer = networks.NoisyDense(features, sigma0=0.5)
    params = layer.init(jax.random.key(0), jnp.zeros((1, inputs)))["params"]
    bound = 1 / np.sqrt(inputs)
    assert np.abs(params["kernel"]).max() <= bound and np.abs(params["bias"]).max() <= bound
    np.testing.assert_allclose(params["sigma_kernel"], 0.5 * bound)
    np.testing.assert_allclose(params["sigma_bias"], 0.5 * bound)
    # general noise scales, to test the formula rather than the init
    rng = np.random.default_rng(0)
    params = {**params, "sigma_kernel": jnp.asarray(rng.uniform(0.1, 1.0, (inputs, features)), jnp.float32),
              "sigma_bias": jnp.asarray(rng.uniform(0.1, 1.0, features), jnp.float32)}
    x = jnp.asarray(rng.normal(size=(1, inputs)), jnp.float32)
    mean = np.asarray(x @ params["kernel"] + params["bias"])[0]
    np.testing.assert_allclose(layer.apply({"params": params}, x)[0], mean, rtol=1e-6)  # no noise rng: mu
    noisy = jax.jit(jax.vmap(lambda k: layer.apply({"params": params}, x, rngs={"noise": k})[0]))
    y = np.asarray(noisy(jax.random.split(jax.random.key(1), draws)), np.float64)
    # noise_j = f(e_j) (sum_i x_i sigma_ij f(e_i) + sigma_b_j), E f(e) = 0, E f(e)^2 = E|e| = sqrt(2 / pi)
    abs_normal = np.sqrt(2 / np.pi)
    sigma_w, sigma_b, xs = np.asarray(params["sigma_kernel"]), np.asarray(params["sigma_bias"]), np.asarray(x)[0]
    variance = abs_normal * (abs_normal * (xs[:, None] ** 2 * sigma_w**2).sum(0) + sigma_b**2)
    assert (np.abs(y.mean(0) - mean) < 5 * np.sqrt(variance / draws)).all()
    np.testing.assert_allclose(y.var(0), variance, rtol=0.05)
    assert np.abs(np.corrcoef(y.T)[np.triu_indices(features, 1)]).max() < 0.03  # outputs uncorrelated
    # factorised: with unit inputs and no bias noise the weight noise is an outer product (rank 1)
    unit = {**params, "sigma_kernel": jnp.ones((inputs, features)), "sigma_bias": jnp.zeros(features)}
    key = jax.random.key(2)
    rows = layer.apply({"params": unit}, jnp.eye(inputs), rngs={"noise": key}) - layer.apply({"params": unit}, jnp.eye(inputs))
    singular = np.linalg.svd(np.asarray(rows), compute_uv=False)
    assert singular[0] > 0.1 and singular[1] < 1e-5 * singular[0]
    again = layer.apply({"params": unit}, jnp.eye(inputs), rngs={"noise": key})
    other = layer.apply({"params": unit}, jnp.eye(inputs), rngs={"noise": jax.random.key(3)})
    np.testing.assert_array_equal(again - layer.apply({"params": unit}, jnp.eye(inputs)), rows)  # same key, same noise
    assert not np.allclose(other, again)


# ------------------------------------------------------------------------------- the combination

def test_a_prioritized_buffer_survives_a_checkpoint_bit_for_bit(tmp_path):
    """Its trees (infinities in the min tree where nothing can be drawn) and its static window
    length come back as saved (the full resume of a training run: the slow test below)."""
    state = {"buffer": _with_random_priorities(_buffer(3, 8, 3, 13)), "step": np.int32(7)}
    assert np.isinf(np.asarray(state["buffer"].priorities.mins)).any()
    metrics = {"episode_return": np.zeros((1, 1), np.float32), "episodes": np.ones((1, 1), np.float32)}
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(state, metrics, config={}, num_seeds=1, chunk_size=1)
    with Checkpointer(tmp_path) as ckpt:
        restored = ckpt.restore(jax.eval_shape(lambda: state)).state
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    assert restored["buffer"].priorities.length == 3
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


SMALL = dict(total_steps=1200, num_envs=4, learning_starts=200, buffer_size=400, batch_size=32,
             target_update_interval=10, hidden=[16], num_atoms=11, num_steps=5)  # 60 iterations


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """The rainbow config, 2 seeds: a whole run, and one interrupted after 2 checkpoints and resumed."""
    config = jaxrl.load_config("rainbow_cartpole", **SMALL)
    chunk, path = 20, tmp_path_factory.mktemp("rainbow")
    full = train_seeds(config, 2, chunk_size=chunk)

    def stop_after_two_checkpoints(done, metrics, seconds):
        if done > 2 * chunk:
            raise Interrupted

    with pytest.raises(Interrupted):
        train_seeds(config, 2, chunk_size=chunk, on_chunk=stop_after_two_checkpoints, checkpoint_dir=path)
    return config, full, train_seeds(config, 2, checkpoint_dir=path, resume=True)


@pytest.mark.slow  # three compilations of the rainbow program: about 60 s of CPU
def test_resume_with_a_prioritized_buffer_is_bit_identical(resumed):
    _, full, resumed_run = resumed
    assert resumed_run.resumed_from == 40
    assert_same_run(full, resumed_run)
    pr = full.state.agent.buffer.priorities
    assert (np.asarray(pr.value) != np.asarray(pr.value)[..., :1]).any()  # priorities were updated


@pytest.mark.slow  # with the test above: one more compilation
def test_vmapped_seed_equals_a_single_run(resumed):
    config, full, _ = resumed
    single = jax.jit(jaxrl.make_train(config))(jax.random.key(config.seed + 1))
    one = lambda tree: jax.tree.map(lambda x: np.asarray(x)[1], tree)  # noqa: E731
    for a, b in zip(jax.tree.leaves(one(full.state.agent.params)), jax.tree.leaves(single.state.agent.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(one(full.state.agent.buffer.priorities.value), single.state.agent.buffer.priorities.value,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(one(full.metrics)["loss"], jax.device_get(single.metrics)["loss"], rtol=1e-4, atol=1e-5)
    assert not np.array_equal(np.asarray(full.state.agent.params["params"]["NoisyDense_0"]["kernel"])[0],
                              one(full.state.agent.params)["params"]["NoisyDense_0"]["kernel"])  # seeds differ


PARALLEL = textwrap.dedent("""
    import json
    import jax, numpy as np
    import jaxrl
    config = jaxrl.load_config("rainbow_cartpole", total_steps=4000, num_envs=8, num_steps=5, learning_starts=800,
                               buffer_size=1600, batch_size=32, hidden=[16], num_atoms=11)
    out = jax.block_until_ready(jax.jit(jax.vmap(jaxrl.make_train(config, data_parallel=2)))(jaxrl.seed_keys(0, 2)))
    pr = out.state.agent.buffer.priorities
    copies = lambda x: [np.asarray(s.data) for s in x.addressable_shards]  # noqa: E731
    print("REPORT " + json.dumps({
        "value": [list(pr.value.shape), str(pr.value.sharding.spec)],
        "sums": [list(pr.sums.shape), str(pr.sums.sharding.spec)],
        "params_equal": all(all(np.array_equal(c[0], o) for o in c[1:])
                            for c in map(copies, jax.tree.leaves(out.state.agent.params))),
        "shards_differ": [not np.array_equal(*copies(pr.value))],
        "loss_finite": bool(np.isfinite(out.metrics["loss"][:, -1]).all()),
        "weight": float(np.nanmax(out.metrics["importance_weight"])),
        "diverged": np.asarray(out.state.diverged_at).tolist()}))
""")


@pytest.mark.slow  # a subprocess with 2 simulated devices: about 30 s of CPU
def test_data_parallel_devices_keep_their_own_priorities(tmp_path):
    env = {**os.environ, "XLA_FLAGS": xla_flags(2), "JAX_PLATFORMS": "cpu",
           "JAXRL_NO_COMPILE_CACHE": "1"}
    proc = subprocess.run([sys.executable, "-c", PARALLEL], capture_output=True, text=True, env=env, timeout=900,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT "))[len("REPORT "):])
    # (seeds, envs, slots): the envs' axis split over the devices, like the data
    assert report["value"] == [[2, 8, 200], "P(None, 'data')"] and report["sums"][1] == "P(None, 'data')"
    assert report["params_equal"] and report["shards_differ"] == [True]
    assert report["loss_finite"] and report["diverged"] == [-1, -1]
    assert 0 < report["weight"] <= 1.0  # normalised by the largest weight over both devices' items


@pytest.mark.parametrize("overrides, message", [
    ({"priority_alpha": -0.1}, "priority_alpha must be >= 0"),
    ({"priority_beta_start": 1.5}, r"priority_beta_start must be in \[0, 1\]"),
    ({"priority_beta_end": -0.1}, r"priority_beta_end must be in \[0, 1\]"),
    ({"priority_eps": 0.0}, "priority_eps must be > 0"),
    ({"noisy_sigma0": 0.0}, "noisy_sigma0 must be > 0"),
    ({"noisy_sigma0": -1.0}, "noisy_sigma0 must be > 0"),
])
def test_bad_rainbow_options_fail_before_compiling(overrides, message):
    with pytest.raises(ConfigError, match=message):
        jaxrl.load_config("rainbow_cartpole", **overrides)
