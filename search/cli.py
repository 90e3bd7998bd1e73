"""The configaformer-search command line: run, validate, front, trials, plot, export.

Heavy imports (torch, ray, optuna) happen inside the commands, so `--help` returns at once. Bad input is one
line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional, Sequence

COMMANDS = ("run", "validate", "front", "trials", "plot", "export")


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit status 2."""


def _format(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.4g}"


def cmd_validate(args: argparse.Namespace) -> int:
    import optuna

    from configaformer.shapes import format_shape

    from .candidate import make_candidate
    from .data import load_corpus
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
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=args.seed))
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
    return parser


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

    try:
        return handler(args)
    except (UsageError, SpaceError, ConfigError) as err:
        print(f"configaformer-search: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("configaformer-search: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
