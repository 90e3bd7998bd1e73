"""`configaformer-search retrain RUN`: does the front's lead survive a longer training? The front's members and the
baselines (or chosen trials) are trained again from scratch at M times the space's budget on k seeds, through the
search's Ray trial runner, packed like its trials. Each result is kept in the study as it ends, beside the search's
own values and linked to its trial (a study attribute `retrain:<trial>:<tokens>:<seed>`), never mixed into them: a
killed retraining, run again, trains only what is missing. The trained weights are kept in the run folder, so that
`export --weights` hands over a trained model.

A retraining measures what a separate run of that budget and seed would: the same recipe as the search's (its
schedule, learning rate and warm-up; under successive halving, the warm-up of its first rung).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from .errors import UsageError
from .metrics import TARGET
from .progress import plural

PREFIX = "retrain:"  # study attribute retrain:<trial number>:<tokens>:<seed> -> the run's record
WEIGHTS = "retrained"  # the run folder's subfolder of trained weights, <trial>-<tokens>-seed<seed>.pt
ALL_TRIALS = "all"  # retrain every complete trial: what checks the search's ranking and intervals at the new budget


@dataclass(frozen=True)
class Retrained:
    """What one trial's retraining at one budget measured, over its seeds."""

    number: int
    tokens: int
    values: dict[int, float]  # seed -> val_loss

    @property
    def mean(self) -> float:
        return sum(self.values.values()) / len(self.values)

    @property
    def sd(self) -> float:
        if len(self.values) < 2:
            return 0.0
        mean = self.mean
        return (sum((v - mean) ** 2 for v in self.values.values()) / (len(self.values) - 1)) ** 0.5


def retrained(attrs: dict[str, Any]) -> dict[int, dict[int, Retrained]]:
    """The study's retraining results: trial number -> tokens -> what its seeds measured."""
    found: dict[tuple[int, int], dict[int, float]] = {}
    for key, record in attrs.items():
        parts = key[len(PREFIX):].split(":") if key.startswith(PREFIX) else []
        if len(parts) == 3 and all(p.isdigit() for p in parts) and isinstance(record, dict) and record.get("status") == "ok":
            number, tokens, seed = (int(part) for part in parts)
            found.setdefault((number, tokens), {})[seed] = float(record["val_loss"])
    out: dict[int, dict[int, Retrained]] = {}
    for (number, tokens), values in found.items():
        out.setdefault(number, {})[tokens] = Retrained(number, tokens, values)
    return out


def weights_path(out_dir: Path, number: int, tokens: int, seed: int) -> Path:
    return Path(out_dir) / WEIGHTS / f"{number}-{tokens}-seed{seed}.pt"


def retrain(out_dir: Path, storage: Optional[str] = None, mult: Optional[float] = None, seeds: int = 1,
            trials: Union[Sequence[int], str, None] = None, address: Optional[str] = None, gpus_per_trial: Optional[float] = None,
            concurrency: Optional[int] = None, say: Callable[[str], None] = print) -> Any:
    """Retrain (or resume retraining) a run folder's front and baselines, or `trials` (numbers, or ALL_TRIALS), at
    `mult` times the space's budget (default: to its train.target_tokens, else 4x) on `seeds` seeds; returns the
    review with the results.
    Raises UsageError for bad input before anything is trained; KeyboardInterrupt keeps every result that ended."""
    from .cluster import check_address, plan_resources, ray_session
    from .jobs import Job, run_jobs
    from .review import read_review
    from .run import TUNE_SCRATCH, run_folder, signals_as_interrupts, write_outputs
    from .storage import STUDY_FILE, default_storage
    from .storage.faults import storage_call

    out_dir = Path(out_dir).resolve()  # the weights are written by workers, which run in folders of their own
    if storage is None and not (out_dir / STUDY_FILE).is_file():
        raise UsageError(f"{out_dir}: not a run folder (no {STUDY_FILE})")
    url = storage or default_storage(out_dir)
    if seeds < 1:
        raise UsageError(f"--seeds: expected a positive count, got {seeds}")
    check_address(address)
    review = storage_call(url, lambda: read_review(url))
    space = _space_of(review, out_dir)
    brief = space.train["tokens"]
    mult = mult if mult is not None else (space.target / brief if space.target else 4)
    if not mult > 0:
        raise UsageError(f"--mult: expected a positive multiple of the budget, got {mult:g}")
    tokens = int(brief * mult)
    chosen = _chosen(review, trials)
    warmup = space.rungs()[0] if len(space.rungs()) > 1 else tokens  # a separate run of that budget's warm-up
    base = space.train["seed"] if isinstance(space.train["seed"], int) else 0
    done = retrained(review.study.user_attrs)
    baseline_models = {b.name: b.model for b in space.baselines}
    jobs = [Job(f"{row.number}:{tokens}:{seed}", space.values_of(row.params), seed, (tokens,), warmup,
                baseline_models.get(row.baseline), str(weights_path(out_dir, row.number, tokens, seed)))
            for row in chosen for seed in range(base, base + seeds)
            if seed not in done.get(row.number, {}).get(tokens, Retrained(0, 0, {})).values]
    say(f"retraining {plural(len(chosen), 'config')} of '{review.name}' at {tokens:,} tokens ({mult:g}x) on "
        f"{plural(seeds, 'seed')}: {plural(len(jobs), 'run')} to train"
        + (f", {len(chosen) * seeds - len(jobs)} kept from before" if len(jobs) < len(chosen) * seeds else ""))
    if jobs:
        from .storage import StudyStore, open_storage

        with run_folder(out_dir, lambda: True, out_dir / STUDY_FILE), signals_as_interrupts():
            store = storage_call(url, lambda: StudyStore.load(open_storage(url), review.name))
            try:
                with ray_session(address, out_dir):
                    resources = plan_resources(space, gpus_per_trial, concurrency)
                    count = [0]

                    def ended(job: Job, record: dict[str, Any]) -> None:
                        count[0] += 1
                        number, _, seed = job.name.split(":")
                        store.set_study_attrs(**{PREFIX + job.name: record})
                        say(f"[{count[0]}/{len(jobs)}] #{number} seed {seed}: " + (
                            f"val_loss {record['val_loss']:.4g} ({record['seconds']:.0f} s)" if record.get("status") == "ok"
                            else f"failed ({record.get('reason')}): {record.get('message', '')}"))

                    run_jobs(space, jobs, resources, ended, out_dir / TUNE_SCRATCH)
            finally:
                store.close()
            write_outputs(url, out_dir)
    return read_review(url)


