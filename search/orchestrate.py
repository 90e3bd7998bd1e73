"""Ray Tune runs the trials; `StudySearcher` asks the Optuna study for each one and tells it the result.

The study is the source of truth, so resuming is: mark stale RUNNING rows FAIL (interrupted), count what is
finished, and start a fresh Tuner for the trials still owed. Trials pack onto GPUs through fractional GPU
resources; latency probes take a per-device lock inside the trial.
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
import math
import os
import shutil
import socket
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Ray's console output stays off unless asked for
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no per-trial CSV/JSON/TensorBoard files
os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Ctrl-C stops the search at once (see run_trials)

import optuna  # noqa: E402
import ray  # noqa: E402
from ray import tune  # noqa: E402
from optuna.trial import FrozenTrial, TrialState  # noqa: E402
from ray.tune.search import Searcher  # noqa: E402

from . import trial as trial_module  # noqa: E402
from .asha import MultiObjectiveAsha  # noqa: E402
from .errors import UsageError  # noqa: E402
from .front import ParetoFront, feasible  # noqa: E402
from .progress import Progress  # noqa: E402
from .records import study_trials  # noqa: E402
from .rungs import CONSTRAINT_PREFIX, RungTable, rung_entry  # noqa: E402
from .space import SearchSpace  # noqa: E402
from .study import (INTERRUPTED, REFUSED, WITHDRAWN, WORKER_DIED, Asked, Drawn, Heartbeat,  # noqa: E402
                    Streak, ask_new, counts, draw, mark_interrupted, mark_stale, record, record_heartbeats, settle,
                    STOPPED, objective_names, tell_parked, write_attrs)


REFRESH_S = 2.0  # how often a driver rereads what the other drivers on its study have done


@dataclass
class Paused:
    """A trial waiting at a rung (multi-fidelity): still RUNNING in the study, its state kept in the checkpoints,
    until it ranks well enough there to go on, or the search ends and it is told as stopped at that rung."""

    asked: Asked
    rung: int
    record: dict[str, Any]  # the rung's record, told if it never goes on
CLAIM_SETTLE_S = 0.5  # time for a later claim on the same config to see an earlier one and withdraw


class StudySearcher(Searcher):
    """Suggests each Ray trial from an Optuna study (ask, define-by-run) and records its result (tell), until the
    study holds `budget` measured trials, whichever driver measured them.

    Suggestions that cost no training (a repeat of a settled config, one refused by the cheap screen) are recorded
    at once (study.ask_new); one identical to a config still training, here or in another driver, waits for that
    trial's result. A trial that will train is marked `claimed`; when drivers race for the last of the budget, the
    later claim is withdrawn, so that together they measure exactly the budget. A trial whose worker died is owed
    again: its config is queued once more, and a second death fails it for good. The search ends early when the
    study suggests nothing new, or nothing but refusals (`stop_reason`).
    """

    def __init__(self, space: SearchSpace, study: optuna.Study, vocab_size: int, budget: int, progress: Progress,
                 shared: bool = True, checkpoints: Optional[Path] = None, token_budget: Optional[int] = None) -> None:
        super().__init__()
        self.space, self.study, self.vocab_size, self.budget, self.progress = space, study, vocab_size, budget, progress
        self.shared = shared  # other drivers may use the study (else claims need no second look at it)
        self.last_rung = len(space.rungs()) - 1
        self.rungs = RungTable(list(space.objectives.values()), space.search["reduction_factor"])  # all drivers' results
        self.checkpoints = checkpoints if self.last_rung else None  # where trials keep their state at each rung
        self.partial: dict[str, dict[str, Any]] = {}  # config key -> rung results of an interrupted trial of it
        self.paused: dict[str, Paused] = {}  # config key -> its trial waiting at a rung
        self.resumed: set[int] = set()  # numbers of interrupted trials already queued to go on
        self.token_budget = token_budget  # training tokens after which no config starts (None: configs alone count)
        self.spent = 0  # training tokens spent by the measured trials, all drivers together
        self.spending: dict[str, int] = {}  # Ray trial id -> the least a trial running here will have spent
        self.settled: dict[str, dict[str, Any]] = {}  # config key -> the result a repeat of it is told
        self.front = ParetoFront(study.directions)
        self.live: dict[str, Asked] = {}  # Ray trial id -> the study trial it measures
        self.parked: dict[str, list[optuna.Trial]] = {}  # config key in training -> repeats waiting for its result
        self.foreign: dict[str, int] = {}  # config key -> the number of another driver's trial training it
        self.measured = 0  # measured trials in the study, all drivers together
        self.others = 0  # trials other drivers are training
        self.streak = Streak()  # repeats in a row, and refusals by reason since the last measured trial
        self.ready: deque[Asked] = deque()  # suggestions asked ahead (AskAhead), not yet handed to a trial
        self.depth = 1  # how many to keep ready: set by AskAhead
        self.drawing = 0  # suggestions being drawn ahead right now
        self.asking_ahead = False  # whether a thread fills `ready` (else suggest asks itself)
        self._lock = threading.RLock()  # the thread asking ahead and Ray Tune's calls share this object
        self.stop_reason: Optional[str] = None  # 'exhausted' or 'refused'
        self.study_seconds = 0.0  # time Ray Tune's calls spent on the study and the sampler (the driver's share)
        self.ahead_seconds = 0.0  # time the thread asking ahead spent, while trials ran
        self._seen: set[int] = set()  # numbers of the ended trials taken into account, from _settled_below on
        self._settled_below = 0  # every trial numbered below this has ended and been taken into account
        self._refreshed = -math.inf
        self.refresh(force=True)

    # -- what the study holds, all drivers together --------------------------------------------------------------

    def refresh(self, force: bool = False, claiming: Optional[int] = None) -> list[FrozenTrial]:
        """Reread the study (at most every REFRESH_S unless forced): fail the trials of dead drivers, count what
        is measured and what other drivers train, learn the configs they settled, hand their results to the
        repeats waiting for them. Returns the trials it read (from the oldest that had not ended), one listing, so
        that a claim (`claiming`, this driver's) is judged on counts that agree with each other."""
        if not force and time.monotonic() - self._refreshed < REFRESH_S:
            return []
        start = time.perf_counter()
        mark_stale(self.study)
        mine = self.running_numbers() | {claiming}
        trials = study_trials(self.study, from_number=self._settled_below)  # by number; older ones all ended
        ended = set()
        for trial in trials:
            self._learn_rungs(trial.user_attrs)
            if trial.state.is_finished():
                ended.add(trial.number)
                if trial.number not in self._seen:
                    self._seen.add(trial.number)
                    self._learn(trial.number, trial.user_attrs, trial.state, trial.values, trial.params)
        while self._settled_below in self._seen:
            self._seen.discard(self._settled_below)
            self._settled_below += 1
        others = [t for t in trials if t.state == TrialState.RUNNING and t.number not in mine and t.user_attrs.get("claimed")]
        self.others = len(others)
        for trial in others:
            key = trial.user_attrs.get("config_key")
            if key is not None and key not in self.parked:
                self.foreign[key] = trial.number
                self.parked[key] = []
        for key, number in list(self.foreign.items()):
            if number in ended or number < self._settled_below:
                self._foreign_ended(key, number)
        self._refreshed = time.monotonic()
        self.study_seconds += time.perf_counter() - start
        return trials

    def _learn_rungs(self, attrs: Mapping[str, Any]) -> None:
        """Results a trial recorded at its rungs (any driver's, any state) join the rung table; a trial queued to
        resume an interrupted one marks that one as resumed."""
        key = attrs.get("config_key")
        for rung, entry in (attrs.get("rungs") or {}).items():
            if key is not None:
                self.rungs.record(int(rung), key, entry["values"], entry["penalty"])
        if "resumes" in attrs:
            self.resumed.add(attrs["resumes"])

    def _learn(self, number: int, attrs: Mapping[str, Any], state: TrialState, values: Optional[list],
               params: Optional[dict[str, Any]] = None) -> None:
        """Take an ended trial into account: the measured count, the configs settled, the front, and an interrupted
        trial's rung results (its config is queued once to go on from its last rung)."""
        if counts(attrs):
            self.measured += 1
            self.spent += attrs.get("tokens_spent") or 0
        key = attrs.get("config_key")
        if key is not None and "status" in attrs and "reused_from" not in attrs and (counts(attrs) or attrs.get("reason") in REFUSED):
            self.settled[key] = dict(attrs, reused_from=number)
            self.partial.pop(key, None)
        elif key is not None and attrs.get("rungs") and attrs.get("reason", INTERRUPTED) in (INTERRUPTED, WORKER_DIED) \
                and key not in self.settled:
            self.partial[key] = attrs["rungs"]
            if attrs.get("reason", INTERRUPTED) == INTERRUPTED and number not in self.resumed and params is not None:
                self.resumed.add(number)  # (a lost worker's config is queued again by _worker_died)
                self.study.enqueue_trial(params, user_attrs={"resumes": number})
        if state == TrialState.COMPLETE and feasible(attrs.get("constraints")):
            self.front.add(values)

    def _foreign_ended(self, key: str, number: int) -> None:
        """Another driver's trial ended: the repeats waiting here are told its result (or, where it measured
        nothing, that it was interrupted: they are owed nothing, and the sampler may suggest the config again)."""
        del self.foreign[key]
        waiting = self.parked.pop(key, [])
        twin = self.settled.get(key) or {"status": "failed", "reason": INTERRUPTED,
                                         "message": f"its twin #{number} in another driver measured nothing"}
        for repeat in waiting:
            record(self.study, repeat, twin)
            self.progress.free(repeat.number, twin)

    def alive_ids(self) -> list[int]:
        """Storage ids of this driver's RUNNING trials: in training, asked ahead, repeats waiting here."""
        with self._lock:
            return [t._trial_id for t in self._running_trials()]

    def running_numbers(self) -> set[int]:
        """Study numbers of this driver's RUNNING trials: in training, asked ahead, repeats waiting here."""
        with self._lock:
            return {t.number for t in self._running_trials()}

    def _running_trials(self) -> list[optuna.Trial]:
        waiting = [p.asked for p in self.paused.values()]
        return [a.trial for a in [*self.live.values(), *self.ready, *waiting]] + [t for ts in self.parked.values() for t in ts]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()  # Ray Tune pickles its searcher: a lock cannot be
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    # -- Ray Tune's Searcher interface ---------------------------------------------------------------------------

    def suggest(self, trial_id: str) -> Optional[dict | str]:
        with self._lock:
            self.refresh()
            if self.stop_reason is None and self.streak.too_many_refusals():
                self.stop_reason = "refused"
            promotion = self._promote(trial_id) if self.stop_reason is None else None
            if promotion is not None:
                return promotion
            while self.stop_reason is None and self._owes_more(0):
                asked = self.ready.popleft() if self.ready else None
                if asked is None and self.asking_ahead:
                    return None  # the thread asking ahead will have one soon
                if asked is None:
                    start = time.perf_counter()
                    asked = ask_new(self.study, self.space, self.vocab_size, self.settled, self.progress.free,
                                    self.parked, self.streak)
                    self.study_seconds += time.perf_counter() - start
                    if not isinstance(asked, Asked):
                        self.stop_reason = asked
                        break
                if asked.key in self.settled or asked.key in self.parked:  # settled or started since it was asked
                    settle(self.study, Drawn(asked.trial, asked.params, asked.key), self.settled, self.progress.free,
                           self.parked)
                    continue
                if self._claim(asked):
                    self.live[trial_id] = asked
                    self.spending[trial_id] = self.space.rungs()[0]  # the least it will spend
                    self.parked[asked.key] = []
                    self.progress.started()
                    if asked.key in self.partial:  # goes on from an interrupted trial's last rung: it keeps its results
                        asked.trial.set_user_attr("rungs", self.partial[asked.key])
                    return self._trial_config(asked)
            if self.stop_reason is not None or not self._tokens_left() or self.measured + len(self.paused) >= self.budget:
                if self.live or self.others:
                    return None
                self._release_ready()
                self._release_paused()
                return Searcher.FINISHED
            return None  # the budget is spoken for by trials in training; one may yet fail and be owed again

    def _trial_config(self, asked: Asked) -> dict[str, Any]:
        """What a Ray trial gets: the params, the study trial it measures, the config key and where rungs are kept."""
        return {"params": asked.params, "number": asked.trial.number, "key": asked.key,
                "checkpoints": str(self.checkpoints) if self.checkpoints else None}

    def _promote(self, trial_id: str) -> Optional[dict[str, Any]]:
        """A trial waiting at a rung that now ranks well enough there to go on (the highest rung first), handed to
        this Ray trial to continue from its kept state; None if there is none. Once the budget is spent and nothing
        runs, the search drains: the best third (rounded up) of each rung goes on, past a spent token budget too."""
        draining = not self._owes_more(0) and not self.live and not self.others  # nothing else will come
        if not self.paused or not (self._tokens_left() or draining):
            return None
        for rung in reversed(range(self.last_rung)):
            for key in self.rungs.order(rung):
                waiting = self.paused.get(key)
                if waiting is not None and waiting.rung == rung and self.rungs.goes_on(rung, key, draining):
                    del self.paused[key]
                    self.live[trial_id] = waiting.asked
                    budgets = self.space.rungs()
                    self.spending[trial_id] = waiting.record.get("tokens_spent", 0) + budgets[rung + 1] - budgets[rung]
                    self.progress.promoted(waiting.asked.trial.number, rung)
                    return self._trial_config(waiting.asked)
        return None

    def _release_paused(self) -> None:
        """At the end of the search, the trials still waiting at a rung are told as stopped there."""
        for key in list(self.paused):
            waiting = self.paused.pop(key)
            self._finish(waiting.asked, waiting.record, self.parked.pop(key, []))

    def _tokens_left(self) -> bool:
        """Whether the token budget (if any) has room: what ended and waiting trials spent, and the least running
        ones will."""
        if self.token_budget is None:
            return True
        waiting = sum(p.record.get("tokens_spent", 0) for p in self.paused.values())
        return self.spent + waiting + sum(self.spending.values()) < self.token_budget

    def _owes_more(self, ahead: int) -> bool:
        """Whether the budget still has room for one more config beyond those in training, waiting at a rung and
        `ahead` asked ahead (a token budget has room until it is spent: what a trial spends is known as it goes)."""
        started = self.measured + self.others + len(self.live) + len(self.paused) + ahead
        return self._tokens_left() and started < self.budget

    def ask_ahead(self, drawer: Callable[[], Drawn]) -> bool:
        """Draw (with `drawer`) and settle one suggestion ahead of time, while Ray Tune runs the trials (called by
        AskAhead's threads; the drawing runs outside the lock). False when nothing more is wanted now."""
        with self._lock:
            wanted = len(self.ready) + self.drawing
            if self.stop_reason is not None or wanted >= self.depth or not self._owes_more(wanted):
                return False
            self.drawing += 1
        start = time.perf_counter()
        try:
            drawn = drawer()
        finally:
            with self._lock:
                self.drawing -= 1
        with self._lock:
            outcome = settle(self.study, drawn, self.settled, self.progress.free, self.parked)
            stop = self.streak.count(outcome, drawn)
            if outcome == "new":
                self.ready.append(Asked(drawn.trial, drawn.params, drawn.key))
            elif stop is not None:
                self.stop_reason = stop
            self.ahead_seconds += time.perf_counter() - start
        return True

    def _release_ready(self) -> None:
        """Suggestions asked ahead that no trial will measure: recorded as withdrawn (not counted)."""
        while self.ready:
            asked = self.ready.popleft()
            record(self.study, asked.trial, {"status": "failed", "reason": WITHDRAWN, "config_key": asked.key,
                                             "message": "asked ahead, and not needed by the end of the search"})

    def _twin_claim(self, trials: list[FrozenTrial], asked: Asked, mine: set[int]) -> Optional[int]:
        """The number of another driver's claim on the same config that should train instead of this one, if any.

        The lower number trains. A higher-numbered claim seen here either has not yet read the study (it will see
        this claim and withdraw its own at once) or read it before this claim existed and is training: a second
        look after CLAIM_SETTLE_S tells which."""
        def same(listing: list[FrozenTrial]) -> list[int]:
            return [t.number for t in listing if t.state == TrialState.RUNNING and t.user_attrs.get("claimed")
                    and t.user_attrs.get("config_key") == asked.key and t.number not in mine | {asked.trial.number}]

        others = same(trials)
        if not others or min(others) < asked.trial.number:
            return min(others, default=None)
        time.sleep(CLAIM_SETTLE_S)
        return min(same(self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))), default=None)

    def _claim(self, asked: Asked) -> bool:
        """Mark the trial as one that trains. If another driver claimed the same config first, wait for its result
        instead; if, near the end of the budget, other claims took the last places, withdraw (recorded, not
        counted): lower-numbered claims first (the storage hands numbers out one at a time), and higher-numbered
        ones already training."""
        trial = asked.trial
        write_attrs(self.study, trial, {"config_key": asked.key, "claimed": True})
        record_heartbeats(self.study, [trial._trial_id])
        if not self.shared:
            return True
        trials = self.refresh(force=True, claiming=trial.number)  # what all drivers measured and claimed by now
        if asked.key in self.settled:  # another driver's trial of this config ended since it was asked: reuse it
            settle(self.study, Drawn(trial, asked.params, asked.key), self.settled, self.progress.free, self.parked)
            return False
        mine = self.running_numbers()
        earlier = [t for t in trials if t.state == TrialState.RUNNING and t.user_attrs.get("claimed")
                   and t.number < trial.number]
        twin = self._twin_claim(trials, asked, mine)
        if twin is not None:
            trial.set_user_attr("claimed", False)
            self.foreign[asked.key] = twin
            self.parked.setdefault(asked.key, []).append(trial)
            return False
        later = {t.number for t in trials if t.state == TrialState.RUNNING and t.user_attrs.get("claimed")
                 and t.number > trial.number and t.number not in mine}
        if later and self.measured + len(earlier) + len(later) >= self.budget and self.measured + len(earlier) < self.budget:
            # A later claim on the last places either has not read the study yet (it will see this claim and withdraw)
            # or read it before this claim existed and trains: a second look tells which.
            time.sleep(CLAIM_SETTLE_S)
            self.refresh(force=True, claiming=trial.number)
            later = {t.number for t in study_trials(self.study, (TrialState.RUNNING,), from_number=trial.number + 1)
                     if t.number in later and t.user_attrs.get("claimed")}
        if self.measured + len(earlier) + len(later) >= self.budget:
            record(self.study, trial, {"status": "failed", "reason": WITHDRAWN, "config_key": asked.key,
                                       "message": "another driver took the last of the budget first"})
            return False
        return True

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """A rung's result: kept with the study trial (so that a resumed search, or another driver, knows it)."""
        with self._lock:
            self._record_rung(trial_id, result)

    def _record_rung(self, trial_id: str, result: Optional[dict]) -> None:
        asked = self.live.get(trial_id)
        entry = rung_entry(result or {}, objective_names(self.study))
        if asked is None or entry is None or result.get("status") != "ok" or "rung" not in result or not self.last_rung:
            return  # (with one rung, the full budget, there is nothing to rank or resume from)
        rung, trial = int(result["rung"]), asked.trial
        rungs = dict(trial.user_attrs.get("rungs") or {})
        if str(rung) in rungs:
            return  # a resumed trial reporting its last rung again
        rungs[str(rung)] = {"tokens_trained": result["tokens_trained"], "values": entry[0], "penalty": entry[1]}
        if rung < self.last_rung:  # it goes on (a stopped trial's result never reaches here): to the next rung at least
            budgets = self.space.rungs()
            self.spending[trial_id] = result.get("tokens_spent", 0) + budgets[rung + 1] - budgets[rung]
        start = time.perf_counter()
        trial.set_user_attr("rungs", rungs)
        self.study_seconds += time.perf_counter() - start
        self.rungs.record(rung, asked.key, *entry)
        if rung < self.last_rung:
            self.progress.rung(trial.number, rung, result, asked.key in self.rungs.promoted.get(rung, ()))

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        with self._lock:
            self._record_rung(trial_id, result)  # the result a scheduler stopped the trial at never reached on_trial_result
            self._complete(trial_id, None if error else result)

    def _complete(self, trial_id: str, result: Optional[dict]) -> None:
        if trial_id not in self.live:
            return
        asked = self.live.pop(trial_id)
        self.spending.pop(trial_id, None)
        metrics = self._outcome(result) if result and "record" in result else self._worker_died(asked.trial)
        if metrics.get("status") == STOPPED:  # it waits at its rung, where it may yet go on
            self.paused[asked.key] = Paused(asked, metrics["rung"], metrics)
            return
        self._finish(asked, metrics, self.parked.pop(asked.key))

    def _finish(self, asked: Asked, metrics: dict[str, Any], parked: list[optuna.Trial]) -> None:
        """Tell the study a trial's outcome, and its parked twins theirs; take it into account."""
        trial = asked.trial
        died = metrics.get("reason") == WORKER_DIED
        start = time.perf_counter()
        state = record(self.study, trial, metrics)
        twin = {"status": "failed", "reason": WORKER_DIED, "message": f"the worker of its twin #{trial.number} died"} \
            if died else tell_parked(self.study, parked, trial.number, metrics)
        self.study_seconds += time.perf_counter() - start
        self._seen.add(trial.number)
        self._learn(trial.number, dict(trial.user_attrs, **metrics), state, [metrics.get(name) for name in objective_names(self.study)])
        if counts(metrics):
            self.streak.refusals.clear()
        elif metrics.get("reason") in REFUSED:
            self.streak.refusals[metrics["reason"]] += 1
        if self.checkpoints is not None and not died:
            trial_module.checkpoint_path(self.checkpoints, asked.key).unlink(missing_ok=True)
        self.progress.finished(trial.number, asked.params, metrics, len(self.front), counted=counts(metrics))
        for repeat in parked:
            if died:  # nothing to reuse: the repeat is owed nothing, the retry stands for it
                record(self.study, repeat, twin)
            self.progress.free(repeat.number, twin)

    def _outcome(self, result: dict) -> dict[str, Any]:
        """The record a trial ended with; one whose last report was a rung short of the full budget was stopped
        there by the scheduler."""
        metrics = json.loads(result["record"])
        if metrics.get("status") == "ok" and metrics.get("rung", self.last_rung) < self.last_rung:
            metrics.update(status=STOPPED, message=f"stopped at rung {metrics['rung']} ({metrics['tokens_trained']:,} tokens)")
        return metrics

    def _worker_died(self, trial: optuna.Trial) -> dict[str, Any]:
        """A trial whose process died (killed, crashed, its node lost) is owed again once, with the same params;
        if its retry dies too, it fails for good."""
        retry_of = trial.user_attrs.get("retry_of")
        if retry_of is not None:
            return {"status": "failed", "reason": "worker_died_twice",
                    "message": f"its worker died, as the worker of trial #{retry_of} with the same config did"}
        self.study.enqueue_trial(self.study._storage.get_trial(trial._trial_id).params, user_attrs={"retry_of": trial.number})
        return {"status": "failed", "reason": WORKER_DIED,
                "message": "its worker process died (killed, crashed or its node lost); the config is run again"}


