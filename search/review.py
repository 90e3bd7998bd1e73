"""What a review of a search shows, computed once from the study and drawn by several renderers (the console tables,
the PNG plots, the HTML report, the export): the objectives with their units and directions, every trial with its
state, values, params and reason, which are on the front, the hypervolume history, the rungs and the run's
settings (tables.py draws the trials and the front as tables)."""

from __future__ import annotations

import dataclasses
import datetime
import functools
import platform
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Optional

import numpy as np

from . import front as fronts
from .metrics import METRICS, NOTE_METRICS, SD_SUFFIX, TARGET, label
from .outcome import reason
from .pareto import ParetoFront, hypervolume, minimised
from .progress import plural
from .rungs import Rung, rungs_of
from .storage import StoredTrial, StudyView, read_study

PACKAGES = ("configaformer", "torch", "optuna", "ray", "fvcore", "plotly", "scikit-learn")
# User attributes that hold structures rather than scalars (kept as JSON-able values, left out of tables).
STRUCTURED_ATTRS = ("model_config", "train", "timings", "constraints", "rungs", "seed_results", "promoted", "curve", "at")
TRIAL_NOTES = ("reason", "message", "violations", "reused_from", *NOTE_METRICS)


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
    reason: str  # why it failed, stopped or was free, '' otherwise
    measured: bool  # it took a place of the budget (trained on its own)
    feasible: bool
    on_front: bool
    noise: str = ""  # for a front member: its lead over a trial it dominates is within the seed noise
    baseline: str = ""  # the baseline it measures, if it is one

    def sd(self, objective: str) -> float:
        """The seed-to-seed sd recorded beside an objective's mean (0 where seeds were not confirmed)."""
        return float(self.metrics.get(objective + SD_SUFFIX) or 0.0)


