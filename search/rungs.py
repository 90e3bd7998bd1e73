"""The rung tables of a multi-fidelity search: every result recorded at each rung, and who goes on from there.

At a rung, results are ranked as NSGA-II ranks a population (Optuna's own routines): non-dominated sorting over
the space's objectives, infeasible results after every feasible one (by their constraint violation), inside one
front the more isolated result (larger crowding distance) first, and between equally isolated ones (the extremes of
a front are all infinitely so) the better first objective. A result goes on when it ranks in the best
1/reduction_factor of everything recorded at its rung so far, as asynchronous successive halving does: the first
results at a rung go on, later ones must beat what came before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from optuna.samplers.nsgaii._elite_population_selection_strategy import _calc_crowding_distance
from optuna.study._multi_objective import _fast_non_domination_rank

CONSTRAINT_PREFIX = "constraint/"  # how a reported result carries each constraint value (<= 0 when met)


@dataclass
class _Point:
    """A result as Optuna's crowding distance reads one."""

    number: int
    values: list[float]


def rung_entry(result: Mapping[str, Any], objectives: Sequence[str]) -> Optional[tuple[list[float], float]]:
    """A reported result's objective values and constraint violation (0 when feasible), or None when it lacks an
    objective (a failed trial's report)."""
    values = [result.get(name) for name in objectives]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        return None
    penalty = sum(max(0.0, float(v)) for k, v in result.items() if k.startswith(CONSTRAINT_PREFIX))
    return [float(v) for v in values], penalty


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
        penalty = np.array([entries[k][1] for k in keys])
        ranks = _fast_non_domination_rank(losses, penalty=penalty)
        crowding: dict[int, float] = {}
        for rank in set(ranks.tolist()):
            members = [_Point(i, losses[i].tolist()) for i in np.flatnonzero(ranks == rank)]
            crowding.update(_calc_crowding_distance(members))
        return [keys[i] for i in sorted(range(len(keys)), key=lambda i: (ranks[i], -crowding.get(i, 0.0), losses[i][0], i))]

    def promotes(self, rung: int, key: str) -> bool:
        """Whether the config `key`, recorded at `rung`, ranks in the best 1/reduction_factor recorded there."""
        order = self.order(rung)
        return key in order[:math.ceil(len(order) / self.reduction_factor)]
