"""Asynchronous successive halving over token budgets, for several objectives at once: a Ray Tune scheduler.

Each trial reports at every rung (search/train.py). The scheduler records the result in the rung table and answers
CONTINUE when the config may go on from that rung (search/rungs.py), else STOP: the trial then waits at the rung
(the searcher keeps its state and may promote it later, as ASHA does); the full budget's report ends the trial on
its own. Which config a trial measures is in its Ray config ('key'), so that a config resumed from a rung, reporting
it again, counts once.
"""

from __future__ import annotations

from typing import Any, Sequence

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from .rungs import RungTable, rung_entry


class MultiObjectiveAsha(FIFOScheduler):
    """Lets a trial go on from a rung only when it ranks among the best there (over all objectives)."""

    _supports_buffered_results = False  # each result is judged as it comes

    def __init__(self, table: RungTable, objectives: Sequence[str], last_rung: int) -> None:
        super().__init__()
        self.table, self.objectives, self.last_rung = table, list(objectives), last_rung

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        rung, key = result.get("rung"), trial.config.get("key")
        entry = rung_entry(result, self.objectives)
        if rung is None or key is None or entry is None or result.get("status") != "ok" or rung >= self.last_rung:
            return TrialScheduler.CONTINUE  # a failure's report or the full budget: the trial ends on its own
        self.table.record(int(rung), key, *entry)
        return TrialScheduler.CONTINUE if self.table.goes_on(int(rung), key) else TrialScheduler.STOP

    def debug_string(self) -> str:
        return "MultiObjectiveAsha: " + ", ".join(f"rung {r}: {self.table.recorded(r)}" for r in sorted(self.table.results))
