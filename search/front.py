"""The Pareto front of a study's trials, the seed noise of its leads, and choosing a winner from it (--trial, --pick,
--knee). Works on trials as read from the study (storage/records.py), in the objectives' own directions."""

from __future__ import annotations

import operator
import re
from typing import Optional, Sequence

import numpy as np

from .errors import SpaceError
from .metrics import SD_SUFFIX, SEEDED_METRICS
from .pareto import front_mask, minimised
from .storage import StoredTrial

_PICK_RE = re.compile(r"^\s*([A-Za-z_][\w]*)\s*(<=|>=|<|>|==)\s*([-+0-9.eE]+)\s*$")
_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt, "==": operator.eq}
NOISE_SIGMAS = 2  # a lead counts once it exceeds this many standard errors of the difference


def candidates(trials: Sequence[StoredTrial]) -> list[StoredTrial]:
    """The trials that may be on the front: complete (measured at the full budget) and feasible."""
    return [t for t in trials if t.state == "COMPLETE" and t.values is not None and t.feasible]


def front_trials(trials: Sequence[StoredTrial], directions: Sequence[str]) -> list[StoredTrial]:
    """The non-dominated trials among the complete, feasible ones, by number (twins are PRUNED: each measured
    config appears once)."""
    pool = candidates(trials)
    if not pool:
        return []
    keep = front_mask(minimised([t.values for t in pool], directions))
    return sorted((t for t, kept in zip(pool, keep) if kept), key=lambda t: t.number)


def seed_noise(trials: Sequence[StoredTrial], metric: str) -> Optional[float]:
    """The sd of one run of `metric`, pooled over the seed-confirmed trials (the root mean of their variances:
    each trial's own sd, from a few seeds, is too rough alone); None where no trial was confirmed."""
    variances = [t.user_attrs[metric + SD_SUFFIX] ** 2 for t in trials
                 if isinstance(t.user_attrs.get(metric + SD_SUFFIX), (int, float))]
    return float(np.sqrt(np.mean(variances))) if variances else None


def leads_within_noise(trials: Sequence[StoredTrial], front: Sequence[StoredTrial], names: Sequence[str],
                       directions: Sequence[str]) -> dict[int, str]:
    """Front members whose lead over a trial they dominate is within the seed noise, each with a note naming the
    nearest such trial. That trial is dominated only because a seeded objective (val_loss) is ahead by less than
    NOISE_SIGMAS standard errors of the difference of the two means; with other seeds it could join the front."""
    pool = candidates(trials)
    noise = {i: seed_noise(pool, name) for i, name in enumerate(names) if name in SEEDED_METRICS}
    noise = {i: sd for i, sd in noise.items() if sd}
    members = {t.number for t in front}
    others = [t for t in pool if t.number not in members]
    if not noise or not others:
        return {}
    points = minimised([t.values for t in others], directions)
    seeds = np.array([t.user_attrs.get("seeds", 1) for t in others], dtype=float)
    notes = {}
    for leader in front:
        lead = points - minimised([leader.values], directions)[0]
        dominated = (lead >= 0).all(axis=1)
        nearest = None
        for i, sd in noise.items():  # the dominated trial whose lead is the smallest share of its noise band
            band = NOISE_SIGMAS * sd * np.sqrt(1 / leader.user_attrs.get("seeds", 1) + 1 / seeds)
            share = np.where(dominated & (lead[:, i] < band), lead[:, i] / band, np.inf)
            k = int(np.argmin(share))
            if np.isfinite(share[k]) and (nearest is None or share[k] < nearest[0]):
                nearest = (share[k], others[k].number, names[i], lead[k, i], band[k])
        if nearest is not None:
            _, number, name, lead_i, band_i = nearest
            notes[leader.number] = f"lead over #{number} within noise ({name} {lead_i:.2g} < {band_i:.2g})"
    return notes


def reference_point(trials: Sequence[StoredTrial], directions: Sequence[str], margin: float = 0.1) -> list[float]:
    """The worst value of each objective over the complete trials, pushed out by a margin."""
    values = np.array([t.values for t in trials if t.state == "COMPLETE" and t.values is not None], dtype=float)
    worst = [values[:, i].max() if d.startswith("min") else values[:, i].min() for i, d in enumerate(directions)]
    return [w + margin * abs(w) if d.startswith("min") else w - margin * abs(w) for w, d in zip(worst, directions)]


def best(trials: Sequence[StoredTrial], names: Sequence[str], directions: Sequence[str]) -> StoredTrial:
    """The trial with the lowest val_loss (or the best first objective)."""
    index = list(names).index("val_loss") if "val_loss" in names else 0
    sign = 1 if directions[index].startswith("min") else -1
    return min(trials, key=lambda t: sign * t.values[index])


def pick(front: Sequence[StoredTrial], expression: str, names: Sequence[str], directions: Sequence[str]) -> StoredTrial:
    """The best front trial (lowest val_loss) that meets every condition of 'latency_ms<=2,peak_mem_mb<=300'."""
    conditions = []
    for part in expression.split(","):
        match = _PICK_RE.match(part)
        if not match:
            raise SpaceError(f"--pick: cannot read {part.strip()!r}; expected METRIC<=NUMBER (also >=, <, >, ==), comma-separated")
        conditions.append((match[1], match[2], float(match[3])))
    known = set(names) | {k for t in front for k, v in t.user_attrs.items() if isinstance(v, (int, float))}
    for metric, _, _ in conditions:
        if metric not in known:
            raise SpaceError(f"--pick: unknown metric {metric!r}; known: {', '.join(sorted(known))}")

    def value(trial: StoredTrial, metric: str) -> float:
        if metric in names:
            return trial.values[list(names).index(metric)]
        return trial.user_attrs.get(metric, float("nan"))

    chosen = [t for t in front if all(_OPS[op](value(t, m), bound) for m, op, bound in conditions)]
    if not chosen:
        nearest = ", ".join(f"{m} from {min(value(t, m) for t in front):.4g} to {max(value(t, m) for t in front):.4g}"
                            for m, _, _ in conditions)
        raise SpaceError(f"--pick: no trial on the front of {len(front)} meets {expression!r} (on the front: {nearest})")
    return best(chosen, names, directions)


def knee(front: Sequence[StoredTrial], directions: Sequence[str]) -> StoredTrial:
    """The front trial nearest the ideal point once each objective is scaled to [0, 1] across the front."""
    points = minimised([t.values for t in front], directions)
    span = points.max(axis=0) - points.min(axis=0)
    scaled = (points - points.min(axis=0)) / np.where(span > 0, span, 1.0)
    return front[int(np.argmin(np.linalg.norm(scaled, axis=1)))]
