"""The timing screen: a config predicted to break a timing constraint (constraints.decode_ms: {max: 2.0}) by far is
refused before it trains.

Each constrained timing is predicted by a Bayesian linear regression (scikit-learn's BayesianRidge) of its logarithm
on what the cheap screen knows of a config (its choices, and its size and FLOPs on a log scale), fitted on the
study's own measured timings and refitted as they arrive. A config is refused only when even the optimistic end of
its one-sided 95% interval breaks the bound: one near the limit trains and is measured, as any other. Until
MIN_MEASURED configs carry a timing, nothing is refused.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional

import numpy as np

from .errors import TrialFailure
from .metrics import METRICS
from .outcome import is_measured
from .predictor import config_features, feature_encoder

TIMED = tuple(name for name, metric in METRICS.items() if metric.source in ("latency", "decode") and name.endswith("_ms"))
MIN_MEASURED = 8  # configs with a measured timing before the screen refuses on it
Z95 = 1.6449  # the optimistic end of a one-sided 95% interval
WITHIN = 0.10  # the screen's accuracy: the share of held-out configs it predicts within 10%
SIZES = ("params", "nonemb_params", "flops")  # the cheap metrics a config must come with to be judged

Fit = Callable[[Mapping[str, Any]], tuple[float, float]]  # features -> the log timing's mean and sd


class TimingScreen:
    """Learns measured timings (`learn`), refuses what they predict far over a bound (`refusal`), and says how well
    it predicts (`accuracy`)."""

    def __init__(self, limits: Mapping[str, Mapping[str, float]]) -> None:
        self.limits = dict(limits)
        self.measured: dict[str, tuple[dict[str, Any], dict[str, float]]] = {}  # config key -> features, timings
        self.refused: set[str] = set()  # the configs refused (a config drawn again may be refused again)
        self._learnt = 0  # timings taken in so far: a fit is made again when this moves on
        self._fits: dict[str, tuple[int, Optional[Fit]]] = {}  # timing -> (what it was fitted after, the fit)

    @classmethod
    def of(cls, constraints: Mapping[str, Mapping[str, float]]) -> Optional[TimingScreen]:
        """The screen of a space's timing constraints; None when it has none."""
        limits = {name: bound for name, bound in constraints.items() if name in TIMED}
        return cls(limits) if limits else None

    def learn(self, key: str, params: Mapping[str, Any], metrics: Mapping[str, Any]) -> None:
        """A measured config's timings (those constrained), with its features."""
        timings = {name: float(metrics[name]) for name in self.limits
                   if isinstance(metrics.get(name), (int, float)) and math.isfinite(metrics[name]) and metrics[name] > 0}
        if timings:
            self.measured[key] = (config_features(params, metrics), timings)
            self._learnt += 1

    def learn_record(self, record: Mapping[str, Any], params: Mapping[str, Any]) -> None:
        """A trial's record, learnt if it measured its own config at some budget (not a reused result, and not a
        baseline, whose own layer config has no searched params to learn from)."""
        if is_measured(record) and record.get("reused_from") is None and record.get("baseline") is None:
            self.learn(record["config_key"], params, record)

    def screen(self, suggestion: Any) -> Optional[TrialFailure]:
        """The refusal of a drawn suggestion, or None. Only a plain suggestion is judged: a baseline, a resume or a
        retry was queued, and is owed its training."""
        why = None if suggestion.attrs else self.refusal(suggestion.key, suggestion.params, suggestion.metrics)
        return None if why is None else TrialFailure("screened", why, dict(suggestion.metrics))

    def summary(self) -> dict[str, Any]:
        """What the screen refused and how well it predicts, as the study keeps it for the review."""
        return {"refused": len(self.refused), "measured": len(self.measured),
                "accuracy": {name: {"within_10pct": share, "configs": count}
                             for name, (share, count) in self.accuracy().items()}}

    def refusal(self, key: str, params: Mapping[str, Any], metrics: Mapping[str, Any]) -> Optional[str]:
        """Why a config is refused (its predicted timing far over a bound), or None. A config measured already is
        judged by what it measured; one whose sizes the screen was not told is not judged."""
        if key in self.measured or not all(metrics.get(size) for size in SIZES):
            return None
        why = self._verdict(config_features(params, metrics))
        if why is not None:
            self.refused.add(key)
        return why

    def _verdict(self, features: Mapping[str, Any]) -> Optional[str]:
        """The first bound the features' predicted timing breaks even at the optimistic end of its interval."""
        for name, bound in self.limits.items():
            fit = self._fit(name)
            if fit is None:
                continue
            mean, sd = fit(features)
            low, high = math.exp(mean - Z95 * sd), math.exp(mean + Z95 * sd)
            points = len(self._rows(name))
            if "max" in bound and low > bound["max"]:
                return (f"{name} predicted {math.exp(mean):.3g} ms (95% sure above {low:.3g}) > max {bound['max']:.4g}, "
                        f"by the timings of {points} measured configs")
            if "min" in bound and high < bound["min"]:
                return (f"{name} predicted {math.exp(mean):.3g} ms (95% sure below {high:.3g}) < min {bound['min']:.4g}, "
                        f"by the timings of {points} measured configs")
        return None

    def accuracy(self) -> dict[str, tuple[float, int]]:
        """For each constrained timing with enough configs: the share of configs, each left out of the fit in turn,
        predicted within WITHIN of what it measured, and how many were checked."""
        found = {}
        for name in self.limits:
            rows = self._rows(name)
            if len(rows) <= MIN_MEASURED:
                continue
            hits = 0
            for i, (features, ms) in enumerate(rows):
                mean, _ = _regression(rows[:i] + rows[i + 1:])(features)
                hits += abs(math.exp(mean) / ms - 1) <= WITHIN
            found[name] = (hits / len(rows), len(rows))
        return found

    def _rows(self, name: str) -> list[tuple[dict[str, Any], float]]:
        return [(features, timings[name]) for features, timings in self.measured.values() if name in timings]

    def _fit(self, name: str) -> Optional[Fit]:
        """The fit of one timing, made again only when it has new points."""
        fitted = self._fits.get(name)
        if fitted is None or fitted[0] != self._learnt:
            rows = self._rows(name)
            self._fits[name] = fitted = (self._learnt, _regression(rows) if len(rows) >= MIN_MEASURED else None)
        return fitted[1]


def _regression(rows: list[tuple[dict[str, Any], float]]) -> Fit:
    """BayesianRidge of log ms on the standardised features; its predictive mean and sd (noise included)."""
    from sklearn.linear_model import BayesianRidge

    encode = feature_encoder(features for features, _ in rows)
    x = np.array([encode(features) for features, _ in rows])
    model = BayesianRidge(max_iter=500).fit(x, np.log([ms for _, ms in rows]))

    def predict(features: Mapping[str, Any]) -> tuple[float, float]:
        mean, sd = model.predict(encode(features)[None, :], return_std=True)
        return float(mean[0]), float(sd[0])

    return predict
