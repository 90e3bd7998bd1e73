"""The driver's rung scheduler: successive halving for the trials one driver measures. For each result a trial reports
at a rung it answers continue or stop, Syne Tune style, apart from the searcher that finds new configs: the result is
recorded with the trial and in the rung table (promotions.py), and taught to the target model. A trial told to stop
waits at its rung with its state kept, and `resume` hands back the waiting trial that now ranks well enough to go on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from ..metrics import TARGET
from ..progress import Progress
from ..space import SearchSpace
from ..storage import StoredTrial, StudyStore
from .promotions import Promotions, rung_entry
from .state import RungResult
from .suggestions import Suggestion
from .targets import TargetModel


@dataclass
class Running:
    """A trial this driver measures: in training in a slot, or waiting at a rung."""

    suggestion: Suggestion
    spending: int  # the least training tokens it will have spent when it next stops
    rung: Optional[int] = None  # where it waits, once stopped at a rung
    record: dict[str, Any] = field(default_factory=dict)  # the rung's record, told if it never goes on


class RungScheduler:
    """The rung table (`promotions`), the target model (`targets`, with a target) and the trials waiting at a rung
    (`paused`: config key -> its trial)."""

    def __init__(self, space: SearchSpace, store: StudyStore, progress: Progress) -> None:
        self.store, self.progress = store, progress
        self.budgets, self.objectives = space.rungs(), list(space.objectives)
        self.last_rung = len(self.budgets) - 1
        self.promotions = Promotions(list(space.objectives.values()), space.search["reduction_factor"], self.last_rung, store)
        self.targets = TargetModel(space, self.promotions.invalidate) if space.target else None
        if self.targets is not None and TARGET in self.objectives:  # climbs by the optimistic end of the target loss
            index = self.objectives.index(TARGET)
            self.promotions.adjust = lambda key, values: [*values[:index], self.targets.predict(key).optimistic(),
                                                          *values[index + 1:]]
        self.paused: dict[str, Running] = {}

    def learn(self, results: list[RungResult], ended: Sequence[StoredTrial] = ()) -> None:
        """Rung results read from the study (other drivers', a resumed study's), for the table and the target model;
        and, for the target model, the baselines among the trials read as ended (measured off the rung table, their
        curves are in their records)."""
        self.promotions.learn(results)
        if self.targets is not None:
            for result in results:
                self.targets.learn(result.key, result.extra)
            for trial in ended:
                record = trial.user_attrs
                if trial.outcome.baseline is not None and isinstance(record.get("val_loss"), (int, float)) \
                        and record.get("tokens_trained"):
                    self.targets.learn(record["config_key"], self.targets.extra(trial.params, record))
            self.targets.refit()

    def reached(self, running: Running, record: dict[str, Any], draining: Callable[[], bool]) -> bool:
        """A measured result at a rung: recorded, and whether the trial goes on (always at the full budget, for a
        baseline, or for a result without its objectives). `draining`: whether no new config will start."""
        entry = rung_entry(record, self.objectives)
        if entry is None:
            return True
        rung, suggestion = int(record["rung"]), running.suggestion
        if suggestion.attrs.get("baseline") is not None:  # measured at the full budget, ranked against no one
            if self.targets is not None:  # its curve, for its own loss at the target
                self.targets.learn(suggestion.key, self.targets.extra(suggestion.params, record))
            return True
        rungs = dict(suggestion.attrs.get("rungs") or {})  # a resumed config's earlier rungs among them
        if str(rung) not in rungs:
            rungs[str(rung)] = {"tokens_trained": record["tokens_trained"], "tokens_spent": record.get("tokens_spent"),
                                "values": entry[0], "penalty": entry[1]}
            suggestion.attrs["rungs"] = rungs
            extra = self.targets.extra(suggestion.params, record) if self.targets is not None else None
            self.promotions.record(rung, suggestion.key, *entry, extra)
            if self.targets is not None:
                self.targets.learn(suggestion.key, extra)
                self.targets.refit()
        if rung >= self.last_rung:
            self.store.write(suggestion.trial_id, {"rungs": rungs})
            return True
        goes_on = self.promotions.decide(rung, suggestion.key, draining())
        self.store.write(suggestion.trial_id, {"rungs": rungs, "promoted": self.promotions.went_on(suggestion.key)})
        if goes_on:
            running.spending = record.get("tokens_spent", 0) + self.budgets[rung + 1] - self.budgets[rung]
        self.progress.rung(suggestion.number, rung, self.shown(suggestion.key, record), goes_on)
        return goes_on

    def wait(self, running: Running, record: dict[str, Any]) -> None:
        """A trial stopped at a rung waits there, its record kept to be told if it never goes on."""
        running.rung, running.record = record["rung"], record
        self.paused[running.suggestion.key] = running

    def resume(self, draining: bool) -> Optional[Running]:
        """The waiting trial that now ranks well enough at its rung to go on, taken out of waiting; None if none."""
        key = self.promotions.next({k: r.rung for k, r in self.paused.items()}, draining) if self.paused else None
        if key is None:
            return None
        running = self.paused.pop(key)
        running.spending = running.record.get("tokens_spent", 0) + self.budgets[running.rung + 1] - self.budgets[running.rung]
        self.store.write(running.suggestion.trial_id, {"promoted": self.promotions.went_on(key)})
        self.progress.promoted(running.suggestion.number, running.rung)
        return running

    def release(self) -> list[Running]:
        """Every trial waiting at a rung, taken out of waiting (the search is over: they are told as stopped)."""
        released = list(self.paused.values())
        self.paused.clear()
        return released

    def waiting_tokens(self) -> int:
        """What the trials waiting at rungs have spent."""
        return sum(r.record.get("tokens_spent", 0) for r in self.paused.values())

    def shown(self, key: str, record: dict[str, Any]) -> dict[str, Any]:
        """A record with the config's loss at the target as it now stands (with a target)."""
        return {**record, **self.targets.fields(key)} if self.targets is not None else record
