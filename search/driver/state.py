"""What the study holds, all drivers together, as one driver knows it: kept current by rereading only what changed.

A reread looks at the trials' states (two small columns) from the oldest one that had not ended, reads whole only
the trials that ended since, the budget's places (one small row each), and the rung results recorded since the last
look. So it costs about the same at 3,000 trials as at 30, however many trials wait at rungs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from ..outcome import Outcome, reused
from ..pareto import ParetoFront
from ..storage import StoredTrial, StudyStore

PLACE = "cf:place:"  # cf:place:<i> -> {"trial": number, "waiting": rung or None}: the i-th place of the --trials budget
CONFIG = "cf:config:"  # cf:config:<key> -> number: the trial that trains (or settled) a config
RUNG = "cf:rung:"  # cf:rung:<rung>:<key> -> {"values": [...], "penalty": p}: a config's result at a rung
RESUME = "cf:resume:"  # cf:resume:<number> -> {"by": driver}: the one driver that queued an interrupted trial
BASELINE = "cf:baseline:"  # cf:baseline:<name> -> {"by": driver}: the one driver that queued a baseline
RUNG_LOOKBACK = 1000  # rung-result rows reread behind the last one seen


@dataclass
class RungResult:
    rung: int
    key: str
    values: list[float]
    penalty: float
    extra: dict[str, Any] = field(default_factory=dict)  # what else travels with it (the predictor's curve, features)


@dataclass
class Place:
    index: int
    trial: int  # the number of the trial that holds it
    waiting: Optional[int] = None  # the rung where it waits (successive halving), or None while it trains

    def value(self) -> dict[str, Any]:
        return {"trial": self.trial, "waiting": self.waiting}


@dataclass
class StudyState:
    """One driver's knowledge of the study: ended trials, settled configs, the budget's places, the front."""

    store: StudyStore
    ended: dict[int, Outcome] = field(default_factory=dict)  # number -> how it ended
    settled: dict[str, dict[str, Any]] = field(default_factory=dict)  # config key -> the record a repeat is told
    measured: int = 0  # trials that took a place and ended (the --trials count)
    spent: int = 0  # training tokens the measured trials spent
    places: dict[int, Place] = field(default_factory=dict)
    baselines: dict[str, int] = field(default_factory=dict)  # baseline name -> the trial that measured it
    open: list[int] = field(default_factory=list)  # numbers of the trials not ended at the last reread
    front: ParetoFront = field(init=False)
    _open_from: int = 0  # every trial numbered below this has ended and been taken into account
    _rung_row: int = 0  # the last rung-result row read

    def __post_init__(self) -> None:
        self.front = ParetoFront(self.store.directions)

    def reread(self) -> tuple[list[StoredTrial], list[RungResult]]:
        """The trials that ended since the last reread (taken into account here, returned for the driver to act
        on), and the rung results recorded since; the places as they are now."""
        states = self.store.states(self._open_from)
        ended = [number for number, state in states if state not in ("RUNNING", "WAITING") and number not in self.ended]
        trials = self.store.trials(numbers=ended) if ended else []
        for trial in trials:
            self.learn(trial)
        self.open = [number for number, state in states if state == "RUNNING" and number not in self.ended]
        waiting = [number for number, state in states if state == "WAITING"]  # queued, not asked: a later driver's
        self._open_from = min(self.open + waiting, default=states[-1][0] + 1 if states else self._open_from)
        # Row ids can become visible out of order on a server with concurrent writers: look back a little each time
        # (a result read twice is taken once).
        rows = self.store.claims(RUNG, max(0, self._rung_row - RUNG_LOOKBACK))
        results = []
        for row_id, key, value in rows:
            rung, _, config = key[len(RUNG):].partition(":")
            results.append(RungResult(int(rung), config, value["values"], value["penalty"], value.get("extra") or {}))
            self._rung_row = max(self._rung_row, row_id)
        self.reread_places()
        return trials, results

    def others_train(self, mine: set[int]) -> bool:
        """Whether a trial not in `mine` holds a place and trains: it has not ended and waits at no rung."""
        return any(place.trial not in mine and place.trial not in self.ended and place.waiting is None
                   for place in self.places.values())

    def others_open(self, mine: set[int]) -> bool:
        """Whether a trial not in `mine` has not ended (another driver's, or a dead one's until it is failed as
        stale): a search ends with nothing left running."""
        return any(number not in mine and number not in self.ended for number in self.open)

    def reread_places(self) -> None:
        """The budget's places as the study holds them now."""
        self.places = {int(key[len(PLACE):]): Place(int(key[len(PLACE):]), value["trial"], value.get("waiting"))
                       for _, key, value in self.store.claims(PLACE)}

    def learn(self, trial: StoredTrial) -> None:
        """Take an ended trial, read from the study, into account."""
        self.learn_record(trial.number, trial.user_attrs, trial.outcome, trial.values, trial.feasible)

    def learn_record(self, number: int, attrs: dict[str, Any], outcome: Outcome, values: Optional[Sequence[float]],
                     feasible: bool) -> None:
        """Take an ended trial into account (one this driver just recorded, or one read): the count, the tokens,
        the configs settled, the front."""
        if number in self.ended:
            return
        self.ended[number] = outcome
        if outcome.counts:
            self.measured += 1
            self.spent += attrs.get("tokens_spent") or 0
        key = attrs.get("config_key")
        if key is not None and outcome.settles:
            self.settled[key] = reused({k: v for k, v in attrs.items() if k != "baseline"}, number)
        if outcome.baseline is not None and outcome.settles:
            self.baselines[outcome.baseline] = number
        if outcome.front and feasible and values is not None and None not in values:
            self.front.add(values)
