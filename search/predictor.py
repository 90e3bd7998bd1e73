"""The validation loss a config would reach at the user's training budget (train.target_tokens), predicted from the
study's own measurements at every budget, with an uncertainty.

One model for the whole study, so that configs lend each other strength: a Bayesian linear regression (scikit-learn's
BayesianRidge, its prior and noise fitted to the data) of each measured loss on a power law in the budget,
L(c, t) = E_c + A_c * (t / t_brief) ** -alpha, with one alpha for the study (chosen by the marginal likelihood),
and each config's E_c and A_c linear in its features (its searched choices, its size in parameters and FLOPs) plus
an offset of its own, shrunk towards the shared fit. A config measured only briefly is predicted mostly from configs
like it that climbed further; one measured at the target is not predicted at all.

How far to trust it is measured on the study itself: each config measured past the brief budget is left out of the
fit beyond its brief points, predicted at its longest budget, and compared with what it measured there (Spearman over
those configs, and how often the interval held the truth). The intervals are widened by what that check finds, never
narrowed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

ALPHAS = tuple(np.round(np.linspace(0.05, 1.0, 20), 3))  # the budget exponents tried
Z90 = 1.6449  # a two-sided 90% interval is mean +- Z90 sd
MIN_CHECKED = 3  # configs measured past the brief budget before the predictor's accuracy can be stated


@dataclass(frozen=True)
class Prediction:
    """A config's loss at the target: measured there, or predicted with its sd and how far it reached past."""

    mean: float
    sd: float
    measured: bool
    last_tokens: int  # the longest budget the config was measured at

    def optimistic(self, z: float = 1.0) -> float:
        """The low end of the interval: how good the config could still turn out (what promotions rank by)."""
        return self.mean - z * self.sd


@dataclass(frozen=True)
class Accuracy:
    """How the predictor did on the study's own configs, left out one at a time."""

    configs: int  # configs checked (measured past the brief budget)
    tokens: int  # the budget they were checked at (the longest with enough configs)
    spearman: float  # of predicted against measured loss there (nan under MIN_CHECKED configs)
    coverage: float  # share of the checked configs whose 90% interval held the measured loss
    scale: float  # how much the intervals were widened so that they cover as they claim


@dataclass
class StudyData:
    """What the predictor learns from: each config's features and its measured points (tokens -> val_loss)."""

    features: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> {name: number or choice}
    points: dict[str, dict[int, float]] = field(default_factory=dict)  # key -> {tokens: val_loss}

    def add(self, key: str, features: Mapping[str, Any], points: Mapping[Any, float]) -> None:
        self.features.setdefault(key, dict(features))
        self.points.setdefault(key, {}).update({int(t): float(v) for t, v in points.items() if v is not None and math.isfinite(v)})

    def snapshot(self) -> StudyData:
        """A copy that later additions leave alone (a config's features are kept as first given, so they are shared)."""
        return StudyData(dict(self.features), {key: dict(points) for key, points in self.points.items()})


