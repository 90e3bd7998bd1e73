"""Claims among the drivers of one study, each taken by a single insert that succeeds for exactly one of them (no
waiting, no second look): which trial trains a config, and which trials hold the places of the --trials budget.

A config's claim names the trial that trains it; it stays once that trial settled the config (a repeat reuses the
result), and is freed when it ended without settling it (interrupted, its worker lost, withdrawn). A place is held
from the moment a trial is handed out to train until the end of the search when the trial counts towards the
budget, and freed when it ends without counting. Claims left by a driver that died are freed by whichever driver
sees its trials fail.
"""

from __future__ import annotations

import uuid
from typing import Optional, Sequence

from ..storage import StoredTrial, StudyStore
from .state import BASELINE, CONFIG, PLACE, RESUME, Place, StudyState
from .suggestions import Suggestion


class Claims:
    """This driver's side of the claims: taking, updating and freeing them in the study."""

    def __init__(self, store: StudyStore, state: StudyState, trials: int) -> None:
        self.store, self.state, self.trials = store, state, trials
        self.me = {"by": uuid.uuid4().hex}  # this driver, in the claims only one driver may take

    def config(self, suggestion: Suggestion) -> Optional[int]:
        """Claim the suggestion's config for it; None when it now holds it, else the number of the trial that trains
        or settled it. A claim held by a trial that ended without settling the config is freed and taken."""
        key = CONFIG + suggestion.key
        while True:
            if self.store.claim(key, suggestion.number):
                return None
            holder = self._holder(key)
            if holder is None:
                continue  # freed meanwhile: try again
            ended = self.state.ended.get(holder)
            if ended is None:
                ended = next((t.outcome for t in self.store.trials(numbers=[holder]) if t.finished), None)
            if ended is None or ended.settles:
                return holder
            self.store.release([(key, holder)])

    def _holder(self, key: str) -> Optional[int]:
        rows = [value for _, found, value in self.store.claims(key) if found == key]
        return rows[0] if rows else None

    def release_config(self, suggestion: Suggestion) -> None:
        self.store.release([(CONFIG + suggestion.key, suggestion.number)])

    def free_places(self) -> int:
        return max(0, self.trials - len(self.state.places))

    def place(self, number: int) -> bool:
        """Take a free place of the budget for trial `number`; False when every place is held."""
        for _ in range(3):
            for index in (i for i in range(self.trials) if i not in self.state.places):
                place = Place(index, number)
                if self.store.claim(f"{PLACE}{index}", place.value()):
                    self.state.places[index] = place
                    return True
            self.state.reread_places()  # others took them meanwhile: look again
        return False

    def wait(self, number: int, rung: Optional[int]) -> None:
        """Mark trial `number`'s place as waiting at a rung (or, with None, training again)."""
        for index, place in self.state.places.items():
            if place.trial == number:
                after = Place(index, number, rung)
                if self.store.update_claim(f"{PLACE}{index}", place.value(), after.value()):
                    self.state.places[index] = after
                return

    def release_place(self, number: int) -> None:
        for index, place in list(self.state.places.items()):
            if place.trial == number:
                self.store.release([(f"{PLACE}{index}", place.value())])
                del self.state.places[index]

    def free(self, ended: Sequence[StoredTrial]) -> None:
        """Free what trials that ended here or elsewhere no longer need: the place of one that did not count, the
        config claim of one that did not settle its config (both kept by a driver that died with them)."""
        gone = {t.number for t in ended if not t.outcome.counts}
        places = [(f"{PLACE}{i}", p.value()) for i, p in self.state.places.items() if p.trial in gone]
        configs = [(CONFIG + t.user_attrs["config_key"], t.number) for t in ended
                   if not t.outcome.settles and t.user_attrs.get("config_key")]
        if places or configs:
            self.store.release(places + configs)
        for trial in ended:  # queued again by the next driver to look
            if trial.outcome.baseline is not None and not trial.outcome.settles:
                self.release_baseline(trial.outcome.baseline)
            self.state.places = {i: p for i, p in self.state.places.items() if p.trial not in gone}

    def baseline(self, name: str) -> bool:
        """Claim the queuing of a baseline: True for the one driver that should queue it."""
        return self.store.claim(f"{BASELINE}{name}", self.me)

    def release_baseline(self, name: str) -> None:
        """Let a baseline be queued again (its trial ended without a result), whoever queued it."""
        key = f"{BASELINE}{name}"
        self.store.release([(key, value) for _, found, value in self.store.claims(key) if found == key])

    def resume(self, trial: StoredTrial) -> None:
        """Queue an interrupted trial's config to go on from its last rung, with its rung results: once, whichever
        driver sees it first."""
        if self.store.claim(f"{RESUME}{trial.number}", self.me):
            attrs = trial.user_attrs
            self.store.enqueue(trial.params, {"resumes": trial.number, "rungs": attrs["rungs"],
                                              "promoted": attrs.get("promoted", [])})
