"""Return and advantage estimators over time-major rollouts.

Every function takes arrays of shape ``(T, ...)`` (typically ``(T, N)`` for N parallel envs;
any trailing batch shape works) and treats step ``t`` as the transition
``s_t --a_t--> (r_t, s'_t)``:

- ``rewards[t]``: reward received after acting at ``t``.
- ``values[t]``: ``V(s_t)``.
- ``next_values[t]``: ``V(s'_t)``, the value of the *true* next state. At an episode end this is
  the final observation before the auto-reset, so within an episode
  ``next_values[t] == values[t + 1]`` and ``next_values[T - 1]`` bootstraps the rollout end.
- ``terminated[t]``: the episode reached a terminal state; the next value counts as 0.
- ``truncated[t]``: the episode was cut by a time limit; bootstrap from ``next_values[t]`` but do
  not let the trace continue into ``t + 1``, which belongs to a new episode. If both flags are
  set, ``terminated`` wins.

Flags may be bools or 0/1 numbers. ``gamma`` and ``lam`` may be traced scalars (so they can be
swept with ``vmap``); ``n`` of :func:`nstep_returns` is static. Results are computed in the
promoted floating dtype of the inputs, at least float32.

The estimators are built on one reverse linear recurrence
``y_t = x_t + c_t * y_{t+1}`` with ``c_t = gamma * lam * (1 - done_t)``: GAE and TD(lambda) solve
it over the whole rollout (differing in ``x_t`` and ``y_T``), Q(lambda) is TD(lambda) on
``V = max_a Q``, n-step returns iterate it ``n`` times with ``lam = 1``, and V-trace solves it
with importance-weighted ``x_t`` and ``c_t``.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jaxrl.core import vary_like

__all__ = ["gae", "td_lambda", "q_lambda", "nstep_returns", "nstep_window", "vtrace", "next_values"]

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


def _check_shapes(**arrays: Array) -> tuple[int, ...]:
    """Fail early, at trace time, unless all arrays share one shape with a time axis."""
    shapes = {name: jnp.shape(a) for name, a in arrays.items()}
    shape = next(iter(shapes.values()))
    if len(set(shapes.values())) != 1:
        listed = ", ".join(f"{name}{s}" for name, s in shapes.items())
        raise ValueError(f"all inputs must have the same time-major shape (T, ...); got {listed}")
    if len(shape) == 0 or shape[0] == 0:
        raise ValueError(f"inputs need a non-empty leading time axis (T, ...); got shape {shape}")
    return shape


def _prepare(
    rewards: ArrayLike,
    next_values: ArrayLike,
    terminated: ArrayLike,
    truncated: ArrayLike,
    gamma: ArrayLike,
    lam: ArrayLike,
    values: ArrayLike | None = None,
) -> tuple[Array, Array, Array, Array, Array | None]:
    """Validate and cast the inputs, and fold the flags into per-step discounts.

    Returns ``(rewards, next_values, discount, trace, values)`` in one float dtype, with
    ``discount_t = gamma * (1 - term_t)`` (how much ``next_v_t`` counts) and
    ``trace_t = gamma * lam * (1 - done_t)`` (how much step ``t+1`` feeds back into ``t``),
    where ``done = terminated | truncated``.
    """
    arrays = dict(rewards=rewards, next_values=next_values, terminated=terminated,
                  truncated=truncated)
    if values is not None:
        arrays["values"] = values
    _check_shapes(**arrays)
    floats = [rewards, next_values] + ([] if values is None else [values])
    dtype = jnp.result_type(*floats, jnp.float32)
    term = jnp.asarray(terminated).astype(bool)
    done = term | jnp.asarray(truncated).astype(bool)
    gamma = jnp.asarray(gamma, dtype)
    return (
        jnp.asarray(rewards, dtype),
        jnp.asarray(next_values, dtype),
        gamma * (~term).astype(dtype),
        gamma * jnp.asarray(lam, dtype) * (~done).astype(dtype),
        None if values is None else jnp.asarray(values, dtype),
    )


def _reverse_linear_scan(x: Array, c: Array, last: Array) -> Array:
    """Solve ``y_t = x_t + c_t * y_{t+1}`` for ``t = T-1 .. 0`` with ``y_T = last``.

    ``x`` and ``c`` have shape ``(T, ...)``; ``last`` has the trailing shape ``(...)``.
    """

    def step(y_next: Array, xc: tuple[Array, Array]) -> tuple[Array, Array]:
        x_t, c_t = xc
        y_t = x_t + c_t * y_next
        return y_t, y_t

    init = vary_like(jnp.broadcast_to(last, x.shape[1:]).astype(x.dtype), x)  # data parallel
    _, y = lax.scan(step, init, (x, c), reverse=True, unroll=16)
    return y


def next_values(values: Array, next_obs: Array, truncated: ArrayLike, value_fn: Callable[[Array], Array],
                terminated: ArrayLike | None = None, chunk: int | None = None) -> Array:
    """``next_values[t] = V(s'_t)`` for ``values (T, N, ...)`` of a rollout's ``obs``, evaluating
    ``value_fn`` (``(B, *obs_shape) -> (B, ...)``, e.g. a critic, or all actions' Q-values) only
    where ``s'_t`` is not ``s_{t+1}``.

    Inside an episode the next state is the next step's state, so ``values[t + 1]`` serves;
    ``value_fn`` runs on the rollout's last next states ``next_obs[T - 1]`` and on the final
    observations of truncated episodes (``next_obs[t]`` where ``truncated[t]`` and not
    ``terminated[t]``). A terminated step gets ``values[t + 1]``, which the estimators
    multiply by zero. The same numbers as ``value_fn`` over all of ``next_obs``, for about
    ``1 / T`` of its cost when truncations are rare: the truncated steps go through ``value_fn``
    in chunks of ``chunk`` rows (default ``N``) in a ``while_loop``, as many chunks as there
    are truncations (under ``vmap``, as the batch member with the most needs).
    """
    values = jnp.asarray(values)
    if values.ndim < 2 or next_obs.shape[:2] != values.shape[:2]:
        raise ValueError(f"values must be (T, N, ...) and next_obs (T, N, ...) with the same T and N; got "
                         f"{values.shape}, {next_obs.shape}")
    steps, envs = values.shape[:2]
    need = jnp.asarray(truncated).astype(bool)
    if terminated is not None:
        need = need & ~jnp.asarray(terminated).astype(bool)
    need = need.at[-1].set(False).reshape(-1)  # the last step is evaluated for every env below
    last = jnp.asarray(value_fn(next_obs[-1]), values.dtype)
    total = steps * envs
    out = jnp.concatenate([values[1:], last[None]]).reshape((total,) + values.shape[2:])
    size = chunk or envs
    padded = -(-total // size) * size
    # positions of the steps to evaluate first, then padding (ignored: past `count`)
    where = jnp.nonzero(need, size=padded, fill_value=0)[0].astype(jnp.int32)
    count = need.sum(dtype=jnp.int32)
    flat_obs = next_obs.reshape((total,) + next_obs.shape[2:])

    def body(carry: tuple[Array, Array]) -> tuple[Array, Array]:
        start, out = carry
        rows = lax.dynamic_slice(where, (start,), (size,))
        valid = start + jnp.arange(size, dtype=jnp.int32) < count
        new = jnp.asarray(value_fn(flat_obs[rows]), out.dtype)
        return start + size, out.at[jnp.where(valid, rows, total)].set(new, mode="drop")

    start = vary_like(jnp.zeros((), jnp.int32), count)  # data parallel
    _, out = lax.while_loop(lambda carry: carry[0] < count, body, (start, out))
    return out.reshape(values.shape)


def gae(
    rewards: ArrayLike,
    values: ArrayLike,
    next_values: ArrayLike,
    terminated: ArrayLike,
    truncated: ArrayLike,
    gamma: ArrayLike,
    lam: ArrayLike,
) -> tuple[Array, Array]:
    """Generalized Advantage Estimation (Schulman et al., 2016).

    Exponentially weighted sum of TD errors, cut at episode boundaries::

        delta_t = r_t + gamma * (1 - term_t) * next_v_t - v_t
        A_t     = delta_t + gamma * lam * (1 - done_t) * A_{t+1},   A_T = 0
        R_t     = A_t + v_t

    with ``done = terminated | truncated``: a truncated step still bootstraps through
    ``delta_t``, but its advantage does not pull in the next episode's errors.
    ``lam = 0`` gives the one-step TD error, ``lam = 1`` the Monte-Carlo return (bootstrapped at
    truncations and the rollout end) minus ``v_t``.

    Returns:
        ``(advantages, returns)``, each shaped like ``rewards``; ``returns`` are the value
        targets ``A_t + v_t``.
    """
    r, nv, discount, trace, v = _prepare(
        rewards, next_values, terminated, truncated, gamma, lam, values)
    advantages = _reverse_linear_scan(r + discount * nv - v, trace, jnp.zeros((), r.dtype))
    return advantages, advantages + v


def _lambda_recurrence(
    rewards: ArrayLike,
    next_values: ArrayLike,
    terminated: ArrayLike,
    truncated: ArrayLike,
    gamma: ArrayLike,
    lam: ArrayLike,
) -> tuple[Array, Array, Array]:
    """Terms of the TD(lambda) recurrence written as ``G_t = x_t + c_t * G_{t+1}``.

    Expanding ``G_t = r_t + gamma (1 - term_t) [next_v_t + lam (1 - done_t)(G_{t+1} - next_v_t)]``
    and using ``(1 - term)(1 - done) = 1 - done`` gives::

        x_t = r_t + gamma * (1 - term_t) * next_v_t - gamma * lam * (1 - done_t) * next_v_t
        c_t = gamma * lam * (1 - done_t)

    Taking ``G_T = next_v_{T-1}`` makes the bracket at ``t = T-1`` exactly ``next_v_{T-1}``.
    Returns ``(x, c, next_values)``, the latter cast to the common dtype.
    """
    r, nv, discount, c, _ = _prepare(rewards, next_values, terminated, truncated, gamma, lam)
    return r + discount * nv - c * nv, c, nv


def td_lambda(
    rewards: ArrayLike,
    next_values: ArrayLike,
    terminated: ArrayLike,
    truncated: ArrayLike,
    gamma: ArrayLike,
    lam: ArrayLike,
) -> Array:
    """TD(lambda) returns: a geometric mixture of n-step returns, cut at episode boundaries.

    Written recursively (the lambda-return of Sutton & Barto, ch. 12)::

        G_t = r_t + gamma * (1 - term_t) * [(1 - lam) * next_v_t + lam * G_{t+1}]

    inside an episode, and where ``done_t`` or ``t = T-1`` the bracket is just ``next_v_t``
    (a truncated step bootstraps, a terminated one does not). Needs no ``values``: only the
    values of true next states enter. ``lam = 0`` gives the one-step TD target, ``lam = 1``
    the Monte-Carlo return bootstrapped at truncations and the rollout end. With consistent
    values this equals ``gae(...)[1]``.

    Returns:
        Returns shaped like ``rewards``.
    """
    x, c, nv = _lambda_recurrence(rewards, next_values, terminated, truncated, gamma, lam)
    return _reverse_linear_scan(x, c, nv[-1])


def q_lambda(
    rewards: ArrayLike,
    next_q_values: ArrayLike,
    terminated: ArrayLike,
    truncated: ArrayLike,
    gamma: ArrayLike,
    lam: ArrayLike,
) -> Array:
    """Peng's Q(lambda) targets with a greedy bootstrap, as PQN uses them (Gallici et al., 2024)::

        G_t = r_t + gamma * (1 - term_t) * [(1 - lam) * max_a Q(s'_t, a) + lam * G_{t+1}]

    where the bracket is just ``max_a Q(s'_t, a)`` at an episode end (a truncation bootstraps
    from the final observation's values, a termination from nothing) and at ``t = T-1``. This is
    :func:`td_lambda` on ``V(s') = max_a Q(s', a)``, and computed as that.

    Args:
        next_q_values: ``Q(s'_t, .)`` of the true next states, shaped like ``rewards`` plus a
            trailing axis of actions.

    Returns:
        Targets shaped like ``rewards``.
    """
    if jnp.ndim(next_q_values) != jnp.ndim(rewards) + 1 or jnp.shape(next_q_values)[:-1] != jnp.shape(rewards):
        raise ValueError(f"next_q_values must be shaped like rewards {jnp.shape(rewards)} plus an axis of "
                         f"actions; got {jnp.shape(next_q_values)}")
    return td_lambda(rewards, jnp.max(jnp.asarray(next_q_values), axis=-1), terminated, truncated, gamma, lam)


def nstep_returns(
    rewards: ArrayLike,
    next_values: ArrayLike,
    terminated: ArrayLike,
    truncated: ArrayLike,
    gamma: ArrayLike,
    n: int,
) -> Array:
    """n-step bootstrapped returns, cut at episode boundaries and at the rollout end.

    ::

        G_t = sum_{k<m} gamma^k r_{t+k} + gamma^m (1 - term_{t+m-1}) next_v_{t+m-1}

    with ``m = min(n, steps to the end of t's episode inclusive, T - t)``. ``n = 1`` gives the
    one-step TD target; ``n >= T`` with no dones gives the Monte-Carlo return bootstrapped at
    the rollout end.

    Computed as ``n`` truncated iterations of the TD(1) recurrence: with ``G^(0)_{t+1}``
    standing for ``next_v_t`` (the zero-step return of ``s'_t``) and ``G^(j)_T = next_v_{T-1}``::

        G^(j)_t = x_t + c_t * G^(j-1)_{t+1}     (x, c as in td_lambda with lam = 1)

    which extends every return by one step per iteration until it hits a done or the rollout
    end. Work is ``O(min(n, T) * T)``.

    Args:
        n: number of steps, a static Python int ``>= 1``.

    Returns:
        Returns shaped like ``rewards``.
    """
    if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a static Python int >= 1; got {n!r}")
    x, c, nv = _lambda_recurrence(rewards, next_values, terminated, truncated, gamma, 1.0)

    def extend(_: int, g: Array) -> Array:
        following = jnp.concatenate([g[1:], nv[-1:]], axis=0)  # G^(j-1)_{t+1}
        return x + c * following

    return lax.fori_loop(1, min(int(n), x.shape[0]), extend, x + c * nv)


def nstep_window(
    rewards: ArrayLike,
    terminated: ArrayLike,
    truncated: ArrayLike,
    gamma: ArrayLike,
) -> tuple[Array, Array, Array]:
    """The n-step return from the first step of windows of ``n`` consecutive steps (replay).

    The arrays are time-major windows ``(n, ...)`` of one env's steps (from
    :func:`jaxrl.replay.sample_windows`); the return is cut at the first episode end inside the
    window::

        G = sum_{k<m} gamma^k r_k,   discount = gamma^m (1 - term_{m-1}),   last = m - 1

    with ``m = min(n, 1 + first k with term_k or trunc_k)``. The target is
    ``G + discount * V(next_obs[last])``: at a truncation ``next_obs`` is the final observation,
    so time limits are bootstrapped, and a termination contributes nothing after it. ``n = 1``
    gives ``r_0 + gamma (1 - term_0) V(next_obs_0)``.

    Returns:
        ``(G, discount, last)`` shaped like one step of the window (``last`` is int32).
    """
    _check_shapes(rewards=rewards, terminated=terminated, truncated=truncated)
    rewards = jnp.asarray(rewards)
    dtype = jnp.result_type(rewards, jnp.float32)
    term = jnp.asarray(terminated).astype(bool)
    done = term | jnp.asarray(truncated).astype(bool)
    # step k belongs to the first step's episode if no step before it ended one
    alive = jnp.cumprod(jnp.concatenate([jnp.ones_like(done[:1]), ~done[:-1]], axis=0), axis=0).astype(dtype)
    powers = jnp.asarray(gamma, dtype) ** jnp.arange(rewards.shape[0], dtype=dtype).reshape((-1,) + (1,) * (rewards.ndim - 1))
    steps = alive.sum(0).astype(jnp.int32)  # m
    last = steps - 1
    term_last = jnp.take_along_axis(term, last[None], axis=0)[0]
    discount = jnp.asarray(gamma, dtype) ** steps.astype(dtype) * (1.0 - term_last.astype(dtype))
    return (alive * powers * rewards.astype(dtype)).sum(0), discount, last



def vtrace(
    rewards: ArrayLike,
    values: ArrayLike,
    next_values: ArrayLike,
    terminated: ArrayLike,
    truncated: ArrayLike,
    log_rhos: ArrayLike,
    gamma: ArrayLike,
    lam: ArrayLike = 1.0,
    rho_clip: ArrayLike = 1.0,
    c_clip: ArrayLike = 1.0,
    pg_rho_clip: ArrayLike = 1.0,
) -> tuple[Array, Array]:
    """V-trace value targets and policy-gradient advantages (Espeholt et al., 2018, IMPALA).

    Off-policy corrected returns for data from a behaviour policy ``mu`` while learning about a
    target policy ``pi``; ``log_rhos[t] = log pi(a_t|s_t) - log mu(a_t|s_t)``. With truncated
    importance weights ``rho_t = min(rho_clip, e^log_rhos)`` and ``c_t = lam * min(c_clip, e^log_rhos)``::

        delta_t = rho_t * (r_t + gamma * (1 - term_t) * next_v_t - v_t)
        vs_t    = v_t + delta_t + gamma * c_t * (1 - done_t) * (vs_{t+1} - v_{t+1}),   vs_T - v_T = 0
        adv_t   = min(pg_rho_clip, e^log_rhos) * (r_t + gamma * (1 - term_t) * next_vs_t - v_t)

    where ``next_vs_t`` is the target of the true next state: ``next_v_t + (vs_{t+1} - v_{t+1})``
    inside an episode, ``next_v_t`` where the episode or the rollout ends (so a truncation
    bootstraps from the final observation's value and its trace stops, as in :func:`gae`).
    On-policy (``log_rhos = 0``, clips >= 1) ``vs`` are GAE's returns and, with ``lam = 1``,
    ``adv`` GAE's advantages. Unlike rlax, the advantage bootstraps from ``vs_{t+1}`` itself for
    any ``lam`` (the paper's form; rlax mixes in ``v_{t+1}`` by ``1 - lam``).

    Returns:
        ``(vs, advantages)``, each shaped like ``rewards``.
    """
    _check_shapes(rewards=rewards, log_rhos=log_rhos)
    r, nv, discount, trace, v = _prepare(rewards, next_values, terminated, truncated, gamma, lam, values)
    rhos = jnp.exp(jnp.asarray(log_rhos, r.dtype))
    corrections = _reverse_linear_scan(jnp.minimum(rho_clip, rhos) * (r + discount * nv - v),
                                       trace * jnp.minimum(c_clip, rhos), jnp.zeros((), r.dtype))
    done = jnp.asarray(terminated).astype(bool) | jnp.asarray(truncated).astype(bool)
    following = jnp.concatenate([corrections[1:], jnp.zeros_like(corrections[:1])], axis=0)  # vs - v at t+1
    next_vs = nv + jnp.where(done, 0.0, following)
    return v + corrections, jnp.minimum(pg_rho_clip, rhos) * (r + discount * next_vs - v)
