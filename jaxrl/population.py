"""Population-based training (PBT) as one compiled program over ``make_train``'s chunks.

A population of ``P`` members trains side by side: ``jax.vmap`` of ``train.run_chunk`` over the
members, each with its own traced hyperparameters. Every ``interval`` iterations (one
*generation*) the members are ranked by a fitness; each member of the bottom ``truncation``
fraction draws a member of the top fraction uniformly and, if that member is strictly fitter,
takes its learner state (*exploit*) and its hyperparameters, which are then perturbed by a
factor or resampled from their range (*explore*). The whole run is ``jax.jit`` of a
``lax.scan`` over generations: ranking, copying and sampling happen inside the program, with
randomness from a PBT key of its own, and the hyperparameters ride in the scan's carry (traced,
per member). The population is sharded over devices like a sweep's runs.

What a replaced member takes from its parent, and why (see :func:`copy_learner`): everything the
learner *is* — the agent (parameters, optimizer state, target networks, replay buffers and
counters), the observation statistics and the reward scaler's return statistics (the parameters
were trained on inputs normalised with them), and ``diverged_at`` (it describes the learner
state, so a diverged member that copies a healthy one is healthy again). What it keeps: the env
side (its envs' states, last observations and the agent's per-env carry: the episodes in flight
go on), the reward scaler's per-env running returns (they belong to those
episodes), its PRNG key (so a copy does not replay its parent's random stream) and the
iteration counter (equal across the population anyway).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxrl.config import Config, ConfigError, suggest
from jaxrl.core import Metrics
from jaxrl.loop import TrainState, compiler_options, make_train, seed_keys
from jaxrl.metrics import FINAL_EPISODES, final_return
from jaxrl.parallel import seed_mesh
from jaxrl.sweeps import gather_hosts, host_friendly

DEFAULT_FACTORS = (0.8, 1.25)  # perturbation factors when a spec gives none
FITNESS = ("return", "eval")  # named fitness functions (or pass a callable)
SPEC_KEYS = ("range", "log", "perturb", "init")


@dataclasses.dataclass(frozen=True)
class Explore:
    """How PBT explores one traced hyperparameter.

    ``range`` ``(low, high)``: where initial values are sampled from (uniformly, or
    log-uniformly with ``log``) unless ``init`` gives them, where a resample draws from, and the
    bounds perturbed values are clipped to. ``perturb``: the factors a perturbation multiplies
    by (one drawn uniformly). ``init``: one initial value per member (default: sampled from
    ``range``, or the config's value for every member without a range). Without a range a
    value is not bounded: give one for a hyperparameter with limits (``gamma <= 1``).
    """

    range: tuple[float, float] | None = None
    log: bool = False
    perturb: tuple[float, ...] = DEFAULT_FACTORS
    init: tuple[float, ...] | None = None


@dataclasses.dataclass
class PBTResult:
    """A PBT run: ``seeds`` independent populations of ``population`` members each.

    ``metrics[name]`` is ``(seeds, population, iterations)``; ``state`` the final train state with
    leading axes ``(seeds, population)``. The lineage, per generation ``g`` (iterations
    ``g*interval .. (g+1)*interval - 1``): ``hparams[name][s, g, m]`` the value member ``m`` trained
    with during the generation, ``fitness[s, g, m]`` its fitness at the generation's end and
    ``parent[s, g, m]`` the member whose learner state (and explored hyperparameters) it took
    then (``m`` itself when it kept its own; after the last generation nobody is replaced).
    """

    config: Config
    population: int
    interval: int
    explore: dict[str, Explore]
    seeds: list[int]  # the seed value of each population (see pbt for its members' seeds)
    metrics: dict[str, np.ndarray]
    state: Any
    hparams: dict[str, np.ndarray]
    fitness: np.ndarray
    parent: np.ndarray
    compile_seconds: float
    run_seconds: float

    @property
    def generations(self) -> int:
        return self.parent.shape[1]

    @property
    def replaced(self) -> np.ndarray:
        """``(seeds, generations, population)``: whether a member took another's state at the end of a generation."""
        return self.parent != np.arange(self.population)

    def final_return(self, episodes: int = FINAL_EPISODES) -> np.ndarray:
        """``(seeds, population)`` mean return of each member's last ``episodes`` finished
        episodes (see :func:`jaxrl.metrics.final_return`; a member's recent episodes may have
        been played partly by the learner it later replaced)."""
        return final_return(self.metrics, episodes)

    def ancestry(self, member: int, seed: int = 0) -> list[int]:
        """Whose learner ``member`` (of population ``seed``) held in each generation: the chain
        of parents traced back from the end, one member index per generation."""
        chain = [member]
        for g in range(self.generations - 2, -1, -1):  # state in generation g+1 came from parent[g]
            chain.append(int(self.parent[seed, g, chain[-1]]))
        return chain[::-1]

    def rows(self) -> Iterator[dict[str, Any]]:
        """The lineage as tidy rows: one per (population, generation, member)."""
        for s, seed in enumerate(self.seeds):
            for g in range(self.generations):
                for m in range(self.population):
                    fit = float(self.fitness[s, g, m])
                    yield {"seed": seed, "generation": g, "member": m,
                           "end_iteration": min((g + 1) * self.interval, self.config.num_iterations),
                           **{k: float(v[s, g, m]) for k, v in self.hparams.items()},
                           "fitness": None if math.isnan(fit) else fit, "parent": int(self.parent[s, g, m])}


# ----------------------------------------------------------------------------- specs


def check_traced(config: Config, name: str, why_static_fails: str) -> None:
    """A :class:`ConfigError` unless ``name`` is a traced hyperparameter of ``config``: a static
    field is refused saying ``why_static_fails``, an unknown name with a suggestion."""
    traced = config.traced_names()
    if name in traced:
        return
    if name in {f.name for f in dataclasses.fields(config)}:
        raise ConfigError(f"{name!r} is a static field (it changes the compiled program), so {why_static_fails}; "
                          f"traced hyperparameters: {', '.join(traced)}")
    raise ConfigError(f"unknown hyperparameter {name!r}" + suggest(name, list(traced))
                      + f"; traced hyperparameters: {', '.join(traced)}")


def parse_explore(config: Config, explore: Mapping[str, Any], population: int) -> dict[str, Explore]:
    """``explore`` checked against ``config`` and turned into :class:`Explore` specs, or a
    :class:`ConfigError`: unknown or static keys, empty or inverted ranges, bad factors, initial
    values of the wrong count or outside their range, values the config refuses (``lr <= 0``)."""
    if not isinstance(explore, Mapping) or not explore:
        raise ConfigError(f"explore must map traced hyperparameters to specs, e.g. "
                          f"{{'lr': {{'range': [1e-5, 1e-2], 'log': True}}}}; got {explore!r}")
    specs = {}
    for name, spec in explore.items():
        check_traced(config, name, "PBT cannot change it during a run")
        if not isinstance(spec, Mapping):
            raise ConfigError(f"explore[{name!r}] must be a mapping with keys among {SPEC_KEYS}, got {spec!r}")
        unknown = [k for k in spec if k not in SPEC_KEYS]
        if unknown:
            raise ConfigError(f"explore[{name!r}]: unknown key {unknown[0]!r}" + suggest(str(unknown[0]), list(SPEC_KEYS))
                              + f"; keys: {', '.join(SPEC_KEYS)}")
        specs[name] = _parse_spec(config, name, spec, population)
    return specs


def _numbers(name: str, what: str, values: Any) -> tuple[float, ...]:
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Sequence) or not all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise ConfigError(f"explore[{name!r}][{what!r}] must be a list of finite numbers, got {values!r}")
    return tuple(float(v) for v in values)


