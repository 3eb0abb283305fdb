"""batching: the random permutation behind every shuffled minibatch, and the epoch loop."""

import collections
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl import batching


@pytest.mark.parametrize("n", [1, 2, 7, 512, 3000, 70000])
def test_permutation_is_a_permutation(n):
    order = np.asarray(batching.permutation(jax.random.key(n), n))
    assert order.dtype == np.int32
    np.testing.assert_array_equal(np.sort(order), np.arange(n))


def test_permutation_of_four_is_uniform_over_all_24_orders():
    keys = jax.random.split(jax.random.key(0), 24000)
    orders = np.asarray(jax.vmap(lambda k: batching.permutation(k, 4))(keys))
    counts = collections.Counter(map(tuple, orders))
    assert set(counts) == set(itertools.permutations(range(4)))
    expected = len(keys) / 24
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 50.0  # 23 degrees of freedom: P(chi2 > 50) < 1e-3


def test_permutation_of_many_items_mixes_positions_and_pairs():
    """Where item 0 lands is uniform, and any two items are in either order equally often
    (an index-ordered tie break of the packed keys, or a missing round, would skew both)."""
    n, draws = 512, 4000
    orders = np.asarray(jax.vmap(lambda k: batching.permutation(k, n))(jax.random.split(jax.random.key(1), draws)))
    where0 = np.argmax(orders == 0, axis=1)
    hist = np.bincount(where0 // 64, minlength=8)
    assert np.all(np.abs(hist - draws / 8) < 5 * np.sqrt(draws / 8))
    first_before_last = np.mean(np.argmax(orders == 0, axis=1) < np.argmax(orders == n - 1, axis=1))
    assert abs(first_before_last - 0.5) < 0.04
    # consecutive draws differ (the key is used)
    assert not np.array_equal(orders[0], orders[1])


def test_minibatches_hold_every_item_once_and_sequences_keep_time_order():
    data = {"x": jnp.arange(24.0), "y": jnp.arange(24) * 10}
    mbs = batching.minibatches(jax.random.key(0), data, 4)
    assert mbs["x"].shape == (4, 6)
    np.testing.assert_array_equal(np.sort(np.asarray(mbs["x"]).ravel()), np.arange(24.0))
    np.testing.assert_array_equal(np.asarray(mbs["y"]), np.asarray(mbs["x"]).astype(int) * 10)  # rows stay paired
    seq = jnp.arange(5 * 6).reshape(5, 6)  # (T, N): stream j is column j
    parts = np.asarray(batching.minibatches(jax.random.key(0), seq, 3, sequences=True))
    assert parts.shape == (3, 5, 2)
    for part in parts:
        for stream in part.T:  # a whole stream, in time order
            np.testing.assert_array_equal(np.diff(stream), 6)
    with pytest.raises(ValueError, match="do not divide"):
        batching.minibatches(jax.random.key(0), data, 5)


def test_epochs_visit_every_item_each_epoch_and_average_metrics():
    data = jnp.arange(12.0)

    def step(total, mb):
        return total + mb.sum(), {"seen": mb.sum()}

    total, metrics = batching.epochs(step, jnp.float32(0.0), data, jax.random.key(3), 3, 4)
    assert float(total) == 3 * float(data.sum())
    assert float(metrics["seen"]) == pytest.approx(float(data.sum()) / 4)
