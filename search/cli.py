"""The configaformer-search command line: run, validate, calibrate, front, trials, plot, report, export.

Heavy imports (torch, ray, optuna) happen inside the commands, so `--help` returns at once. Bad input is one
line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Optional, Sequence

from .choices import SAMPLERS
from .errors import UsageError
from .review_commands import cmd_export, cmd_front, cmd_plot, cmd_report, cmd_trials

COMMANDS = ("run", "validate", "calibrate", "retrain", "front", "trials", "plot", "report", "export")


def _format(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.4g}"


def cmd_validate(args: argparse.Namespace) -> int:
    from configaformer.shapes import format_shape

    from .candidate import check_buildable, make_candidate
    from .data import load_corpus
    from .driver.samplers import random_draws
    from .errors import TrialFailure
    from .space import load_space

    space = load_space(args.space)
    size = space.size()
    print(f"{args.space}: space '{space.name}', {len(space.params)} parameters, "
          f"{f'{size:,} configs' if size else 'continuous'}")
    print("objectives: " + ", ".join(f"{m} ({d})" for m, d in space.objectives.items()))
    if space.constraints:
        print("constraints: " + ", ".join(f"{m} {'<=' if s == 'max' else '>='} {v:g}"
                                           for m, b in space.constraints.items() for s, v in b.items()))
    corpus = load_corpus(space.data)
    print(f"corpus: {corpus.description}, vocab {corpus.vocab_size}, {len(corpus.train):,} train / {len(corpus.val):,} val tokens")
    print(f"validation: {space.train['eval_tokens']:,} target tokens in windows of {space.train['eval_seq_len']} for every trial")
    print(f"scheduler: {space.describe_scheduler()}, schedule {space.train['schedule']}")
    check_buildable(space, corpus.vocab_size)
    study = random_draws(args.seed)
    for i in range(args.samples):
        params = space.sample(study.ask())
        print(f"\nsample {i + 1}: " + " ".join(f"{k}={v}" for k, v in params.items()))
        try:
            candidate = make_candidate(space, params, corpus.vocab_size)
        except TrialFailure as failure:
            print(f"  refused before training ({failure.kind}): {failure.message}")
            continue
        model, m = candidate.model, candidate.metrics
        print(f"  {len(model.ops)} ops in {len(model.config['blocks'])} blocks; "
              f"logits {format_shape(model.stream_shapes[model.outputs[0]])}")
        print(f"  params {m['params']:,} (non-embedding {m['nonemb_params']:,}); "
              f"FLOPs {_format(m['flops'])} at [{space.probes['batch_size']}, {space.probes['seq_len']}]")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import signal

    from .run import search

    result = search(args.space, trials=args.trials, tokens=args.tokens, out=args.out, storage=args.storage, address=args.address,
                    gpus_per_trial=args.gpus_per_trial, concurrency=args.concurrency, sampler=args.sampler,
                    seed=args.seed, fresh=args.fresh, verbosity=0 if args.quiet else 1 + args.verbose,
                    storage_patience=args.storage_patience, heartbeat_grace=args.heartbeat_grace)
    if not args.quiet:
        _print_summary(result)
    if result.stopped_by is not None:
        how = "terminated" if result.stopped_by == signal.SIGTERM else "interrupted"
        print(f"configaformer-search: {how} with {result.measured} of {result.budget} trials measured; "
              "run the same command again to resume", file=sys.stderr)
        return 128 + result.stopped_by
    if result.stop_reason:
        print(f"configaformer-search: {result.stop_reason}", file=sys.stderr)
    if not result.measured:
        print("configaformer-search: no config was trained and measured", file=sys.stderr)
        return 1
    return 1 if result.stop_reason else 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    import signal

    from .calibrate import calibrate
    from .calibration_report import OUTPUTS, describe
    from .run import stopped_by
    from .space import load_space

    space = load_space(args.space)
    say = (lambda text: None) if args.quiet else print
    try:
        calibration = calibrate(space, args.configs, args.mult, args.out, args.address, args.gpus_per_trial,
                                args.concurrency, say)
    except KeyboardInterrupt:
        signum = stopped_by()
        print(f"configaformer-search: calibrate {'terminated' if signum == signal.SIGTERM else 'interrupted'}; the runs that ended "
              "are kept: run the same command again to resume", file=sys.stderr)
        return 128 + signum
    print("\n" + "\n".join(describe(calibration)))
    print("wrote " + ", ".join(str(calibration.out / name) for name in OUTPUTS))
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    import signal

    from .console import fitted
    from .retrain import ALL_TRIALS, retrain
    from .tables import front_frame, retrained_columns
    from .run import stopped_by

    trials: Any = None
    if args.trials == ALL_TRIALS:
        trials = ALL_TRIALS
    elif args.trials:
        try:
            trials = [int(n) for n in args.trials.split(",")]
        except ValueError:
            raise UsageError(f"--trials {args.trials}: expected trial numbers such as 3,7,12, or all") from None
    say = (lambda text: None) if args.quiet else print
    try:
        review = retrain(args.dir, args.storage, args.mult, args.seeds, trials, args.address, args.gpus_per_trial,
                         args.concurrency, say)
    except KeyboardInterrupt:
        signum = stopped_by()
        print(f"configaformer-search: retrain {'terminated' if signum == signal.SIGTERM else 'interrupted'}; the runs that "
              "ended are kept: run the same command again to resume", file=sys.stderr)
        return 128 + signum
    print("\n".join(review.retrain_lines() or ["nothing retrained yet"]))
    frame = front_frame(review)
    if not frame.empty:
        sys.stdout.write(fitted(frame, (*review.names, *retrained_columns(frame), "noise")))
    return 0


def _print_summary(result) -> None:
    """What the search measured, what it refused or reused for free, the front, and the files it wrote."""
    from .console import fitted
    from .tables import front_frame

    review = result.review()
    print("\n" + "\n".join(review.summary(result.out_dir)))
    if review.front:
        sys.stdout.write(fitted(front_frame(review), (*review.names, "noise")))
    if result.written:
        print("wrote " + ", ".join(str(p) for p in result.written))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="configaformer-search", description=(
        "Architecture search over configaformer configs. `configaformer-search SPACE.yaml` is short for "
        "`configaformer-search run SPACE.yaml`."))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    validate = sub.add_parser("validate", help="check a space, sample a few candidates, print shapes, params, FLOPs")
    validate.add_argument("space", help="search space YAML")
    validate.add_argument("--samples", type=int, default=3, help="candidates to sample (default 3)")
    validate.add_argument("--seed", type=int, default=0)
    validate.set_defaults(handler=cmd_validate)

    run = sub.add_parser("run", help="search a space: Ray Tune trials, an Optuna study, a Pareto front (resumes)")
    run.add_argument("space", help="search space YAML")
    run.add_argument("--trials", type=int, help="configs to measure (started and ended, stopped at a rung or not; "
                                                "default: the space's search.trials)")
    run.add_argument("--tokens", type=float, help="also stop starting configs once the measured ones spent this many "
                                                  "training tokens (e.g. 2.4e6): a compute budget")
    run.add_argument("--out", help="run folder (default runs/<space name>)")
    run.add_argument("--address", help="join this Ray cluster (e.g. auto, or ray://head:10001) instead of a local Ray")
    run.add_argument("--storage", help="Optuna storage URL, e.g. postgresql+psycopg://user@host/db (default "
                                       "sqlite:///<out>/study.db); keep passwords out of it (docs/clusters.md)")
    run.add_argument("--storage-patience", type=float, default=180.0, metavar="SECONDS",
                     help="how long a running search waits for a database server that went away (default 180)")
    run.add_argument("--heartbeat-grace", type=float, metavar="SECONDS",
                     help="how long a running trial's heartbeat may be silent before another driver sharing the study "
                          "takes its driver for dead and runs its config again (default 30, at least 10)")
    run.add_argument("--gpus-per-trial", type=float, help="GPU share per trial, e.g. 0.25 packs four on a GPU")
    run.add_argument("--concurrency", type=int, help="trials at a time (default: what the cluster fits)")
    run.add_argument("--sampler", choices=SAMPLERS, help="Optuna sampler (default: the space's)")
    run.add_argument("--seed", type=int, help="sampler seed (default: the space's)")
    run.add_argument("--fresh", action="store_true", help="delete this space's study and outputs first")
    run.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    run.add_argument("--verbose", "-v", action="count", default=0, help="also print each trial's params")
    run.set_defaults(handler=cmd_run)

    calibrate = sub.add_parser("calibrate", help="before a long search: how much of the spread across configs is seed "
                                                 "noise, and does the budget rank configs as a longer one would")
    calibrate.add_argument("space", help="search space YAML")
    calibrate.add_argument("--configs", type=int, default=12, help="configs to sample (default 12)")
    calibrate.add_argument("--mult", type=int, default=4, help="the longer budget, as a multiple of the space's (default 4)")
    calibrate.add_argument("--out", help="folder (default runs/<space name>-calibrate); a rerun resumes there")
    calibrate.add_argument("--address", help="join this Ray cluster instead of a local Ray")
    calibrate.add_argument("--gpus-per-trial", type=float, help="GPU share per run, e.g. 0.25 packs four on a GPU")
    calibrate.add_argument("--concurrency", type=int, help="runs at a time (default: what the cluster fits)")
    calibrate.add_argument("--quiet", "-q", action="store_true", help="print only the findings")
    calibrate.set_defaults(handler=cmd_calibrate)

    retrain = sub.add_parser("retrain", help="train the front and the baselines again at a longer budget (resumes)")
    retrain.add_argument("dir", help="run folder")
    retrain.add_argument("--storage", help="Optuna storage URL, when the study is not the folder's study.db")
    retrain.add_argument("--mult", type=float, help="the budget, as a multiple of the space's train.tokens "
                                                    "(default: its target_tokens, else 4)")
    retrain.add_argument("--seeds", type=int, default=1, help="seeds per config (default 1)")
    retrain.add_argument("--trials", help="these trial numbers instead of the front and the baselines, e.g. 3,7,12; or "
                                          "all: every complete trial, to check the search's ranking and intervals there")
    retrain.add_argument("--address", help="join this Ray cluster instead of a local Ray")
    retrain.add_argument("--gpus-per-trial", type=float, help="GPU share per run")
    retrain.add_argument("--concurrency", type=int, help="runs at a time (default: what the cluster fits)")
    retrain.add_argument("--quiet", "-q", action="store_true", help="print only the findings")
    retrain.set_defaults(handler=cmd_retrain)

    formats = ("table", "csv", "json")
    front = sub.add_parser("front", help="list the Pareto-optimal trials of a run folder")
    trials = sub.add_parser("trials", help="list every trial of a run folder")
    plot = sub.add_parser("plot", help="draw the front and the hypervolume history (PNG)")
    report = sub.add_parser("report", help="write one self-contained HTML page to review the search")
    export = sub.add_parser("export", help="write a trial's model config (default: lowest val_loss on the front)")
    for command in (front, trials, plot, report, export):
        command.add_argument("dir", help="run folder")
        command.add_argument("--storage", help="Optuna storage URL, when the study is not the folder's study.db")
    front.add_argument("--format", choices=formats, default="table")
    front.add_argument("--all", action="store_true", help="every column in the table too (files always have them)")
    front.add_argument("-o", "--output", help="write to this file instead of the console")
    front.set_defaults(handler=cmd_front)
    trials.add_argument("--format", choices=formats + ("parquet",), default="table")
    trials.add_argument("-o", "--output", help="write to this file instead of the console")
    trials.add_argument("--all", action="store_true", help="every column in the table too (files always have them)")
    trials.set_defaults(handler=cmd_trials)
    plot.add_argument("-o", "--output", help="PNG path (default DIR/front.png)")
    plot.set_defaults(handler=cmd_plot)
    report.add_argument("-o", "--output", help="HTML path (default DIR/report.html)")
    report.set_defaults(handler=cmd_report)
    choice = export.add_mutually_exclusive_group()
    choice.add_argument("--trial", type=int, help="export this trial number")
    choice.add_argument("--pick", help="best val_loss on the front meeting e.g. 'latency_ms<=2,peak_mem_mb<=300'")
    choice.add_argument("--knee", action="store_true", help="the front trial nearest the ideal point")
    choice.add_argument("--beats", metavar="BASELINE", help="the lowest-loss front trial at least as good as this "
                                                            "baseline on every objective")
    choice.add_argument("--retrained", action="store_true", help="the front trial with the lowest loss after `retrain`")
    export.add_argument("--weights", action="store_true", help="also write the trial's retrained weights (FILE.pt)")
    export.add_argument("-o", "--output", help="YAML or JSON path (default DIR/best.yaml)")
    export.set_defaults(handler=cmd_export)
    return parser


def _quiet_libraries() -> None:
    """fvcore's tracer warns about internals: users see our output only."""
    import warnings

    warnings.filterwarnings("ignore", message=".*torch.jit.script.*is deprecated", category=DeprecationWarning)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        argv.insert(0, "run")  # `configaformer-search SPACE.yaml` is `run SPACE.yaml`
    parser = _parser()
    args = parser.parse_args(argv)
    handler: Optional[Callable[[argparse.Namespace], int]] = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    from configaformer.errors import ConfigError

    from .errors import SpaceError

    _quiet_libraries()

    try:
        return handler(args)
    except (UsageError, SpaceError, ConfigError) as err:
        print(f"configaformer-search: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("configaformer-search: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `... | head`: the reader has all it wants
        _quiet_stdout()
        return 141
    except OSError as err:  # a read-only folder, a full disk
        where = f"{err.filename}: " if err.filename else ""
        print(f"configaformer-search: error: {where}{err.strerror or err} (nothing more was written)", file=sys.stderr)
        return 2
    except Exception as err:
        from .storage.faults import storage_fault

        fault = storage_fault(_storage_of(args), err)
        if fault is None:
            raise
        print(f"configaformer-search: error: {fault}", file=sys.stderr)
        return 2


def _storage_of(args: argparse.Namespace) -> str:
    """The storage a command works on, for naming it in an error."""
    from pathlib import Path

    from .storage import default_storage

    if getattr(args, "storage", None):
        return args.storage
    folder = getattr(args, "dir", None) or getattr(args, "out", None)
    return default_storage(Path(folder)) if folder else "the study storage"


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that Python's flush at exit does not raise BrokenPipeError again."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