def _parse_spec(config: Config, name: str, spec: Mapping[str, Any], population: int) -> Explore:
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"explore[{name!r}]['log'] must be true or false, got {log!r}")
    bounds = None
    if "range" in spec:
        bounds = _numbers(name, "range", spec["range"])
        if len(bounds) != 2:
            raise ConfigError(f"explore[{name!r}]['range'] must be [low, high], got {spec['range']!r}")
        if not bounds[0] < bounds[1]:
            raise ConfigError(f"explore[{name!r}]['range'] {list(bounds)} is empty: low must be < high")
        if log and bounds[0] <= 0:
            raise ConfigError(f"explore[{name!r}]: a log range needs low > 0, got {list(bounds)}")
    elif log:
        raise ConfigError(f"explore[{name!r}]: 'log' needs a 'range'")
    factors = _numbers(name, "perturb", spec.get("perturb", DEFAULT_FACTORS))
    if not factors or not all(f > 0 for f in factors):
        raise ConfigError(f"explore[{name!r}]['perturb'] must list positive factors, got {spec.get('perturb')!r}")
    init = None
    if "init" in spec:
        init = _numbers(name, "init", spec["init"])
        if len(init) != population:
            raise ConfigError(f"explore[{name!r}]['init'] gives {len(init)} values for a population of {population}")
        if bounds is not None and not all(bounds[0] <= v <= bounds[1] for v in init):
            raise ConfigError(f"explore[{name!r}]['init'] {list(init)} leaves its range {list(bounds)}")
    for value in set(init or ()) | set(bounds or ()):
        config.replace(**{name: value})  # the config's own checks (lr > 0, gamma in [0, 1], float32)
    return Explore(bounds, log, factors, init)


