"""The ``jaxrl`` command: train, eval, sweep, pbt, tune, plot, bench and list.

Configs are checked before jax is even imported, so mistakes are reported in a fraction of a
second, not after a compile.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import re
import sys
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import yaml

from jaxrl.compile_cache import counting, enable_compilation_cache
from jaxrl.algos import algo_names, load_config
from jaxrl.config import ON_DIVERGENCE, Config, ConfigError, RoundingWarning, config_names, parse_grid, parse_overrides

EPILOG = """\
NAME_OR_PATH is a bundled config name (see `jaxrl list`) or a path to a YAML file.
Overrides are key=value pairs with YAML values, e.g. lr=3e-4 hidden=[32,32] anneal_lr=false,
and env_kwargs.KEY=VALUE for environment options (env_kwargs.backend=spring).
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="jaxrl", description="Reinforcement learning in one compiled JAX program.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "train", help="train N seeds of a config in one compiled program",
        description="Train --seeds N seeds (seed, seed+1, ...) vmapped in one compiled program, "
        "showing progress between compiled chunks of iterations. Writes config.yaml, metrics.jsonl "
        "(one row per iteration, a list over seeds per metric) and summary.json to the run folder.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", metavar="NAME_OR_PATH", nargs="?",
                   help="config name or YAML path (optional with --resume)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.add_argument("--seeds", type=int, default=None, metavar="N", help="number of seeds (default 1)")
    p.add_argument("--chunk-size", type=int, default=None, metavar="K",
                   help="iterations per compiled chunk between progress reports (default: 1/20 of the run)")
    p.add_argument("--out", default="runs", metavar="DIR",
                   help="parent folder of the run folder (default ./runs)")
    p.add_argument("--quiet", action="store_true",
                   help="print only the summary (no progress bar or progress lines)")
    p.add_argument("--log", default="", metavar="LIST",
                   help="extra loggers, comma-separated: csv, tensorboard, wandb (metrics.jsonl is always "
                   "written); a logger whose package is missing is skipped with a note")
    p.add_argument("--checkpoint-every", type=int, default=1, metavar="N",
                   help="save the full training state to RUN_DIR/checkpoints every N chunks and at "
                   "the end (default 1; 0: only at the end; -1: never)")
    p.add_argument("--checkpoint-seconds", type=float, default=60.0, metavar="S",
                   help="but not sooner than S seconds after the previous save (default 60; the final "
                   "state is always saved), so saving costs little throughput")
    p.add_argument("--keep", type=int, default=2, metavar="K",
                   help="keep the last K checkpoints plus the best one (default 2)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its newest checkpoint, bit-identically; "
                   "its config.yaml is used (overrides that change it are refused)")
    p.add_argument("--data-parallel", default=None, metavar="D|all",
                   help="split each seed's num_envs over D devices (or all of them), averaging "
                   "gradients across them; num_envs must divide by D")

    b = sub.add_parser(
        "bench", help="measure compile time and env steps/s per number of seeds (scaling curves)",
        description="Compile and run the whole training program (one jax.jit(jax.vmap(train))) for "
        "each seed count, in ascending order; compile seconds and run seconds are measured separately "
        "(the fastest of --repeats runs after compiling is reported). Before a count runs, its compiled "
        "program's memory analysis is checked against the device's free memory (host RAM on CPU); the "
        "first count that does not fit (or that XLA refuses with RESOURCE_EXHAUSTED) ends that config's "
        "curve, and the JSON says why. A program loaded from the persistent compilation cache is marked *. "
        "Several configs give one curve each. Prints a table and writes "
        "JSON with device and version information; --plot draws the curves.",
        epilog=EPILOG + "\nWith several configs, an override applies to each config that has the key. Examples:\n"
        "  jaxrl bench ppo_cartpole --seeds 1,8,64\n"
        "  jaxrl bench ppo_cartpole dqn_cartpole total_steps=100000 --seeds 1:64 --plot scaling.png\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("configs", nargs="+", metavar="NAME_OR_PATH [key=value]",
                   help="one or more config names or YAML paths, and config overrides")
    b.add_argument("--seeds", default="1,8,64", metavar="SPEC",
                   help="seed counts: comma-separated counts and geometric ranges START:MAX[:FACTOR] "
                   "(START, START*FACTOR, ... up to MAX; FACTOR defaults to 2), e.g. 1,8,64 or 1:4096 "
                   "(= 1,2,4,...,4096) or 1:1000:10 (default 1,8,64)")
    b.add_argument("--repeats", type=int, default=2, metavar="R",
                   help="timed runs per seed count after compiling; the best is reported (default 2)")
    b.add_argument("--memory-limit", type=float, default=None, metavar="GIB",
                   help="stop a curve at the first seed count whose program needs more than GIB GiB "
                   "(default: the device's free memory)")
    b.add_argument("--json", default=None, metavar="PATH", help="write results here (default runs/bench-NAME-TIME.json)")
    b.add_argument("--plot", default=None, metavar="PNG",
                   help="also draw env steps/s and compile seconds against the seed count (log-x) as a PNG")
    b.add_argument("--baseline", action="store_true",
                   help="also time the env alone (random actions through the same wrappers and vmaps, no "
                   "learning) and the rollouts with the agent acting but not learning: training throughput "
                   "as a fraction of the env's, and the run's seconds split into env, acting and learning")

    e = sub.add_parser(
        "eval", help="evaluate the checkpoint of a training run folder",
        description="Play --episodes episodes per seed with the policy saved in RUN_DIR's newest (or "
        "--step) checkpoint, with the greedy / mean action unless --stochastic, on the run's eval "
        "environment (env_kwargs updated by eval_env_kwargs) changed by --env-kwargs. Prints each "
        "seed's mean and std return and writes RUN_DIR/eval.json.",
        epilog="Example: jaxrl eval runs/ppo_cartpole-20250101-120000 --episodes 32 "
        "--env-kwargs max_steps_in_episode=1000\n", formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("run", metavar="RUN_DIR", help="a folder written by `jaxrl train ... --out DIR`")
    e.add_argument("--episodes", type=int, default=16, metavar="N", help="episodes per seed (default 16)")
    e.add_argument("--stochastic", action="store_true",
                   help="sample actions from the policy (PPO) / epsilon-greedy with eps_end (DQN)")
    e.add_argument("--env-kwargs", nargs="+", default=[], metavar="key=value",
                   help="environment parameters to change for evaluation (YAML values)")
    e.add_argument("--seeds", default=None, metavar="LIST",
                   help="comma-separated seed values of the run to evaluate (default: all)")
    e.add_argument("--step", default=None, metavar="STEP",
                   help="checkpoint to load: an iteration count, 'best' or 'latest' (default latest)")
    e.add_argument("--key", type=int, default=0, metavar="K",
                   help="PRNG seed of the evaluation episodes (default 0)")
    e.add_argument("--grid", nargs="+", default=None, metavar="param=v1,v2",
                   help="robustness: evaluate on every point of the cross product of these env param values "
                   "(e.g. gravity=5,10,15 length=0.25,0.5,1), all in one program; prints each point's mean "
                   "return and the mean, worst case and 10%% quantile over the points, and writes "
                   "RUN_DIR/robustness.json and RUN_DIR/robustness.png (a heat map for two params)")

    w = sub.add_parser(
        "sweep", help="train a grid of hyperparameters x seeds in one compiled program",
        description="Train every combination of --grid values for --seeds seeds as one vmapped program "
        "(sharded over all devices). Writes config.yaml, results.csv (one row per setting and seed), "
        "summary.json (IQM and mean final return with 95%% bootstrap intervals per setting), "
        "metrics.npz (every metric, shaped settings x seeds x iterations) and curves.png.",
        epilog=EPILOG + "\nExample: jaxrl sweep ppo_cartpole --seeds 8 --grid lr=1e-4,3e-4 ent_coef=0,0.01\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    w.add_argument("config", metavar="NAME_OR_PATH")
    w.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (before --grid)")
    w.add_argument("--grid", nargs="+", required=True, metavar="key=v1,v2",
                   help="values to sweep per key; traced hyperparameters and env params "
                   "(env.<name>, e.g. env.gravity=9.8,20) share one program")
    w.add_argument("--seeds", type=int, default=1, metavar="N", help="seeds per setting (default 1)")
    w.add_argument("--separate", action="store_true",
                   help="allow static keys (e.g. num_envs), compiling one program per value")
    w.add_argument("--batch-size", default=None, metavar="B",
                   help="runs per batch of the compiled program: an integer or 'auto' (default: all at once)")
    w.add_argument("--out", default="runs", metavar="DIR", help="parent folder of the run folder (default ./runs)")

    t = sub.add_parser(
        "pbt", help="population-based training: a population exploits and explores in one compiled program",
        description="Train --population members (x --seeds independent populations) as one compiled program. "
        "Every --interval iterations the members are ranked by fitness; each of the bottom --truncation fraction "
        "draws one of the top fraction and, if it is strictly fitter, takes its learner state (parameters, "
        "optimizer, targets, buffers, normaliser statistics; its envs go on) and its hyperparameters, perturbed "
        "by a factor or resampled from their range. Writes config.yaml, summary.json (final return per member, "
        "the best member and its hyperparameters), lineage.csv (per generation and member: hyperparameters, "
        "fitness, parent), metrics.npz (seeds x population x iterations) and population.png.",
        epilog=EPILOG + "\n--explore items: NAME=PART[,PART...], each PART one of\n"
        "  range:LOW:HIGH[:log]   initial values sampled from it, resamples drawn from it, values kept in it\n"
        "  perturb:F1:F2...       factors a copied value is multiplied by (default perturb:0.8:1.25)\n"
        "  init:V1:V2...          one initial value per member\n"
        "Example: jaxrl pbt ppo_cartpole --population 8 --interval 10 --explore lr=range:1e-5:1e-2:log "
        "ent_coef=perturb:0.5:2\n", formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("config", nargs="?", metavar="NAME_OR_PATH")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (before --explore)")
    t.add_argument("--explore", nargs="+", metavar="NAME=SPEC",
                   help="traced hyperparameters PBT explores, e.g. lr=range:1e-5:1e-2:log (required)")
    t.add_argument("--population", type=int, default=8, metavar="P", help="members per population (default 8)")
    t.add_argument("--interval", type=int, metavar="K", help="iterations between exploit steps (required)")
    t.add_argument("--checkpoint-every", type=int, default=0, metavar="G",
                   help="save the populations, the lineage and the metrics to RUN_DIR/checkpoints every G "
                   "generations (default 0: run as one program, no checkpoints)")
    t.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue the checkpointed PBT run in RUN_DIR bit-identically (its settings are used)")
    t.add_argument("--seeds", type=int, default=1, metavar="N", help="independent populations (default 1)")
    t.add_argument("--truncation", type=float, default=0.25, metavar="F",
                   help="fraction of the population replaced from the top fraction of the same size (default 0.25)")
    t.add_argument("--resample-probability", type=float, default=0.25, metavar="Q",
                   help="chance that a copied hyperparameter with a range is resampled, not perturbed (default 0.25)")
    t.add_argument("--fitness", choices=("return", "eval"), default="return",
                   help="rank by the interval's mean episode return, or by its in-loop evaluations (default return)")
    t.add_argument("--no-exploit", action="store_true",
                   help="train the same population with its initial hyperparameters fixed (the baseline)")
    t.add_argument("--out", default="runs", metavar="DIR", help="parent folder of the run folder (default ./runs)")

    u = sub.add_parser(
        "tune", help="hyperparameter search on tuning seeds, reported on disjoint test seeds",
        description="Search traced hyperparameters with --budget candidates (random, successive halving) or a "
        "population (pbt), scoring on --tuning-seeds only; then train the chosen values and the config as given on "
        "--test-seeds that the search never used, as one program. Writes trials.csv (the search), report.json "
        "(IQM and bootstrap CI on the tuning and test seeds, the gap between them, the baseline), best.yaml "
        "(loadable by jaxrl train), config.yaml, curves.npz and tune.png.",
        epilog=EPILOG + "\n--space items: NAME=range:LOW:HIGH[:log] or NAME=values:V1:V2...\n"
        "Example: jaxrl tune ppo_cartpole total_steps=100000 --space lr=range:1e-4:1e-2:log "
        "ent_coef=values:0:0.01 --budget 16 --method successive_halving\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    u.add_argument("config", metavar="NAME_OR_PATH")
    u.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (before --space)")
    u.add_argument("--space", nargs="+", required=True, metavar="NAME=SPEC",
                   help="traced hyperparameters to search, e.g. lr=range:1e-5:1e-2:log ent_coef=values:0:0.01")
    u.add_argument("--budget", type=int, required=True, metavar="N",
                   help="candidates (random, successive_halving) or population size (pbt)")
    u.add_argument("--method", choices=("random", "successive_halving", "pbt"), default="random", help="search method (default random)")
    u.add_argument("--tuning-seeds", type=int, default=4, metavar="N",
                   help="seeds the search scores on, from the config's seed on (pbt: populations; default 4)")
    u.add_argument("--test-seeds", type=int, default=8, metavar="N",
                   help="seeds the choice is reported on, after every seed the search used (default 8)")
    u.add_argument("--eta", type=int, default=2, metavar="E",
                   help="successive halving: each rung keeps 1/E of the candidates (default 2)")
    u.add_argument("--interval", type=int, default=None, metavar="K", help="pbt: iterations between exploit steps")
    u.add_argument("--out", default="runs", metavar="DIR", help="parent folder of the run folder (default ./runs)")

    pl = sub.add_parser("plot", help="learning curves of run folders as a PNG",
                        description="Plot the IQM over seeds (with a 95%% bootstrap band) of a metric from "
                        "each run folder's metrics.jsonl, one line per run.")
    pl.add_argument("runs", nargs="+", metavar="RUN_DIR")
    pl.add_argument("--metric", default="episode_return", help="metric to plot (default episode_return)")
    pl.add_argument("--smooth", type=int, default=10, metavar="K", help="smoothing window in iterations (default 10)")
    pl.add_argument("--out", default=None, metavar="PNG", help="output file (default RUN_DIR/curves.png of the first run)")

    sub.add_parser("list", help="list bundled configs, algorithms and environments")

    for command in (p, b, w, t, u):  # the commands that compile a training program
        command.add_argument("--env", default=None, metavar="NAME|MODULE:FACTORY",
                             help="the environment: a registered name (see `jaxrl list`) or the import path "
                             "of your own env factory, e.g. my_envs:make_corridor (the current folder is "
                             "importable); the same as the override env=...")
        command.add_argument("--no-compile-cache", action="store_true",
                             help="do not use the persistent compilation cache (default: "
                             "$JAXRL_CACHE_DIR or ~/.cache/jaxrl/jax, unless JAX's own is configured)")
    for command in (p, w):
        default = "stop" if command is p else "warn"
        command.add_argument("--on-divergence", choices=ON_DIVERGENCE, default=default,
                             help="when a seed's learner turns NaN or infinite: stop the run, or warn and go "
                             f"on (default {default}); either way it is reported, with the iteration")
    for command in (parser, *sub.choices.values()):  # `--seed 100` must not be read as `--seeds 100`
        command.allow_abbrev = False
    args, extra = parser.parse_known_args(argv)
    stray = [x for x in extra if x.startswith("-") or "=" not in x]
    if stray or (extra and args.command not in ("train", "sweep", "bench", "pbt", "tune")):
        fields = {f.name for f in dataclasses.fields(Config)}
        named = [x.lstrip("-").split("=")[0] for x in stray if x.startswith("--")]
        hint = [f"{name}=..." for name in named if name in fields]
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}"
                     + (f" (config values are key=value overrides: {' '.join(hint)})" if hint else ""))
    if extra:  # key=value overrides given after an option (argparse stops collecting them there)
        (args.configs if args.command == "bench" else args.overrides).extend(extra)
    if args.command in ("train", "sweep", "bench", "pbt", "tune") and args.env is not None:  # an override like any other
        target = args.configs if args.command == "bench" else args.overrides
        target.append(f"env={json.dumps(args.env)}")  # quoted: YAML reads it back as this string
    warnings.simplefilter("ignore", RoundingWarning)  # printed as a note below instead
    if args.command in ("train", "sweep", "bench", "pbt", "tune"):  # seeds side by side, one share per CPU core
        from jaxrl.parallel import use_cpu_cores

        use_cpu_cores()
    try:
        if args.command == "list":
            return _list()
        if args.command == "plot":
            return _plot(args)
        if args.command == "bench":
            return _bench(args)
        if args.command == "eval":
            return _eval(args)
        if args.command == "train" and args.resume:
            config = _resume_config(args)
        elif args.command == "pbt" and args.resume:
            config = _resume_pbt(args)
        else:
            if args.config is None:
                parser.error("the following arguments are required: NAME_OR_PATH")
            config = load_config(args.config, **parse_overrides(args.overrides))
            if config.rounding_note():
                print(f"note: {config.rounding_note()}")
        # only once the config is known to be valid: turning the cache on imports jax (~1 s)
        enable_compilation_cache(enabled=not args.no_compile_cache)
        if args.command == "train":
            return _train(args, config)
        if args.command == "pbt":
            return _pbt(args, config)
        if args.command == "tune":
            return _tune(args, config)
        return _sweep(args, config)
    except ConfigError as err:
        print(f"jaxrl: error: {err}", file=sys.stderr)
        return 2


def _list() -> int:
    from jaxrl import envs

    print("configs:    " + " ".join(config_names()))
    print("algorithms: " + " ".join(algo_names()))
    print("envs:       " + " ".join(envs.registered()))
    return 0


def _resume_config(args: argparse.Namespace):
    """The config saved in the run folder; NAME_OR_PATH and overrides may only restate it."""
    run_dir = Path(args.resume)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"--resume {str(run_dir)!r}: no config.yaml there (not a jaxrl run folder)")
    overrides = list(args.overrides)
    if args.config is not None and "=" in args.config:  # argparse put the first override there
        overrides.insert(0, args.config)
        args.config = None
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    config = load_config(run_dir / "config.yaml")
    wanted = (load_config(args.config, **parse_overrides(overrides)) if args.config is not None
              else load_config(run_dir / "config.yaml", **parse_overrides(overrides)))
    if wanted != config:
        new = wanted.to_dict()
        changed = [f"{k}: {saved.get(k)!r} -> {new.get(k)!r}" for k in new if new.get(k) != saved.get(k)]
        raise ConfigError("cannot change the config of a run when resuming it ("
                          + "; ".join(changed) + "); start a new run instead")
    return config


RUN_STAMP = "%Y%m%d-%H%M%S"


def claim_run_path(out: Path, stem: str, suffix: str = "") -> Path:
    """Create and return a new ``out/STEM-DATE-TIME`` folder (or, with a ``suffix`` such as ".json",
    an empty file), named ``...-2``, ``...-3``, ... when that name is taken.

    Creating is the claim (``mkdir`` / exclusive open are atomic), so runs started in the same
    second, by one process or several, each get their own path and nothing is overwritten.
    """
    out.mkdir(parents=True, exist_ok=True)
    stamp = f"{stem}-{datetime.datetime.now():{RUN_STAMP}}"
    n = 1
    while True:
        path = out / f"{stamp}{'' if n == 1 else f'-{n}'}{suffix}"
        try:
            if suffix:
                path.open("x").close()
            else:
                path.mkdir()
            return path
        except FileExistsError:
            n += 1


def run_name(run_dir: Path) -> str:
    """The config name in a run folder's name (``NAME-DATE-TIME`` or ``NAME-DATE-TIME-N``)."""
    return re.sub(r"-\d{8}-\d{6}(-\d+)?$", "", run_dir.name)


def _prepare_resume(args: argparse.Namespace, run_dir: Path) -> tuple[int, int | None]:
    """Seed count and chunk size of the run being resumed (from its newest checkpoint)."""
    from jaxrl.checkpoint import CHECKPOINT_SUBDIR, Checkpointer

    ckpt_dir = run_dir / CHECKPOINT_SUBDIR
    meta = None
    if ckpt_dir.is_dir():
        ckpt = Checkpointer(ckpt_dir, read_only=True)
        try:
            meta = ckpt.latest_readable_meta()
        finally:
            ckpt.close()
    if meta is None:
        summary = run_dir / "summary.json"
        seeds = json.loads(summary.read_text())["seeds"] if summary.is_file() else (args.seeds or 1)
        print(f"note: no checkpoint in {ckpt_dir}: training from the start", flush=True)
        (run_dir / "metrics.jsonl").write_text("")
        return seeds, args.chunk_size
    if args.seeds is not None and args.seeds != meta["num_seeds"]:
        raise ConfigError(f"--seeds {args.seeds} differs from the resumed run's {meta['num_seeds']}")
    devices = meta.get("devices", 1)  # a run resumes on as many devices as it was split over
    if args.data_parallel is not None and args.data_parallel != devices:
        raise ConfigError(f"--data-parallel {args.data_parallel} differs from the resumed run's {devices} device(s)")
    if devices > 1:
        args.data_parallel = devices
    return meta["num_seeds"], args.chunk_size or meta["chunk_size"]


def _train(args: argparse.Namespace, config) -> int:
    if args.seeds is not None and args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
    if args.chunk_size is not None and args.chunk_size < 1:
        raise ConfigError(f"--chunk-size must be >= 1, got {args.chunk_size}")
    if args.data_parallel is not None:
        if args.data_parallel != "all" and not (args.data_parallel.isdigit() and int(args.data_parallel) >= 1):
            raise ConfigError(f"--data-parallel must be a device count >= 1 or 'all', got {args.data_parallel!r}")
        import jax

        args.data_parallel = jax.device_count() if args.data_parallel == "all" else int(args.data_parallel)
    from jaxrl.loop import make_train

    # the environment (a user's own is checked on the way), the algorithm's own checks and the
    # data-parallel split fail here, before a run folder exists
    make_train(config, data_parallel=args.data_parallel)
    from jaxrl import metrics as M
    from jaxrl.loop import divergence_note
    from jaxrl.runner import train_seeds

    if args.keep < 1:
        raise ConfigError(f"--keep must be >= 1, got {args.keep}")
    if args.checkpoint_every < -1:
        raise ConfigError(f"--checkpoint-every must be >= -1, got {args.checkpoint_every}")
    from jaxrl.checkpoint import CHECKPOINT_SUBDIR

    if args.resume:
        run_dir = Path(args.resume)
        args.seeds, args.chunk_size = _prepare_resume(args, run_dir)
        name = json.loads((run_dir / "summary.json").read_text())["config"] \
            if (run_dir / "summary.json").is_file() else run_name(run_dir)
    else:
        args.seeds = args.seeds or 1
        name = Path(args.config).stem
        run_dir = claim_run_path(Path(args.out), name)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    metrics_path = run_dir / "metrics.jsonl"
    metrics_path.touch()
    total = config.num_iterations
    split = f" (envs split over {args.data_parallel} devices)" if args.data_parallel else ""
    print(f"jaxrl train {name}: {config.algo} on {config.env}, {args.seeds} seed(s), "
          f"{total} iterations x {config.steps_per_iteration} steps{split} -> {run_dir}", flush=True)

    from jaxrl.loggers import log_all, make_loggers

    try:
        loggers = make_loggers([x for x in args.log.split(",") if x], run_dir, config.to_dict())
    except ValueError as err:
        raise ConfigError(str(err)) from None

    def on_chunk(done: int, chunk: dict, seconds: float) -> None:
        M.write_jsonl(str(metrics_path), M.rows(chunk, done - chunk["env_steps"].shape[1]))
        log_all(loggers, done - chunk["env_steps"].shape[1], chunk)

    def on_resume(done: int, restored: dict) -> None:
        """Keep the rows already written for iterations < done (drop later ones: they will be
        recomputed) and add any the checkpoint has that the file lacks; atomically."""
        kept = []
        for line in metrics_path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by the interruption
                continue
            if row.get("iteration") == len(kept) and len(kept) < done:
                kept.append(line + "\n")
        tmp = metrics_path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(kept))
        missing = {k: v[:, len(kept):done] for k, v in restored.items()}
        M.write_jsonl(str(tmp), M.rows(missing, len(kept)))
        tmp.replace(metrics_path)
        print(f"resumed at iteration {done}/{total}", flush=True)

    print("compiling ...", flush=True)
    every = args.checkpoint_every
    try:
        run = train_seeds(config, args.seeds, args.chunk_size, on_chunk=on_chunk,
                          checkpoint_dir=None if every < 0 else run_dir / CHECKPOINT_SUBDIR,
                          checkpoint_every=max(every, 0), keep=args.keep, resume=bool(args.resume),
                          checkpoint_min_seconds=args.checkpoint_seconds, on_resume=on_resume,
                          progress=not args.quiet, data_parallel=args.data_parallel,
                          on_divergence=args.on_divergence)
    except KeyboardInterrupt:  # the save in flight has been finished by train_seeds
        print(f"\ninterrupted; continue with: jaxrl train --resume {run_dir}"
              if every >= 0 else "\ninterrupted (no checkpoints: --checkpoint-every -1)", file=sys.stderr)
        return 130
    finally:
        for logger in loggers:
            logger.close()
    final = M.final_return(run.metrics)
    diverged = [None if d < 0 else int(d) for d in run.diverged_at]
    last_finite = None if run.last_finite_step is None else str(run_dir / CHECKPOINT_SUBDIR / str(run.last_finite_step))
    summary = {
        "config": name, "algo": config.algo, "env": config.env, "seeds": args.seeds,
        "seed_values": list(range(config.seed, config.seed + args.seeds)),
        "final_return": [None if np.isnan(x) else float(x) for x in final],
        "final_return_mean": float(np.nanmean(final)) if not np.all(np.isnan(final)) else None,
        "final_return_std": float(np.nanstd(final)) if not np.all(np.isnan(final)) else None,
        "env_steps_per_seed": config.num_iterations * config.steps_per_iteration,
        "compile_seconds": round(run.compile_seconds, 3), "run_seconds": round(run.run_seconds, 3),
        "env_steps_per_second": round(run.steps_per_second, 1),
        "checkpoint_seconds": round(run.checkpoint_seconds, 3),  # part of run_seconds (this session)
        "compile_cache_hits": run.cache_hits, "compile_cache_lookups": run.cache_lookups,
        "data_parallel": args.data_parallel or 1,  # devices each seed's envs were split over
        "iterations_done": run.iterations_done, "iterations": total,
        "diverged_at": diverged,  # per seed: first iteration with a NaN/inf learner state, or null
        "stopped_on_divergence": run.stopped, "last_finite_checkpoint": last_finite,
    }
    evaluated = M.latest(run.metrics["eval_return"]) if "eval_return" in run.metrics else None
    if evaluated is not None:  # per seed: the mean return of the latest in-loop evaluation
        summary["eval_return"] = [None if np.isnan(x) else float(x) for x in evaluated]
        summary["eval_return_mean"] = None if np.all(np.isnan(evaluated)) else float(np.nanmean(evaluated))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nfinal return per seed (mean of its last {M.FINAL_EPISODES} finished episodes):")
    for seed, value, d in zip(summary["seed_values"], final, diverged):
        print(f"  seed {seed:>4}: {value:9.2f}" + (f"   DIVERGED at iteration {d}" if d is not None else ""))
    print(f"mean ± std: {np.nanmean(final):.2f} ± {np.nanstd(final):.2f}")
    if evaluated is not None and not np.all(np.isnan(evaluated)):
        print(f"latest evaluation ({config.eval_episodes} episodes per seed): mean ± std "
              f"{np.nanmean(evaluated):.2f} ± {np.nanstd(evaluated):.2f}")
    cached = f" ({run.compile_note})" if run.cache_hits else ""
    print(f"compile {run.compile_seconds:.1f} s{cached}, run {run.run_seconds:.1f} s, "
          f"{run.steps_per_second:,.0f} env steps/s ({args.seeds} seed(s) together)")
    print(f"run folder: {run_dir}")
    if run.diverged:
        what = (f"stopped after {run.iterations_done}/{total} iterations" if run.stopped
                else "went on (--on-divergence warn)")
        print(f"diverged (NaN or infinity in the learner): {divergence_note(run.diverged)}; {what}; "
              + (f"last checkpoint with every seed finite: {last_finite}" if last_finite
                 else "no checkpoint with every seed finite"), file=sys.stderr)
        return 3 if run.stopped else 0
    return 0


