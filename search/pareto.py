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
    """Whether each point of `a` dominates the matching point of `b` (broadcast): no worse anywhere, better somewhere.
    Compared one objective at a time, which keeps a table of every pair as small as its answer."""
    a, b = np.asarray(a), np.asarray(b)
    shape = np.broadcast_shapes(a.shape, b.shape)[:-1]
    no_worse, better = np.ones(shape, dtype=bool), np.zeros(shape, dtype=bool)
    for objective in range(a.shape[-1]):
        no_worse &= a[..., objective] <= b[..., objective]
        better |= a[..., objective] < b[..., objective]
    return no_worse & better


def _feasible(penalty: Optional[np.ndarray], count: int) -> np.ndarray:
    return np.ones(count, dtype=bool) if penalty is None else np.asarray(penalty) <= 0


def _peel(wins: np.ndarray, penalty: Optional[np.ndarray], enough: Optional[int],
          dominators: Optional[np.ndarray] = None) -> np.ndarray:
    """Non-dominated sorting given who dominates whom (wins[j, i]: j dominates i) and, if known, how many feasible
    points dominate each: each front is taken off in turn, the points it dominated each counting one dominator
    fewer."""
    count = len(wins)
    ranks = np.zeros(count, dtype=int)
    feasible = _feasible(penalty, count)
    left = feasible.copy()
    dominators = np.count_nonzero(wins[feasible], axis=0) if dominators is None else dominators.copy()
    rank, taken = 0, 0
    while left.any():
        if enough is not None and taken >= enough:
            ranks[left], rank = rank, rank + 1
            break
        top = left & (dominators == 0)
        ranks[top] = rank
        left &= ~top
        dominators -= wins[np.flatnonzero(top)].sum(axis=0, dtype=dominators.dtype)  # rows by index: a faster copy
        rank, taken = rank + 1, taken + int(top.sum())
    if penalty is not None and (~feasible).any():
        violations = np.asarray(penalty)[~feasible]
        ranks[~feasible] = rank + np.unique(violations, return_inverse=True)[1]
    return ranks


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
        apart = candidates - candidates[pick]
        np.minimum(nearest, np.einsum("ij,ij->i", apart, apart), out=nearest)  # squared distances, summed by einsum
        nearest[pick] = -1.0
        pick = int(np.argmax(nearest))  # the first of equally far ones: the better first objective
    return taken


class Ranking:
    """Points ranked best first as far as their best `limit` (all by default): non-dominated sorting, then an
    epsilon-net inside each front with the objectives scaled to their range (Syne Tune's MOASHA ranks a rung's
    results so). The fronts are sorted once; a front's epsilon-net is worked out only when asked for, so that telling
    whether a point is among the best needs the net of one front alone, the one the limit cuts."""

    def __init__(self, points: np.ndarray, penalty: Optional[np.ndarray] = None, limit: Optional[int] = None,
                 wins: Optional[np.ndarray] = None, dominators: Optional[np.ndarray] = None) -> None:
        points = np.asarray(points, dtype=float)
        self.limit = len(points) if limit is None else min(limit, len(points))
        if wins is None:
            wins = dominates(points[:, None, :], points[None, :, :])
        self.ranks = _peel(wins, penalty, self.limit, dominators) if len(points) else np.zeros(0, dtype=int)
        low, span = (points.min(axis=0), np.ptp(points, axis=0)) if len(points) else (0.0, 1.0)
        self._scaled = (points - low) / np.where(span > 0, span, 1.0)
        self._nets: dict[int, list[int]] = {}  # front -> its epsilon-net order, as far as worked out

    def _net(self, rank: int, count: int) -> list[int]:
        """The first `count` of a front in epsilon-net order."""
        if len(self._nets.get(rank, ())) < count:
            self._nets[rank] = epsilon_net(self._scaled, np.flatnonzero(self.ranks == rank), count)
        return self._nets[rank][:count]

    def order(self, count: Optional[int] = None) -> list[int]:
        """Indices of the best `count` points (at most `limit`, the default), best first."""
        count = self.limit if count is None else min(count, self.limit)
        order: list[int] = []
        for rank, size in enumerate(np.bincount(self.ranks) if len(self.ranks) else []):
            if len(order) >= count:
                break
            order += self._net(rank, min(int(size), count - len(order)))
        return order

    def among_best(self, indices: Sequence[int], count: Optional[int] = None) -> np.ndarray:
        """Which of the points at `indices` are among the best `count` (at most `limit`, the default): those on the
        fronts wholly inside, and the first of the front that the count cuts. Only the cut front's epsilon-net is
        worked out, and only when one of them is on it."""
        count = self.limit if count is None else min(count, self.limit)
        indices = np.asarray(indices, dtype=int)
        if not count or not len(indices):
            return np.zeros(len(indices), dtype=bool)
        held = np.cumsum(np.bincount(self.ranks))  # points on each front and the better ones
        cut = int(np.searchsorted(held, count))  # the first front that reaches the count
        ranks = self.ranks[indices]
        inside = ranks < cut
        on_cut = ranks == cut
        if on_cut.any():
            taken = self._net(cut, count - (int(held[cut - 1]) if cut else 0))
            inside[on_cut] = np.isin(indices[on_cut], taken)
        return inside

    def first(self, candidates: Sequence[int]) -> Optional[int]:
        """Of `candidates` (indices of points among the best), the one ranked first; None when there are none."""
        if not len(candidates):
            return None
        candidates = np.asarray(candidates)
        rank = int(self.ranks[candidates].min())
        tied = candidates[self.ranks[candidates] == rank]
        if len(tied) == 1:
            return int(tied[0])
        tied_set = set(tied.tolist())
        return next(i for i in self._net(rank, int(np.count_nonzero(self.ranks == rank))) if i in tied_set)