def copy_count(truncation: float, population: int) -> int:
    """How many members the bottom (and top) ``truncation`` fraction of a population holds."""
    return int(math.floor(truncation * population + 1e-9))


def _check(config: Config, population: int, interval: int, truncation: float, resample_probability: float,
           fitness: str | Callable, seeds: int) -> None:
    def whole(x: Any) -> bool:
        return isinstance(x, numbers.Integral) and not isinstance(x, bool)

    if not whole(population) or population < 2:
        raise ConfigError(f"population must be an integer >= 2, got {population!r}")
    if not whole(seeds) or seeds < 1:
        raise ConfigError(f"seeds must be a positive integer, got {seeds!r}")
    if not whole(interval) or not 1 <= interval <= config.num_iterations:
        raise ConfigError(f"interval must be an integer in [1, {config.num_iterations}] (the run's iterations), "
                          f"got {interval!r}")
    if not (isinstance(truncation, numbers.Real) and 0 < truncation <= 0.5):
        raise ConfigError(f"truncation must be in (0, 0.5] (the top and bottom fractions must not overlap), "
                          f"got {truncation!r}")
    if copy_count(truncation, population) < 1:
        raise ConfigError(f"a population of {population} with truncation={truncation} selects nobody to replace "
                          f"(the bottom {truncation:g} of {population} members is less than one); use at least "
                          f"{math.ceil(1 / truncation - 1e-9)} members or a larger truncation")
    if not (isinstance(resample_probability, numbers.Real) and 0 <= resample_probability <= 1):
        raise ConfigError(f"resample_probability must be in [0, 1], got {resample_probability!r}")
    if callable(fitness):
        return
    if fitness not in FITNESS:
        raise ConfigError(f"fitness must be one of {', '.join(FITNESS)} or a function of a member's metrics, "
                          f"got {fitness!r}")
    if fitness == "eval" and not 1 <= config.eval_every <= interval:
        raise ConfigError(f"fitness='eval' needs an in-loop evaluation in every interval: eval_every must be in "
                          f"[1, {interval}], got {config.eval_every}")


# ----------------------------------------------------------------------------- fitness


def mean_return(metrics: Metrics) -> jax.Array:
    """One member's mean episode return over an interval's iterations ``(K,)``: each
    iteration's mean weighted by its finished episodes; NaN when no episode finished."""
    returns, episodes = metrics["episode_return"], jnp.nan_to_num(metrics["episodes"])
    weights = jnp.where(jnp.isfinite(returns), episodes, 0.0)
    total = jnp.where(weights > 0, returns * weights, 0.0).sum()
    return jnp.where(weights.sum() > 0, total / jnp.maximum(weights.sum(), 1e-9), jnp.nan)


def mean_eval_return(metrics: Metrics) -> jax.Array:
    """One member's mean in-loop evaluation return over the interval's evaluations (NaN: none)."""
    values = metrics["eval_return"]
    valid = jnp.isfinite(values)
    return jnp.where(valid.any(), jnp.where(valid, values, 0.0).sum() / jnp.maximum(valid.sum(), 1), jnp.nan)


# ----------------------------------------------------------------------------- exploit / explore


