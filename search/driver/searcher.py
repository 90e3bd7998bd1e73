"""The search driver without Ray: hands each free slot a config to measure, answers whether a trial that reached a
rung goes on (its rung scheduler's answer, scheduler.py), and records each trial's outcome in the study, until the
study holds the budget, whichever driver measured it. Ray Tune reaches it through tune.py; tests and benchmarks drive
it directly.

Several drivers may share a study. They stay apart through claims in the study that exactly one of them can take
(claims.py): a config is trained by the one trial that claimed it, and repeats of it wait for that trial's result;
a trial trains only once it holds one of the budget's places, so that together they measure exactly the budget.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Optional

from .. import outcome
from ..outcome import INTERRUPTED, WORKER_DIED
from ..progress import Progress
from ..space import SearchSpace
from ..storage import StudyStore
from ..timing_screen import TimingScreen
from ..trial import checkpoint_path
from .claims import Claims
from .state import StudyState
from .scheduler import Running, RungScheduler
from .suggestions import NEW, REFUSED, REPEAT, Streak, Suggestion, draw, worker_died

REFRESH_S = 2.0  # how often a driver rereads what the other drivers on its study have done
WAIT, DONE = "wait", "done"  # what `next` answers when it has no config for a slot: ask again later, or the search is over


class Driver:
    """One driver of a search over a study (several may share it)."""

    def __init__(self, space: SearchSpace, store: StudyStore, vocab_size: int, trials: int, progress: Progress,
                 tokens: Optional[int] = None, checkpoints: Optional[Path] = None) -> None:
        self.space, self.store, self.vocab_size, self.progress = space, store, vocab_size, progress
        self.trials, self.tokens = trials, tokens  # the budget: measured configs, and training tokens if given
        self.budgets = space.rungs()
        self.last_rung = len(self.budgets) - 1
        self.objectives = list(space.objectives)
        self.checkpoints = checkpoints if self.last_rung else None  # where trials keep their state at each rung
        self.state = StudyState(store)
        self.claims = Claims(store, self.state, trials)
        self.rungs = RungScheduler(space, store, progress)  # successive halving: who goes on, who waits at a rung
        self.promotions, self.targets, self.paused = self.rungs.promotions, self.rungs.targets, self.rungs.paused
        self.timing_screen = TimingScreen.of(space.constraints)  # refuses configs predicted far over a timing bound
        self.live: dict[str, Running] = {}  # slot -> the trial training there
        self.ready: deque[Suggestion] = deque()  # asked ahead, not yet handed to a slot
        self.parked: dict[str, list[Suggestion]] = {}  # config key -> repeats waiting for its result
        self.foreign: dict[str, int] = {}  # config key -> the number of another driver's trial training it
        self.drawing = 0  # suggestions being drawn ahead right now
        self._alive: list[int] = []  # the last list of this driver's running trials given to the heartbeat
        self.refusals: Optional[tuple[int, str, int]] = None  # when it stopped for refusals: how many, the commonest
        self.depth, self.asking_ahead = 1, False  # how many suggestions to keep ready, and whether a thread does it
        self.streak = Streak()
        self.stop_reason: Optional[str] = None  # 'exhausted' or 'refused'
        self.study_seconds = 0.0  # time spent on the study and the sampler in the calls slots wait for
        self.ahead_seconds = 0.0  # time the threads asking ahead spent
        self.lock = threading.RLock()  # the threads asking ahead, the heartbeat and Ray Tune's calls share this object
        self._refreshed = -math.inf
        self.refresh(force=True)
        self._queue_baselines()

    # -- what the study holds ------------------------------------------------------------------------------------

    def refresh(self, force: bool = False) -> None:
        """Reread the study (at most every REFRESH_S unless forced): fail the trials of dead drivers, take in what
        ended and the rung results recorded, hand other drivers' results to the repeats waiting for them, free the
        claims of trials that ended without settling their config, and queue interrupted configs to go on."""
        if not force and time.monotonic() - self._refreshed < REFRESH_S:
            return
        start = time.perf_counter()
        self.store.fail_stale()
        ended, results = self.state.reread()
        self.rungs.learn(results, ended)
        for trial in ended:  # other drivers' trials, and a resumed study's
            self._timings_seen(trial.user_attrs, trial.params)
        for key, number in list(self.foreign.items()):
            if number in self.state.ended:
                self._foreign_ended(key, number)
        self.claims.free(ended)
        for trial in ended:
            if trial.outcome.kind is INTERRUPTED and trial.user_attrs.get("rungs"):
                self.claims.resume(trial)
        self._refreshed = time.monotonic()
        self.study_seconds += time.perf_counter() - start

    def _queue_baselines(self) -> None:
        """Each of the space's baselines not measured yet is queued once (whichever driver claims it first), to be
        asked before any new suggestion; one whose trial ended without a result is queued again."""
        for baseline in self.space.baselines:
            if baseline.name not in self.state.baselines and self.claims.baseline(baseline.name):
                self.store.enqueue(baseline.params, {"baseline": baseline.name})

    def _foreign_ended(self, key: str, number: int) -> None:
        """Another driver's trial of a config ended: the repeats waiting here are told its result, or, where it
        settled nothing, that it was interrupted (they are owed nothing; the sampler may suggest it again)."""
        del self.foreign[key]
        result = self.state.settled.get(key) or outcome.failed(
            INTERRUPTED, f"its twin #{number} in another driver measured nothing")
        for repeat in self.parked.pop(key, []):
            self._tell(repeat, result)

    def mine(self) -> list[Suggestion]:
        """This driver's running trials: in training, waiting at a rung, asked ahead, repeats waiting here."""
        with self.lock:
            return [*(r.suggestion for r in self.live.values()), *(r.suggestion for r in self.paused.values()),
                    *self.ready, *(s for waiting in self.parked.values() for s in waiting)]

    def alive_ids(self) -> list[int]:
        """Storage ids of this driver's running trials, for the heartbeat (a trial being drawn got one when asked).
        Should the driver be busy for a while, the last list it gave: a heartbeat never waits on the driver."""
        if self.lock.acquire(timeout=1.0):
            try:
                self._alive = [s.trial_id for s in self.mine()]
            finally:
                self.lock.release()
        return list(self._alive)

    # -- the budget ----------------------------------------------------------------------------------------------

    def _tokens_left(self) -> bool:
        """Whether the token budget (if any) has room: what ended and waiting trials spent, and the least that
        trials in training will."""
        if self.tokens is None:
            return True
        spending = sum(r.spending for r in self.live.values())
        return self.state.spent + self.rungs.waiting_tokens() + spending < self.tokens

    def _room(self, ahead: int = 0) -> bool:
        """Whether another new config may start, beside those holding places and `ahead` asked ahead."""
        return self.stop_reason is None and self._tokens_left() and self.claims.free_places() > ahead

    def _others(self) -> bool:
        """Whether another driver's trial holds a place and trains (has not ended, and waits at no rung)."""
        return self.state.others_train({s.number for s in self.mine()})

    # -- handing out configs -------------------------------------------------------------------------------------

    def next(self, slot: str) -> dict[str, Any] | str:
        """A config for a free slot (a trial to resume from its rung, or a new one), WAIT when none is to be had
        now, or DONE when the search is over."""
        with self.lock:
            start = time.perf_counter()
            try:
                return self._next(slot)
            finally:
                self.study_seconds += time.perf_counter() - start

    def _next(self, slot: str) -> dict[str, Any] | str:
        self.refresh()
        if self.stop_reason is None and self.streak.too_many_refusals():
            self._stop("refused")
        if self._tokens_left():
            promoted = self._promote(slot, draining=False)
            if promoted is not None:
                return promoted
        while self._room():
            suggestion = self.ready.popleft() if self.ready else None
            if suggestion is None and self.asking_ahead:
                return WAIT  # a thread asking ahead will have one soon
            if suggestion is None:
                suggestion = self._ask()
                if suggestion is None:
                    break
            if self._settle(suggestion) != NEW:  # settled or started since it was asked
                continue
            started = self._start(slot, suggestion)
            if started is not None:
                return started
        self._release_ready()  # no new config will start now
        if self.live or self._others():
            return WAIT  # a result may change a rung's ranking, or a trial fail and be owed again
        promoted = self._promote(slot, draining=True)
        if promoted is not None:
            return promoted
        for running in self.rungs.release():  # the end: those still waiting at a rung are told as stopped there
            self._finish(running, running.record)
        mine = {s.number for s in self.mine()}
        waiting = self.parked or self.drawing or self.state.others_open(mine)  # repeats here wait for others' results
        return WAIT if waiting else DONE

    def _stop(self, reason: str) -> None:
        """No new config will be asked for: the space looks exhausted, or its candidates are all refused."""
        self.stop_reason = reason
        if reason == "refused":
            commonest, count = self.streak.refusals.most_common(1)[0]
            self.refusals = (sum(self.streak.refusals.values()), commonest, count)

    def _ask(self) -> Optional[Suggestion]:
        """Draw and settle suggestions until one is new; None when the search should stop asking (stop_reason)."""
        while True:
            suggestion = draw(self.store, self.space, self.vocab_size)
            what = self._settle(suggestion)
            stop = self.streak.count(what, suggestion)
            if what == NEW:
                return suggestion
            if stop is not None:
                self._stop(stop)
                return None

    def _settle(self, suggestion: Suggestion) -> str:
        """What a drawn suggestion is: REPEAT of a settled config (told its result at once) or of one in training
        (parked until its result), REFUSED by the screen (recorded), or NEW."""
        key = suggestion.key
        if key in self.state.settled:
            self._tell(suggestion, self.state.settled[key])
            return REPEAT
        if key in self.parked:
            self.parked[key].append(suggestion)
            return REPEAT
        if suggestion.refusal is None and self.timing_screen is not None:
            suggestion.refusal = self.timing_screen.screen(suggestion)
        if suggestion.refusal is not None:
            failure = suggestion.refusal
            result = outcome.failed(failure.kind, failure.message, **failure.metrics)
            self._tell(suggestion, result)
            return REFUSED
        return NEW

    def _start(self, slot: str, suggestion: Suggestion) -> Optional[dict[str, Any]]:
        """Claim the config and a place for the suggestion and hand it to the slot; None when another trial has the
        config (the suggestion waits for its result) or no place is left (it is withdrawn)."""
        if not self.store.write(suggestion.trial_id, {"config_key": suggestion.key}):
            return None  # failed as stale while it waited to be handed out: another driver owes its config now
        holder = self.claims.config(suggestion)
        if holder is not None:
            if holder in self.state.ended:  # it settled the config: reuse its result
                self._tell(suggestion, self.state.settled[suggestion.key])
            else:
                self.foreign[suggestion.key] = holder
                self.parked.setdefault(suggestion.key, []).append(suggestion)
            return None
        if suggestion.attrs.get("baseline") is None and not self.claims.place(suggestion.number):  # baselines take none
            self.claims.release_config(suggestion)
            self._tell(suggestion, outcome.failed("withdrawn", "another driver took the last of the budget first",
                                                  config_key=suggestion.key))
            return None
        for rung in suggestion.attrs.get("promoted", []):  # a resumed config keeps the rungs it went on from
            self.promotions.promote(rung, suggestion.key)
        self.live[slot] = Running(suggestion, self.budgets[0])
        self.parked[suggestion.key] = []
        self.progress.started()
        return self._trial_config(suggestion)

    def _trial_config(self, suggestion: Suggestion) -> dict[str, Any]:
        """What a worker gets: the params, the study trial it measures, the config key, where rungs are kept, and a
        baseline's own layer config."""
        baseline = next((b for b in self.space.baselines if b.name == suggestion.attrs.get("baseline")), None)
        return {"params": suggestion.params, "number": suggestion.number, "key": suggestion.key,
                "checkpoints": str(self.checkpoints) if self.checkpoints else None,
                "model": baseline.model if baseline is not None else None}

    def _promote(self, slot: str, draining: bool) -> Optional[dict[str, Any]]:
        """A trial waiting at a rung that now ranks well enough there to go on, handed to the slot to continue from
        its kept state; None if there is none."""
        running = self.rungs.resume(draining)
        if running is None:
            return None
        self.claims.wait(running.suggestion.number, None)
        self.live[slot] = running
        return self._trial_config(running.suggestion)

    # -- results -------------------------------------------------------------------------------------------------

    def reached_rung(self, slot: str, record: dict[str, Any]) -> bool:
        """A trial measured at a rung: the rung scheduler records it and answers whether it goes on."""
        with self.lock:
            running = self.live.get(slot)
            if running is None or not outcome.is_measured(record) or "rung" not in record:
                return True
            return self.rungs.reached(running, record, lambda: not self._room() and len(self.live) == 1
                                      and not self._others())

    def ended(self, slot: str, record: Optional[dict[str, Any]]) -> None:
        """A trial's worker is done with it: its last record (None when the worker died). Stopped at a rung, it
        waits there; otherwise its outcome is recorded."""
        with self.lock:
            running = self.live.pop(slot, None)
            if running is None:
                return
            record = worker_died(self.store, running.suggestion) if record is None else record
            if outcome.is_measured(record) and record.get("rung", self.last_rung) < self.last_rung:
                record = outcome.stopped(f"stopped at rung {record['rung']} ({record['tokens_trained']:,} tokens)", **record)
                self.rungs.wait(running, record)
                self.claims.wait(running.suggestion.number, running.rung)
                return
            self._finish(running, record)

    def _finish(self, running: Running, record: dict[str, Any]) -> None:
        """Record a trial's outcome, tell the repeats parked for it, and let go of what it no longer needs."""
        suggestion = running.suggestion
        if self.targets is not None and outcome.is_measured(record):  # its loss at the target, measured or predicted
            if outcome.is_stopped(record):
                record = outcome.predicted(f"predicted from rung {record['rung']} ({record['tokens_trained']:,} tokens)",
                                           **record)
            record = self.rungs.shown(suggestion.key, record)
        told = self._tell(suggestion, record, trained=True)
        if told.counts:
            self.streak.measured()
        else:  # owed again, refused in the worker (a leak found at build), or a baseline: no place of the budget
            self.claims.release_place(suggestion.number)
            if told.kind.refusal:
                self.streak.refusals[told.kind.name] += 1
        if not told.settles:
            self.claims.release_config(suggestion)
            if told.baseline is not None:
                self.claims.release_baseline(told.baseline)
        died = told.kind is WORKER_DIED
        if self.checkpoints is not None and not died:
            checkpoint_path(self.checkpoints, suggestion.key).unlink(missing_ok=True)
        twin = outcome.failed(WORKER_DIED, f"the worker of its twin #{suggestion.number} died") if died else \
            outcome.reused(record, suggestion.number) if told.settles else \
            outcome.failed(INTERRUPTED, f"its twin #{suggestion.number} measured nothing")
        for repeat in self.parked.pop(suggestion.key, []):
            self._tell(repeat, twin)

    def _tell(self, suggestion: Suggestion, record: dict[str, Any], trained: bool = False) -> outcome.Outcome:
        """Record a trial's outcome in the study, take it into account here, and show it: a line for a trial back
        from its worker (`trained`), a count for one that cost no training."""
        record = {"config_key": suggestion.key, **record}  # every outcome names its config
        if "baseline" in suggestion.attrs:  # kept off the budget and the front, whatever it measured
            record = {**record, "baseline": suggestion.attrs["baseline"]}
        told = self.store.record(suggestion.trial, suggestion.trial_id, record)
        self._timings_seen({**suggestion.attrs, **record}, suggestion.params)
        self.state.learn_record(suggestion.number, {**suggestion.attrs, **record}, told,
                                [record.get(name) for name in self.objectives], self._feasible(record))
        if trained:
            self.progress.finished(suggestion.number, suggestion.params, record, len(self.state.front), counted=told.counts)
        elif told.kind.name != "withdrawn":
            self.progress.free(suggestion.number, record)
        return told

    def _timings_seen(self, record: dict[str, Any], params: dict[str, Any]) -> None:
        if self.timing_screen is not None:
            self.timing_screen.learn_record(record, params)

    def screen_summary(self) -> dict[str, Any]:
        """What the timing screen did and how well it predicts, as the study keeps it for the review."""
        return {} if self.timing_screen is None else {"timing_screen": self.timing_screen.summary()}

    @staticmethod
    def _feasible(record: dict[str, Any]) -> bool:
        return all(value <= 0 for value in (record.get("constraints") or {}).values())

    def _release_ready(self) -> None:
        """Suggestions asked ahead that no trial will measure: recorded as withdrawn (not counted)."""
        while self.ready:
            suggestion = self.ready.popleft()
            self._tell(suggestion, outcome.failed("withdrawn", "asked ahead, and not needed by the end of the search",
                                                  config_key=suggestion.key))

    def predictions(self) -> dict[str, Any]:
        """With a target: the predictor fitted on everything and checked config by config, and every measured
        trial's loss at the target as it now stands (the review shows these, not the values told when each ended)."""
        if self.targets is None:
            return {}
        with self.lock:
            self.refresh(force=True)
            return self.targets.final(self.store.trials(states=("COMPLETE", "PRUNED")))

    def interrupt(self) -> None:
        """Ctrl-C or SIGTERM: every trial of this driver is recorded as interrupted, its config owed again."""
        with self.lock:
            for suggestion in self.mine():
                self.store.interrupt([(suggestion.trial, suggestion.trial_id)])

    # -- asking ahead ----------------------------------------------------------------------------------------------

    def ask_ahead(self, drawer: Callable[[], Suggestion]) -> bool:
        """Draw (with `drawer`, outside the lock) and settle one suggestion ahead of time, while the trials run;
        False when nothing more is wanted now."""
        with self.lock:
            wanted = len(self.ready) + self.drawing
            if wanted >= self.depth or not self._room(wanted):
                return False
            self.drawing += 1
        start = time.perf_counter()
        try:
            suggestion = drawer()
        finally:
            with self.lock:
                self.drawing -= 1
        with self.lock:
            what = self._settle(suggestion)
            stop = self.streak.count(what, suggestion)
            if what == NEW and self._room(len(self.ready)):
                self.ready.append(suggestion)
            elif what == NEW:  # the budget was taken while it was drawn
                self._tell(suggestion, outcome.failed("withdrawn", "asked ahead, and not needed any more",
                                                      config_key=suggestion.key))
            elif stop is not None:
                self._stop(stop)
            self.ahead_seconds += time.perf_counter() - start
        return True