class TargetPredictor:
    """Fitted on a study's points (StudyData); `predict(key)` for any config it was given."""

    def __init__(self, brief_tokens: int, target_tokens: int) -> None:
        self.brief, self.target = brief_tokens, target_tokens
        self.alpha = 0.5
        self.scale = 1.0
        self.accuracy: Optional[Accuracy] = None
        self._shared: Any = None  # the shared fit (BayesianRidge over the features)
        self._own: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # key -> its own offset and slope: mean, covariance
        self._noise = 0.0  # the variance of a measurement around its config's own curve
        self._spread = 0.0  # the prior variance of a config's own offset and slope
        self._encode: Any = None
        self._encoded: dict[str, np.ndarray] = {}  # key -> its standardised features, encoded once
        self._predicted: dict[tuple[str, int], tuple[float, float]] = {}  # (key, tokens) -> mean and sd, unscaled

    # -- the design -------------------------------------------------------------------------------------------------

    def _features(self, key: str) -> np.ndarray:
        if key not in self._encoded:
            self._encoded[key] = self._encode(self.data.features[key])
        return self._encoded[key]

    def _shared_rows(self, keys: Sequence[str], tokens: np.ndarray, alpha: float) -> np.ndarray:
        """The shared terms of (config, tokens) pairs: the features, the budget's power, and their products."""
        z = np.array([self._features(key) for key in keys]).reshape(len(keys), -1)
        phi = ((tokens / self.brief) ** -alpha)[:, None]
        return np.hstack([z, phi, phi * z])

    def _points(self, data: StudyData, leave_out: Optional[str] = None) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Every (config, tokens, loss) point; `leave_out` keeps only that config's points up to the brief budget."""
        keys, tokens, losses = [], [], []
        for key, points in data.points.items():
            for t, loss in points.items():
                if key != leave_out or t <= self.brief:
                    keys.append(key)
                    tokens.append(float(t))
                    losses.append(loss)
        return keys, np.array(tokens), np.array(losses)

    def _fit_shared(self, keys: Sequence[str], tokens: np.ndarray, y: np.ndarray, alphas: Sequence[float]) -> tuple[Any, float]:
        """The shared fit with the budget exponent (of `alphas`) that the data makes most likely."""
        from sklearn.linear_model import BayesianRidge

        best = None
        for alpha in alphas:
            model = BayesianRidge(compute_score=True, max_iter=500).fit(self._shared_rows(keys, tokens, alpha), y)
            if best is None or model.scores_[-1] > best[0]:
                best = (model.scores_[-1], model, alpha)
        return best[1], best[2]

    def _own_terms(self, keys: Sequence[str], tokens: np.ndarray, residuals: np.ndarray,
                   only: Optional[str] = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Each config's own offset and slope (on the budget's power): its residuals from the shared fit, shrunk
        towards zero by the spread configs show beyond the noise (a Gaussian prior, a 2x2 posterior each)."""
        by_key: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            if only is None or key == only:
                by_key.setdefault(key, []).append(i)
        own = {}
        prior = np.eye(2) / max(self._spread, 1e-12)
        for key, rows in by_key.items():
            f = np.stack([np.ones(len(rows)), (tokens[rows] / self.brief) ** -self.alpha], axis=1)
            cov = np.linalg.inv(f.T @ f / self._noise + prior)
            own[key] = (cov @ f.T @ residuals[rows] / self._noise, cov)
        return own

    def _variances(self, keys: Sequence[str], tokens: np.ndarray, residuals: np.ndarray) -> tuple[float, float]:
        """The noise of a measurement around its config's own least-squares curve, and the spread of the configs'
        own offsets and slopes beyond it (the method of moments over all configs)."""
        by_key: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            by_key.setdefault(key, []).append(i)
        within, dof, total, size = 0.0, 0, 0.0, 0.0
        for rows in by_key.values():
            f = np.stack([np.ones(len(rows)), (tokens[rows] / self.brief) ** -self.alpha], axis=1)
            r = residuals[rows]
            if len(rows) > 2:
                fitted = f @ np.linalg.lstsq(f, r, rcond=None)[0]
                within += float(np.sum((r - fitted) ** 2))
                dof += len(rows) - 2
            total += float(r @ r)
            size += float(np.sum(f * f))
        noise = within / dof if dof else 1.0 / self._shared.alpha_
        noise = max(noise, 1e-10)
        spread = max((total - noise * len(residuals)) / max(size, 1e-12), noise * 1e-3)
        return noise, spread

    # -- fitting and predicting ---------------------------------------------------------------------------------

    def fit(self, data: StudyData, check: bool = True, alpha: Optional[float] = None) -> TargetPredictor:
        """Fit on every point of the study, with the budget exponent `alpha` if given, else the likeliest of ALPHAS;
        with `check`, also measure its accuracy config by config (Accuracy)."""
        self.data = data
        self._encode, self._encoded, self._predicted = feature_encoder(data.features.values()), {}, {}
        keys, tokens, y = self._points(data)
        self._shared, self.alpha = self._fit_shared(keys, tokens, y, ALPHAS if alpha is None else [alpha])
        residuals = y - self._shared.predict(self._shared_rows(keys, tokens, self.alpha))
        self._noise, self._spread = self._variances(keys, tokens, residuals)
        self._own = self._own_terms(keys, tokens, residuals)
        self.scale = 1.0
        if check:
            self.accuracy = self._check(data)
            self.scale = self.accuracy.scale
        # Every config's loss at the target, at once: the driver's promotions rank a rung's configs by it after each
        # fit, and a fit runs in the background.
        keys = [key for key, points in data.points.items() if self.target not in points and key in data.features]
        if keys:
            predicted = self._raw(self._shared, [self._own.get(key) for key in keys], keys, self.target)
            self._predicted.update(zip([(key, self.target) for key in keys], predicted))
        return self

    def _raw(self, shared: Any, own: Sequence[Optional[tuple[np.ndarray, np.ndarray]]], keys: Sequence[str],
             tokens: int) -> list[tuple[float, float]]:
        """Mean and sd of a measurement of each of `keys` (with its own terms, None for a config with no points) at
        `tokens`: the shared fit's, its own terms', and the noise (the shared fit's mean and variance as
        BayesianRidge.predict gives them, without its checks on the input), for all keys in a few array operations."""
        x = self._shared_rows(keys, np.full(len(keys), float(tokens)), self.alpha)
        f = np.array([1.0, (tokens / self.brief) ** -self.alpha])
        unknown = (np.zeros(2), np.eye(2) * self._spread)
        own_means, own_covs = map(np.array, zip(*(terms or unknown for terms in own)))
        means = x @ shared.coef_ + shared.intercept_ + own_means @ f
        centred = x - shared.X_offset_
        variances = (np.einsum("ij,jk,ik->i", centred, shared.sigma_, centred)
                     + np.einsum("j,ijk,k->i", f, own_covs, f) + self._noise)
        return [(float(mean), math.sqrt(max(float(variance), 0.0))) for mean, variance in zip(means, variances)]

    def predict(self, key: str, tokens: Optional[int] = None) -> Prediction:
        """The config's loss at `tokens` (default the target): measured where it was, else predicted."""
        tokens = tokens or self.target
        points = self.data.points.get(key, {})
        last = max(points, default=0)
        if tokens in points:
            return Prediction(points[tokens], 0.0, True, last)
        if (key, tokens) not in self._predicted:  # fixed until the next fit: promotions ask for it at every ranking
            self._predicted[key, tokens] = self._raw(self._shared, [self._own.get(key)], [key], tokens)[0]
        mean, sd = self._predicted[key, tokens]
        return Prediction(mean, sd * self.scale, False, last)

    def _check(self, data: StudyData) -> Accuracy:
        """Leave each config measured past the brief budget out of the fit beyond its brief points, predict its
        loss at the longest budget that at least MIN_CHECKED configs reached, and compare. The budget exponent and
        the variances are the full fit's; the shared fit and the config's own terms are fitted again without it."""
        beyond = [t for points in data.points.values() for t in points if t > self.brief]
        budgets = sorted({t for t in beyond if sum(t in p for p in data.points.values()) >= MIN_CHECKED}, reverse=True)
        if not budgets:
            reached = max(beyond, default=self.brief)
            return Accuracy(sum(any(t > self.brief for t in p) for p in data.points.values()), reached, math.nan,
                            math.nan, 1.0)
        budget = budgets[0]
        checked = [key for key, points in data.points.items() if budget in points]
        predicted, measured, z = [], [], []
        for key in checked:
            keys, tokens, y = self._points(data, leave_out=key)
            shared, _ = self._fit_shared(keys, tokens, y, [self.alpha])
            residuals = y - shared.predict(self._shared_rows(keys, tokens, self.alpha))
            mean, sd = self._raw(shared, [self._own_terms(keys, tokens, residuals, only=key).get(key)], [key], budget)[0]
            predicted.append(mean)
            measured.append(data.points[key][budget])
            z.append((data.points[key][budget] - mean) / max(sd, 1e-9))
        z = np.array(z)
        scale = max(1.0, float(np.sqrt(np.mean(z ** 2))))  # widen only: a sd that undersells the error grows
        coverage = float(np.mean(np.abs(z) <= Z90 * scale))
        return Accuracy(len(checked), budget, _spearman(predicted, measured), coverage, scale)