def copy_learner(state: TrainState, parent: jax.Array) -> TrainState:
    """Member ``m`` of the batched ``state`` takes member ``parent[m]``'s learner: agent,
    observation statistics, reward-return statistics and ``diverged_at``; it keeps its env side,
    its envs' running returns, its key and its iteration (see the module's docstring)."""
    take = functools.partial(jax.tree.map, lambda x: x[parent])
    return state.replace(agent=take(state.agent), obs_stats=take(state.obs_stats),
                         reward_scaler=state.reward_scaler.replace(stats=take(state.reward_scaler.stats)),
                         diverged_at=take(state.diverged_at))


def _sample(key: jax.Array, spec: Explore, shape: tuple[int, ...]) -> jax.Array:
    """Values drawn from ``spec.range``, uniformly or log-uniformly."""
    low, high = (math.log(b) for b in spec.range) if spec.log else spec.range
    u = jax.random.uniform(key, shape, minval=low, maxval=high)
    return jnp.clip(jnp.exp(u) if spec.log else u, *spec.range)


def _explored(key: jax.Array, values: jax.Array, spec: Explore, resample_probability: float) -> jax.Array:
    """``values`` each multiplied by one of ``spec.perturb`` (clipped to the range), or, with
    ``resample_probability`` when there is a range, resampled from it."""
    k_factor, k_coin, k_sample = jax.random.split(key, 3)
    factors = jnp.asarray(spec.perturb, values.dtype)
    perturbed = values * factors[jax.random.randint(k_factor, values.shape, 0, len(spec.perturb))]
    if spec.range is None:
        return perturbed
    perturbed = jnp.clip(perturbed, *spec.range)
    coin = jax.random.uniform(k_coin, values.shape) < resample_probability
    return jnp.where(coin, _sample(k_sample, spec, values.shape), perturbed)


def exploit_explore(key: jax.Array, fitness: jax.Array, state: TrainState, hparams: dict[str, jax.Array],
                    explore: Mapping[str, Explore], truncation: float = 0.25, resample_probability: float = 0.25,
                    active: jax.Array | bool = True) -> tuple[TrainState, dict[str, jax.Array], jax.Array]:
    """One PBT step over a population (leading axis of ``fitness``, ``state`` and ``hparams``).

    Members are ranked by ``fitness`` (NaN, or a diverged learner, ranks last; ties keep index
    order). Each of the bottom ``n = copy_count(truncation, P)`` draws one of the top ``n``
    uniformly and, only if that one is strictly fitter, takes its learner (:func:`copy_learner`)
    and its ``explore`` hyperparameters, explored (perturbed or resampled). Returns the new
    state, hyperparameters, and ``parent`` (``m`` for a member that kept its own). With
    ``active`` false nobody is replaced (a traced flag: the run's last generation).
    """
    size = fitness.shape[0]
    n = copy_count(truncation, size)
    score = jnp.where(jnp.isnan(fitness) | (state.diverged_at >= 0), -jnp.inf, fitness)
    order = jnp.argsort(-score, stable=True)  # fittest first
    k_parent, k_explore = jax.random.split(key)
    members = jnp.arange(size)
    drawn = members.at[order[size - n:]].set(order[:n][jax.random.randint(k_parent, (n,), 0, n)])
    replaced = (score[drawn] > score) & active
    parent = jnp.where(replaced, drawn, members)
    hparams = dict(hparams)
    for k, (name, spec) in zip(jax.random.split(k_explore, max(len(explore), 1)), explore.items()):
        inherited = hparams[name][parent]
        hparams[name] = jnp.where(replaced, _explored(k, inherited, spec, resample_probability), inherited)
    return copy_learner(state, parent), hparams, parent


def initial_hparams(key: jax.Array, config: Config, explore: Mapping[str, Explore],
                    population: int) -> dict[str, jax.Array]:
    """Each explored hyperparameter's starting value per member: given, sampled from its range,
    or the config's value."""
    out = {}
    for k, (name, spec) in zip(jax.random.split(key, max(len(explore), 1)), explore.items()):
        if spec.init is not None:
            out[name] = jnp.asarray(spec.init, jnp.float32)
        elif spec.range is not None:
            out[name] = _sample(k, spec, (population,))
        else:
            out[name] = jnp.full((population,), getattr(config, name), jnp.float32)
    return out