class Dominance:
    """Points that arrive one at a time (a rung's results), with who dominates whom kept as they come, and how many
    feasible points dominate each: one row, one column and one count a point, so that ranking them after each new
    one is a pass over the fronts it needs, not a comparison of every pair."""

    def __init__(self, objectives: int) -> None:
        self.points = np.zeros((0, objectives))
        self.penalty = np.zeros(0)
        self._wins = np.zeros((0, 0), dtype=bool)  # wins[j, i]: j dominates i; capacity grows by doubling
        self._dominators = np.zeros(0, dtype=np.int64)  # feasible points that dominate each

    def __len__(self) -> int:
        return len(self.points)

    def add(self, points: np.ndarray, penalty: Sequence[float]) -> None:
        """Points (minimised, one a row) and their constraint violations (0 when feasible)."""
        new = np.asarray(points, dtype=float).reshape(-1, self.points.shape[1])
        n, k = len(self.points), len(new)
        if n + k > len(self._wins):
            grown = np.zeros((max(8, 2 * (n + k)),) * 2, dtype=bool)
            grown[:n, :n] = self._wins[:n, :n]
            self._wins = grown
        everyone = np.vstack([self.points, new])
        self._wins[n:n + k, :n + k] = dominates(new[:, None, :], everyone[None, :, :])  # whom each new one dominates
        self._wins[:n, n:n + k] = dominates(self.points[:, None, :], new[None, :, :])  # who dominates each new one
        was_feasible = _feasible(self.penalty, n)
        self.points = everyone
        self.penalty = np.append(self.penalty, np.asarray(penalty, dtype=float))
        feasible_new = self.penalty[n:] <= 0
        self._dominators = np.append(self._dominators, np.zeros(k, dtype=np.int64))
        self._dominators += np.count_nonzero(self._wins[n:n + k, :n + k][feasible_new], axis=0)
        self._dominators[n:] += np.count_nonzero(self._wins[:n, n:n + k][was_feasible], axis=0)

    def ranking(self, limit: Optional[int] = None) -> Ranking:
        """The points ranked as far as their best `limit`."""
        n = len(self.points)
        return Ranking(self.points, self.penalty, limit, self._wins[:n, :n], self._dominators)


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


def staircase(points: list[tuple[float, float]], minimise: tuple[bool, bool]) -> tuple[list[float], list[float]]:
    """The 2-D Pareto front of `points` as a step line (x and y lists), from the best x to the best y."""
    if not points:
        return [], []
    signs = np.array([1.0 if m else -1.0 for m in minimise])
    scaled = np.asarray(points, dtype=float) * signs
    order = np.lexsort((scaled[:, 1], scaled[:, 0]))
    kept, best_y = [], np.inf
    for i in order:
        if scaled[i, 1] < best_y:
            kept.append(i)
            best_y = scaled[i, 1]
    xs, ys = [], []
    for k, i in enumerate(kept):
        x, y = points[i]
        if k:
            xs.append(x)
            ys.append(ys[-1])
        xs.append(x)
        ys.append(y)
    return xs, ys