def feature_encoder(features: Iterable[Mapping[str, Any]]) -> Callable[[Mapping[str, Any]], np.ndarray]:
    """Standardised features of a config, by the configs given: numbers as they are (sizes as logarithms), each
    choice one-hot."""
    features = list(features)
    numeric = sorted({n for f in features for n, v in f.items() if _number(v)})
    choices = sorted({(n, str(v)) for f in features for n, v in f.items() if not _number(v)})

    def raw(f: Mapping[str, Any]) -> list[float]:
        return [_numeric_value(f.get(n)) for n in numeric] + [float(str(f.get(n)) == v) for n, v in choices]

    rows = np.array([raw(f) for f in features], dtype=float).reshape(len(features), -1)
    mean, std = (rows.mean(axis=0), rows.std(axis=0)) if len(rows) else (0.0, 1.0)
    std = np.where(std > 0, std, 1.0)
    return lambda f: np.nan_to_num((np.array(raw(f), dtype=float) - mean) / std)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numeric_value(value: Any) -> float:
    return float(value) if _number(value) else 0.0


def _spearman(x: Sequence[float], y: Sequence[float]) -> float:
    from .ranking import spearman

    return spearman(x, y)


def config_features(params: Mapping[str, Any], metrics: Mapping[str, Any]) -> dict[str, Any]:
    """What the predictor knows of a config before training it: its searched params and its cheap size metrics."""
    features = {f"param:{k}": v if isinstance(v, (str, int, float, bool, type(None))) else json.dumps(v)
                for k, v in params.items()}  # a list or mapping choice as the JSON text Optuna stores: one spelling
    features.update({f"log_{k}": math.log(metrics[k]) for k in ("nonemb_params", "params", "flops")
                     if _number(metrics.get(k)) and metrics[k] > 0})  # sizes on a log scale
    return features
