"""Hyperparameter search done honestly: choose on tuning seeds, report on disjoint test seeds.

A tuned configuration's score on the seeds it was chosen on is biased upwards: among many
candidates, the winner is partly the one whose seeds were lucky (Eimer, Lindauer and Raileanu,
2023, "Hyperparameters in Reinforcement Learning and How To Tune Them"). :func:`tune` therefore
searches with ``tuning_seeds`` only and then trains the chosen configuration, and the config as
given (the baseline), on ``test_seeds`` that share no seed with the search; the report puts the
test seeds' IQM with its bootstrap confidence interval next to the tuning seeds' score.

Methods, each a vmapped program over candidates x seeds (only traced hyperparameters are
searched, so every candidate shares one compiled program):

- ``random``: ``budget`` candidates sampled from ``space``, each trained for the whole run on
  every tuning seed; the best mean final return wins.
- ``successive_halving`` (Jamieson and Talwalkar, 2016): the ``budget`` candidates train to the
  first rung, the best ``1 / eta`` of them continue *from their states* to the next rung (no
  retraining from scratch), and so on until the survivors reach the end of the run.
- ``pbt``: one population of ``budget`` members per tuning seed (:func:`jaxrl.population.pbt`,
  exploit/explore every ``interval`` iterations). What it finds is a *schedule*: the
  hyperparameters the best final member's lineage trained with, generation by generation; the
  test runs replay that schedule.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import numbers
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from jax.sharding import NamedSharding, PartitionSpec

from jaxrl import stats
from jaxrl.config import Config, ConfigError, require_one_of, suggest
from jaxrl.loop import compiler_options, hparam_dtype, make_train
from jaxrl.metrics import FINAL_EPISODES, final_return
from jaxrl.parallel import seed_mesh
from jaxrl.population import check_traced, pbt
from jaxrl.sweeps import gather_hosts, host_friendly

METHODS = ("random", "successive_halving", "pbt")
DIMENSION_KEYS = ("range", "log", "values")


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One searched hyperparameter: ``values`` to choose from, or a ``range`` ``(low, high)``
    sampled uniformly (log-uniformly with ``log``)."""

    range: tuple[float, float] | None = None
    log: bool = False
    values: tuple[float, ...] | None = None

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.values is not None:
            return np.asarray(self.values)[rng.integers(0, len(self.values), n)]
        low, high = self.range
        if self.log:
            return np.exp(rng.uniform(math.log(low), math.log(high), n))
        return rng.uniform(low, high, n)


def parse_space(config: Config, space: Mapping[str, Any]) -> dict[str, Dimension]:
    """``space`` checked against ``config``: traced hyperparameters only, each mapped to
    ``{"range": [low, high], "log": bool}`` or ``{"values": [...]}``; bounds and values must be
    values the config accepts. A :class:`ConfigError` names what is wrong."""
    if not isinstance(space, Mapping) or not space:
        raise ConfigError(f"space must map traced hyperparameters to {{'range': [low, high], 'log': bool}} or "
                          f"{{'values': [...]}}, e.g. {{'lr': {{'range': [1e-5, 1e-2], 'log': True}}}}; got {space!r}")
    dims = {}
    for name, spec in space.items():
        check_traced(config, name, "candidates cannot share one program (compare static choices with a sweep, "
                                   "separate=True)")
        if not isinstance(spec, Mapping) or not spec:
            raise ConfigError(f"space[{name!r}] must be a mapping with 'range' (and 'log') or 'values', got {spec!r}")
        unknown = [k for k in spec if k not in DIMENSION_KEYS]
        if unknown:
            raise ConfigError(f"space[{name!r}]: unknown key {unknown[0]!r}" + suggest(str(unknown[0]),
                              list(DIMENSION_KEYS)) + f"; keys: {', '.join(DIMENSION_KEYS)}")
        dims[name] = _dimension(config, name, spec)
    return dims


def _finite_numbers(name: str, key: str, values: Any) -> tuple[float, ...]:
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Sequence) or not values or not all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise ConfigError(f"space[{name!r}][{key!r}] must be a non-empty list of finite numbers, got {values!r}")
    return tuple(float(v) for v in values)