# ----------------------------------------------------------------------------- the program


def pbt(config: Config, population: int, interval: int, explore: Mapping[str, Any], seeds: int = 1,
        fitness: str | Callable[[Metrics], jax.Array] = "return", truncation: float = 0.25,
        resample_probability: float = 0.25, exploit: bool = True,
        devices: Sequence[jax.Device] | None = None, inputs: Any = None) -> PBTResult:
    """Train ``seeds`` populations of ``population`` members of ``config`` with PBT.

    Every ``interval`` iterations the members are ranked by ``fitness`` — ``"return"``: the
    mean episode return over the interval (episode-weighted, :func:`mean_return`), ``"eval"``:
    the mean in-loop evaluation return over it (needs ``eval_every <= interval``), or a function
    of one member's interval metrics (each ``(interval,)``) returning a scalar — and
    :func:`exploit_explore` runs with ``truncation`` and ``resample_probability``.
    ``explore`` maps traced hyperparameters to specs (see :class:`Explore`), e.g.
    ``{"lr": {"range": [1e-5, 1e-2], "log": True}, "ent_coef": {"perturb": [0.8, 1.25]}}``.
    ``exploit=False`` trains the same population from the same initial hyperparameters without
    any exploit/explore step (the baseline PBT is compared with).

    Population ``s`` has seed value ``config.seed + s``: its member ``m`` trains with the key
    of seed ``config.seed + s * population + m`` (without exploit, exactly a single run of that
    seed with the member's hyperparameters), its PBT draws come from a stream of its own. All
    populations and generations run as one compiled program; the members are split over as
    many ``devices`` (default ``jax.devices()``) as divide ``population``. Bad specs raise
    :class:`ConfigError` before anything is compiled. (:func:`jaxrl.runner.run_pbt` runs the
    same program in pieces of a few generations, with checkpoints and exact resume.)
    """
    program = build_pbt(config, population, interval, explore, seeds, fitness, truncation, resample_probability,
                        exploit, devices, inputs)
    carry = program.start()
    carry, lineage = program.advance(carry, 0)
    return program.result(carry, lineage)


@dataclasses.dataclass
class PBTProgram:
    """PBT's compiled pieces, for drivers that run it in parts (checkpointing between them):
    :meth:`start` makes the populations' initial carry ``(state, hparams, pbt key)``,
    :meth:`advance` runs ``per_call`` generations from a given one (generations past the last
    change nothing and are dropped from the lineage) and :meth:`result` assembles a
    :class:`PBTResult` from the final carry and the lineage of all generations. Compile and run
    seconds accumulate in ``compile_seconds`` and ``run_seconds``."""

    config: Config
    population: int
    interval: int
    specs: dict[str, Explore]
    seeds: int
    generations: int
    per_call: int
    start_program: Any
    advance_program: Any
    args: tuple  # (member keys, pbt keys, inputs)
    compile_seconds: float = 0.0
    run_seconds: float = 0.0

    def start(self) -> Any:
        return self._timed(self.start_program, *self.args)

    def advance(self, carry: Any, first: int) -> tuple[Any, tuple]:
        """``per_call`` generations from generation ``first``: the new carry and their lineage
        ``(metrics, fitness, hparams, parent)`` on the host, each with a generations axis 1."""
        carry, lineage = self._timed(self.advance_program, carry, jnp.int32(first), self.args[2])
        done = min(self.per_call, self.generations - first)
        return carry, jax.tree.map(lambda x: x[:, :done], gather_hosts(lineage))

    def _timed(self, program: Any, *args: Any) -> Any:
        t0 = time.perf_counter()
        out = program(*args)
        jax.block_until_ready(out)
        self.run_seconds += time.perf_counter() - t0
        return out

    def result(self, carry: Any, lineage: tuple) -> PBTResult:
        metrics, fit, hps, parents = lineage
        seeds, population, config = self.seeds, self.population, self.config
        state = gather_hosts(jax.tree.map(host_friendly, carry[0]))
        # metrics (seeds, generations, population, interval) -> (seeds, population, iterations)
        metrics = {k: np.moveaxis(np.asarray(v), 2, 1).reshape(seeds, population, -1)[..., :config.num_iterations]
                   for k, v in metrics.items()}
        return PBTResult(config, population, self.interval, self.specs, [config.seed + s for s in range(seeds)],
                         metrics, state, {k: np.asarray(hps[k]) for k in self.specs}, np.asarray(fit),
                         np.asarray(parents), self.compile_seconds, self.run_seconds)


