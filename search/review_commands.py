"""The commands that read a finished or running search's study: front, trials, plot, report and export. Heavy
imports happen inside them, as in cli.py, which parses their arguments and reports their errors."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional

from .errors import UsageError


def _open_run(directory: str, storage: Optional[str]):
    """The review of an existing run folder's study (or of --storage); refuses a folder that holds none and
    creates nothing."""
    from pathlib import Path

    from .review import read_review
    from .storage import STUDY_FILE, default_storage
    from .storage.faults import storage_call

    path = Path(directory)
    if storage is None:
        if not (path / STUDY_FILE).is_file():
            raise UsageError(f"{directory}: not a run folder (no {STUDY_FILE}); run `configaformer-search SPACE.yaml --out {directory}` first")
        storage = default_storage(path)
    return storage_call(storage, lambda: read_review(storage))


def _emit(frame, fmt: str, output: Optional[str], empty: str, table: Optional[Callable] = None) -> None:
    """A table on the console or in a file; `empty` says on the console why there are no rows; `table` renders the
    console table (every column, unless given)."""
    from . import console

    if frame.empty and fmt == "table":
        print(empty)
        return
    if fmt == "parquet":
        if not output:
            raise UsageError("--format parquet writes a file: add -o FILE.parquet")
        try:
            frame.to_parquet(output)
        except ImportError as err:
            raise UsageError(f"--format parquet: {err}") from None
        print(f"wrote {output}")
        return
    text = {"table": lambda: (table or console.table)(frame),
            "csv": lambda: "" if frame.empty else frame.to_csv(),
            "json": lambda: frame.reset_index().to_json(orient="records", indent=1, date_format="iso") + "\n"}[fmt]()
    if output:
        from pathlib import Path

        Path(output).write_text(text)
        print(f"wrote {output}")
    else:
        sys.stdout.write(text)


def cmd_front(args: argparse.Namespace) -> int:
    from .console import fitted
    from .tables import front_frame, retrained_columns

    review = _open_run(args.dir, args.storage)
    frame = front_frame(review)
    keep = (*review.names, *retrained_columns(frame), "noise")
    _emit(frame, args.format, args.output, empty="(the front is empty: no trial has finished that meets the constraints)",
          table=None if args.all else lambda frame: fitted(frame, keep))  # what fits a terminal; files keep it all
    return 0


def cmd_trials(args: argparse.Namespace) -> int:
    from .console import fitted
    from .tables import trials_frame
    from .review import TRIAL_NOTES

    review = _open_run(args.dir, args.storage)
    keep = ("state", *review.names, *TRIAL_NOTES, "duration")
    _emit(trials_frame(review), args.format, args.output, empty="(no trials yet)",
          table=None if args.all else lambda frame: fitted(frame, keep))  # what fits a terminal; files keep it all
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .plots import plot_review

    review = _open_run(args.dir, args.storage)
    output = Path(args.output or Path(args.dir) / "front.png")
    if output.suffix.lower() != ".png":
        raise UsageError(f"-o {output}: expected a .png path")
    try:
        written = plot_review(review, output)
    except ValueError as err:
        raise UsageError(f"{args.dir}: {err}") from None
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .report import write_report

    review = _open_run(args.dir, args.storage)
    output = Path(args.output or Path(args.dir) / "report.html")
    if output.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"-o {output}: expected an .html path")
    print(f"wrote {write_report(review, output)}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .export import export_trial

    review = _open_run(args.dir, args.storage)
    output = Path(args.output or Path(args.dir) / "best.yaml")
    if output.suffix.lower() not in (".yaml", ".yml", ".json"):
        raise UsageError(f"-o {output}: expected a .yaml, .yml or .json path")
    try:
        if args.trial is not None:
            chosen = _exportable(review, args.trial)
        elif args.pick:
            chosen = review.pick(args.pick)
        elif args.knee:
            chosen = review.knee()
        elif args.beats:
            chosen = review.pick_beating(args.beats)
        elif args.retrained:
            chosen = review.pick_retrained()
        else:
            chosen = review.pick_default()
    except ValueError as err:
        raise UsageError(f"{args.dir}: {err}") from None
    weights = _export_weights(review, chosen.number, Path(args.dir), output) if args.weights else None
    export_trial(review, chosen, output)
    values = ", ".join(f"{n} {v:.4g}" for n, v in zip(review.names, chosen.values))
    print(f"exported trial #{chosen.number} ({values}) to {output}")
    if weights is not None:
        print(f"with its weights retrained at {weights[1]:,} tokens: ConfigaFormer.from_config({str(output)!r}, "
              f"weights={str(weights[0])!r})")
    else:
        print(f"rebuild it with ConfigaFormer.from_config({str(output)!r})")
    return 0


def _export_weights(review, number: int, folder, output):
    """Copy the trial's retrained weights (longest budget, first seed) beside its exported config; refuses before
    anything is written when there are none."""
    import shutil

    from .retrain import weights_path

    by_tokens = review.retrained.get(number)
    if not by_tokens:
        raise UsageError(f"--weights: trial #{number} was not retrained, so it has no trained weights; run "
                         f"`configaformer-search retrain {folder} --trials {number}` first")
    tokens = max(by_tokens)
    seed = min(by_tokens[tokens].values)
    source = weights_path(folder, number, tokens, seed)
    if not source.is_file():
        raise UsageError(f"--weights: {source} is missing (retrained on another machine? copy it there)")
    target = output.with_suffix(".pt")
    shutil.copyfile(source, target)
    return target, tokens


def _exportable(review, number: int):
    """The trial `number`, if it completed."""
    numbers = [t.number for t in review.trials]
    if number not in numbers:
        raise UsageError(f"--trial {number}: not in the study (trials {min(numbers, default=0)}-{max(numbers, default=-1)})")
    row = review.trials[numbers.index(number)]
    if row.state != "COMPLETE":
        raise UsageError(f"--trial {number}: it did not complete ({row.reason or row.state.lower()}: "
                         f"{row.metrics.get('message', '')}): nothing to export")
    return review.stored(number)
