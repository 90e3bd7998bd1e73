"""Suggestions: asked from the sampler, resolved to a config and screened (the slow part of asking, which touches
nothing but the study, so that a thread or a process can do it ahead of time), and the streaks that tell a search
to stop asking: a space whose suggestions only repeat settled configs is exhausted, one whose candidates are all
refused holds little that trains."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

import optuna

from ..errors import TrialFailure
from ..space import SearchSpace
from ..storage import StudyStore

MAX_REPEATS = 100  # suggestions in a row that repeat measured or running configs before a space counts as exhausted
MAX_REFUSALS = 100  # candidates in a row refused before training before a search stops and says why
REPEAT, REFUSED, NEW = "repeat", "refused", "new"  # what a drawn suggestion turns out to be


@dataclass
class Suggestion:
    """One suggestion of the sampler, resolved and screened: `refusal` says why the screen refused it, if it did;
    `attrs` are what it was enqueued with (an interrupted trial it resumes, a trial whose lost worker it retries)."""

    trial: optuna.Trial
    trial_id: int
    params: dict[str, Any]
    key: str
    refusal: Optional[TrialFailure] = None
    attrs: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)  # its cheap metrics (sizes; FLOPs when a screen needs them)

    @property
    def number(self) -> int:
        return self.trial.number


def draw(store: StudyStore, space: SearchSpace, vocab_size: int) -> Suggestion:
    """Ask the sampler for a trial (given a heartbeat at once), draw its params and screen its config on the meta
    device (config errors, cheap constraints). An enqueued trial (a resume, a retry) comes first, with its attrs."""
    from ..candidate import screen  # builds models: kept off the import path of the review commands

    from ..candidate import resolve

    trial, trial_id = store.ask()
    attrs = store.patience.call(lambda: dict(trial.user_attrs))  # set by the queue: a resume, a retry, a baseline
    baseline = next((b for b in space.baselines if b.name == attrs.get("baseline")), None)
    if baseline is not None and baseline.model is not None:  # its own layer config: only its training settings drawn
        params = store.patience.call(lambda: {name: space.params[name.split("[")[0]].suggest(trial, name)
                                              for name in baseline.params})
    else:  # drawn again after a lost connection, the params already stored come back as they were
        params = store.patience.call(lambda: space.sample(trial))
    try:
        resolved = resolve(space, params, vocab_size, baseline.model if baseline is not None else None)
        candidate = screen(space, params, vocab_size, quick=True, resolved=resolved)
    except TrialFailure as failure:
        return Suggestion(trial, trial_id, params, failure.metrics.get("config_key", ""), failure, attrs)
    return Suggestion(trial, trial_id, params, candidate.key, None, attrs, candidate.metrics)


def worker_died(store: StudyStore, suggestion: Suggestion) -> dict[str, Any]:
    """The record of a trial whose process died (killed, crashed, its node lost): its config is owed again once,
    queued with the same params; if its retry dies too, it fails for good."""
    from .. import outcome

    retry_of = suggestion.attrs.get("retry_of")
    if retry_of is not None:
        return outcome.failed("worker_died_twice",
                              f"its worker died, as the worker of trial #{retry_of} with the same config did")
    kept = {k: v for k, v in suggestion.attrs.items() if k in ("baseline", "rungs", "promoted", "resumes")}
    store.enqueue(suggestion.params, {**kept, "retry_of": suggestion.number})
    return outcome.failed(outcome.WORKER_DIED, "its worker process died (killed, crashed or its node lost); the config "
                                               "is run again")


@dataclass
class Streak:
    """Suggestions in a row that cost nothing: repeats (the space may be exhausted) and refusals by reason (the
    space may hold little that trains), each reset by what ends it."""

    repeats: int = 0
    refusals: Counter = field(default_factory=Counter)

    def count(self, outcome: str, suggestion: Suggestion) -> Optional[str]:
        """Count what a suggestion turned out to be; returns why the search should stop, if it should."""
        if outcome == REPEAT:
            self.repeats += 1
        elif outcome == REFUSED:
            self.refusals[suggestion.refusal.kind] += 1
        else:
            self.repeats = 0
        if self.repeats >= MAX_REPEATS:
            return "exhausted"
        return "refused" if self.too_many_refusals() else None

    def measured(self) -> None:
        """A trial measured its config: the refusals before it no longer say the space trains nothing."""
        self.refusals.clear()

    def too_many_refusals(self) -> bool:
        return sum(self.refusals.values()) >= MAX_REFUSALS
