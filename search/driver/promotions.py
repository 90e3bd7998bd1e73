"""Successive halving's rung table and its promotion rule: the one owner of both. The Ray scheduler asks it whether a
trial that reached a rung goes on; the driver asks it which waiting trial to resume.

Every config's result at a rung is recorded in the study (one row each, written once), so that every driver on a
study and a resumed one rank the same results. At a rung, results are ranked as Syne Tune's MOASHA ranks them:
non-dominated sorting over the objectives (infeasible results after every feasible one, by their violation), then
an epsilon-net inside each front.

The rule is asynchronous successive halving as published (Li et al., "A System for Massively Parallel
Hyperparameter Tuning", MLSys 2020): a config goes on from a rung once it ranks in the top floor(n / eta) of the n
results recorded there and has not gone on from it yet. A config that does not waits at the rung, its state kept,
and goes on whenever it ranks there later. When no new config will come and nothing trains (the search drains),
the top ceil(n / eta) may go on, so that a small search still trains its best configs to the full budget.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..metrics import TARGET
from ..pareto import Dominance, Ranking, minimised
from .state import RUNG, RungResult
from .targets import MEASURED_AS


class Promotions:
    """Results by rung and config key, and the configs that went on from each rung (this driver's trials, and the
    configs it resumed from an interrupted trial)."""

    def __init__(self, directions: Sequence[str], reduction_factor: int, last_rung: int, store=None) -> None:
        self.directions, self.eta, self.last_rung, self.store = list(directions), reduction_factor, last_rung, store
        self.results: dict[int, dict[str, tuple[list[float], float]]] = {}
        self.promoted: set[tuple[int, str]] = set()
        self._rungs_left: dict[str, list[int]] = {}  # config key -> the rungs it went on from, in order
        self._rankings: dict[int, Ranking] = {}  # rung -> its results ranked as far as last asked
        self._tables: dict[int, tuple[dict[str, int], Dominance]] = {}  # rung -> its keys' rows, who dominates whom
        # How a result is ranked: its values as recorded, or as `adjust` sees them now (a search with a target ranks
        # by the predicted loss at the target, which changes as the predictor learns).
        self.adjust: Callable[[str, list[float]], list[float]] = lambda key, values: values
        self._stale = False

    def invalidate(self) -> None:
        """Rank every rung again at its next look (the adjusted values changed); safe from another thread."""
        self._stale = True

    def learn(self, results: Sequence[RungResult]) -> None:
        """Results recorded in the study (by any driver) join the table; a config recorded at a rung counts once."""
        for result in results:
            entries = self.results.setdefault(result.rung, {})
            if result.key not in entries:
                entries[result.key] = (list(result.values), float(result.penalty))
                self._rankings.pop(result.rung, None)

    def record(self, rung: int, key: str, values: Sequence[float], penalty: float,
               extra: Optional[dict[str, Any]] = None) -> None:
        """A result measured here: recorded in the study (unless the config has one there) and in the table."""
        if self.store is not None:
            self.store.claim(f"{RUNG}{rung}:{key}", {"values": list(values), "penalty": float(penalty), "extra": extra or {}})
        self.learn([RungResult(rung, key, list(values), penalty, extra or {})])

    def recorded(self, rung: int) -> int:
        return len(self.results.get(rung, {}))

    def order(self, rung: int, count: Optional[int] = None) -> list[str]:
        """The best `count` keys recorded at a rung (all by default), best first."""
        keys = list(self.results.get(rung, {}))
        return [keys[i] for i in self._ranking(rung, count).order(count)]

    def _ranking(self, rung: int, count: Optional[int] = None) -> Ranking:
        """The rung's results ranked as far as their best `count` (all by default): ranked again once the rung records
        another result or the adjusted values change, and only as far as asked."""
        if self._stale:
            self._rankings, self._tables, self._stale = {}, {}, False
        count = self.recorded(rung) if count is None else count
        ranking = self._rankings.get(rung)
        if ranking is None or ranking.limit < count:
            ranking = self._rankings[rung] = self._table(rung)[1].ranking(count)
        return ranking

    def _table(self, rung: int) -> tuple[dict[str, int], Dominance]:
        """The rung's results as ranked (adjusted, minimised), with the ones recorded since the last look added: each
        key's row, and who dominates whom."""
        entries = self.results.get(rung, {})
        rows, table = self._tables.setdefault(rung, ({}, Dominance(len(self.directions))))
        new = list(entries)[len(rows):]  # results only ever join a rung, in the order they were learnt
        if new:
            table.add(minimised([self.adjust(key, entries[key][0]) for key in new], self.directions),
                      [entries[key][1] for key in new])
            rows.update((key, len(rows)) for key in new)
        return rows, table

    def places(self, rung: int, draining: bool = False) -> int:
        """How many of a rung's best may go on: floor(n / eta), or ceil when the search drains."""
        share = self.recorded(rung) / self.eta
        return math.ceil(share) if draining else math.floor(share)

    def promotable(self, rung: int, key: str, draining: bool = False) -> bool:
        """Whether the config ranks among the rung's best places and has not gone on from it yet."""
        if rung >= self.last_rung or (rung, key) in self.promoted or key not in self.results.get(rung, {}):
            return False
        places = self.places(rung, draining)
        return bool(self._ranking(rung, places).among_best([self._tables[rung][0][key]], places)[0])

    def decide(self, rung: int, key: str, draining: bool = False) -> bool:
        """Whether a config that reached `rung` goes on now: it went on from there before (a resumed trial reporting
        the rung again), or it is promotable, and is promoted by this answer."""
        if (rung, key) in self.promoted:
            return True
        if self.promotable(rung, key, draining):
            self.promote(rung, key)
            return True
        return False

    def promote(self, rung: int, key: str) -> None:
        """The config went on from the rung (promoted here, or a resumed config that had)."""
        if (rung, key) not in self.promoted:
            self.promoted.add((rung, key))
            self._rungs_left[key] = sorted([*self._rungs_left.get(key, []), rung])

    def went_on(self, key: str) -> list[int]:
        """The rungs a config went on from."""
        return list(self._rungs_left.get(key, []))

    def next(self, waiting: dict[str, int], draining: bool = False) -> Optional[str]:
        """Of the configs waiting here ({key: its rung}), the one to promote now, from the highest rung first (the
        best there first); None when none ranks well enough."""
        for rung in sorted(set(waiting.values()), reverse=True):
            if rung >= self.last_rung or not self.recorded(rung):
                continue
            places = self.places(rung, draining)
            ranking = self._ranking(rung, places)
            rows = self._tables[rung][0]
            candidates = np.array([rows[key] for key, at in waiting.items() if at == rung and key in rows], dtype=int)
            chosen = ranking.first(candidates[ranking.among_best(candidates, places)])
            if chosen is not None:
                key = list(rows)[chosen]
                self.decide(rung, key, draining)
                return key
        return None


def rung_entry(record: dict[str, Any], objectives: list[str]) -> Optional[tuple[list[float], float]]:
    """A record's objective values as measured at its rung (the target's loss as the rung's val_loss) and its
    constraint violation (0 when feasible), or None when it lacks an objective."""
    values = [record.get(MEASURED_AS if name == TARGET else name) for name in objectives]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        return None
    penalty = sum(max(0.0, float(v)) for v in (record.get("constraints") or {}).values())
    return [float(v) for v in values], penalty
