"""The Pareto front of a study, its hypervolume, and choosing a winner from it (--trial, --pick, --knee)."""

from __future__ import annotations

import operator
import re
from typing import Optional, Sequence

import numpy as np
import optuna
import pandas as pd
from optuna._hypervolume import compute_hypervolume  # optuna's WFG algorithm; no public equivalent yet
from optuna.study._constrained_optimization import _get_feasible_trials  # the feasibility best_trials uses
from optuna.study._multi_objective import _get_pareto_front_trials_by_trials  # the front best_trials takes
from optuna.trial import FrozenTrial, TrialState

from .errors import SpaceError
from .metrics import KEY_COLUMNS, SD_SUFFIX, SEEDED_METRICS
from .records import study_trials
from .study import objective_names, rows_frame

_PICK_RE = re.compile(r"^\s*([A-Za-z_][\w]*)\s*(<=|>=|<|>|==)\s*([-+0-9.eE]+)\s*$")
_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt, "==": operator.eq}


def feasible(constraints: Optional[dict]) -> bool:
    """Whether a trial's recorded constraint values (Optuna's convention: <= 0 when met) are all met."""
    return all(value <= 0 for value in (constraints or {}).values())


class ParetoFront:
    """The non-dominated objective vectors seen so far, kept as they come: one pass over the front per point, so a
    driver keeps its front size current without rereading the study."""

    def __init__(self, directions: Sequence) -> None:
        self.directions = list(directions)
        self.points: list[np.ndarray] = []

    def add(self, values: Sequence[float]) -> bool:
        """Add a point; True when it joined the front (it is dominated by no member, and equal to none)."""
        point = _minimised([values], self.directions)[0]
        if any((member <= point).all() for member in self.points):
            return False
        self.points = [m for m in self.points if not (point <= m).all()] + [point]
        return True

    def __len__(self) -> int:
        return len(self.points)


def front_trials(study: optuna.Study, complete: Optional[Sequence[FrozenTrial]] = None) -> list[FrozenTrial]:
    """Pareto-optimal trials among the complete (given, or read), feasible ones, by number: what Optuna's
    best_trials gives (twins are PRUNED, so they are not among them), without its deep copy of every trial."""
    complete = study_trials(study, (TrialState.COMPLETE,)) if complete is None else complete
    feasible_trials = _get_feasible_trials(list(complete))
    return sorted(_get_pareto_front_trials_by_trials(feasible_trials, study.directions), key=lambda t: t.number)


NOISE_SIGMAS = 2  # a lead counts once it exceeds this many standard errors of the difference


def seed_noise(trials: Sequence[FrozenTrial], metric: str) -> Optional[float]:
    """The sd of one run of `metric`, pooled over the seed-confirmed trials (the root mean of their variances:
    each trial's own sd, from a few seeds, is too rough alone); None where no trial was confirmed."""
    variances = [t.user_attrs[metric + SD_SUFFIX] ** 2 for t in trials
                 if isinstance(t.user_attrs.get(metric + SD_SUFFIX), (int, float))]
    return float(np.sqrt(np.mean(variances))) if variances else None


def leads_within_noise(study: optuna.Study, trials: Optional[Sequence[FrozenTrial]] = None,
                       front: Optional[Sequence[FrozenTrial]] = None) -> dict[int, str]:
    """Front members whose lead over a trial they dominate is within the seed noise, each with a note naming the
    nearest such trial. That trial is dominated only because a seeded objective (val_loss) is ahead by less than
    NOISE_SIGMAS standard errors of the difference of the two means; with other seeds it could join the front.
    `trials` (the complete ones) and `front` are read from the study unless given."""
    trials = study_trials(study, (TrialState.COMPLETE,)) if trials is None else trials
    names, directions = objective_names(study), study.directions
    noise = {i: seed_noise(trials, name) for i, name in enumerate(names) if name in SEEDED_METRICS}
    noise = {i: sd for i, sd in noise.items() if sd}
    if not noise:
        return {}
    candidates = _get_feasible_trials(list(trials))
    front = front_trials(study, trials) if front is None else front
    members = {t.number for t in front}
    others = [t for t in candidates if t.number not in members]
    if not others:
        return {}
    points = _minimised([t.values for t in others], directions)
    seeds = np.array([t.user_attrs.get("seeds", 1) for t in others], dtype=float)
    notes = {}
    for leader in front:
        lead = points - _minimised([leader.values], directions)[0]
        dominated = (lead >= 0).all(axis=1)
        nearest = None
        for i, sd in noise.items():  # the dominated trial whose lead is the smallest share of its noise band
            band = NOISE_SIGMAS * sd * np.sqrt(1 / leader.user_attrs.get("seeds", 1) + 1 / seeds)
            share = np.where(dominated & (lead[:, i] < band), lead[:, i] / band, np.inf)
            k = int(np.argmin(share))
            if np.isfinite(share[k]) and (nearest is None or share[k] < nearest[0]):
                nearest = (share[k], others[k].number, names[i], lead[k, i], band[k])
        if nearest is not None:
            _, number, name, lead_i, band_i = nearest
            notes[leader.number] = f"lead over #{number} within noise ({name} {lead_i:.2g} < {band_i:.2g})"
    return notes