def _given_once(keys, overrides: list[str], option: str) -> None:
    """Refuse a key given both as a config override and in ``option`` (--grid, --explore)."""
    both = sorted(set(keys) & set(parse_overrides(overrides)))
    if both:
        raise ConfigError(f"{', '.join(both)}: given both as an override (key=value) and in {option}; give each key "
                          "one way")


def _sweep(args: argparse.Namespace, config) -> int:
    grid = parse_grid(args.grid)
    _given_once(grid, args.overrides, "--grid")
    batch = args.batch_size
    if batch is not None and batch != "auto":
        try:
            batch = int(batch)
        except ValueError:
            raise ConfigError(f"--batch-size must be an integer or 'auto', got {batch!r}") from None
    from jaxrl import plots, stats
    from jaxrl.sweeps import sweep

    name = Path(args.config).stem
    print(f"jaxrl sweep {name}: {config.algo} on {config.env}, grid {grid}, {args.seeds} seed(s) each", flush=True)
    with counting() as cache:
        result = sweep(config, seeds=args.seeds, grid=grid, batch_size=batch, separate=args.separate,
                       on_divergence=args.on_divergence)
    run_dir = claim_run_path(Path(args.out), f"sweep-{name}")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    result.to_dataframe().to_csv(run_dir / "results.csv", index=False)
    np.savez_compressed(run_dir / "metrics.npz", **result.metrics)
    labels = [", ".join(f"{k}={v}" for k, v in s.items()) for s in result.settings]
    finals = result.final_return()
    scores = {label: finals[i][:, None] for i, label in enumerate(labels) if np.isfinite(finals[i]).all()}
    table = stats.aggregate(scores, metrics=("iqm", "mean"), as_frame=False) if scores else []
    summary = {"config": name, "grid": grid, "seeds": result.seeds, "settings": result.settings,
               "final_return": [[None if np.isnan(x) else float(x) for x in row] for row in finals],
               "aggregate": table, "best": result.best() if np.isfinite(finals).any() else None,
               "diverged_at": [[None if d < 0 else int(d) for d in row] for row in result.diverged_at],
               "diverged": result.diverged(), "stopped_on_divergence": result.stopped,
               "compile_seconds": round(result.compile_seconds, 3), "run_seconds": round(result.run_seconds, 3)}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    curves = {label: {k: v[i] for k, v in result.metrics.items()} for i, label in enumerate(labels)}
    plots.save(plots.learning_curves(curves, smooth=10), run_dir / "curves.png", close=True)
    iqm = {row["algorithm"]: row for row in table if row["metric"] == "iqm"}
    print(f"{'setting':<40} {'IQM final return':>17} {'95% CI':>20}  diverged")
    for label, diverged_at in zip(labels, result.diverged_at):
        row = iqm.get(label)
        point, interval = ("nan", "") if row is None else (f"{row['point']:.2f}", "[{low:.1f}, {high:.1f}]".format(**row))
        bad = [int(d) for d in diverged_at if d >= 0]
        note = f"{len(bad)}/{len(diverged_at)} (first at iteration {min(bad)})" if bad else "-"
        print(f"{label:<40} {point:>17} {interval:>20}  {note}")
    print(f"best: {summary['best']}")
    print(f"{len(result.settings) * args.seeds} runs: compile {result.compile_seconds:.1f} s"
          + (f" ({cache.note})" if cache.note else "") + f", run {result.run_seconds:.1f} s -> {run_dir}")
    if result.stopped:
        planned = int(np.prod([len(values) for values in grid.values()]))
        print(f"stopped on divergence (--on-divergence stop): {len(result.settings)} of {planned} settings ran",
              file=sys.stderr)
        return 3
    return 0