def build_pbt(config: Config, population: int, interval: int, explore: Mapping[str, Any], seeds: int = 1,
              fitness: str | Callable[[Metrics], jax.Array] = "return", truncation: float = 0.25,
              resample_probability: float = 0.25, exploit: bool = True,
              devices: Sequence[jax.Device] | None = None, inputs: Any = None,
              generations_per_call: int | None = None) -> PBTProgram:
    """:func:`pbt`'s checks and compiled program, as a :class:`PBTProgram` that runs
    ``generations_per_call`` generations per call (default: all of them)."""
    config.validate()
    _check(config, population, interval, truncation, resample_probability, fitness, seeds)
    specs = parse_explore(config, explore, population)
    train = make_train(config)  # builds the env, runs the algorithm's checks: still nothing compiled
    fitness_fn = fitness if callable(fitness) else {"return": mean_return, "eval": mean_eval_return}[fitness]
    generations = math.ceil(config.num_iterations / interval)
    per_call = generations if generations_per_call is None else generations_per_call
    if isinstance(per_call, bool) or not isinstance(per_call, numbers.Integral) or per_call < 1:
        raise ConfigError(f"generations_per_call must be a positive integer, got {generations_per_call!r}")
    per_call = min(int(per_call), generations)
    chunk = functools.partial(train.run_chunk, length=interval)
    mesh = seed_mesh(population, devices)
    member_sharding = None if mesh is None else NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))

    def spread(tree: Any) -> Any:
        """Keep the member axis split over the devices (a no-op on one device)."""
        if member_sharding is None:
            return tree
        return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, member_sharding), tree)

    def start(member_keys: jax.Array, pbt_key: jax.Array, inputs: Any):
        k_init, pbt_key = jax.random.split(pbt_key)
        hp = initial_hparams(k_init, config, specs, population)
        return spread(jax.vmap(train.init, in_axes=(0, 0, None))(member_keys, hp, inputs)), hp, pbt_key

    def advance(carry: tuple, first: jax.Array, inputs: Any):
        def generation(carry, g):
            state, hp, key = carry
            state, metrics = jax.vmap(chunk, in_axes=(0, 0, None, None))(state, hp, g * interval, inputs)
            fit = jax.vmap(fitness_fn)(metrics)
            key, k_step = jax.random.split(key)
            new_state, new_hp, parent = state, hp, jnp.arange(population)
            if exploit:  # not after the last generation: the run ends with the members' own learners
                new_state, new_hp, parent = exploit_explore(k_step, fit, state, hp, specs, truncation,
                                                            resample_probability, active=g < generations - 1)
            return (spread(new_state), new_hp, key), (metrics, fit, hp, parent)

        return jax.lax.scan(generation, carry, first + jnp.arange(per_call))

    seed_values = jnp.arange(config.seed, config.seed + seeds)
    member_keys = seed_keys(config.seed, seeds * population).reshape(seeds, population)
    pbt_keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(s), 0x9B7))(seed_values)
    if mesh is not None:
        member_keys = jax.device_put(member_keys, NamedSharding(mesh, PartitionSpec(None, mesh.axis_names[0])))
    args = (member_keys, pbt_keys, inputs)
    t0 = time.perf_counter()
    start_program = jax.jit(jax.vmap(start, in_axes=(0, 0, None)),
                            compiler_options=compiler_options()).lower(*args).compile()
    carry = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), start_program.out_info)
    advance_program = jax.jit(jax.vmap(advance, in_axes=(0, None, None)), compiler_options=compiler_options(),
                              ).lower(carry, jnp.int32(0), inputs).compile()
    return PBTProgram(config, population, interval, specs, seeds, generations, per_call, start_program,
                      advance_program, args, compile_seconds=time.perf_counter() - t0)