def _dimension(config: Config, name: str, spec: Mapping[str, Any]) -> Dimension:
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"space[{name!r}]['log'] must be true or false, got {log!r}")
    if ("range" in spec) == ("values" in spec):
        raise ConfigError(f"space[{name!r}] needs exactly one of 'range' and 'values', got {dict(spec)!r}")
    if "values" in spec:
        if log:
            raise ConfigError(f"space[{name!r}]: 'log' applies to a 'range', not to 'values'")
        dim = Dimension(values=_finite_numbers(name, "values", spec["values"]))
        checked = dim.values
    else:
        bounds = _finite_numbers(name, "range", spec["range"])
        if len(bounds) != 2 or not bounds[0] < bounds[1]:
            raise ConfigError(f"space[{name!r}]['range'] must be [low, high] with low < high, got {spec['range']!r}")
        if log and bounds[0] <= 0:
            raise ConfigError(f"space[{name!r}]: a log range needs low > 0, got {list(bounds)}")
        dim, checked = Dimension(range=bounds, log=log), bounds
    for value in checked:
        config.replace(**{name: value})  # the config's own checks (lr > 0, gamma in [0, 1], float32 range)
    return dim


def _decimal(x: float) -> float:
    """``x`` as float32 (what the program computes with), written as its shortest decimal."""
    return float(str(np.float32(x)))


def sample_candidates(space: Mapping[str, Dimension], n: int, seed: int) -> list[dict[str, float]]:
    """``n`` candidates drawn independently from ``space`` (NumPy, reproducible from ``seed``)."""
    rng = np.random.default_rng(seed)
    columns = {name: dim.sample(rng, n) for name, dim in space.items()}
    return [{name: _decimal(col[i]) for name, col in columns.items()} for i in range(n)]


