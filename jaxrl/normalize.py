"""Running statistics for observation normalisation and reward scaling.

Both live in the train state (so they are checkpointed and vmapped with everything else) and
are updated from whole rollouts with the parallel (Chan et al.) mean/variance merge.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


class RunningStats(struct.PyTreeNode):
    """Mean and variance of a stream of arrays of shape ``mean.shape``."""

    mean: jax.Array
    var: jax.Array
    count: jax.Array

    @classmethod
    def create(cls, shape: tuple[int, ...] = ()) -> "RunningStats":
        # count starts at a tiny epsilon so the first merge is (almost) the batch statistics
        return cls(jnp.zeros(shape, jnp.float32), jnp.ones(shape, jnp.float32), jnp.float32(1e-4))

    def update(self, batch: jax.Array, axis: str | None = None) -> "RunningStats":
        """Merge a batch whose leading axes (all but ``mean.ndim`` trailing ones) are samples.

        With ``axis`` (data parallel), ``batch`` is this device's equal share of the samples:
        the batch statistics are merged across the devices first, so every device makes the
        same update and the statistics stay identical everywhere.
        """
        batch = batch.reshape((-1,) + self.mean.shape).astype(jnp.float32)
        n = jnp.float32(batch.shape[0])
        b_mean, b_var = batch.mean(0), batch.var(0)
        if axis is not None:  # equal shares: the mean of means, the mean of (var + squared offset)
            local_mean = b_mean
            b_mean = jax.lax.pmean(local_mean, axis)
            b_var = jax.lax.pmean(b_var + (local_mean - b_mean) ** 2, axis)
            n = n * jax.lax.axis_size(axis)
        delta = b_mean - self.mean
        total = self.count + n
        mean = self.mean + delta * n / total
        m2 = self.var * self.count + b_var * n + delta**2 * self.count * n / total
        return RunningStats(mean, m2 / total, total)

    def normalize(self, x: jax.Array, clip: float = 10.0) -> jax.Array:
        return jnp.clip((x - self.mean) / jnp.sqrt(self.var + 1e-8), -clip, clip)


class RewardScaler(struct.PyTreeNode):
    """Divides rewards by the running std of the discounted return (PPO's reward scaling).

    ``ret`` is each env's running discounted return, reset at episode ends.
    """

    ret: jax.Array
    stats: RunningStats

    @classmethod
    def create(cls, num_envs: int) -> "RewardScaler":
        return cls(jnp.zeros(num_envs, jnp.float32), RunningStats.create())

    def scale(self, rewards: jax.Array, dones: jax.Array, gamma: jax.Array,
              axis: str | None = None) -> tuple["RewardScaler", jax.Array]:
        """Scale time-major ``rewards (T, N)``; statistics include this rollout's returns (of
        every device's envs with ``axis``; ``ret`` stays per env)."""

        def accumulate(ret, xs):
            reward, done = xs
            ret = ret * gamma + reward
            return ret * (1.0 - done), ret

        ret, returns = jax.lax.scan(accumulate, self.ret, (rewards, dones.astype(jnp.float32)))
        stats = self.stats.update(returns, axis)
        return RewardScaler(ret, stats), rewards / jnp.sqrt(stats.var + 1e-8)
