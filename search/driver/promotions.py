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


from ..pareto import Dominance, minimised
from .state import RUNG, RungResult


class Promotions:
    """Results by rung and config key, and the configs that went on from each rung (this driver's trials, and the
    configs it resumed from an interrupted trial)."""

    def __init__(self, directions: Sequence[str], reduction_factor: int, last_rung: int, store=None) -> None:
        self.directions, self.eta, self.last_rung, self.store = list(directions), reduction_factor, last_rung, store
        self.results: dict[int, dict[str, tuple[list[float], float]]] = {}
        self.promoted: set[tuple[int, str]] = set()
        self._orders: dict[int, tuple[int, list[str]]] = {}  # rung -> how many were ranked, the best that many
        self._tables: dict[int, tuple[list[str], Dominance]] = {}  # rung -> its keys as added, who dominates whom
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
                self._orders.pop(result.rung, None)

    def record(self, rung: int, key: str, values: Sequence[float], penalty: float,
               extra: Optional[dict[str, Any]] = None) -> None:
        """A result measured here: recorded in the study (unless the config has one there) and in the table."""
        if self.store is not None:
            self.store.claim(f"{RUNG}{rung}:{key}", {"values": list(values), "penalty": float(penalty), "extra": extra or {}})
        self.learn([RungResult(rung, key, list(values), penalty, extra or {})])

    def recorded(self, rung: int) -> int:
        return len(self.results.get(rung, {}))

    def order(self, rung: int, count: Optional[int] = None) -> list[str]:
        """The best `count` keys recorded at a rung (all by default), best first; ranked again once the rung records
        another result, and only as far as asked."""
        if self._stale:
            self._orders, self._tables, self._stale = {}, {}, False
        count = self.recorded(rung) if count is None else count
        if self._orders.get(rung, (-1, []))[0] < count:
            keys, table = self._table(rung)
            self._orders[rung] = (count, [keys[i] for i in table.ranked(limit=count)])
        return self._orders[rung][1][:count]

    def _table(self, rung: int) -> tuple[list[str], Dominance]:
        """The rung's results as ranked (adjusted, minimised), with the ones recorded since the last look added."""
        entries = self.results.get(rung, {})
        keys, table = self._tables.setdefault(rung, ([], Dominance(len(self.directions))))
        new = list(entries)[len(keys):]  # results only ever join a rung, in the order they were learnt
        if new:
            table.add(minimised([self.adjust(key, entries[key][0]) for key in new], self.directions),
                      [entries[key][1] for key in new])
            keys.extend(new)
        return keys, table

    def places(self, rung: int, draining: bool = False) -> int:
        """How many of a rung's best may go on: floor(n / eta), or ceil when the search drains."""
        share = self.recorded(rung) / self.eta
        return math.ceil(share) if draining else math.floor(share)

    def promotable(self, rung: int, key: str, draining: bool = False) -> bool:
        """Whether the config ranks among the rung's best places and has not gone on from it yet."""
        if rung >= self.last_rung or (rung, key) in self.promoted:
            return False
        return key in self.order(rung, self.places(rung, draining))

    def decide(self, rung: int, key: str, draining: bool = False) -> bool:
        """Whether a config that reached `rung` goes on now: it went on from there before (a resumed trial reporting
        the rung again), or it is promotable, and is promoted by this answer."""
        if (rung, key) in self.promoted:
            return True
        if self.promotable(rung, key, draining):
            self.promoted.add((rung, key))
            return True
        return False

    def next(self, waiting: dict[str, int], draining: bool = False) -> Optional[str]:
        """Of the configs waiting here ({key: its rung}), the one to promote now, from the highest rung first (the
        best there first); None when none ranks well enough."""
        for rung in sorted(set(waiting.values()), reverse=True):
            for key in self.order(rung, self.places(rung, draining)):
                if waiting.get(key) == rung and self.decide(rung, key, draining):
                    return key
        return None