def front_held(rows: Sequence[Any], measured: dict[int, float], loss: int, directions: Sequence[str]) -> str:
    """How many of the reported front's members among the retrained `rows` are on the front of those rows, their loss
    objective (index `loss`) as retrained (`measured`, by trial number), the others as the search measured them."""
    from .pareto import front_mask, minimised

    members = [row for row in rows if row.on_front]
    if not members:
        return ""
    points = minimised([(*row.values[:loss], measured[row.number], *row.values[loss + 1:]) for row in rows],
                       list(directions))
    there = {row.number for row, on in zip(rows, front_mask(points)) if on}
    return (f"; {sum(row.number in there for row in members)} of the {plural(len(members), 'front member')} "
            f"retrained are on the front there ({len(there)} configs)")


def intervals_held(rows: Sequence[Any], measured: dict[int, float], loss: int, tokens: int,
                   predictor: dict[str, Any]) -> str:
    """At the target budget of a search with one (its `predictor` summary, its objective `loss` val_loss_at_target):
    how many of the retrained configs whose loss there was predicted had the measurement inside their 90% interval."""
    from .predictor import Z90

    if predictor.get("target_tokens") != tokens:
        return ""
    predicted = [row for row in rows if not row.metrics.get("target_measured") and row.sd(TARGET) > 0]
    if not predicted:
        return ""
    held = sum(abs(measured[row.number] - row.values[loss]) <= Z90 * row.sd(TARGET) for row in predicted)
    return f"; the 90% intervals of {TARGET} held {held} of the {plural(len(predicted), 'predicted config')}"


def _space_of(review: Any, out_dir: Path) -> Any:
    """The space the search ran, as the study recorded it."""
    from .space import load_space

    text = review.study.user_attrs.get("space_yaml")
    if not text:
        raise UsageError(f"{out_dir}: the study does not hold the space it searched; retrain needs it")
    folder = Path(tempfile.mkdtemp(prefix="configaformer-retrain-"))
    path = folder / Path(review.study.user_attrs.get("space", "space.yaml")).name
    path.write_text(text)
    return load_space(path)


def _chosen(review: Any, trials: Union[Sequence[int], str, None]) -> list[Any]:
    """The trials to retrain: those named, every complete one, or the front and the baselines."""
    if trials == ALL_TRIALS:
        return [t for t in review.complete if t.values is not None and (t.params or t.baseline)]
    if trials is None:
        chosen = [*review.front, *review.baselines]
        if not chosen:
            raise UsageError(f"the study '{review.name}' has no front yet: nothing to retrain")
        return chosen
    rows = {t.number: t for t in review.trials}
    for number in trials:
        row = rows.get(number)
        if row is None or row.values is None or not row.params and not row.baseline:
            raise UsageError(f"--trials {number}: not a measured trial of the study")
    return [rows[n] for n in trials]
