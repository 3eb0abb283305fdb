"""jaxrl.rng: the straight-line threefry draws JAX's own bits, and the loop's switch changes nothing
but the program's code."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrl
from jaxrl import rng


def draws(key):
    """One of every kind of draw jaxrl and its libraries make, from one key."""
    k1, k2 = jax.random.split(key)
    folded = jax.random.fold_in(k2, 3)
    return {"split": jax.random.key_data(jax.random.split(key, (3, 5))),
            "fold_in": jax.random.key_data(folded),
            "uniform": jax.random.uniform(k1, (7, 3)),
            "scalar": jax.random.uniform(key, ()),
            "odd": jax.random.bits(folded, (1001,)),
            "u8": jax.random.bits(k1, (9,), jnp.uint8),
            "u16": jax.random.bits(k2, (5,), jnp.uint16),
            "normal": jax.random.normal(k2, (2, 513)),
            "categorical": jax.random.categorical(k1, jnp.zeros((64, 6))),
            "randint": jax.random.randint(folded, (11,), 0, 100),
            "permutation": jax.random.permutation(k2, 10),
            "choice": jax.random.choice(k1, 20, (4,), replace=False)}


@pytest.mark.parametrize("vmapped", [False, True], ids=["eager", "vmap"])
def test_straight_keys_draw_jax_bits(vmapped):
    keys = jax.vmap(jax.random.key)(jnp.arange(3))
    fn = jax.jit(jax.vmap(draws)) if vmapped else draws
    keys = keys if vmapped else keys[1]
    ours, theirs = jax.device_get(fn(rng.straight(keys))), jax.device_get(fn(keys))
    for name in theirs:
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)


def test_straight_keys_compile_without_the_loop():
    """JAX's CPU threefry is a while loop; the straight keys' program has none."""
    keys = jax.vmap(jax.random.key)(jnp.arange(3))
    program = jax.jit(jax.vmap(draws))
    assert "while" in program.lower(keys).as_text()
    assert "while" not in program.lower(rng.straight(keys)).as_text()


def test_like_restores_the_callers_keys_and_others_pass_through():
    key = jax.random.key(7)
    fast = rng.straight(key)
    assert str(jax.random.key_impl(fast)) == "threefry2x32_straight"
    back = rng.like(jax.random.split(fast)[0], key)
    assert jax.random.key_impl(back) == jax.random.key_impl(key)
    np.testing.assert_array_equal(jax.random.key_data(back), jax.random.key_data(jax.random.split(key)[0]))
    other = jax.random.key(7, impl="rbg")  # not threefry: left as it is
    assert rng.straight(other) is other and rng.like(other, other) is other


def test_straight_rng_changes_no_result():
    """A DQN run (the family the switch is for) with and without it: every output equal, and the
    state's key stays a key of the caller's kind."""
    outs = []
    for straight in (False, True):
        config = jaxrl.load_config("dqn_cartpole", total_steps=2_000, learning_starts=500, straight_rng=straight)
        train = jax.jit(jax.vmap(jaxrl.make_train(config)))
        outs.append(jax.device_get(train(jaxrl.seed_keys(0, 2))))
    assert jax.random.key_impl(outs[1].state.key) == jax.random.key_impl(jaxrl.seed_keys(0, 1))
    plain = lambda out: jax.tree.leaves(out.replace(state=out.state.replace(key=jax.random.key_data(out.state.key))))  # noqa: E731
    for a, b in zip(plain(outs[0]), plain(outs[1]), strict=True):
        np.testing.assert_array_equal(a, b)
