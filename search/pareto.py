"""Pareto arithmetic on objective vectors, all minimised (a maximised objective is negated first): non-dominated
sorting with constraint violations, the epsilon-net order inside a front, a front kept as points arrive, and the
hypervolume. Plain numpy, so that the driver's rung tables and the review share one definition."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def minimised(values: Sequence[Sequence[float]], directions: Sequence[str]) -> np.ndarray:
    """Objective vectors with each maximised objective negated ('minimize'/'maximize', or 'min'/'max')."""
    signs = np.array([1.0 if str(d).lower().startswith("min") else -1.0 for d in directions])
    return np.asarray(values, dtype=float).reshape(-1, len(signs)) * signs


def dominates(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Whether each point of `a` dominates the matching point of `b` (broadcast): no worse anywhere, better somewhere."""
    return np.all(a <= b, axis=-1) & np.any(a < b, axis=-1)


def nondominated_rank(points: np.ndarray, penalty: Optional[np.ndarray] = None, enough: Optional[int] = None) -> np.ndarray:
    """The front each point is on (0 the best), by repeated non-dominated sorting. With `penalty` (the summed
    constraint violation, 0 when feasible), every feasible point comes before every infeasible one, and infeasible
    ones are ranked by their violation alone, as Optuna's constrained samplers rank them. With `enough`, sorting
    stops once the fronts hold that many points: the feasible points left share the next rank."""
    points = np.asarray(points, dtype=float)
    beaten = dominates(points[None, :, :], points[:, None, :])  # beaten[i, j]: j dominates i
    return _peel(beaten, penalty, enough)


def _peel(beaten: np.ndarray, penalty: Optional[np.ndarray], enough: Optional[int]) -> np.ndarray:
    """Non-dominated sorting given who dominates whom (beaten[i, j]: j dominates i): each front is taken off in turn,
    the points it dominated each counting one dominator fewer."""
    count = len(beaten)
    ranks = np.zeros(count, dtype=int)
    feasible = np.ones(count, dtype=bool) if penalty is None else np.asarray(penalty) <= 0
    left = feasible.copy()
    dominators = beaten[:, feasible].sum(axis=1)
    rank, taken = 0, 0
    while left.any():
        if enough is not None and taken >= enough:
            ranks[left], rank = rank, rank + 1
            break
        top = left & (dominators == 0)
        ranks[top] = rank
        left &= ~top
        dominators -= beaten[:, top].sum(axis=1)
        rank, taken = rank + 1, taken + int(top.sum())
    if penalty is not None and (~feasible).any():
        violations = np.asarray(penalty)[~feasible]
        ranks[~feasible] = rank + np.unique(violations, return_inverse=True)[1]
    return ranks


class Dominance:
    """Points that arrive one at a time (a rung's results), with who dominates whom kept as they come: one row and
    one column a point, so that ranking them after each new one is a pass over a table, not a comparison of every
    pair."""

    def __init__(self, objectives: int) -> None:
        self.points = np.zeros((0, objectives))
        self.penalty = np.zeros(0)
        self._beaten = np.zeros((0, 0), dtype=bool)  # capacity grows by doubling; the first len(points) are used

    def __len__(self) -> int:
        return len(self.points)

    def add(self, points: np.ndarray, penalty: Sequence[float]) -> None:
        """Points (minimised, one a row) and their constraint violations (0 when feasible)."""
        new = np.asarray(points, dtype=float).reshape(-1, self.points.shape[1])
        n, k = len(self.points), len(new)
        if n + k > len(self._beaten):
            grown = np.zeros((max(8, 2 * (n + k)),) * 2, dtype=bool)
            grown[:n, :n] = self._beaten[:n, :n]
            self._beaten = grown
        everyone = np.vstack([self.points, new])
        self._beaten[n:n + k, :n + k] = dominates(everyone[None, :, :], new[:, None, :])  # who dominates each new one
        self._beaten[:n, n:n + k] = dominates(new[None, :, :], self.points[:, None, :])  # whom each new one dominates
        self.points = everyone
        self.penalty = np.append(self.penalty, np.asarray(penalty, dtype=float))

    def ranked(self, limit: Optional[int] = None) -> list[int]:
        """Indices of the points, best first, as `ranked` orders them."""
        n = len(self.points)
        return ranked(self.points, self.penalty, limit, self._beaten[:n, :n])