@dataclass
class Review:
    study: StudyView
    objectives: list[Objective]
    trials: list[TrialRow]
    reference: Optional[list[float]]
    settings: dict[str, Any] = field(default_factory=dict)
    rungs: list[Rung] = field(default_factory=list)  # empty unless trials were measured at several budgets

    @property
    def name(self) -> str:
        return self.study.name

    @property
    def names(self) -> list[str]:
        return [o.name for o in self.objectives]

    @property
    def directions(self) -> list[str]:
        return ["minimize" if o.minimise else "maximize" for o in self.objectives]

    @property
    def complete(self) -> list[TrialRow]:
        return [t for t in self.trials if t.state == "COMPLETE"]

    @property
    def front(self) -> list[TrialRow]:
        return [t for t in self.trials if t.on_front]

    @property
    def measured(self) -> list[TrialRow]:
        return [t for t in self.trials if t.measured]

    def stored(self, number: int) -> StoredTrial:
        return self.study.trial(number)

    @functools.cached_property
    def hypervolume(self) -> list[tuple[int, float]]:
        """(trial number, hypervolume of the feasible complete trials up to it), for each complete trial; computed
        again only where a trial joined the front."""
        history: list[tuple[int, float]] = []
        front = ParetoFront(self.directions)
        reference = minimised([self.reference], self.directions)[0] if self.reference else None
        volume = 0.0
        for row in self.complete:
            if row.feasible and front.add(row.values):
                volume = hypervolume(np.array(front.points), reference)
            history.append((row.number, volume))
        return history

    def summary(self, out_dir: Any) -> list[str]:
        """What the search measured (complete, stopped at a rung, failed), what cost no budget (refused, owed
        again, repeats that reused a result), and the front's size, in sentences."""
        trials = [self.stored(t.number) for t in self.trials if t.state not in ("RUNNING", "WAITING")]
        own = [t for t in trials if t.outcome.reused_from is None]
        counted = [t for t in own if t.outcome.counts]
        tally = lambda kinds: ", ".join(f"{k} {n}" for k, n in Counter(kinds).most_common())  # noqa: E731
        failed = [t.outcome.kind.name for t in counted if t.state == "FAIL"]
        free = [t.outcome.kind.name for t in own if not t.outcome.counts]
        stopped = Counter(t.user_attrs.get("rung") for t in counted if t.state == "PRUNED")
        complete = sum(t.state == "COMPLETE" for t in counted)
        reused = len(trials) - len(own)
        lines = [f"{plural(len(counted), 'config')} measured: {complete} complete"
                 + (f", {sum(stopped.values())} stopped at a rung ({', '.join(f'rung {r}: {stopped[r]}' for r in sorted(stopped))})"
                    if stopped else "")
                 + (f", {len(failed)} failed ({tally(failed)})" if failed else "")
                 + (f"; {len(free)} refused before training or owed again ({tally(free)})" if free else "")
                 + (f"; {plural(reused, 'repeat')} of a settled config reused its result" if reused else "")]
        lines += self.ladder_lines() + self.screen_lines() + self.baseline_lines() + self.retrain_lines()
        if self.front:
            lines.append(f"Pareto front ({plural(len(self.front), 'trial')}):")
        elif complete:
            lines.append(f"Pareto front: empty, every complete trial breaks a constraint (see `configaformer-search "
                         f"trials {out_dir}`)")
        return lines

    def screen_lines(self) -> list[str]:
        """With a timing constraint: the trainings the timing screen saved, and how well it predicts."""
        screen = self.study.user_attrs.get("timing_screen")
        if not screen:
            return []
        accuracy = "; ".join(f"{name} predicted within 10% for {a['within_10pct']:.0%} of {a['configs']} configs left out "
                             f"one at a time" for name, a in screen["accuracy"].items())
        return [f"timing screen: {plural(screen['refused'], 'config')} refused before training as far over a timing "
                f"constraint, from the timings of {plural(screen['measured'], 'measured config')}"
                + (f"; {accuracy}" if accuracy else "")]

    @functools.cached_property
    def retrained(self) -> dict[int, dict[int, Any]]:
        """What `retrain` measured: trial number -> tokens -> its seeds' results (retrain.Retrained)."""
        from .retrain import retrained

        return retrained(self.study.user_attrs)

    def retrain_columns(self) -> dict[int, dict[str, float]]:
        """Each retrained trial's columns beside the search's: val_loss@16x (mean over seeds) and its sd."""
        brief = self.study.user_attrs.get("train_tokens") or 1
        columns: dict[int, dict[str, float]] = {}
        for number, by_tokens in self.retrained.items():
            for tokens, result in by_tokens.items():
                name = f"val_loss@{tokens / brief:g}x"
                columns.setdefault(number, {}).update({name: result.mean, name + SD_SUFFIX: result.sd})
        return columns

    def retrain_lines(self) -> list[str]:
        """For each retrained budget: how the search's ranking agrees with it, whether the pick held, whether the
        front held, and, at the target, how often the predicted intervals held what was measured."""
        from .ranking import spearman
        from .retrain import front_held, intervals_held

        lines = []
        brief = self.study.user_attrs.get("train_tokens") or 1
        budgets = sorted({tokens for by_tokens in self.retrained.values() for tokens in by_tokens})
        searched = {t.number: t for t in self.trials if t.values is not None and not t.baseline}
        loss = next((i for i, name in enumerate(self.names) if name in (TARGET, "val_loss")), None)
        if loss is None:  # a retraining measures val_loss: nothing of the search's to compare it with
            return []
        for tokens in budgets:
            results = {n: r[tokens].mean for n, r in self.retrained.items() if tokens in r and n in searched}
            seeds = max(len(r[tokens].values) for n, r in self.retrained.items() if n in results) if results else 0
            if len(results) < 2:
                continue
            numbers = sorted(results, key=results.get)
            rho = spearman([searched[n].values[loss] for n in numbers], [results[n] for n in numbers])
            line = (f"retrained at {tokens:,} tokens ({tokens / brief:g}x) on {plural(seeds, 'seed')}: "
                    f"{plural(len(results), 'config')}; the search's {self.names[loss]} ranks them at Spearman {rho:.2f} there")
            if self.front:
                pick = self.pick_default().number
                if pick in results:
                    place = numbers.index(pick) + 1
                    line += f"; the pick #{pick} is {_ordinal(place)} of {len(results)} there" + (" (it held)" if place == 1 else "")
            rows = [searched[n] for n in numbers]
            lines.append(line + front_held(rows, results, loss, self.directions)
                         + intervals_held(rows, results, loss, tokens, self.study.user_attrs.get("predictor") or {}))
        return lines

    def ladder_lines(self) -> list[str]:
        """The tokens spent at each rung, and, with a target, what the predictor of the loss there is worth."""
        lines = []
        if self.rungs:
            spent = sum(t.metrics.get("tokens_spent") or 0 for t in self.measured)
            lines.append("rungs: " + ", ".join(f"{r.tokens:,} tokens ({plural(r.reached, 'config')}"
                                               + ("" if r.spent is None else f", {r.spent:,} tokens spent") + ")"
                                               for r in self.rungs)
                         + f"; {spent:,} training tokens in all")
        predictor = self.study.user_attrs.get("predictor")
        if not predictor or not predictor.get("fitted"):
            return lines
        target, longest = predictor["target_tokens"], predictor["longest_tokens"]
        measured = sum(bool(t.metrics.get("target_measured")) for t in self.measured)
        lines.append(f"{TARGET}: the loss at {target:,} tokens, measured for {measured} and predicted for "
                     f"{len(self.complete) - measured} configs"
                     + (f"; predicted {target / longest:.0f}x past the longest measurement ({longest:,} tokens)"
                        if target > longest else ""))
        if predictor.get("checked_configs", 0) >= 3 and predictor.get("spearman") == predictor.get("spearman"):
            lines.append(f"the predictor, checked on {predictor['checked_configs']} configs left out one at a time at "
                         f"{predictor['checked_at_tokens']:,} tokens: Spearman {predictor['spearman']:.2f}; its 90% intervals "
                         f"held {predictor['coverage']:.0%} of them (widened {predictor['interval_scale']:.1f}x"
                         + (f", plus an sd of {predictor['law_sd']:.3f} for the law's own extrapolation"
                            if predictor.get("law_sd") else "") + ")")
        else:
            lines.append(f"the predictor is unchecked: {predictor.get('checked_configs', 0)} configs were measured past the "
                         f"brief budget, at least 3 at one budget are needed to check it, so its predictions carry no interval")
        if predictor.get("law", {}).get("budgets_measured", 2) < 2:
            lines.append(f"its scaling law saw a single budget: how the loss falls with more tokens is assumed (exponent "
                         f"{predictor['law']['budget_exponent']:.2f}), not measured")
        return lines

    @property
    def baselines(self) -> list[TrialRow]:
        """The baselines measured, by name."""
        return sorted((t for t in self.trials if t.baseline and t.values is not None), key=lambda t: t.baseline)

    def beaten_by(self, baseline: TrialRow) -> list[TrialRow]:
        """The front members that beat a baseline: at least as good on every objective, better on one."""
        base = minimised([baseline.values], self.directions)[0]
        return [t for t in self.front if (lambda p: (p <= base).all() and (p < base).any())(minimised([t.values], self.directions)[0])]

    def comparison(self, baseline: TrialRow, member: TrialRow) -> str:
        """How a front member compares with a baseline, objective by objective: 'val_loss -1.8%, decode_ms 0.62x'."""
        parts = []
        for objective, mine, theirs in zip(self.objectives, member.values, baseline.values):
            if objective.unit.startswith(("nats", "bits")):  # a loss: the difference, in percent
                parts.append(f"{objective.name} {(mine - theirs) / abs(theirs):+.1%}")
            else:
                parts.append(f"{objective.name} {mine / theirs:.2f}x" if theirs else f"{objective.name} {mine:.3g}")
        return ", ".join(parts)

    def baseline_lines(self) -> list[str]:
        """For each baseline: which front members beat it and by how much, or that none does."""
        lines = []
        for baseline in self.baselines:
            beaten = sorted(self.beaten_by(baseline), key=lambda t: t.values[0])
            lines.append(f"baseline {baseline.baseline} (#{baseline.number}): " + (
                "; ".join(f"#{t.number}: {self.comparison(baseline, t)} of {baseline.baseline}" for t in beaten[:5])
                + (f"; and {len(beaten) - 5} more" if len(beaten) > 5 else "")
                if beaten else "no front member beats it on every objective"))
        return lines

    def pick_retrained(self) -> StoredTrial:
        """The retrained front member with the lowest retrained val_loss (at the longest budget retrained)."""
        front = {t.number for t in self.front}
        results = [(tokens, r.mean, n) for n, by_tokens in self.retrained.items() if n in front for tokens, r in by_tokens.items()]
        if not results:
            raise ValueError("no front member was retrained: run `configaformer-search retrain` first")
        longest = max(tokens for tokens, _, _ in results)
        return self.stored(min((mean, n) for tokens, mean, n in results if tokens == longest)[1])

    def pick_beating(self, name: str) -> StoredTrial:
        """The lowest-loss front member at least as good as baseline `name` on every objective."""
        found = [b for b in self.baselines if b.baseline == name]
        if not found:
            known = ", ".join(b.baseline for b in self.baselines) or "none measured"
            raise ValueError(f"--beats {name}: no measured baseline of that name (baselines: {known})")
        base = minimised([found[0].values], self.directions)[0]
        chosen = [self.stored(t.number) for t in self.front if (minimised([t.values], self.directions)[0] <= base).all()]
        if not chosen:
            raise ValueError(f"--beats {name}: no front member is at least as good as baseline {name} on every objective")
        return fronts.best(chosen, self.names, self.directions)

    # -- choosing a winner ---------------------------------------------------------------------------------------

    def _front_stored(self) -> list[StoredTrial]:
        front = [self.stored(t.number) for t in self.front]
        if not front:
            raise ValueError("the study has no complete, feasible trial yet: nothing to export")
        return front

    def pick_default(self) -> StoredTrial:
        """The front trial with the lowest val_loss (or the best first objective)."""
        return fronts.best(self._front_stored(), self.names, self.directions)

    def pick(self, expression: str) -> StoredTrial:
        return fronts.pick(self._front_stored(), expression, self.names, self.directions)

    def knee(self) -> StoredTrial:
        return fronts.knee(self._front_stored(), self.directions)


