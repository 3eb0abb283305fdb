"""JAX's threefry random numbers as straight-line code, per program: the same bits, fewer kernels.

On a CPU, JAX lowers its threefry hash (behind every draw, key split and fold-in) as a while
loop of 5 trips, to keep compile times down: each draw then runs about 30 tiny kernels, and
XLA's CPU runtime pays per kernel. On GPUs and TPUs JAX lowers the same hash straight-line.
:data:`STRAIGHT` is a PRNG implementation that computes JAX's threefry-2x32 with JAX's own
straight-line hash (``_threefry2x32_lowering(use_rolled_loops=False)``), called while tracing,
so the hash fuses with what uses its bits. A key's data means the same under both: the loop
rewraps its keys (:func:`straight`) when the config asks for it and hands them back in the
caller's implementation (:func:`like`), so the state, checkpoints and outputs do not change
and every draw gives the bits JAX's own threefry gives (tested for each kind of draw).

It is a trade made per program (``Config.straight_rng``): plain DQN and PQN ran 8-27% more env
steps/s with it, compiling about a second longer; C51, IQN, Rainbow and SAC ran as fast as
without it (within run-to-run noise) and compiled 1-9 s longer (README, Speed). Only the
partitionable threefry (JAX's default since 0.5) is reproduced; with
``jax_threefry_partitionable`` off, or on another backend than the CPU, :func:`straight` leaves
keys as they are.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

try:  # JAX internals: without them (another JAX version) keys stay JAX's own
    from jax._src import prng as _prng

    _HASH = _prng._threefry2x32_lowering
    _COUNTS = _prng.iota_2x32_shape
    _SEED = _prng.threefry_seed
except (ImportError, AttributeError):
    _prng = None


def _hash(key: jax.Array, hi: jax.Array, lo: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Threefry-2x32 of the 64-bit counters ``(hi, lo)`` under ``key`` (uint32[2]), unrolled."""
    return _HASH(key[0], key[1], hi, lo, use_rolled_loops=False)


def _split(key: jax.Array, shape: Sequence[int]) -> jax.Array:
    """Key ``i`` of the split is the hash of counter ``i`` (flat index), both words kept."""
    return jnp.stack(_hash(key, *_COUNTS(tuple(shape))), axis=-1)


def _fold_in(key: jax.Array, data: jax.Array) -> jax.Array:
    """The hash of ``data`` read as a 64-bit counter (threefry's seed of it)."""
    counter = _SEED(jnp.asarray(data, jnp.uint32))
    return jnp.concatenate(_hash(key, counter[:1], counter[1:]))


def _random_bits(key: jax.Array, bit_width: int, shape: Sequence[int]) -> jax.Array:
    """Per flat index one hash: 64-bit draws keep both words, narrower ones their xor."""
    hi, lo = _hash(key, *_COUNTS(tuple(shape)))
    if bit_width == 64:
        return (hi.astype(jnp.uint64) << 32) | lo.astype(jnp.uint64)
    if bit_width not in (8, 16, 32):
        raise TypeError(f"random bits of width {bit_width}: 8, 16, 32 or 64")
    bits = hi ^ lo
    return bits if bit_width == 32 else bits.astype(f"uint{bit_width}")


STRAIGHT = None
if _prng is not None:
    STRAIGHT = _prng.PRNGImpl(key_shape=(2,), seed=_SEED, split=_split, random_bits=_random_bits,
                              fold_in=_fold_in, name="threefry2x32_straight", tag="fry_straight")
    _prng.register_prng(STRAIGHT)


def _applies(key: jax.Array) -> bool:
    """Whether :func:`straight` rewraps ``key``: a typed threefry key, on a CPU, with JAX's
    partitionable threefry (the bits :data:`STRAIGHT` reproduces)."""
    return (STRAIGHT is not None and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
            and str(jax.random.key_impl(key)) == "threefry2x32" and jax.config.jax_threefry_partitionable
            and jax.default_backend() == "cpu")


def straight(key: jax.Array) -> jax.Array:
    """``key`` (JAX's threefry) as a :data:`STRAIGHT` key with the same data; other keys as
    they are (see :func:`_applies`)."""
    return jax.random.wrap_key_data(jax.random.key_data(key), impl=STRAIGHT) if _applies(key) else key


def like(key: jax.Array, original: jax.Array) -> jax.Array:
    """``key`` in ``original``'s implementation: undoes :func:`straight`."""
    if jax.random.key_impl(key) == jax.random.key_impl(original):
        return key
    return jax.random.wrap_key_data(jax.random.key_data(key), impl=jax.random.key_impl(original))


def split(key: jax.Array, num: int, straight_line: bool) -> tuple[jax.Array, ...]:
    """``num`` keys split from ``key``: the first, to carry on, of ``key``'s own kind; the others,
    to draw with, :data:`STRAIGHT` keys where ``straight_line`` (and :func:`straight` applies).
    The same key data either way."""
    keys = jax.random.split(straight(key) if straight_line else key, num)
    return (like(keys[0], key), *keys[1:])
