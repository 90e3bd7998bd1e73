"""What is read back from a study: each trial as a plain record, and a study as the review sees it. Plain data (no
Optuna objects), so that the review commands and the driver's rereads need neither Optuna's ORM nor its import."""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from ..outcome import Outcome, outcome_of

FINISHED = ("COMPLETE", "PRUNED", "FAIL")
CONSTRAINT_PREFIX = "constraints:"  # how Optuna keeps each constraint a trial set (Trial.set_constraint) in its system attrs


@dataclass(frozen=True)
class StoredTrial:
    """One trial as the study holds it: its number (what users see), its storage id (what writes address), its
    Optuna state name, the objective values it was told, its params (as drawn: choices, ints, floats), and its
    attributes."""

    number: int
    trial_id: int
    state: str
    values: Optional[tuple[float, ...]]
    params: dict[str, Any]
    user_attrs: dict[str, Any]
    system_attrs: dict[str, Any] = field(default_factory=dict)
    distributions: dict[str, str] = field(default_factory=dict)  # param name -> Optuna's JSON of its distribution
    datetime_start: Optional[datetime.datetime] = None
    datetime_complete: Optional[datetime.datetime] = None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def outcome(self) -> Outcome:
        """How it ended (meaningful once finished)."""
        return outcome_of(self.user_attrs)

    @property
    def constraints(self) -> dict[str, float]:
        """Its constraint values, <= 0 when met."""
        return {k[len(CONSTRAINT_PREFIX):]: float(v) for k, v in self.system_attrs.items() if k.startswith(CONSTRAINT_PREFIX)}

    @property
    def feasible(self) -> bool:
        return all(value <= 0 for value in self.constraints.values())

    @property
    def duration(self) -> Optional[datetime.timedelta]:
        if self.datetime_start is None or self.datetime_complete is None:
            return None
        return self.datetime_complete - self.datetime_start


@dataclass(frozen=True)
class StudyView:
    """A study read once for a review: its name, objectives, attributes and every trial (by number)."""

    name: str
    directions: tuple[str, ...]  # 'minimize' or 'maximize', one per objective
    metric_names: tuple[str, ...]
    user_attrs: dict[str, Any]
    trials: list[StoredTrial]
    url: str = ""  # where it was read from, without any password

    def in_state(self, *states: str) -> list[StoredTrial]:
        return [t for t in self.trials if t.state in states]

    @property
    def complete(self) -> list[StoredTrial]:
        return self.in_state("COMPLETE")

    def trial(self, number: int) -> StoredTrial:
        for trial in self.trials:
            if trial.number == number:
                return trial
        raise KeyError(number)


def external_value(distribution_json: str, internal: float) -> Any:
    """A param as drawn, from the number Optuna stores and its distribution's JSON: a categorical's choice, an int,
    or a float (what optuna.distributions.json_to_distribution(...).to_external_repr gives)."""
    distribution = _parsed(distribution_json)
    name, attributes = distribution["name"], distribution["attributes"]
    if name == "CategoricalDistribution":
        return attributes["choices"][int(internal)]
    if "Int" in name:
        return int(internal)
    return float(internal)


_PARSED: dict[str, Mapping[str, Any]] = {}


def _parsed(text: str) -> Mapping[str, Any]:
    if text not in _PARSED:
        _PARSED[text] = json.loads(text)
    return _PARSED[text]