def read_review(url: str) -> Review:
    """The review of the study at `url`, read once."""
    return build_review(read_study(url))


def with_latest_predictions(study: StudyView) -> StudyView:
    """A search with a target keeps every trial's loss there as it last stood (the predictor learns until the search
    ends): those values replace the ones each trial was told when it ended (a baseline's, told as PRUNED, are in its
    record)."""
    latest = study.user_attrs.get("predictions") or {}
    if TARGET not in study.metric_names or not latest:
        return study
    index = list(study.metric_names).index(TARGET)
    trials = []
    for trial in study.trials:
        fields = latest.get(str(trial.number))
        if fields:
            values = None if trial.values is None else (*trial.values[:index], float(fields[TARGET]), *trial.values[index + 1:])
            trial = dataclasses.replace(trial, values=values, user_attrs={**trial.user_attrs, **fields})
        trials.append(trial)
    return dataclasses.replace(study, trials=trials)


def build_review(study: StudyView) -> Review:
    """Everything a review shows, from a study read once."""
    study = with_latest_predictions(study)
    directions, names = list(study.directions), list(study.metric_names) or [f"objective_{i}" for i in range(len(study.directions))]
    objectives = [Objective(n, d.startswith("min"), METRICS[n].unit if n in METRICS else "") for n, d in zip(names, directions)]
    trials = study.trials
    front = fronts.front_trials(trials, directions)
    members = {t.number for t in front}
    noisy = fronts.leads_within_noise(trials, front, names, directions)
    rows = [TrialRow(number=t.number, state=t.state, values=t.values or _baseline_values(t, names), params=dict(t.params),
                     metrics={k: v for k, v in t.user_attrs.items() if k not in STRUCTURED_ATTRS and not isinstance(v, (dict, list))},
                     reason=reason(t.user_attrs) if t.finished else "", measured=t.finished and t.outcome.counts,
                     feasible=t.feasible, on_front=t.number in members, noise=noisy.get(t.number, ""),
                     baseline=t.user_attrs.get("baseline", "") if t.finished and t.outcome.kind.front else "")
            for t in trials]
    complete = any(r.state == "COMPLETE" for r in rows)
    reference = fronts.reference_point(trials, directions) if complete else None
    return Review(study, objectives, rows, reference, settings=_settings(study), rungs=rungs_of(trials))


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def _baseline_values(trial: StoredTrial, names: list[str]) -> Optional[tuple[float, ...]]:
    """A measured baseline's objective values (it is told as PRUNED, so that Optuna's front holds searched configs
    alone: its values are in its record)."""
    if not trial.finished or trial.outcome.baseline is None or not trial.outcome.kind.front:
        return None
    values = [trial.user_attrs.get(name) for name in names]
    return tuple(float(v) for v in values) if all(isinstance(v, (int, float)) for v in values) else None


def _settings(study: StudyView) -> dict[str, Any]:
    """The run's settings as the study recorded them, the machine, and the package versions."""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return {**{k: v for k, v in study.user_attrs.items() if not isinstance(v, (dict, list))},
            "storage": study.url,
            "machine": f"{platform.node()} ({platform.machine()}, {platform.system()} {platform.release()}), "
                       f"Python {platform.python_version()}",
            "packages": ", ".join(f"{k} {v}" for k, v in versions.items()),
            "written": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
