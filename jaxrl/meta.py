"""Meta-learning the ``inputs`` of ``train`` by evolution strategies (ES), one compiled program
per generation.

``train(key, hparams, inputs)`` reads ``inputs`` as ``ctx.inputs``: for PPO with
``objective: dpo`` and ``drift: jaxrl.meta.mlp_drift`` they are the parameters of a small MLP
drift function (:func:`mlp_drift`), the learned objective of Lu et al. 2022, "Discovered Policy
Optimisation" (and, with the training progress as an input, of Jackson et al. 2024, "Discovering
Temporally-Aware Reinforcement Learning Algorithms"). :func:`meta_train` searches them with an
ES from evosax (an optional dependency: ``pip install jaxrl[meta]``): in each generation the ES
asks for a population of meta-parameters, every member trains ``seeds`` full inner runs with
its meta-parameters as ``inputs`` (``jax.vmap`` over members, inputs on axis 0, and over seeds,
inputs shared), its fitness is their mean final return (or mean return over training), and the
ES is told the fitness. Asking, all the inner training runs and telling are ONE compiled
program, called once per generation; the members are split over as many devices as divide the
population (like a sweep's runs). Nothing here is specific to an algorithm: any ``inputs`` an
algorithm reads can be meta-learned.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxrl.config import Config, ConfigError, suggest
from jaxrl.core import Metrics
from jaxrl.loop import compiler_options, make_train
from jaxrl.metrics import FINAL_EPISODES
from jaxrl.parallel import seed_mesh
from jaxrl.population import mean_return
from jaxrl.sweeps import gather_hosts, host_friendly

# ----------------------------------------------------------------------------- a learned drift

# What the drift network sees of each item: the ratio r = pi / pi_old, the (normalised)
# advantage A, and the fraction of training done (so the drift can change over training).
FEATURES = ("ratio - 1", "log ratio", "advantage", "(ratio - 1) * advantage", "log ratio * advantage", "progress")


def init_drift_params(key: jax.Array, hidden: int = 16, scale: float = 1.0) -> dict[str, jax.Array]:
    """Random parameters of :func:`learned_drift`'s MLP (``len(FEATURES)`` inputs, ``hidden``
    tanh units, one output): ``{"w1": (features, hidden), "b1": (hidden,), "w2": (hidden,)}``,
    LeCun-normal weights times ``scale`` and zero biases (``scale=0``: the zero drift, i.e. the
    unclipped policy-gradient surrogate)."""
    if isinstance(hidden, bool) or not isinstance(hidden, numbers.Integral) or hidden < 1:
        raise ValueError(f"hidden must be a positive integer, got {hidden!r}")
    k1, k2 = jax.random.split(key)
    n_in = len(FEATURES)
    return {"w1": scale * jax.random.normal(k1, (n_in, hidden)) / math.sqrt(n_in),
            "b1": jnp.zeros((hidden,)),
            "w2": scale * jax.random.normal(k2, (hidden,)) / math.sqrt(hidden)}


def drift_features(ratio: jax.Array, advantage: jax.Array, progress: jax.Array | float) -> jax.Array:
    """The inputs of the drift network per item, ``(..., len(FEATURES))``, in :data:`FEATURES` order."""
    r1, log_r = ratio - 1.0, jnp.log(ratio)
    progress = jnp.broadcast_to(jnp.asarray(progress, ratio.dtype), ratio.shape)
    return jnp.stack([r1, log_r, advantage, r1 * advantage, log_r * advantage, progress], axis=-1)


def _mlp(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    return jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"]


def _check_params(params: Any) -> None:
    """A clear error (at trace time, before compiling) for parameters of the wrong structure."""
    if not isinstance(params, dict) or set(params) != {"w1", "b1", "w2"}:
        raise ValueError("a learned drift needs its MLP parameters {'w1', 'b1', 'w2'} (see "
                         "jaxrl.meta.init_drift_params) as the inputs of train(key, hparams, inputs), got "
                         + (repr(type(params).__name__) if not isinstance(params, dict) else f"keys {sorted(params)}"))
    n_in, hidden = len(FEATURES), jnp.shape(params["w1"])[-1]
    expected = {"w1": (n_in, hidden), "b1": (hidden,), "w2": (hidden,)}
    shapes = {k: tuple(jnp.shape(v)) for k, v in params.items()}
    if shapes != expected:
        raise ValueError(f"learned drift parameters have shapes {shapes}; expected {expected} "
                         f"({n_in} features: {', '.join(FEATURES)})")


def learned_drift(params: dict[str, jax.Array], ratio: jax.Array, advantage: jax.Array,
                  progress: jax.Array | float = 0.0) -> jax.Array:
    """A drift function with MLP parameters ``params``, per item::

        g(r)     = w2 . tanh(W1 x(r, A, t) + b1)        x: the FEATURES of r, A and progress t
        drift(r) = relu(g(r) - g(1) - g'(1) (r - 1))

    Mirror learning (Kuba et al. 2022; Lu et al. 2022, section 3) needs a drift that is >= 0 and
    zero with zero gradient in ``r`` at ``r = 1``; subtracting ``g``'s first-order Taylor
    polynomial at ``r = 1`` (value and slope from one forward-mode derivative) leaves a remainder
    that is zero with zero slope there, and the relu keeps it >= 0 (and zero with zero slope).
    Any ``params`` give a valid drift, so an ES can search them freely."""
    _check_params(params)
    ratio, advantage = jnp.broadcast_arrays(jnp.asarray(ratio), jnp.asarray(advantage))
    g = lambda r: _mlp(params, drift_features(r, advantage, progress))  # noqa: E731  (per item)
    one = jnp.ones_like(ratio)
    g_at_1, slope_at_1 = jax.jvp(g, (one,), (one,))  # items are independent: one tangent gives every slope
    return jax.nn.relu(g(ratio) - g_at_1 - slope_at_1 * (ratio - 1.0))


def mlp_drift(ratio: jax.Array, advantage: jax.Array, ctx: Any) -> jax.Array:
    """PPO's ``drift: jaxrl.meta.mlp_drift`` (with ``objective: dpo``): :func:`learned_drift`
    with the parameters ``ctx.inputs`` (give them as ``train(key, hparams, inputs)``, or let
    :func:`meta_train` search them) and the training progress ``ctx.progress``."""
    if ctx.inputs is None:
        raise ValueError("drift jaxrl.meta.mlp_drift reads its MLP parameters from the inputs of train: pass "
                         "train(key, hparams, inputs=jaxrl.meta.init_drift_params(key)) or use jaxrl.meta.meta_train")
    return learned_drift(ctx.inputs, ratio, advantage, ctx.progress)


# ----------------------------------------------------------------------------- fitness


def final_return(metrics: Metrics, episodes: int = FINAL_EPISODES) -> jax.Array:
    """One run's final return inside a program: :func:`jaxrl.metrics.final_return` in JAX (the
    mean return of the last ``episodes`` finished episodes, counted back in whole iterations,
    episode-weighted; NaN when no episode finished). ``metrics`` are ``(iterations,)``."""
    returns = metrics["episode_return"]
    counts = jnp.nan_to_num(metrics["episodes"])
    from_here = jnp.cumsum(counts[::-1])[::-1]
    in_window = (counts > 0) & (from_here - counts < episodes)
    weights = jnp.where(in_window, counts, 0.0)
    total = jnp.where(in_window, returns * weights, 0.0).sum()
    return jnp.where(weights.sum() > 0, total / jnp.maximum(weights.sum(), 1e-9), jnp.nan)


FITNESS = ("final", "mean")  # named fitness functions (or pass a callable)


def _fitness_fn(fitness: str | Callable, episodes: int) -> Callable[[Metrics], jax.Array]:
    if callable(fitness):
        return fitness
    return (lambda m: final_return(m, episodes)) if fitness == "final" else mean_return


# ----------------------------------------------------------------------------- evosax


EXTRA_HINT = "pip install jaxrl[meta] (or pip install -e '.[meta]' in a clone of jaxrl)"


def _evosax() -> Any:
    """``evosax.algorithms``, or an ImportError that names the extra to install."""
    try:
        import evosax.algorithms as algorithms
        from evosax.algorithms.distribution_based.base import DistributionBasedAlgorithm
    except ImportError as err:
        raise ImportError(f"meta_train needs evosax, an optional dependency of jaxrl: {EXTRA_HINT} "
                          f"({err})") from err
    return algorithms, DistributionBasedAlgorithm


def default_strategy_kwargs(strategy: str) -> dict[str, Any]:
    """What :func:`meta_train` passes to a named strategy besides the population and the solution,
    unless ``strategy_kwargs`` say otherwise: for ``Open_ES``, Adam with learning rate 0.05 on the
    mean and a constant noise scale 0.1 (evosax's defaults, plain SGD at 1e-3 with noise 1.0, do
    not suit a small network's parameters; these meta-trained :func:`mlp_drift` on CartPole in
    the AutoRL notebook); nothing for the others."""
    if strategy == "Open_ES":
        import optax

        return {"optimizer": optax.adam(0.05), "std_schedule": optax.constant_schedule(0.1)}
    return {}


def make_strategy(strategy: str | Any, population: int, solution: Any,
                  strategy_kwargs: dict[str, Any] | None = None) -> Any:
    """An evosax distribution-based strategy for ``population`` members shaped like ``solution``:
    built from its name in ``evosax.algorithms`` (``"Open_ES"``, ``"CMA_ES"``, ``"SNES"``, ...)
    with :func:`default_strategy_kwargs` updated by ``strategy_kwargs``, or checked when given
    built. A :class:`ConfigError` names what is wrong."""
    algorithms, distribution_based = _evosax()
    if isinstance(strategy, str):
        named = {k: v for k, v in algorithms.algorithms.items() if issubclass(v, distribution_based)}
        if strategy in algorithms.algorithms and strategy not in named:
            raise ConfigError(f"{strategy} is a population-based evosax strategy; meta_train needs a distribution-based "
                              f"one (its search starts from init_params as the mean): {', '.join(sorted(named))}")
        if strategy not in named:
            raise ConfigError(f"unknown evosax strategy {strategy!r}" + suggest(strategy, list(named))
                              + f"; distribution-based strategies: {', '.join(sorted(named))}")
        kwargs = default_strategy_kwargs(strategy) | dict(strategy_kwargs or {})
        try:
            return named[strategy](population_size=population, solution=solution, **kwargs)
        except (AssertionError, TypeError, ValueError) as err:
            raise ConfigError(f"evosax {strategy} with population {population} and {sorted(kwargs)}: "
                              f"{err or type(err).__name__}") from None
    if strategy_kwargs:
        raise ConfigError("strategy_kwargs apply to a strategy given by name; this one is already built")
    if not isinstance(strategy, distribution_based):
        raise ConfigError(f"strategy must be the name of an evosax distribution-based strategy or one built, "
                          f"got {type(strategy).__name__} (population-based strategies keep no mean to start from)")
    if strategy.population_size != population:
        raise ConfigError(f"the strategy was built for a population of {strategy.population_size}, not {population}")
    dims = sum(int(np.size(x)) for x in jax.tree.leaves(solution))
    if strategy.num_dims != dims:
        raise ConfigError(f"the strategy was built for {strategy.num_dims} parameters; init_params have {dims}")
    return strategy


# ----------------------------------------------------------------------------- the program


@dataclasses.dataclass
class MetaResult:
    """A meta-training run.

    ``fitness[g, m]``: member ``m``'s fitness in generation ``g`` (the mean over its inner seeds;
    NaN when a seed diverged or finished no episode), ``seed_fitness[g, m, s]`` per inner seed,
    which were the seed values ``seed_values[g]``. ``candidates``: the meta-parameters the ES
    asked for, a pytree with leading axes ``(generations, population)``. ``best_params``: the
    fittest candidate of all generations (``best_fitness``, found in ``best_generation`` as
    member ``best_member``): one noisy evaluation, so re-evaluate it on fresh seeds;
    ``mean_params``: the mean of the ES's search distribution after the last generation.
    """

    config: Config
    strategy: str
    population: int
    fitness_kind: str
    seed_values: np.ndarray  # (generations, seeds)
    fitness: np.ndarray  # (generations, population)
    seed_fitness: np.ndarray  # (generations, population, seeds)
    candidates: Any
    best_params: Any
    best_fitness: float
    best_generation: int
    best_member: int
    mean_params: Any
    compile_seconds: float
    run_seconds: float
    generation_seconds: list[float]

    @property
    def generations(self) -> int:
        return self.fitness.shape[0]

    @property
    def fitness_mean(self) -> np.ndarray:
        """``(generations,)``: the population's mean fitness (members with a NaN fitness left out)."""
        return _nan_stat(np.nanmean, self.fitness)

    @property
    def fitness_max(self) -> np.ndarray:
        """``(generations,)``: the best member's fitness in each generation."""
        return _nan_stat(np.nanmax, self.fitness)

    def candidate(self, generation: int, member: int) -> Any:
        """The meta-parameters member ``member`` trained with in generation ``generation``."""
        return jax.tree.map(lambda x: x[generation, member], self.candidates)

    def rows(self) -> list[dict[str, Any]]:
        """One row per generation: mean and best fitness, seconds."""
        return [{"generation": g, "fitness_mean": _number(self.fitness_mean[g]),
                 "fitness_max": _number(self.fitness_max[g]), "seconds": round(self.generation_seconds[g], 3)}
                for g in range(self.generations)]


