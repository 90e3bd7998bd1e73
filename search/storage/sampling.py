"""What a sampler reads of a shared study, at a cost that does not grow with the trials waiting at rungs.

Optuna puts a cache in front of an RDB storage that keeps finished trials but rereads every unfinished one, whole
(its attributes too), at each read; and TPE with constant liar (Optuna's default) reads the study once per
parameter it samples, to see the running trials. Under successive halving most trials wait at a rung, still
running, so each suggestion paid for all of them many times over. Here the sampler reads a picture of the study
that the driver brings up to date once per ask (SamplerStorage.refresh): trials finished since the last ask are read
once, running ones until their params are drawn, and no trial's user attributes (the search's records, which no
sampler reads). Everything else, writes included, goes to the database as it is.
"""

from __future__ import annotations

import copy
import threading
import time
from typing import Any, Callable, Container, Optional

import optuna
from optuna.distributions import json_to_distribution
from optuna.trial import FrozenTrial, TrialState

from .records import FINISHED, StoredTrial

DRAW_S = 10.0  # a running trial's params are read again until this long after it was first seen: its draw is over


class DirectStorage(optuna.storages.BaseStorage):
    """An RDB storage without the cache Optuna puts in front of it: each call goes to the database, and asks for just
    what it names."""

    def __init__(self, backend: optuna.storages.RDBStorage) -> None:
        self.backend = backend

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)


def _delegate(name: str) -> Callable[..., Any]:
    def call(self: DirectStorage, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.backend, name)(*args, **kwargs)

    call.__name__ = name
    return call


for _name in optuna.storages.BaseStorage.__abstractmethods__:
    setattr(DirectStorage, _name, _delegate(_name))
DirectStorage.__abstractmethods__ = frozenset()


class SamplerStorage(DirectStorage):
    """The storage of one study as its sampler reads it: `get_all_trials` answers from the picture `refresh` last
    made (every trial, by number, without user attributes); the queue of waiting trials and all else are read and
    written in the database."""

    def __init__(self, backend: optuna.storages.RDBStorage, study_id: int,
                 states: Callable[[int], list[tuple[int, str]]],
                 read: Callable[[list[int]], list[StoredTrial]]) -> None:
        super().__init__(backend)
        self.study_id = study_id
        self._states, self._read = states, read  # (number, state) of the trials from a number on; trials by number
        self._trials: dict[int, FrozenTrial] = {}
        self._listed: list[FrozenTrial] = []
        self._seen: dict[int, float] = {}  # unfinished trial -> when it was first read
        self._first = 0  # every trial numbered below this had finished when it was read
        self._lock = threading.Lock()  # the driver's threads asking ahead share one picture

    def refresh(self) -> None:
        """Read what changed since the last refresh: new trials, trials that finished, and the params of running
        trials still being drawn (and of waiting ones, which are yet to run)."""
        with self._lock:
            now = time.monotonic()
            states = self._states(self._first)
            changed = [number for number, state in states if self._changed(number, state, now)]
            for trial in self._read(changed) if changed else []:
                self._trials[trial.number] = _frozen(trial)
                if trial.finished:
                    self._seen.pop(trial.number, None)
                else:
                    self._seen.setdefault(trial.number, now)
            if changed:
                self._listed = [self._trials[number] for number in sorted(self._trials)]
            open_numbers = [number for number, state in states if state not in FINISHED]
            self._first = min(open_numbers, default=states[-1][0] + 1 if states else self._first)

    def _changed(self, number: int, state: str, now: float) -> bool:
        known = self._trials.get(number)
        if known is None or known.state.name != state:
            return True
        return state == "WAITING" or state == "RUNNING" and now - self._seen.get(number, now) < DRAW_S

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Optional[Container[TrialState]] = None) -> list[FrozenTrial]:
        if study_id != self.study_id or states is not None and list(states) == [TrialState.WAITING]:
            return self.backend.get_all_trials(study_id, deepcopy=deepcopy, states=states)  # the queue: as it is now
        with self._lock:
            trials = self._listed
        if states is not None:
            trials = [trial for trial in trials if trial.state in states]
        return copy.deepcopy(trials) if deepcopy else trials


def _frozen(trial: StoredTrial) -> FrozenTrial:
    """A stored trial as Optuna's samplers read it (no user attributes: they are the search's records)."""
    values = list(trial.values) if trial.values else None
    return FrozenTrial(number=trial.number, state=TrialState[trial.state], value=None, values=values,
                       datetime_start=trial.datetime_start, datetime_complete=trial.datetime_complete,
                       params=trial.params, user_attrs={}, system_attrs=trial.system_attrs, intermediate_values={},
                       distributions={name: json_to_distribution(text) for name, text in trial.distributions.items()},
                       trial_id=trial.trial_id)
