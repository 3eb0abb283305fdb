"""Data-parallel runs (``make_train(config, data_parallel=D)``) on 4 simulated CPU devices.

The checks run in one subprocess (the device count is fixed when jax starts), which prints a
JSON report; the tests below each read their part of it. Learning alone cannot catch a gradient
that is D times too large: Adam (and clipping) are scale-invariant, and a measured naive
grad-then-pmean PPO run learned as well as the correct one. So the first test compares the
gradient itself (its norm and Adam's moments) with a single-device step, with clipping off.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

import jaxrl.cli
from tests.conftest import xla_flags

D = 4

SCRIPT = textwrap.dedent("""
    import functools, json, time
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import PartitionSpec as P
    import jaxrl
    from jaxrl import optim, parallel
    from jaxrl.algos import ppo
    from jaxrl.config import ConfigError
    from jaxrl.core import Context
    from jaxrl.metrics import final_return
    from jaxrl.runner import train_seeds

    D = len(jax.devices())
    report = {"devices": D}
    numeric = lambda t: jax.tree.map(  # noqa: E731
        lambda x: jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x, t)

    def max_diff(a, b):
        return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)), initial=0.0))
                   for x, y in zip(jax.tree.leaves(numeric(a)), jax.tree.leaves(numeric(b))))

    def differing_copies(tree):
        # Paths of leaves whose copies of the same slice differ between devices (replicated
        # leaves: one slice, D copies; sharded leaves: one copy per slice, nothing to compare).
        bad = []
        for path, x in jax.tree_util.tree_leaves_with_path(numeric(tree)):
            copies = {}
            for shard in x.addressable_shards:
                copies.setdefault(str(shard.index), []).append(np.asarray(shard.data))
            if any(not np.array_equal(c[0], o) for c in copies.values() for o in c[1:]):
                bad.append(jax.tree_util.keystr(path))
        return bad

    # (1) one gradient step on a minibatch split over D devices == one step on the whole minibatch
    config = jaxrl.load_config("ppo_cartpole", max_grad_norm=1e6)  # clipping off: scale must show
    spec = jaxrl.make_train(config).spec
    ctx = Context(config, spec, config.hparams(), jnp.int32(0))
    agent = ppo.init(ctx, jax.random.key(0))
    k = jax.random.split(jax.random.key(1), 6)
    B = 64
    mb = {"obs": jax.random.normal(k[0], (B, 4)), "action": jax.random.randint(k[1], (B,), 0, 2),
          "log_prob": -0.7 + 0.1 * jax.random.normal(k[2], (B,)), "value": jax.random.normal(k[3], (B,)),
          "advantage": jax.random.normal(k[4], (B,)), "target": jax.random.normal(k[5], (B,))}
    opt = optim.Optimizer()
    ctx = ctx._replace(hp={**ctx.hp, "lr": jnp.float32(1e-3)})

    def step(params, opt_state, mb, axis=None):
        loss = lambda p, b: ppo.loss(ctx._replace(axis=axis), p, b)  # noqa: E731
        return opt.step(ctx._replace(axis=axis), params, opt_state, loss, mb)

    def naive_grad(params, mb):  # the trap: grad w.r.t. the replicated params, then pmean
        loss = lambda p: ppo.loss(ctx._replace(axis="data"), p, mb)[0]  # noqa: E731
        return jax.lax.pmean(jax.grad(loss)(params), "data")

    mesh = parallel.make_mesh(D)
    whole = jax.jit(step)(agent.params, agent.opt_state, mb)
    split = jax.jit(jax.shard_map(functools.partial(step, axis="data"), mesh=mesh,
                                  in_specs=(P(), P(), P("data")), out_specs=P()))(agent.params, agent.opt_state, mb)
    naive = jax.jit(jax.shard_map(naive_grad, mesh=mesh, in_specs=(P(), P("data")), out_specs=P()))(agent.params, mb)
    true = jax.grad(lambda p: ppo.loss(ctx, p, mb)[0])(agent.params)
    norm = lambda t: float(jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree.leaves(t))))  # noqa: E731
    report["grad"] = {"params": max_diff(whole[0], split[0]), "opt_state": max_diff(whole[1], split[1]),
                      "metrics": {n: abs(float(whole[2][n]) - float(split[2][n])) for n in whole[2]},
                      "grad_norm": float(whole[2]["grad_norm"]), "naive_ratio": norm(naive) / norm(true)}

    # (2) + (4) PPO over D devices: learns; every replicated leaf bitwise identical on every device
    config = jaxrl.load_config("ppo_cartpole", num_envs=8, total_steps=150_000,
                               normalize_obs=True, normalize_reward=True)
    train = jaxrl.make_train(config, data_parallel=D)
    t0 = time.perf_counter()
    out = jax.block_until_ready(jax.jit(jax.vmap(train))(jaxrl.seed_keys(0, 4)))
    obs = out.state.env.obs
    report["ppo"] = {
        "seconds": time.perf_counter() - t0, "final_return": final_return(jax.device_get(out.metrics)).tolist(),
        "metric_shapes": sorted({tuple(v.shape) for v in out.metrics.values()}),
        "iterations": config.num_iterations, "differing": differing_copies(out.state),
        "params_replicated": all(x.sharding.is_fully_replicated for x in jax.tree.leaves(out.state.agent.params)),
        "obs": [list(obs.shape), str(obs.sharding.spec)],
        "obs_count": float(out.state.obs_stats.count[0]),
        "env_steps": float(out.metrics["env_steps"][0, -1]),
        # per-device randomness: no two devices' envs are in the same state
        "distinct_env_shards": len({np.asarray(s.data).tobytes() for s in obs.addressable_shards}),
    }

    # (2) DQN over D devices: replicated leaves identical, replay buffer split; runner chunks == whole
    config = jaxrl.load_config("dqn_cartpole", num_envs=8, num_steps=10, total_steps=4000, learning_starts=800)
    train = jaxrl.make_train(config, data_parallel=D)
    whole = jax.block_until_ready(jax.jit(jax.vmap(train))(jaxrl.seed_keys(0, 2)))
    buffer = whole.state.agent.buffer
    chunked = train_seeds(config, num_seeds=2, chunk_size=7, data_parallel=D)  # 7 does not divide 50
    report["dqn"] = {
        "differing": differing_copies(whole.state), "buffer_obs": [list(buffer.data["obs"].shape),
                                                                   str(buffer.data["obs"].sharding.spec)],
        "buffer_size": np.asarray(buffer.size).tolist(), "loss_finite": bool(np.isfinite(whole.metrics["loss"][:, -1]).all()),
        "chunked_state": max_diff(chunked.state, whole.state),
        "chunked_metrics": max_diff(chunked.metrics, jax.device_get(whole.metrics)),
    }

    # (3) a one-device mesh draws the same keys and computes the same run as the plain loop
    config = jaxrl.load_config("ppo_cartpole", total_steps=4 * 512, normalize_obs=True, normalize_reward=True)
    plain = jax.jit(jaxrl.make_train(config))(jax.random.key(3))
    mesh1 = jax.jit(jaxrl.make_train(config, data_parallel=1))(jax.random.key(3))
    report["one_device"] = {"state": max_diff(plain.state, mesh1.state), "metrics": max_diff(plain.metrics, mesh1.metrics)}

    # (5) bad input: a ConfigError from make_train itself, i.e. before anything is traced or compiled
    bad = {"ppo_cartpole": [dict(num_envs=6), dict(num_envs=4, num_steps=6, num_minibatches=8)],
           "dqn_cartpole": [dict(num_envs=8, batch_size=130), dict(num_envs=8, buffer_size=10002)]}
    errors = []
    for name, cases in bad.items():
        for case in cases:
            try:
                jaxrl.make_train(jaxrl.load_config(name, **case), data_parallel=D)
                errors.append(None)
            except ConfigError as err:
                errors.append(str(err))
    for dp in (D + 1, 0, [1, 2]):
        try:
            jaxrl.make_train(jaxrl.load_config("ppo_cartpole"), data_parallel=dp)
            errors.append(None)
        except ConfigError as err:
            errors.append(str(err))
    report["errors"] = errors
    print("REPORT " + json.dumps(report))