def _nan_stat(stat: Callable, values: np.ndarray) -> np.ndarray:
    finite = np.isfinite(values).any(axis=1)
    filled = np.where(finite[:, None], values, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.where(finite, stat(np.where(np.isfinite(filled), filled, np.nan), axis=1), np.nan)


def _number(x: Any) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def _whole(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _check(config: Config, init_params: Any, generations: int, population: int, seeds: int,
           fitness: str | Callable, episodes: int) -> None:
    config.validate()
    if not _whole(generations) or generations < 1:
        raise ConfigError(f"generations must be a positive integer, got {generations!r}")
    if not _whole(population) or population < 2:
        raise ConfigError(f"population must be an integer >= 2, got {population!r}")
    if not _whole(seeds) or seeds < 1:
        raise ConfigError(f"seeds must be a positive integer (inner training runs per member), got {seeds!r}")
    if not _whole(episodes) or episodes < 1:
        raise ConfigError(f"episodes must be a positive integer, got {episodes!r}")
    if not callable(fitness) and fitness not in FITNESS:
        raise ConfigError(f"fitness must be one of {', '.join(FITNESS)} or a function of one run's metrics, "
                          f"got {fitness!r}" + suggest(str(fitness), list(FITNESS)))
    leaves = jax.tree.leaves(init_params)
    if not leaves:
        raise ConfigError("init_params must be a non-empty pytree of float arrays (the meta-parameters the ES "
                          "starts from, e.g. jaxrl.meta.init_drift_params(key))")
    for leaf in leaves:
        array = np.asarray(leaf)
        if not np.issubdtype(array.dtype, np.floating):
            raise ConfigError(f"init_params must hold float arrays only (the ES perturbs every number), got "
                              f"dtype {array.dtype}")
        if not np.isfinite(array).all():
            raise ConfigError("init_params hold NaN or infinite values")


def _ignores_inputs(per_seed: np.ndarray) -> bool:
    """Whether every member ``(population, seeds)`` scored exactly the same on every seed: the
    sign of a training run that does not read its inputs."""
    return bool((np.nan_to_num(per_seed, nan=-np.inf) == np.nan_to_num(per_seed[:1], nan=-np.inf)).all())


def _minimised(fitness: jax.Array) -> jax.Array:
    """evosax minimises: ``-fitness``, with a failed member (NaN) scored as the worst finite one
    (0 when all failed), so every strategy's shaping sees finite numbers."""
    ok = jnp.isfinite(fitness)
    worst = jnp.max(jnp.where(ok, -fitness, -jnp.inf))
    return jnp.where(ok, -fitness, jnp.where(jnp.isfinite(worst), worst, 0.0))


def meta_train(config: Config, init_params: Any, generations: int, population: int, seeds: int = 1, *,
               strategy: str | Any = "Open_ES", strategy_kwargs: dict[str, Any] | None = None,
               strategy_params: Any = None, fitness: str | Callable[[Metrics], jax.Array] = "final",
               episodes: int = FINAL_EPISODES, resample_seeds: bool = True,
               devices: Sequence[jax.Device] | None = None, verbose: bool = False) -> MetaResult:
    """Search the ``inputs`` of ``config``'s training run with an evolution strategy, starting
    from ``init_params`` (the pytree the ES perturbs, e.g. :func:`init_drift_params` for a PPO
    config with ``objective: dpo`` and ``drift: jaxrl.meta.mlp_drift``).

    Each of ``generations`` generations is one compiled program (compiled once): the ES asks for
    ``population`` candidate meta-parameters, every candidate trains ``seeds`` full runs of
    ``config`` with them as ``inputs``, and the ES is told each candidate's fitness, the mean
    over its seeds of ``fitness``: ``"final"``, the final return (last ``episodes`` episodes,
    :func:`final_return`), ``"mean"``, the episode-weighted mean return over the whole run (the
    area under the learning curve: it rewards learning fast), or a function of one run's
    metrics (each ``(iterations,)``) returning a scalar. A candidate with a diverged or
    episode-less seed has fitness NaN and is told as the generation's worst.

    ``strategy``: the name of an evosax distribution-based strategy (``"Open_ES"``,
    ``"CMA_ES"``, ``"SNES"``, ...), built with :func:`default_strategy_kwargs` updated by
    ``strategy_kwargs``, or one you built (for this ``population`` and ``init_params``);
    ``strategy_params``: its evosax params (default: its ``default_params``). Every candidate of
    generation ``g`` trains the same inner seeds (common random numbers: candidates are compared
    on equal terms), the seed values ``config.seed + g * seeds + i`` with ``resample_seeds``
    (fresh seeds each generation, so the ES cannot overfit a few seeds), else ``config.seed +
    i``. The ES draws from its own stream, seeded by ``config.seed``. Members are split over as
    many ``devices`` (default ``jax.devices()``) as divide ``population``. Bad arguments raise
    :class:`ConfigError` before anything is compiled; without evosax, an ImportError names the
    extra to install (``pip install jaxrl[meta]``).
    """
    _check(config, init_params, generations, population, seeds, fitness, episodes)
    if not isinstance(resample_seeds, bool):
        raise ConfigError(f"resample_seeds must be true or false, got {resample_seeds!r}")
    last_seed = config.seed + (generations if resample_seeds else 1) * seeds - 1
    if last_seed >= 2**31:
        raise ConfigError(f"the inner runs would use seed values up to {last_seed}, past int32: lower seed, "
                          f"generations or seeds")
    init_params = jax.tree.map(lambda x: jnp.asarray(x, jnp.result_type(float)), init_params)
    es = make_strategy(strategy, population, init_params, strategy_kwargs)
    es_params = es.default_params if strategy_params is None else strategy_params
    train = make_train(config)  # builds the env, runs the algorithm's checks: still nothing compiled
    fitness_fn = _fitness_fn(fitness, episodes)
    mesh = seed_mesh(population, devices)
    member_sharding = None if mesh is None else NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))

    def one_generation(es_state: Any, key: jax.Array, first_seed: jax.Array) -> tuple[Any, Any, jax.Array]:
        k_ask, k_tell = jax.random.split(key)
        candidates, es_state = es.ask(k_ask, es_state, es_params)
        if member_sharding is not None:
            candidates = jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, member_sharding), candidates)
        keys = jax.vmap(jax.random.key)(first_seed + jnp.arange(seeds, dtype=jnp.int32))

        def member(inputs: Any) -> jax.Array:
            out = jax.vmap(train, in_axes=(0, None, None))(keys, None, inputs)
            fit = jax.vmap(fitness_fn)(out.metrics).astype(jnp.float32)
            return jnp.where(out.state.diverged_at >= 0, jnp.nan, fit)

        per_seed = jax.vmap(member)(candidates)  # (population, seeds)
        es_state, _ = es.tell(k_tell, candidates, _minimised(per_seed.mean(axis=1)), es_state, es_params)
        return es_state, candidates, per_seed

    k_init, es_key = jax.random.split(jax.random.fold_in(jax.random.key(config.seed), 0xE5))
    es_state = es.init(k_init, init_params, es_params)
    first_seeds = [config.seed + (g * seeds if resample_seeds else 0) for g in range(generations)]
    t0 = time.perf_counter()
    program = jax.jit(one_generation, compiler_options=compiler_options())
    compiled = program.lower(es_state, jax.random.fold_in(es_key, 0), jnp.int32(first_seeds[0])).compile()
    compile_s = time.perf_counter() - t0
    all_candidates, all_fitness, seconds = [], [], []
    for g in range(generations):
        t0 = time.perf_counter()
        es_state, candidates, per_seed = compiled(es_state, jax.random.fold_in(es_key, g), jnp.int32(first_seeds[g]))
        candidates, per_seed = gather_hosts((jax.tree.map(host_friendly, candidates), per_seed))
        seconds.append(time.perf_counter() - t0)
        all_candidates.append(candidates)
        all_fitness.append(np.asarray(per_seed, np.float64))
        if g == 0 and _ignores_inputs(all_fitness[0]):
            warnings.warn("every candidate of the first generation scored exactly the same on every seed: does the "
                          "config read its inputs (PPO: objective: dpo with drift: jaxrl.meta.mlp_drift)?",
                          RuntimeWarning, stacklevel=2)
        if verbose:
            mean = np.nanmean(all_fitness[-1], axis=1)
            print(f"generation {g}: fitness mean {np.nanmean(mean):.2f}, max {np.nanmax(mean):.2f} "
                  f"({seconds[-1]:.1f} s)", flush=True)
    seed_fitness = np.stack(all_fitness)
    member_fitness = seed_fitness.mean(axis=2)  # NaN when any seed failed
    candidates = jax.tree.map(lambda *xs: np.stack(xs), *all_candidates)
    ranked = np.where(np.isfinite(member_fitness), member_fitness, -np.inf)
    best_g, best_m = np.unravel_index(int(np.argmax(ranked)), ranked.shape)
    name = strategy if isinstance(strategy, str) else type(strategy).__name__
    return MetaResult(
        config=config, strategy=name, population=population,
        fitness_kind=fitness if isinstance(fitness, str) else getattr(fitness, "__name__", "custom"),
        seed_values=np.array([[s + i for i in range(seeds)] for s in first_seeds]),
        fitness=member_fitness, seed_fitness=seed_fitness, candidates=candidates,
        best_params=jax.tree.map(lambda x: x[best_g, best_m], candidates),
        best_fitness=float(member_fitness[best_g, best_m]), best_generation=int(best_g), best_member=int(best_m),
        mean_params=jax.device_get(es.get_mean(es_state)), compile_seconds=compile_s,
        run_seconds=float(sum(seconds)), generation_seconds=seconds)