def epsilon_net(points: np.ndarray, members: np.ndarray, limit: Optional[int] = None) -> list[int]:
    """`members` (indices into `points`) in epsilon-net order: the best first objective first (ties by index), then
    each time the member farthest from all those taken, so that a front's spread comes before one corner of it.
    With `limit`, the first that many of that order."""
    members = np.asarray(members)
    order = members[np.lexsort((members, points[members, 0]))]  # by the first objective, ties by index
    candidates = points[order]
    nearest = np.full(len(order), np.inf)  # squared distance to the nearest member taken; -1 once taken
    taken, pick = [], 0
    for _ in range(len(order) if limit is None else min(limit, len(order))):
        taken.append(int(order[pick]))
        np.minimum(nearest, ((candidates - candidates[pick]) ** 2).sum(axis=1), out=nearest)
        nearest[pick] = -1.0
        pick = int(np.argmax(nearest))  # the first of equally far ones: the better first objective
    return taken


def ranked(points: np.ndarray, penalty: Optional[np.ndarray] = None, limit: Optional[int] = None,
           beaten: Optional[np.ndarray] = None) -> list[int]:
    """Indices of `points`, best first: non-dominated sorting, then an epsilon-net inside each front with the
    objectives scaled to their range (Syne Tune's MOASHA ranks a rung's results so). With `limit`, the first that
    many of that order, found without ranking the rest; `beaten` is who dominates whom, if known (Dominance)."""
    if not len(points) or limit == 0:
        return []
    if beaten is None:
        ranks = nondominated_rank(points, penalty, enough=limit)
    else:
        ranks = _peel(beaten, penalty, limit)
    span = points.max(axis=0) - points.min(axis=0)
    scaled = (points - points.min(axis=0)) / np.where(span > 0, span, 1.0)
    order: list[int] = []
    for rank in sorted(set(ranks.tolist())):
        if limit is not None and len(order) >= limit:
            break
        order += epsilon_net(scaled, np.flatnonzero(ranks == rank), None if limit is None else limit - len(order))
    return order


def front_mask(points: np.ndarray) -> np.ndarray:
    """Which points no other point dominates (equal points are all kept)."""
    points = np.asarray(points, dtype=float)
    if not len(points):
        return np.zeros(0, dtype=bool)
    return ~dominates(points[None, :, :], points[:, None, :]).any(axis=1)


class ParetoFront:
    """The non-dominated points seen so far, kept as they come: one pass over the front per point, so that a driver
    keeps its front's size current without rereading the study."""

    def __init__(self, directions: Sequence[str]) -> None:
        self.directions = list(directions)
        self.points: list[np.ndarray] = []

    def add(self, values: Sequence[float]) -> bool:
        """Add a point; True when it joined the front (no member dominates or equals it)."""
        point = minimised([values], self.directions)[0]
        if any((member <= point).all() for member in self.points):
            return False
        self.points = [m for m in self.points if not (point <= m).all()] + [point]
        return True

    def __len__(self) -> int:
        return len(self.points)


def hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """The volume that `points` (minimised) dominate inside the box up to `reference`; points not better than the
    reference in every objective add nothing. Exact, by slicing along the last objective."""
    points = np.asarray(points, dtype=float)
    reference = np.asarray(reference, dtype=float)
    points = points[(points < reference).all(axis=1)] if len(points) else points.reshape(0, len(reference))
    if not len(points):
        return 0.0
    points = points[front_mask(points)]
    if points.shape[1] == 1:
        return float(reference[0] - points[:, 0].min())
    if points.shape[1] == 2:
        order = np.argsort(points[:, 0], kind="stable")
        xs, ys = points[order, 0], np.minimum.accumulate(points[order, 1])
        widths = np.diff(np.append(xs, reference[0]))
        return float(np.sum(widths * (reference[1] - ys)))
    order = np.argsort(points[:, -1], kind="stable")
    points = points[order]
    cuts = np.append(points[:, -1], reference[-1])
    return float(sum((cuts[i + 1] - cuts[i]) * hypervolume(points[: i + 1, :-1], reference[:-1])
                     for i in range(len(points)) if cuts[i + 1] > cuts[i]))
