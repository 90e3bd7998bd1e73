"""The rung tables of a multi-fidelity search: every result recorded at each rung, and who goes on from there.

At a rung, results are ranked as Syne Tune's MOASHA ranks them: non-dominated sorting over the space's objectives
(Optuna's own routine, which puts infeasible results after every feasible one, by their constraint violation), and
inside each front an epsilon-net: the best first objective first, then each time the result farthest from those
already taken (objectives scaled to the rung's range), so that a front's spread goes on, not one corner of it. A
result goes on when it ranks in the best 1/reduction_factor of everything recorded at its rung so far, as
asynchronous successive halving does: the first result at a rung goes on, later ones must beat what came before.
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

    def record(self, rung: int, key: str, values: Sequence[float], penalty: float) -> None:
        self.results.setdefault(rung, {}).setdefault(key, (list(values), float(penalty)))

    def recorded(self, rung: int) -> int:
        return len(self.results.get(rung, {}))

    def order(self, rung: int) -> list[str]:
        """The keys recorded at a rung, best first."""
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

    def promotes(self, rung: int, key: str) -> bool:
        """Whether the config `key`, recorded at `rung`, ranks in the best 1/reduction_factor recorded there."""
        order = self.order(rung)
        return key in order[:math.ceil(len(order) / self.reduction_factor)]