""")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    env = {**os.environ, "XLA_FLAGS": xla_flags(D), "JAX_PLATFORMS": "cpu",
           "JAXRL_NO_COMPILE_CACHE": "1"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=900,
                          cwd=tmp_path_factory.mktemp("parallel"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT "))
    return json.loads(line[len("REPORT "):])


def test_split_gradient_step_equals_one_device_step(report):
    grad = report["grad"]
    assert grad["grad_norm"] > 0.1  # a real gradient, and clipping (at 1e6) is off
    assert grad["opt_state"] < 1e-6  # Adam's moments: the averaged gradient, not D times it
    assert grad["params"] < 1e-6
    assert max(grad["metrics"].values()) < 1e-5, grad["metrics"]  # loss, grad_norm, kl, ...
    # the trap the code avoids: differentiating w.r.t. replicated params already sums over devices
    assert grad["naive_ratio"] == pytest.approx(D, rel=1e-4)


def test_ppo_learns_with_params_identical_on_every_device(report):
    ppo = report["ppo"]
    assert ppo["differing"] == []  # params, Adam state, obs/reward statistics, keys, counters
    assert ppo["params_replicated"]
    assert ppo["metric_shapes"] == [[4, ppo["iterations"]]]  # global metrics, shaped as a plain run's
    assert ppo["obs"] == [[4, 8, 4], "P(None, 'data')"]  # env side sharded over the env axis
    assert ppo["distinct_env_shards"] == D
    assert ppo["env_steps"] == ppo["iterations"] * 8 * 128  # counted over all devices
    assert ppo["obs_count"] == pytest.approx(ppo["env_steps"], rel=1e-3)  # every device's obs merged
    # random play scores about 22; measured 492, 354, 500, 500 (mean 462)
    mean = sum(ppo["final_return"]) / 4
    assert mean > 250 and min(ppo["final_return"]) > 150, ppo["final_return"]


def test_dqn_buffer_split_params_identical_and_chunked_equals_whole(report):
    dqn = report["dqn"]
    assert dqn["differing"] == []
    # (seeds, envs, steps per env, obs): the env axis split over the devices with the envs
    assert dqn["buffer_obs"] == [[2, 8, 10_000 // 8, 4], "P(None, 'data')"]
    assert dqn["buffer_size"] == [4000 // 8] * 2  # steps filled per env
    assert dqn["loss_finite"]
    assert dqn["chunked_state"] < 1e-5 and dqn["chunked_metrics"] < 1e-4  # runner.run_chunk in parallel mode


def test_one_device_mesh_equals_plain_run(report):
    assert report["one_device"]["state"] < 1e-6 and report["one_device"]["metrics"] < 1e-5, report["one_device"]


def test_bad_input_fails_in_make_train(report):
    messages = report["errors"]
    expected = ["num_envs=6 does not divide over 4 devices",
                "each of 4 devices learns on num_envs \\* num_steps / 4 = 6 transitions, which do not divide "
                "into num_minibatches = 8",
                "batch_size=130 does not divide over 4 devices", "buffer_size=10002 is not a multiple of num_envs=8",
                "data_parallel=5 devices requested; 4 available", "data_parallel=0 devices requested",
                "data_parallel must be a device count, a list of devices or a Mesh"]
    assert len(messages) == len(expected)
    for message, pattern in zip(messages, expected):
        assert message is not None, pattern
        assert re.search(pattern, message), (pattern, message)


def test_cli_rejects_bad_data_parallel(tmp_path, capsys):
    assert jaxrl.cli.main(["train", "ppo_cartpole", "--data-parallel", "two", "--out", str(tmp_path)]) == 2
    assert "--data-parallel must be a device count >= 1 or 'all'" in capsys.readouterr().err
    # more devices than there are: refused before a run folder is made
    assert jaxrl.cli.main(["train", "ppo_cartpole", "--data-parallel", "64", "--out", str(tmp_path)]) == 2
    assert "data_parallel=64 devices requested" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_use_cpu_cores_gives_one_device_per_core_before_jax_starts():
    script = (
        "import jax\n"
        "from jaxrl.parallel import use_cpu_cores, seed_mesh\n"
        "assert use_cpu_cores(3) == 3\n"
        "assert [d.platform for d in jax.devices()] == ['cpu'] * 3\n"
        "assert use_cpu_cores(2) == 0  # JAX is running: left alone\n"
        "assert seed_mesh(6).size == 3 and seed_mesh(4).size == 2 and seed_mesh(5) is None\n"
        "print('ok')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAXRL_CPU_DEVICES")}
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr
    # a count the user configured wins; JAXRL_CPU_DEVICES=1 turns it off
    for extra in ({"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}, {"JAXRL_CPU_DEVICES": "1"}):
        check = "import jax\nfrom jaxrl.parallel import use_cpu_cores\nprint(use_cpu_cores(3), jax.device_count())\n"
        out = subprocess.run([sys.executable, "-c", check], env={**env, **extra}, capture_output=True, text=True,
                             timeout=300)
        expected = "0 2" if "XLA_FLAGS" in extra else "0 1"
        assert out.stdout.strip() == expected, (extra, out.stdout, out.stderr)


def test_train_seeds_split_over_devices_resumes_with_its_split(tmp_path):
    """4 seeds over 2 CPU devices: the checkpoint records the split, a resumed run continues
    bit-identically with it, and a process without enough devices is told so."""
    script = f"""