def front_frame(study: optuna.Study) -> pd.DataFrame:
    """The front as a table: objectives (with their seed sd where seeds were confirmed), key measurements, whether
    a lead is within noise, params."""
    rows = []
    names = objective_names(study)
    complete = study_trials(study, (TrialState.COMPLETE,))
    front = front_trials(study, complete)
    noisy = leads_within_noise(study, complete, front)
    for trial in front:
        row = {"number": trial.number, **dict(zip(names, trial.values))}
        row.update({name + SD_SUFFIX: trial.user_attrs[name + SD_SUFFIX] for name in names
                    if name + SD_SUFFIX in trial.user_attrs})
        row.update({k: trial.user_attrs[k] for k in ("seeds", *KEY_COLUMNS) if k in trial.user_attrs})
        if trial.number in noisy:
            row["noise"] = noisy[trial.number]
        row.update({f"param:{k}": v for k, v in trial.params.items()})
        rows.append(row)
    return rows_frame(rows) if rows else pd.DataFrame()


def _minimised(values: Sequence[Sequence[float]], directions: Sequence) -> np.ndarray:
    signs = np.array([1.0 if d in ("minimize", optuna.study.StudyDirection.MINIMIZE) else -1.0 for d in directions])
    return np.asarray(values, dtype=float).reshape(-1, len(signs)) * signs


def hypervolume_of(points: Sequence[Sequence[float]], reference: Sequence[float], directions: Sequence) -> float:
    """Hypervolume that `points` dominate against `reference`, both in the objectives' own units; directions are
    'minimize'/'maximize' or Optuna's StudyDirection. Dominated points may be included."""
    ref = _minimised([reference], directions)[0]
    kept = _minimised(points, directions)
    kept = kept[(kept < ref).all(axis=1)]
    return float(compute_hypervolume(kept, ref)) if len(kept) else 0.0


def hypervolume(study: optuna.Study, reference: Sequence[float], trials: Optional[Sequence[FrozenTrial]] = None) -> float:
    """Hypervolume of the study's complete, feasible trials (or of `trials`) against a reference point."""
    pool = trials if trials is not None else study_trials(study)
    feasible = _get_feasible_trials([t for t in pool if t.state == TrialState.COMPLETE])
    return hypervolume_of([t.values for t in feasible], reference, study.directions)


def reference_point(study: optuna.Study, margin: float = 0.1) -> list[float]:
    """The worst value of each objective over the complete trials, pushed out by a margin."""
    values = np.array([t.values for t in study_trials(study, (TrialState.COMPLETE,))], dtype=float)
    worst = [values[:, i].max() if d == optuna.study.StudyDirection.MINIMIZE else values[:, i].min()
             for i, d in enumerate(study.directions)]
    return [w + margin * abs(w) if d == optuna.study.StudyDirection.MINIMIZE else w - margin * abs(w)
            for w, d in zip(worst, study.directions)]


def _nonempty_front(study: optuna.Study) -> list[FrozenTrial]:
    front = front_trials(study)
    if not front:
        raise SpaceError("the study has no complete, feasible trial yet: nothing to export")
    return front


def _best(study: optuna.Study, trials: Sequence[FrozenTrial]) -> FrozenTrial:
    """The trial with the lowest val_loss (or the best first objective)."""
    index = objective_names(study).index("val_loss") if "val_loss" in objective_names(study) else 0
    sign = 1 if study.directions[index] == optuna.study.StudyDirection.MINIMIZE else -1
    return min(trials, key=lambda t: sign * t.values[index])


def pick_default(study: optuna.Study) -> FrozenTrial:
    """The front trial with the lowest val_loss (or the best first objective)."""
    return _best(study, _nonempty_front(study))


def pick(study: optuna.Study, expression: str) -> FrozenTrial:
    """The best front trial (lowest val_loss) that meets every condition of 'latency_ms<=2,peak_mem_mb<=300'."""
    conditions = []
    for part in expression.split(","):
        match = _PICK_RE.match(part)
        if not match:
            raise SpaceError(f"--pick: cannot read {part.strip()!r}; expected METRIC<=NUMBER (also >=, <, >, ==), comma-separated")
        conditions.append((match[1], match[2], float(match[3])))
    front = _nonempty_front(study)
    known = set(objective_names(study)) | {k for t in front for k, v in t.user_attrs.items() if isinstance(v, (int, float))}
    for metric, _, _ in conditions:
        if metric not in known:
            raise SpaceError(f"--pick: unknown metric {metric!r}; known: {', '.join(sorted(known))}")

    def value(trial: FrozenTrial, metric: str) -> float:
        if metric in objective_names(study):
            return trial.values[objective_names(study).index(metric)]
        return trial.user_attrs.get(metric, float("nan"))

    chosen = [t for t in front if all(_OPS[op](value(t, m), bound) for m, op, bound in conditions)]
    if not chosen:
        nearest = ", ".join(f"{m} from {min(value(t, m) for t in front):.4g} to {max(value(t, m) for t in front):.4g}"
                            for m, _, _ in conditions)
        raise SpaceError(f"--pick: no trial on the front of {len(front)} meets {expression!r} (on the front: {nearest})")
    return _best(study, chosen)


def knee(study: optuna.Study) -> FrozenTrial:
    """The front trial nearest the ideal point once each objective is scaled to [0, 1] across the front."""
    front = _nonempty_front(study)
    points = _minimised([t.values for t in front], study.directions)
    span = points.max(axis=0) - points.min(axis=0)
    scaled = (points - points.min(axis=0)) / np.where(span > 0, span, 1.0)
    return front[int(np.argmin(np.linalg.norm(scaled, axis=1)))]
