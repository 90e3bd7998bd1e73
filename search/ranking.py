"""Rank agreement between two measurements of the same configs (two seeds, two budgets, a proxy and a training):
Spearman's rho and Kendall's tau-b, both with ties handled, and the seed noise of paired runs."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: the correlation of the ranks (ties share their mean rank); nan under 3 pairs or for a
    constant side."""
    if len(x) < 3:
        return math.nan
    rx, ry = pd.Series(x, dtype=float).rank().to_numpy(), pd.Series(y, dtype=float).rank().to_numpy()
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def kendall(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b: concordant minus discordant pairs, over the pairs untied on each side; nan under 3 pairs."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3:
        return math.nan
    upper = np.triu_indices(len(x), 1)
    dx, dy = np.sign(x[:, None] - x[None, :])[upper], np.sign(y[:, None] - y[None, :])[upper]
    untied = math.sqrt(np.count_nonzero(dx) * np.count_nonzero(dy))
    return float((dx * dy).sum() / untied) if untied else math.nan


def paired_sd(first: Sequence[float], second: Sequence[float]) -> float:
    """The standard deviation of one run, pooled over configs each run twice (on two seeds): the root mean of
    (a - b)^2 / 2, each pair's unbiased variance."""
    a, b = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    return float(np.sqrt(np.mean((a - b) ** 2 / 2))) if len(a) else math.nan


def noise_band(sd: float, seeds: int = 1) -> float:
    """The smallest difference between two configs' means over `seeds` runs each that exceeds two standard errors
    of a difference: below it, an ordering is as likely noise as not."""
    return 2 * sd * math.sqrt(2 / seeds)