import jax
from jaxrl.parallel import use_cpu_cores
use_cpu_cores(2)
import numpy as np
import jaxrl
from jaxrl.checkpoint import Checkpointer
from jaxrl.runner import train_seeds

class Interrupted(Exception):
    pass

def stop(done, metrics, seconds):
    if done > 8:
        raise Interrupted

config = jaxrl.load_config("ppo_cartpole", total_steps=4096, num_steps=16, update_epochs=1, hidden=[16])
whole = train_seeds(config, 4, chunk_size=4)
assert whole.state.iteration.sharding.mesh.size == 2
try:
    train_seeds(config, 4, chunk_size=4, on_chunk=stop, checkpoint_dir="{tmp_path}")
except Interrupted:
    pass
assert Checkpointer("{tmp_path}").meta()["seed_devices"] == 2
resumed = train_seeds(config, 4, checkpoint_dir="{tmp_path}", resume=True)
assert resumed.resumed_from == 8
for k in whole.metrics:
    np.testing.assert_array_equal(whole.metrics[k], resumed.metrics[k], err_msg=k)
print("resumed")
"""
    refuse = f"""
import jaxrl
from jaxrl.config import ConfigError
from jaxrl.runner import train_seeds
config = jaxrl.load_config("ppo_cartpole", total_steps=4096, num_steps=16, update_epochs=1, hidden=[16])
try:
    train_seeds(config, 4, checkpoint_dir="{tmp_path}", resume=True)
except ConfigError as err:
    print("refused:", err)
"""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAXRL_CPU_DEVICES")}
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "resumed" in out.stdout, out.stderr[-3000:]
    out = subprocess.run([sys.executable, "-c", refuse], env=env, capture_output=True, text=True, timeout=600)
    assert "refused: cannot split 4 seeds over 2 devices (1 available" in out.stdout, out.stderr[-3000:]