def parse_explore_items(items: list[str]) -> dict[str, dict]:
    """``["lr=range:1e-5:1e-2:log", "ent_coef=perturb:0.5:2"]`` -> PBT's explore specs
    (``{"lr": {"range": [1e-5, 1e-2], "log": True}, ...}``); a malformed item is a ConfigError
    quoting it. The values are checked against the config by :func:`jaxrl.population.parse_explore`."""
    specs: dict[str, dict] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name or not text:
            raise ConfigError(f"--explore item {item!r} is not of the form NAME=PART[,PART...] "
                              f"(e.g. lr=range:1e-5:1e-2:log)")
        if name in specs:
            raise ConfigError(f"--explore gives {name!r} twice")
        spec: dict = {}
        for part in text.split(","):
            kind, *values = part.split(":")
            if kind not in ("range", "perturb", "init") or kind in spec:
                raise ConfigError(f"--explore item {item!r}: {part!r} is not range:LOW:HIGH[:log], "
                                  f"perturb:F1:F2... or init:V1:V2... (each at most once)")
            if kind == "range" and values[-1:] == ["log"]:
                values, spec["log"] = values[:-1], True
            try:
                spec[kind] = [float(v) for v in values]
            except ValueError:
                raise ConfigError(f"--explore item {item!r}: {part!r} holds a value that is not a number") from None
        specs[name] = spec
    return specs