@dataclass(frozen=True)
class Drawing:
    """Where suggestions are drawn: in the driver (processes 0: one thread asking ahead), or in that many processes
    of their own over the study's storage (`url`), each with the sampler `sampler` seeded from `seed` on."""

    processes: int = 0
    url: str = ""
    sampler: str = "tpe"
    seed: int = 0


class AskAhead:
    """Threads that keep a few suggestions ready while Ray Tune runs the trials, so that a free slot never waits
    for the sampler and the screen: one that draws in the driver, or one per drawing process. Should they all
    fail (the storage, say), the searcher goes back to asking itself, and meets the same fault where it is
    reported."""

    def __init__(self, searcher: StudySearcher, depth: int, drawing: Drawing = Drawing()) -> None:
        self.searcher, self.depth, self.drawing = searcher, max(depth, drawing.processes), drawing
        self._stop = threading.Event()
        self._processes: list = []
        self._threads: list[threading.Thread] = []
        self._running = 0

    def __enter__(self) -> AskAhead:
        searcher = self.searcher
        if self.drawing.processes:
            from .drawers import DrawingProcess

            self._processes = [DrawingProcess(self.drawing.url, searcher.study.study_name, searcher.space, self.drawing.sampler,
                                              self.drawing.seed + i, searcher.budget, searcher.vocab_size)
                               for i in range(self.drawing.processes)]
            drawers = [functools.partial(process.draw, searcher.study) for process in self._processes]
        else:
            drawers = [functools.partial(draw, searcher.study, searcher.space, searcher.vocab_size)]
        searcher.depth, searcher.asking_ahead, self._running = self.depth, True, len(drawers)
        self._threads = [threading.Thread(target=self._run, args=(drawer,), name=f"configaformer-ask-ahead-{i}", daemon=True)
                         for i, drawer in enumerate(drawers)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for thread in self._threads:  # each ends once its draw in flight is settled
            thread.join()
        for process in self._processes:
            process.close()
        with self.searcher._lock:
            self.searcher.asking_ahead = False
            if exc[0] is None:
                self.searcher._release_ready()

    def _run(self, drawer: Callable[[], Drawn]) -> None:
        try:
            while not self._stop.is_set():
                if not self.searcher.ask_ahead(drawer):
                    self._stop.wait(0.05)
        except Exception:
            with self.searcher._lock:
                self._running -= 1
                if not self._running:
                    self.searcher.asking_ahead = False


def run_trial(config: dict, space: SearchSpace) -> None:
    """The Ray trainable: measure one candidate, reporting each rung's record (and a failure's) to Ray Tune, whose
    scheduler may stop it at a rung."""
    started = wall_clock()
    device = "cuda" if ray.get_gpu_ids() else "cpu"
    node = ray.get_runtime_context().get_node_id()[:12]

    def report(record: dict[str, Any]) -> bool:
        record.update(node=node, started_at=started, ended_at=wall_clock())  # ISO times, as optuna-dashboard shows them
        tune.report(tune_result(record))
        return True  # a trial its scheduler stops never gets here: Ray ends it inside tune.report

    trial_module.run(space, config["params"], device, report, config.get("checkpoints"))


def tune_result(record: dict[str, Any]) -> dict[str, Any]:
    """A trial record as Ray Tune reads it: every number at the top level (and each constraint value under
    'constraint/'), so that any Ray scheduler can act on them, with the whole record beside them as JSON."""
    numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
               and math.isfinite(v)}
    constraints = {CONSTRAINT_PREFIX + k: v for k, v in (record.get("constraints") or {}).items()}
    return {**numbers, **constraints, "status": record["status"], "record": json.dumps(record, default=str)}


