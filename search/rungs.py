"""The rung tables of a multi-fidelity search: every result recorded at each rung, and who goes on from there.

At a rung, results are ranked as Syne Tune's MOASHA ranks them: non-dominated sorting over the space's objectives
(Optuna's own routine, which puts infeasible results after every feasible one, by their constraint violation), and
inside each front an epsilon-net: the best first objective first, then each time the result farthest from those
already taken (objectives scaled to the rung's range), so that a front's spread goes on, not one corner of it.

Promotion is ASHA's (Li et al. 2020) with its quota kept: a config goes on from a rung once it ranks in the best
floor(n / reduction_factor) of the n results recorded there, while fewer than that many have gone on. One that
does not waits at the rung (its state kept) and goes on later if it still ranks there when a place opens; so at
most 1 in reduction_factor go on, however the results arrive, even from a sampler that improves as it learns. When no new
config will come and nothing runs (the search drains), the share is rounded up, so that a small search still
trains its best configs to the full budget.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from optuna.study._multi_objective import _fast_non_domination_rank

CONSTRAINT_PREFIX = "constraint/"  # how a reported result carries each constraint value (<= 0 when met)


def rung_entry(result: Mapping[str, Any], objectives: Sequence[str]) -> Optional[tuple[list[float], float]]:
    """A reported result's objective values and constraint violation (0 when feasible), or None when it lacks an
    objective (a failed trial's report)."""
    values = [result.get(name) for name in objectives]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        return None
    penalty = sum(max(0.0, float(v)) for k, v in result.items() if k.startswith(CONSTRAINT_PREFIX))
    return [float(v) for v in values], penalty


def epsilon_net(points: np.ndarray, members: np.ndarray) -> list[int]:
    """`members` (indices into `points`, minimised) in epsilon-net order: the best first objective first (ties by
    index), then each time the member farthest from all those taken."""
    remaining = sorted(members.tolist(), key=lambda i: (points[i][0], i))
    taken = [remaining.pop(0)]
    nearest = np.linalg.norm(points[remaining] - points[taken[0]], axis=1)
    while remaining:
        pick = int(np.argmax(nearest))  # the first of equally far ones: the better first objective
        taken.append(remaining.pop(pick))
        nearest = np.delete(nearest, pick)
        if remaining:
            nearest = np.minimum(nearest, np.linalg.norm(points[remaining] - points[taken[-1]], axis=1))
    return taken


class RungTable:
    """Results by rung and config key. `record` is idempotent: a config measured at a rung once (a resumed trial
    reporting it again, another driver's trial read from the study) counts once."""

    def __init__(self, directions: Sequence[str], reduction_factor: int) -> None:
        self.signs = np.array([1.0 if d in ("min", "minimize") else -1.0 for d in directions])
        self.reduction_factor = reduction_factor
        self.results: dict[int, dict[str, tuple[list[float], float]]] = {}
        self.promoted: dict[int, set[str]] = {}  # configs that went on from each rung (in this driver)
        self._orders: dict[int, list[str]] = {}

    def record(self, rung: int, key: str, values: Sequence[float], penalty: float) -> None:
        entries = self.results.setdefault(rung, {})
        if key not in entries:
            entries[key] = (list(values), float(penalty))
            self._orders.pop(rung, None)

    def recorded(self, rung: int) -> int:
        return len(self.results.get(rung, {}))

    def order(self, rung: int) -> list[str]:
        """The keys recorded at a rung, best first (kept until the rung records another result)."""
        if rung not in self._orders:
            self._orders[rung] = self._rank(rung)
        return self._orders[rung]

    def _rank(self, rung: int) -> list[str]:
        entries = self.results.get(rung, {})
        keys = list(entries)
        if not keys:
            return []
        losses = np.array([entries[k][0] for k in keys]) * self.signs
        ranks = _fast_non_domination_rank(losses, penalty=np.array([entries[k][1] for k in keys]))
        span = losses.max(axis=0) - losses.min(axis=0)
        scaled = (losses - losses.min(axis=0)) / np.where(span > 0, span, 1.0)
        order: list[int] = []
        for rank in sorted(set(ranks.tolist())):
            order += epsilon_net(scaled, np.flatnonzero(ranks == rank))
        return [keys[i] for i in order]

    def promotable(self, rung: int, key: str, draining: bool = False) -> bool:
        """Whether the config `key`, recorded at `rung`, ranks in the best floor(n / reduction_factor) of the n
        recorded there (when `draining`, the search's last configs: rounded up), has not gone on from it yet, and
        fewer than that many have: no more than 1 in reduction_factor go on, whatever order the results came in."""
        promoted = self.promoted.get(rung, set())
        order = self.order(rung)
        share = len(order) / self.reduction_factor
        places = math.ceil(share) if draining else math.floor(share)
        return key not in promoted and len(promoted) < places and key in order[:places]

    def goes_on(self, rung: int, key: str, draining: bool = False) -> bool:
        """Whether a config at `rung` goes on now: it was promoted from there before (a resumed trial reporting the
        rung again), or it is promotable, and is promoted by this answer."""
        if key in self.promoted.get(rung, ()):
            return True
        if self.promotable(rung, key, draining):
            self.promoted.setdefault(rung, set()).add(key)
            return True
        return False