PBT_SETTINGS = ("explore", "population", "interval", "seeds", "fitness", "truncation", "resample_probability",
                "no_exploit", "checkpoint_every")  # what pbt.json keeps for --resume


def _resume_pbt(args: argparse.Namespace):
    """The config and PBT settings saved in the run folder ``args.resume`` (into ``args``)."""
    run_dir = Path(args.resume)
    if not (run_dir / "pbt.json").is_file() or not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{str(run_dir)!r} is not a checkpointed jaxrl pbt run folder (no pbt.json and config.yaml)")
    if args.config is not None or args.overrides or args.explore:
        raise ConfigError("--resume continues a run with its own config and settings: give no config, overrides or "
                          "--explore")
    vars(args).update(json.loads((run_dir / "pbt.json").read_text()))
    args.config = str(run_dir / "config.yaml")
    return load_config(args.config)


def _pbt(args: argparse.Namespace, config) -> int:
    if args.explore is None or args.interval is None:
        raise ConfigError("jaxrl pbt needs --explore and --interval (or --resume RUN_DIR)")
    if args.checkpoint_every < 0:
        raise ConfigError(f"--checkpoint-every must be >= 0, got {args.checkpoint_every}")
    explore = args.explore if isinstance(args.explore, dict) else parse_explore_items(args.explore)
    _given_once(explore, args.overrides, "--explore")
    from jaxrl import plots
    from jaxrl.runner import run_pbt

    name = Path(args.config).stem if not args.resume else Path(args.resume).name
    print(f"jaxrl pbt {name}: {config.algo} on {config.env}, {args.seeds} population(s) of {args.population}, "
          f"exploit every {args.interval} iterations{' (off: --no-exploit)' if args.no_exploit else ''}, "
          f"explore {explore}" + (f"; resuming {args.resume}" if args.resume else ""), flush=True)
    run_dir = Path(args.resume) if args.resume else claim_run_path(Path(args.out), f"pbt-{name}")
    if not args.resume:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        settings = {k: getattr(args, k) for k in PBT_SETTINGS} | {"explore": explore}
        (run_dir / "pbt.json").write_text(json.dumps(settings, indent=2) + "\n")
    checkpoints = run_dir / "checkpoints" if args.checkpoint_every else None

    def saved(generations: int, seconds: float) -> None:
        print(f"  generation {generations}: checkpoint saved ({seconds:.1f} s of training)", flush=True)

    with counting() as cache:
        result = run_pbt(config, args.population, args.interval, explore, args.seeds, checkpoint_dir=checkpoints,
                         checkpoint_every=args.checkpoint_every or config.num_iterations, resume=bool(args.resume),
                         on_save=saved, fitness=args.fitness, truncation=args.truncation,
                         resample_probability=args.resample_probability, exploit=not args.no_exploit)
    import pandas as pd

    pd.DataFrame(list(result.rows())).to_csv(run_dir / "lineage.csv", index=False)
    np.savez_compressed(run_dir / "metrics.npz", **result.metrics)
    final = result.final_return()
    best = [int(np.nanargmax(row)) if np.isfinite(row).any() else None for row in final]
    last = {k: v[:, -1] for k, v in result.hparams.items()}  # what each member trained with at the end
    summary = {"config": name, "algo": config.algo, "env": config.env, "population": args.population,
               "interval": args.interval, "seeds": result.seeds, "explore": explore, "fitness": args.fitness,
               "truncation": args.truncation, "resample_probability": args.resample_probability,
               "exploit": not args.no_exploit, "generations": result.generations,
               "final_return": [[None if np.isnan(x) else float(x) for x in row] for row in final],
               "final_return_median": [None if np.isnan(row).all() else float(np.nanmedian(row)) for row in final],
               "best_member": best,
               "best_hparams": [None if b is None else {k: float(v[s, b]) for k, v in last.items()}
                                for s, b in enumerate(best)],
               "final_hparams": {k: v.tolist() for k, v in last.items()},
               "replaced": int(result.replaced.sum()),
               "diverged_at": [[None if d < 0 else int(d) for d in row] for row in np.asarray(result.state.diverged_at)],
               "compile_seconds": round(result.compile_seconds, 3), "run_seconds": round(result.run_seconds, 3)}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    ends = np.minimum(np.arange(1, result.generations + 1) * args.interval, config.num_iterations)
    log = [k for k, spec in result.explore.items() if spec.log]
    figure = plots.population({k: v[0] for k, v in result.hparams.items()}, ends,
                              result.metrics["episode_return"][0], result.metrics["episodes"][0], log=log)
    plots.save(figure, run_dir / "population.png", close=True)
    print(f"{'member':>6} {'final return':>13}  final hyperparameters" + ("  (population of seed "
          f"{result.seeds[0]})" if args.seeds > 1 else ""))
    for m in range(args.population):
        values = ", ".join(f"{k}={v[0, m]:.4g}" for k, v in last.items())
        print(f"{m:>6} {final[0, m]:>13.2f}  {values}" + ("  <- best" if best[0] == m else ""))
    print(f"median final return per population: {summary['final_return_median']}; "
          f"{summary['replaced']} replacements over {result.generations} generations")
    print(f"compile {result.compile_seconds:.1f} s" + (f" ({cache.note})" if cache.note else "")
          + f", run {result.run_seconds:.1f} s -> {run_dir}")
    return 0


