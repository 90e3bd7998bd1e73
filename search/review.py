"""What a review of a search shows, computed once from the study and drawn by several renderers (the PNG plots, the
HTML report): the objectives with their units and directions, every trial with its state, values, params and
reason, which are on the front, the hypervolume history, and the run's settings."""

from __future__ import annotations

import datetime
import platform
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Optional

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from .front import front_trials, hypervolume_of, leads_within_noise, reference_point
from .metrics import METRICS, SD_SUFFIX, label
from .records import study_trials
from .study import STRUCTURED_ATTRS, counts, objective_names

PACKAGES = ("configaformer", "torch", "optuna", "ray", "fvcore", "plotly")


@dataclass(frozen=True)
class Objective:
    name: str
    minimise: bool
    unit: str

    @property
    def label(self) -> str:
        return label(self.name)

    @property
    def better(self) -> str:
        return "lower is better" if self.minimise else "higher is better"


@dataclass(frozen=True)
class TrialRow:
    number: int
    state: str  # COMPLETE, FAIL, PRUNED (stopped at a rung, or a repeat that reused a measurement), RUNNING
    values: Optional[tuple[float, ...]]
    params: dict[str, Any]
    metrics: dict[str, Any]  # every scalar it recorded
    reason: str  # why it failed or was free, '' otherwise
    measured: bool  # it used up budget (trained on its own)
    feasible: bool
    on_front: bool
    noise: str = ""  # for a front member: its lead over a trial it dominates is within the seed noise

    def sd(self, objective: str) -> float:
        """The seed-to-seed sd recorded beside an objective's mean (0 where seeds were not confirmed)."""
        return float(self.metrics.get(objective + SD_SUFFIX) or 0.0)


@dataclass(frozen=True)
class Rung:
    """What happened at one rung of a multi-fidelity search."""

    rung: int
    tokens: int  # the tokens behind its results (the most any trial trained to it)
    reached: int  # configs measured there
    stopped: int  # configs stopped there by the scheduler


@dataclass
class Review:
    study_name: str
    objectives: list[Objective]
    trials: list[TrialRow]
    reference: Optional[list[float]]
    hypervolume: list[tuple[int, float]]  # (trial number, hypervolume of the feasible complete trials so far)
    settings: dict[str, Any] = field(default_factory=dict)
    rungs: list[Rung] = field(default_factory=list)  # empty unless trials were measured at several budgets

    @property
    def complete(self) -> list[TrialRow]:
        return [t for t in self.trials if t.state == "COMPLETE"]

    @property
    def front(self) -> list[TrialRow]:
        return [t for t in self.trials if t.on_front]

    @property
    def measured(self) -> list[TrialRow]:
        return [t for t in self.trials if t.measured]


def _reason(trial: FrozenTrial) -> str:
    attrs = trial.user_attrs
    if "reused_from" in attrs:
        return f"same config as #{attrs['reused_from']}"
    if attrs.get("status") == "stopped":
        return f"stopped at rung {attrs.get('rung')}"
    if trial.state == TrialState.FAIL:
        return str(attrs.get("reason", "interrupted"))
    return ""


def build_review(study: optuna.Study) -> Review:
    """Gather everything a review shows from the study, reading each trial once."""
    directions = study.directions
    names = objective_names(study) or [f"objective_{i}" for i in range(len(directions))]
    objectives = [Objective(n, d == optuna.study.StudyDirection.MINIMIZE, METRICS[n].unit if n in METRICS else "")
                  for n, d in zip(names, directions)]
    trials = study_trials(study)
    complete_trials = [t for t in trials if t.state == TrialState.COMPLETE]
    front_members = front_trials(study, complete_trials)
    front = {t.number for t in front_members}
    noisy = leads_within_noise(study, complete_trials, front_members)
    rows = []
    for trial in trials:
        constraints = trial.user_attrs.get("constraints") or {}
        rows.append(TrialRow(
            number=trial.number, state=trial.state.name, values=tuple(trial.values) if trial.values else None,
            params=dict(trial.params),
            metrics={k: v for k, v in trial.user_attrs.items() if k not in STRUCTURED_ATTRS and not isinstance(v, (dict, list))},
            reason=_reason(trial), measured=counts(trial.user_attrs),
            feasible=all(v <= 0 for v in constraints.values()), on_front=trial.number in front,
            noise=noisy.get(trial.number, "")))
    complete = [r for r in rows if r.state == "COMPLETE"]
    reference = reference_point(study) if complete else None
    history, points = [], []
    for row in complete:
        if row.feasible:
            points.append(row.values)
        history.append((row.number, hypervolume_of(points, reference, directions) if points else 0.0))
    return Review(study.study_name, objectives, rows, reference, history, settings=_settings(study),
                  rungs=_rungs(trials))


def _rungs(trials: list[FrozenTrial]) -> list[Rung]:
    """Configs measured and stopped at each rung, from the rung results the trials recorded."""
    reached: dict[int, int] = {}
    stopped: dict[int, int] = {}
    tokens: dict[int, int] = {}
    for trial in trials:
        attrs = trial.user_attrs
        if "reused_from" in attrs or not counts(attrs):
            continue
        for rung, entry in (attrs.get("rungs") or {}).items():
            reached[int(rung)] = reached.get(int(rung), 0) + 1
            tokens[int(rung)] = max(tokens.get(int(rung), 0), entry["tokens_trained"])
        if attrs.get("status") == "stopped":
            stopped[attrs["rung"]] = stopped.get(attrs["rung"], 0) + 1
    return [Rung(r, tokens[r], reached[r], stopped.get(r, 0)) for r in sorted(reached)] if len(reached) > 1 else []


def _settings(study: optuna.Study) -> dict[str, Any]:
    """The run's settings as the study recorded them, the machine, and the package versions."""
    attrs = dict(study.user_attrs)
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return {**{k: v for k, v in attrs.items() if not isinstance(v, (dict, list))},
            "machine": f"{platform.node()} ({platform.machine()}, {platform.system()} {platform.release()}), "
                       f"Python {platform.python_version()}",
            "packages": ", ".join(f"{k} {v}" for k, v in versions.items()),
            "written": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def staircase(points: list[tuple[float, float]], minimise: tuple[bool, bool]) -> tuple[list[float], list[float]]:
    """The 2-D Pareto front of `points` as a step line (x and y lists), from the best x to the best y."""
    if not points:
        return [], []
    signs = np.array([1.0 if m else -1.0 for m in minimise])
    scaled = np.asarray(points, dtype=float) * signs
    order = np.lexsort((scaled[:, 1], scaled[:, 0]))
    kept, best_y = [], np.inf
    for i in order:
        if scaled[i, 1] < best_y:
            kept.append(i)
            best_y = scaled[i, 1]
    xs, ys = [], []
    for k, i in enumerate(kept):
        x, y = points[i]
        if k:
            xs.append(x)
            ys.append(ys[-1])
        xs.append(x)
        ys.append(y)
    return xs, ys