def halving_rungs(num_iterations: int, candidates: int, eta: int) -> list[tuple[int, int]]:
    """Successive halving's rungs as ``(end_iteration, candidates_trained_to_it)``: the budget
    per candidate grows by ``eta`` from rung to rung and the last rung ends the run; as many
    rungs as the candidates (each rung keeps ``1 / eta`` of them) and the iterations allow."""
    rungs = min(int(math.floor(math.log(candidates, eta) + 1e-9)), int(math.floor(math.log(num_iterations, eta)
                                                                                     + 1e-9))) + 1
    out = []
    for r in range(rungs):
        end = max(1, round(num_iterations / eta ** (rungs - 1 - r)))
        if out and end <= out[-1][0]:
            continue
        out.append((end, max(1, candidates // eta ** r)))
    return out


def _seed_values(seeds: int | Sequence[int], name: str, start: int) -> list[int]:
    if isinstance(seeds, numbers.Integral) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ConfigError(f"{name} must be a positive count or a list of seeds, got {seeds}")
        return list(range(start, start + int(seeds)))
    if isinstance(seeds, (str, bytes, Mapping)) or not isinstance(seeds, Sequence) or not seeds or not all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool) and 0 <= s < 2**31 for s in seeds):
        raise ConfigError(f"{name} must be a positive count or a non-empty list of seeds (integers in [0, 2**31)), "
                          f"got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{name} lists a seed twice: {list(seeds)}")
    return [int(s) for s in seeds]


@dataclasses.dataclass
class TuneResult:
    """A search and its honest evaluation.

    ``trials``: one row per candidate (random, successive halving: its values, the iterations it
    trained, its mean final return over the tuning seeds and each seed's, where it stopped) or per
    PBT member (population, member, final values, final return); ``best_trial`` is the chosen row. ``curves[name]`` is ``(trials, seeds,
    iterations)`` of the tuning runs (NaN after a candidate stopped). ``chosen``: the chosen
    values (PBT: those of the last generation); ``schedule`` (PBT only): the values per
    generation of ``interval`` iterations that the test runs replayed. ``tuning_scores``: the
    chosen candidate's final return on each tuning seed (PBT: each population's best member).
    ``test_scores`` and ``baseline_scores``: final returns on the test seeds of the chosen
    values and of the config as given; ``test_curves[name]`` ``(2, test seeds, iterations)``
    (chosen, baseline).
    """

    config: Config
    method: str
    space: dict[str, Dimension]
    tuning_seeds: list[int]
    test_seeds: list[int]
    trials: list[dict[str, Any]]
    best_trial: int
    curves: dict[str, np.ndarray]
    chosen: dict[str, float]
    schedule: dict[str, list[float]] | None
    interval: int | None
    tuning_scores: np.ndarray
    test_scores: np.ndarray
    baseline_scores: np.ndarray
    test_curves: dict[str, np.ndarray]
    compile_seconds: float
    run_seconds: float

    def best_config(self) -> Config:
        """The config with the chosen values (PBT: the last generation's; the test runs followed
        the whole :attr:`schedule`)."""
        return self.config.replace(**self.chosen)

    def report(self, reps: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
        """IQM and mean with percentile-bootstrap intervals: the chosen values on the tuning seeds
        and on the test seeds, the baseline on the test seeds, the gap (tuning IQM minus test IQM:
        the optimism of scoring a choice on the seeds it was made on) and the probability that
        the chosen values beat the baseline on a test seed."""
        def summary(scores: np.ndarray) -> dict[str, Any]:
            finite = scores[np.isfinite(scores)]
            if finite.size == 0:
                return {"runs": 0, "iqm": None, "low": None, "high": None, "mean": None}
            point, low, high = stats.bootstrap_ci(finite[:, None], "iqm", reps, confidence, seed)
            return {"runs": int(finite.size), "iqm": float(point), "low": float(low), "high": float(high),
                    "mean": float(finite.mean())}

        tuning, test, base = (summary(np.asarray(s, float)) for s in
                              (self.tuning_scores, self.test_scores, self.baseline_scores))
        both = np.isfinite(self.test_scores) & np.isfinite(self.baseline_scores)
        improvement = (float(stats.probability_of_improvement(self.test_scores[both, None],
                                                              self.baseline_scores[both, None]))
                       if both.any() else None)
        gap = None if tuning["iqm"] is None or test["iqm"] is None else tuning["iqm"] - test["iqm"]
        return {"method": self.method, "algo": self.config.algo, "env": self.config.env,
                "tuning_seeds": self.tuning_seeds, "test_seeds": self.test_seeds, "chosen": self.chosen,
                "schedule": self.schedule, "interval": self.interval, "confidence": confidence,
                "tuning": tuning, "test": test, "baseline_test": base, "gap": gap,
                "probability_chosen_beats_baseline": improvement,
                "test_scores": _floats(self.test_scores), "baseline_scores": _floats(self.baseline_scores),
                "compile_seconds": round(self.compile_seconds, 3), "run_seconds": round(self.run_seconds, 3)}

    def save(self, folder: str | Path) -> Path:
        """Write ``trials.csv`` (the search table), ``report.json`` (:meth:`report`),
        ``best.yaml`` (the config with the chosen values: ``jaxrl train best.yaml``),
        ``config.yaml`` (the config as given) and ``curves.npz`` into ``folder`` (created)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        columns = list(dict.fromkeys(k for row in self.trials for k in row))
        lines = [",".join(columns)] + [",".join("" if row.get(c) is None else str(row.get(c)) for c in columns)
                                       for row in self.trials]
        (folder / "trials.csv").write_text("\n".join(lines) + "\n")
        (folder / "report.json").write_text(json.dumps(self.report(), indent=2) + "\n")
        header = (f"# chosen by jaxrl tune ({self.method}) on seeds {self.tuning_seeds}; test seeds "
                  f"{self.test_seeds}: see report.json\n")
        if self.schedule is not None:
            header += (f"# PBT found a schedule (values per {self.interval} iterations, report.json); these are its "
                       f"last values, held fixed\n")
        (folder / "best.yaml").write_text(header + yaml.safe_dump(self.best_config().to_dict(), sort_keys=False))
        (folder / "config.yaml").write_text(yaml.safe_dump(self.config.to_dict(), sort_keys=False))
        np.savez_compressed(folder / "curves.npz", **{f"tuning_{k}": v for k, v in self.curves.items()},
                            **{f"test_{k}": v for k, v in self.test_curves.items()})
        return folder


def _floats(values: np.ndarray) -> list[float | None]:
    return [None if not math.isfinite(v) else float(v) for v in np.asarray(values, float)]


# ----------------------------------------------------------------------------- programs


class _Programs:
    """The compiled pieces a search runs, over a flat batch of runs: ``init`` of runs from keys
    and hyperparameters, and ``chunk``s of a given length continuing them. Batches are split
    over the devices that divide them; compile and run seconds are counted apart."""

    def __init__(self, config: Config, devices: Sequence[jax.Device] | None, inputs: Any):
        self.train = make_train(config)
        self.devices, self.inputs = devices, inputs
        self.compile_seconds = self.run_seconds = 0.0
        self._cache: dict[Any, Any] = {}

    def _call(self, name: Any, fn: Any, *args: Any) -> Any:
        batch = jax.tree.leaves(args[0])[0].shape[0]
        mesh = seed_mesh(batch, self.devices)
        if mesh is not None:
            sharding = NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))
            args = (jax.device_put(args[0], sharding), jax.device_put(args[1], sharding)) + args[2:]
        key = (name, batch, mesh is None)
        if key not in self._cache:
            t0 = time.perf_counter()
            self._cache[key] = jax.jit(fn, compiler_options=compiler_options()).lower(*args, self.inputs).compile()
            self.compile_seconds += time.perf_counter() - t0
        t0 = time.perf_counter()
        out = self._cache[key](*args, self.inputs)
        jax.block_until_ready(out)
        self.run_seconds += time.perf_counter() - t0
        return out

    def init(self, seeds: Sequence[int], hp: dict[str, np.ndarray]) -> Any:
        keys = jax.vmap(jax.random.key)(jnp.asarray(seeds, jnp.int32))
        return self._call("init", jax.vmap(self.train.init, in_axes=(0, 0, None)), keys, hp)

    def chunk(self, state: Any, hp: dict[str, np.ndarray], start: int, length: int) -> tuple[Any, dict]:
        run = jax.vmap(functools.partial(self.train.run_chunk, length=length), in_axes=(0, 0, None, None))
        state, metrics = self._call(("chunk", length), run, state, hp, jnp.int32(start))
        return state, gather_hosts(jax.tree.map(host_friendly, metrics))

    def scheduled(self, seeds: Sequence[int], schedules: dict[str, np.ndarray], interval: int) -> dict[str, np.ndarray]:
        """Fresh runs of ``seeds`` (one per row of ``schedules[name]``, ``(runs, generations)``)
        whose hyperparameters change every ``interval`` iterations: per-iteration metrics
        ``(runs, iterations)``."""
        train, n_iters = self.train, self.train.num_iterations

        def one(key: jax.Array, schedule: dict[str, jax.Array], inputs: Any) -> dict:
            state = train.init(key, {k: v[0] for k, v in schedule.items()}, inputs)
            generations = next(iter(schedule.values())).shape[0] if schedule else 1

            def generation(state: Any, g: jax.Array) -> tuple[Any, dict]:
                hp = {k: v[g] for k, v in schedule.items()}
                return train.run_chunk(state, hp, g * interval, inputs, length=interval)

            _, metrics = jax.lax.scan(generation, state, jnp.arange(generations, dtype=jnp.int32))
            return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:])[:n_iters], metrics)

        keys = jax.vmap(jax.random.key)(jnp.asarray(seeds, jnp.int32))
        metrics = self._call(("scheduled", interval), jax.vmap(one, in_axes=(0, 0, None)), keys, schedules)
        return gather_hosts(jax.tree.map(host_friendly, metrics))


def _select(state: Any, rows: np.ndarray) -> Any:
    return jax.jit(lambda s, r: jax.tree.map(lambda x: x[r], s))(state, jnp.asarray(rows))


def _search(programs: _Programs, config: Config, candidates: list[dict[str, float]], seeds: list[int],
            rungs: list[tuple[int, int]], episodes: int) -> tuple[list[dict], dict[str, np.ndarray], int]:
    """Train ``candidates`` x ``seeds`` through ``rungs`` (``(end_iteration, survivors)``; one
    rung for random search), continuing the best candidates' states from rung to rung:
    the trials table, the tuning curves and the winning candidate's index."""
    n_c, n_s, n_iters = len(candidates), len(seeds), config.num_iterations
    dtype = {name: hparam_dtype(name, {}) for name in candidates[0]}
    alive = np.arange(n_c)
    curves: dict[str, np.ndarray] = {}
    trained = np.zeros(n_c, int)
    scores = np.full((n_c, n_s), np.nan)

    def hp_of(rows: np.ndarray) -> dict[str, np.ndarray]:
        return {k: np.repeat(np.array([candidates[r][k] for r in rows], dtype[k]), n_s) for k in dtype}

    state = programs.init(seeds * len(alive), hp_of(alive))
    start = 0
    for end, survivors in rungs:
        if survivors < len(alive):  # the best `survivors` by their mean score so far go on
            means = np.where(np.isfinite(scores[alive]).all(1), scores[alive].mean(1), -np.inf)
            keep = np.sort(np.argsort(-means, kind="stable")[:survivors])
            alive = alive[keep]
            state = _select(state, (keep[:, None] * n_s + np.arange(n_s)).ravel())
        state, metrics = programs.chunk(state, hp_of(alive), start, end - start)
        for name, values in metrics.items():
            if name not in curves:
                curves[name] = np.full((n_c, n_s, n_iters), np.nan, np.float32)
            curves[name][alive, :, start:end] = np.asarray(values, np.float32).reshape(len(alive), n_s, -1)
        trained[alive] = end
        scores[alive] = final_return({k: v[alive, :, :end] for k, v in curves.items()}, episodes)
        diverged = np.asarray(state.diverged_at).reshape(len(alive), n_s) >= 0
        scores[alive] = np.where(diverged, np.nan, scores[alive])
        start = end
    complete = np.isfinite(scores).all(1) & (trained == n_iters)  # every seed finished episodes, none diverged
    means = np.where(complete, np.where(np.isfinite(scores), scores, 0.0).mean(1), -np.inf)
    if not complete.any():
        warnings.warn("no candidate has a final return on every tuning seed (no finished episodes, or a diverged "
                      "seed): candidate 0 is taken; give the runs more steps", RuntimeWarning, stacklevel=3)
    best = int(np.argmax(means))
    reached = np.isfinite(scores).all(1)
    trials = [{"candidate": c, **candidates[c], "iterations": int(trained[c]),  # its score where it stopped
               "score": float(scores[c].mean()) if reached[c] else None,
               **{f"seed_{s}": (None if not np.isfinite(scores[c, j]) else float(scores[c, j]))
                  for j, s in enumerate(seeds)}} for c in range(n_c)]
    return trials, curves, best


# ----------------------------------------------------------------------------- tune


def tune(config: Config, space: Mapping[str, Any], budget: int, tuning_seeds: int | Sequence[int] = 4,
         test_seeds: int | Sequence[int] = 8, method: str = "random", eta: int = 2, interval: int | None = None,
         search_seed: int | None = None, episodes: int = FINAL_EPISODES,
         devices: Sequence[jax.Device] | None = None, inputs: Any = None, **pbt_options: Any) -> TuneResult:
    """Search ``space`` for ``config`` on ``tuning_seeds``, then train the choice and the config
    as given on ``test_seeds``: a :class:`TuneResult` (``.report()``, ``.save(folder)``).

    ``space`` maps traced hyperparameters to ``{"range": [low, high], "log": bool}`` or
    ``{"values": [...]}``. ``budget``: the number of candidates (``random``,
    ``successive_halving``) or the population size (``pbt``). Seeds are counts or lists: a count
    of tuning seeds starts at ``config.seed`` (``pbt``: that many populations, whose members
    use the seeds from ``config.seed`` on, ``budget`` per population), a count of test seeds
    starts after the last seed the search used; lists must not overlap. ``eta``: successive
    halving's reduction factor. ``interval`` (``pbt``, required): iterations between exploit
    steps; ``pbt_options`` go to :func:`jaxrl.population.pbt` (``truncation``,
    ``resample_probability``, ``fitness``). ``search_seed`` (default ``config.seed``) draws
    the candidates. A candidate's score is the mean over tuning seeds of its final return (the
    last ``episodes`` episodes); a candidate with a diverged seed is never chosen. Everything
    is checked before anything compiles.
    """
    config.validate()
    require_one_of("method", method, METHODS)
    if isinstance(budget, bool) or not isinstance(budget, numbers.Integral) or budget < 1:
        raise ConfigError(f"budget must be a positive integer (candidates, or PBT's population), got {budget!r}")
    if method != "pbt" and (interval is not None or pbt_options):
        raise ConfigError(f"interval and {sorted(pbt_options) or 'PBT options'} apply to method='pbt' only")
    if method == "successive_halving" and (isinstance(eta, bool) or not isinstance(eta, numbers.Integral)
                                           or eta < 2):
        raise ConfigError(f"eta must be an integer >= 2, got {eta!r}")
    dims = parse_space(config, space)
    if method == "pbt":
        if not isinstance(tuning_seeds, numbers.Integral) or isinstance(tuning_seeds, bool) or tuning_seeds < 1:
            raise ConfigError(f"with method='pbt', tuning_seeds is the number of populations (a positive count; "
                              f"their members take the seeds from config.seed on), got {tuning_seeds!r}")
        if interval is None:
            raise ConfigError("method='pbt' needs interval: the iterations between exploit/explore steps")
        listed = [name for name, dim in dims.items() if dim.values is not None]
        if listed:
            raise ConfigError(f"method='pbt' perturbs and resamples within ranges; {listed} give 'values'")
        used = list(range(config.seed, config.seed + int(tuning_seeds) * budget))
        tuning = list(range(config.seed, config.seed + int(tuning_seeds)))
    else:
        tuning = used = _seed_values(tuning_seeds, "tuning_seeds", config.seed)
    test = _seed_values(test_seeds, "test_seeds", max(used) + 1)
    overlap = sorted(set(used) & set(test))
    if overlap:
        raise ConfigError(f"test seeds {overlap} were used by the search (seeds {used[0]}..{used[-1]}"
                          + (" of the PBT members" if method == "pbt" else "") + "): the test seeds must be disjoint")
    if method == "pbt":
        return _tune_pbt(config, dims, budget, int(tuning_seeds), test, interval, episodes, devices, inputs,
                         pbt_options)
    programs = _Programs(config, devices, inputs)
    candidates = sample_candidates(dims, budget, config.seed if search_seed is None else search_seed)
    rungs = (halving_rungs(config.num_iterations, budget, eta) if method == "successive_halving"
             else [(config.num_iterations, budget)])
    trials, curves, best = _search(programs, config, candidates, tuning, rungs, episodes)
    chosen = candidates[best]
    tuning_scores = np.array([trials[best][f"seed_{s}"] for s in tuning], float)
    return _finish(programs, config, method, dims, tuning, test, trials, best, curves, chosen,
                   {k: np.array([v]) for k, v in chosen.items()}, config.num_iterations, tuning_scores, episodes)


def _finish(programs: _Programs, config: Config, method: str, dims: dict[str, Dimension], tuning: list[int],
            test: list[int], trials: list[dict], best: int, curves: dict[str, np.ndarray], chosen: dict[str, float],
            schedule: dict[str, np.ndarray], interval: int, tuning_scores: np.ndarray,
            episodes: int) -> TuneResult:
    """Train the chosen schedule and the config as given on the test seeds, in one program."""
    n_t, generations = len(test), len(next(iter(schedule.values())))
    rows = {k: np.concatenate([np.tile(np.asarray(v, np.float32), (n_t, 1)),
                               np.full((n_t, generations), getattr(config, k), np.float32)])
            for k, v in schedule.items()}
    metrics = programs.scheduled(test + test, rows, interval)
    metrics = {k: np.asarray(v).reshape(2, n_t, -1) for k, v in metrics.items()}
    finals = final_return(metrics, episodes)
    is_pbt = method == "pbt"
    return TuneResult(config, method, dims, tuning, test, trials, best, curves, chosen,
                      {k: [_decimal(x) for x in v] for k, v in schedule.items()} if is_pbt else None,
                      interval if is_pbt else None, tuning_scores, finals[0], finals[1], metrics,
                      programs.compile_seconds, programs.run_seconds)


def _tune_pbt(config: Config, dims: dict[str, Dimension], population: int, populations: int, test: list[int],
              interval: int, episodes: int, devices: Sequence[jax.Device] | None, inputs: Any,
              options: dict[str, Any]) -> TuneResult:
    explore = {name: {"range": list(dim.range), "log": dim.log} for name, dim in dims.items()}
    result = pbt(config, population, interval, explore, seeds=populations, devices=devices, inputs=inputs,
                 **options)
    finals = result.final_return(episodes)  # (populations, members)
    diverged = np.asarray(result.state.diverged_at) >= 0
    finals = np.where(diverged, np.nan, finals)
    ranked = np.where(np.isfinite(finals), finals, -np.inf)
    seed, member = np.unravel_index(int(np.argmax(ranked)), ranked.shape)
    chain = result.ancestry(int(member), int(seed))
    schedule = {k: np.array([v[seed, g, m] for g, m in enumerate(chain)]) for k, v in result.hparams.items()}
    trials = [{"population": p, "member": m, **{k: _decimal(v[p, -1, m]) for k, v in result.hparams.items()},
               "iterations": config.num_iterations,
               "score": None if not np.isfinite(finals[p, m]) else float(finals[p, m])}
              for p in range(populations) for m in range(population)]
    curves = {k: np.asarray(v, np.float32).reshape(populations * population, 1, -1) for k, v in result.metrics.items()}
    tuning_scores = ranked.max(axis=1)  # each population's best member
    tuning_scores = np.where(np.isfinite(tuning_scores), tuning_scores, np.nan)
    programs = _Programs(config, devices, inputs)
    programs.compile_seconds, programs.run_seconds = result.compile_seconds, result.run_seconds
    tuned = _finish(programs, config, "pbt", dims, list(result.seeds), test, trials,
                    int(seed) * population + int(member), curves,
                    {k: _decimal(v[-1]) for k, v in schedule.items()}, schedule, interval, tuning_scores, episodes)
    return tuned