def parse_space_items(items: list[str]) -> dict[str, dict]:
    """``["lr=range:1e-5:1e-2:log", "ent_coef=values:0:0.01"]`` -> :func:`jaxrl.hpo.tune`'s
    space (``{"lr": {"range": [1e-5, 1e-2], "log": True}, ...}``); a malformed item is a
    ConfigError quoting it (the values are checked against the config by the search)."""
    space: dict[str, dict] = {}
    for item in items:
        name, sep, text = item.partition("=")
        kind, *values = text.split(":")
        log = kind == "range" and values[-1:] == ["log"]
        values = values[:-1] if log else values
        if not sep or not name or kind not in ("range", "values") or not values:
            raise ConfigError(f"--space item {item!r} is not NAME=range:LOW:HIGH[:log] or NAME=values:V1:V2...")
        if name in space:
            raise ConfigError(f"--space gives {name!r} twice")
        try:
            numbers_ = [float(v) for v in values]
        except ValueError:
            raise ConfigError(f"--space item {item!r} holds a value that is not a number") from None
        space[name] = {kind: numbers_, **({"log": True} if log else {})}
    return space


def _tune(args: argparse.Namespace, config) -> int:
    space = parse_space_items(args.space)
    _given_once(space, args.overrides, "--space")
    from jaxrl import plots
    from jaxrl.hpo import tune

    name = Path(args.config).stem
    print(f"jaxrl tune {name}: {config.algo} on {config.env}, {args.method} with budget {args.budget} over {space}, "
          f"{args.tuning_seeds} tuning seed(s), {args.test_seeds} test seed(s)", flush=True)
    options = {"eta": args.eta} if args.method == "successive_halving" else {}
    with counting() as cache:
        result = tune(config, space, args.budget, args.tuning_seeds, args.test_seeds, method=args.method,
                      interval=args.interval, **options)
    run_dir = result.save(claim_run_path(Path(args.out), f"tune-{name}"))
    plots.save(plots.tuning(result), run_dir / "tune.png", close=True)
    report = result.report()

    def line(label: str, summary: dict) -> str:
        if summary["iqm"] is None:
            return f"{label:<26} no finished episodes"
        return f"{label:<26} IQM {summary['iqm']:9.2f}  [{summary['low']:.1f}, {summary['high']:.1f}]  " \
               f"({summary['runs']} seeds)"

    print("chosen: " + ", ".join(f"{k}={v:.4g}" for k, v in result.chosen.items())
          + (f" (the last values of a schedule over {args.interval}-iteration generations)" if result.schedule else ""))
    print(line(f"tuning seeds {result.tuning_seeds[0]}..{result.tuning_seeds[-1]}", report["tuning"]))
    print(line(f"test seeds {result.test_seeds[0]}..{result.test_seeds[-1]}", report["test"]))
    print(line("as given, test seeds", report["baseline_test"]))
    if report["gap"] is not None:
        print(f"gap (tuning - test IQM): {report['gap']:.2f}; P(chosen beats as given on a test seed): "
              f"{report['probability_chosen_beats_baseline']:.2f}")
    print(f"compile {result.compile_seconds:.1f} s" + (f" ({cache.note})" if cache.note else "")
          + f", run {result.run_seconds:.1f} s -> {run_dir}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from jaxrl import metrics as M
    from jaxrl import plots

    curves = {}
    for run in args.runs:
        path = Path(run) / "metrics.jsonl"
        if not path.is_file():
            raise ConfigError(f"{run!r} is not a jaxrl run folder (no metrics.jsonl)")
        curves[Path(run).name] = M.read_jsonl(path)
        if args.metric not in curves[Path(run).name]:
            raise ConfigError(f"{run!r} has no metric {args.metric!r}; it has {sorted(curves[Path(run).name])}")
    out = Path(args.out) if args.out else Path(args.runs[0]) / "curves.png"
    plots.save(plots.learning_curves(curves, y=args.metric, smooth=args.smooth), out, close=True)
    print(f"wrote {out}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from jaxrl.bench import GIB, seed_counts

    names = [x for x in args.configs if "=" not in x]
    overrides = parse_overrides([x for x in args.configs if "=" in x])
    if not names:
        raise ConfigError("jaxrl bench needs at least one config name or YAML path (see `jaxrl list`)")
    if len(set(names)) < len(names):
        raise ConfigError(f"a config is named twice: {' '.join(names)}")
    configs = _bench_configs(names, overrides)
    counts = seed_counts(args.seeds)
    if args.repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {args.repeats}")
    if args.memory_limit is not None and args.memory_limit <= 0:
        raise ConfigError(f"--memory-limit must be a positive number of GiB, got {args.memory_limit}")
    for name, config in configs.items():
        if config.rounding_note():
            print(f"note: {name}: {config.rounding_note()}")
    enable_compilation_cache(enabled=not args.no_compile_cache)  # once the configs are valid
    from jaxrl.bench import benchmark_all, save_plot

    header = f"{'seeds':>6} {'compile s':>10} {'run s':>8} {'env steps/s':>14} {'final return':>13}"
    if args.baseline:  # the env alone, then the run's seconds split into env / acting / learning
        header += f" {'env alone/s':>14} {'of env':>8} {'env s':>7} {'act s':>7} {'learn s':>8}"
    current = None  # the config whose table is being printed

    def on_result(name: str, r: dict) -> None:
        nonlocal current
        if current != name:
            current = name
            config = configs[name]
            print(f"jaxrl bench {name}: {config.algo} on {config.env}, "
                  f"{config.num_iterations * config.steps_per_iteration:,} env steps per seed\n{header}")
        final = r["final_return_mean"]
        compile_s = f"{r['compile_seconds']:.2f}" + ("*" if r["compile_cached"] else "")
        line = (f"{r['seeds']:>6} {compile_s:>10} {r['run_seconds']:>8.2f} "
                f"{r['env_steps_per_second']:>14,.0f} {'nan' if final is None else f'{final:.2f}':>13}")
        if "baseline" in r:
            b, split = r["baseline"], r["baseline"]["seconds"]
            line += (f" {b['env_steps_per_second']:>14,.0f} {100 * b['fraction_of_env']:>7.1f}% "
                     f"{split['env']:>7.2f} {split['acting']:>7.2f} {split['learning']:>8.2f}")
        print(line, flush=True)

    import jax

    devices = jax.devices()
    print(f"seed counts: {','.join(map(str, counts))}; {len(devices)} {devices[0].platform} device(s), a count of "
          "seeds is split over as many of them as divide it (JAXRL_CPU_DEVICES=1: one CPU device)", flush=True)
    limit = None if args.memory_limit is None else int(args.memory_limit * GIB)
    report = benchmark_all(configs, counts, args.repeats, memory_limit=limit, baseline=args.baseline,
                           on_result=on_result)
    if any(r["compile_cached"] for e in report["benchmarks"] for r in e["results"]):
        print("* loaded from the persistent compilation cache (--no-compile-cache times compiling)")
    for entry in report["benchmarks"]:
        if entry["stopped"]:
            stop = entry["stopped"]
            print(f"{entry['config_name']}: stopped at {stop['seeds']} seed(s) ({stop['reason']}): {stop['message']}")
    stem = "+".join(configs)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
    else:
        path = claim_run_path(Path("runs"), f"bench-{stem}", ".json")
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"json: {path}")
    if args.plot:
        if any(e["results"] for e in report["benchmarks"]):
            print(f"plot: {save_plot(report, args.plot)}")
        else:
            print("plot: skipped, no seed count was measured")
    return 0


def _bench_configs(names: list[str], overrides: dict) -> dict:
    """Each named config with the overrides its algorithm has (so ``learning_starts=...`` can go
    with ``ppo_cartpole dqn_cartpole``); a key that no config has is an error."""
    fields = {n: {f.name for f in dataclasses.fields(load_config(n))} for n in names}
    unused = [k for k in overrides if not any(k in f for f in fields.values())]
    if unused:
        load_config(names[0], **{k: overrides[k] for k in unused})  # raises with suggestions
    return {Path(n).stem: load_config(n, **{k: v for k, v in overrides.items() if k in fields[n]}) for n in names}


def _eval(args: argparse.Namespace) -> int:
    from jaxrl.runs import evaluate_run

    if args.episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {args.episodes}")
    seeds = None
    if args.seeds is not None:
        try:
            seeds = [int(s) for s in args.seeds.split(",")]
        except ValueError:
            raise ConfigError(f"--seeds must be comma-separated seed values, got {args.seeds!r}") from None
    step = args.step
    if step == "latest":
        step = None
    elif step is not None and step != "best":
        if not step.isdigit():
            raise ConfigError(f"--step must be an iteration count, 'best' or 'latest', got {step!r}")
        step = int(step)
    env_kwargs = parse_overrides(args.env_kwargs)
    grid = parse_grid(args.grid) if args.grid else None
    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax's notes on opening checkpoints read-only
    try:
        result = evaluate_run(args.run, episodes=args.episodes, deterministic=not args.stochastic,
                              env_kwargs=env_kwargs, seeds=seeds, step=step, key=args.key, grid=grid)
    except FileNotFoundError as err:
        raise ConfigError(str(err)) from None
    mode = "sampled actions" if args.stochastic else "greedy / mean actions"
    env = result["env"] + (f" {result['env_kwargs']}" if result["env_kwargs"] else "")
    print(f"jaxrl eval {args.run}: {result['algo']} on {env}, "
          f"checkpoint after {result['iteration']} iterations ({result['env_steps_per_seed']:,} env steps per seed), "
          f"{args.episodes} episodes per seed, {mode}")
    fmt = lambda x: "nan" if x is None else f"{x:.2f}"  # noqa: E731
    if grid is not None:
        return _print_robustness(Path(args.run), result, fmt)
    for i, seed in enumerate(result["seeds"]):
        cut = args.episodes - result["finished"][i]
        note = f"  ({cut} episode(s) cut at eval_max_steps, left out)" if cut else ""
        print(f"  seed {seed:>4}: return {fmt(result['return_mean'][i]):>9} ± {fmt(result['return_std'][i]):<8} "
              f"length {fmt(result['length_mean'][i])}{note}")
    print(f"mean ± std over seeds: {fmt(result['mean_over_seeds'])} ± {fmt(result['std_over_seeds'])}")
    print(f"json: {Path(args.run) / 'eval.json'}")
    return 0


def _print_robustness(run_dir: Path, result: dict, fmt: Callable[[float | None], str]) -> int:
    """The table of a robustness grid, its summary and heat map (``jaxrl eval --grid``)."""
    from jaxrl import plots

    names = list(result["grid"])
    print("  " + "".join(f"{n:>14}" for n in names) + f"{'mean return':>14}  per seed")
    for point, mean, seeds in zip(result["points"], result["return_mean"], result["return_per_seed"]):
        print("  " + "".join(f"{point[n]:>14g}" for n in names) + f"{fmt(mean):>14}  "
              + " ".join(fmt(x) for x in seeds))
    r = result["robustness"]
    print(f"over the {len(result['points'])} points: mean {fmt(r['mean'])}, worst {fmt(r['worst'])}, "
          f"10% quantile {fmt(r['q0.1'])}")
    print(f"json: {run_dir / 'robustness.json'}")
    if len(names) <= 2:
        shape = tuple(len(v) for v in result["grid"].values())
        values = np.array([np.nan if x is None else x for x in result["return_mean"]]).reshape(shape)
        plots.save(plots.robustness_map(result["grid"], values), run_dir / "robustness.png", close=True)
        print(f"plot: {run_dir / 'robustness.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
