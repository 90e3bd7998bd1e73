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
from .metrics import KEY_COLUMNS
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


def front_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Pareto-optimal trials among the complete, feasible ones, by number: what Optuna's best_trials gives (twins
    are PRUNED, so they are not among them), without its deep copy of every trial."""
    feasible_trials = _get_feasible_trials(study_trials(study, (TrialState.COMPLETE,)))
    return sorted(_get_pareto_front_trials_by_trials(feasible_trials, study.directions), key=lambda t: t.number)


def front_frame(study: optuna.Study) -> pd.DataFrame:
    """The front as a table: objectives, key measurements, params."""
    rows = []
    for trial in front_trials(study):
        row = {"number": trial.number, **dict(zip(objective_names(study), trial.values))}
        row.update({k: trial.user_attrs[k] for k in KEY_COLUMNS if k in trial.user_attrs})
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