def wall_clock() -> str:
    """Now, as an ISO 8601 time with its UTC offset and milliseconds."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class Resources:
    cpus_per_trial: float
    gpus_per_trial: float
    concurrency: int


def plan_resources(space: SearchSpace, gpus_per_trial: Optional[float], concurrency: Optional[int]) -> Resources:
    """Per-trial resources from the space or the flags, and how many trials run at once on this cluster."""
    cpus = float(space.resources["cpus_per_trial"])
    gpus = float(space.resources["gpus_per_trial"] if gpus_per_trial is None else gpus_per_trial)
    available = ray.cluster_resources()
    if gpus > 0 and available.get("GPU", 0) == 0:
        raise UsageError(f"--gpus-per-trial {gpus:g}: the Ray cluster has no GPU")
    if cpus > available.get("CPU", 0):
        raise UsageError(f"resources.cpus_per_trial {cpus:g}: the Ray cluster has only {available.get('CPU', 0):g} CPUs")
    fit = math.floor(available.get("CPU", 1) / cpus)
    if gpus > 0:
        fit = min(fit, math.floor(available["GPU"] / gpus + 1e-9))
    chosen = concurrency or space.resources["concurrency"] or max(1, fit)
    return Resources(cpus, gpus, chosen)


def check_address(address: Optional[str]) -> None:
    """Fail fast on a HOST:PORT (or ray://HOST:PORT) that nothing answers, before Ray retries it for minutes."""
    if not address or address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--address {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as err:
        raise UsageError(f"--address {address}: nothing answers there ({err.strerror or err})") from None


def connect(address: Optional[str]) -> bool:
    """Join a Ray cluster (address) or start a quiet local one; False when Ray was already running here."""
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                 configure_logging=True)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise UsageError(f"--address {address}: cannot join the Ray cluster ({str(err).splitlines()[0]})") from None
    return True


def run_trials(space: SearchSpace, study: optuna.Study, vocab_size: int, budget: int, resources: Resources,
               progress: Progress, scratch: Optional[Path] = None, shared: bool = True,
               checkpoints: Optional[Path] = None, token_budget: Optional[int] = None,
               drawing: Drawing = Drawing()) -> StudySearcher:
    """Run trials through Ray Tune until the study holds `budget` measured ones, recording each as it finishes.

    Tune keeps its own records in `scratch` (a temporary folder if None), deleted afterwards: the study is what
    persists. A search folder's scratch left by a killed run is cleared here. `shared`: other drivers may use the
    study (a driver alone on its folder's own study skips the checks that keep drivers apart). `drawing`: where
    suggestions are drawn ahead."""
    temporary = checkpoints is None and len(space.rungs()) > 1
    if temporary:
        checkpoints = Path(tempfile.mkdtemp(prefix="configaformer-rungs-"))
    searcher = StudySearcher(space, study, vocab_size, budget, progress, shared, checkpoints, token_budget)
    scheduler = MultiObjectiveAsha(searcher.rungs, list(space.objectives), searcher.last_rung) if searcher.last_rung else None
    trainable = tune.with_resources(tune.with_parameters(run_trial, space=space),
                                    {"cpu": resources.cpus_per_trial, "gpu": resources.gpus_per_trial})
    if scratch is None:
        scratch = Path(tempfile.mkdtemp(prefix="configaformer-tune-"))
    else:
        shutil.rmtree(scratch, ignore_errors=True)  # a killed run's records
    try:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=-1, reuse_actors=True,
                                        max_concurrent_trials=resources.concurrency),
            run_config=tune.RunConfig(storage_path=str(scratch.resolve()), name="trials", verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=0)),
        )
        with Heartbeat(study, searcher.alive_ids), AskAhead(searcher, max(1, min(4, resources.concurrency // 2)), drawing):
            tuner.fit()
    except KeyboardInterrupt:
        mark_interrupted(study, searcher.running_numbers())  # owed again, as after a kill, but known now
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if temporary:
            shutil.rmtree(checkpoints, ignore_errors=True)
    return searcher


def describe_cluster() -> dict[str, Any]:
    resources = ray.cluster_resources()
    return {"nodes": len([n for n in ray.nodes() if n.get("Alive")]), "cpus": resources.get("CPU", 0), "gpus": resources.get("GPU", 0)}
