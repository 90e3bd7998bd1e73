"""The validation loss a config would reach at the user's training budget (train.target_tokens), predicted from the
study's own measurements at every budget, with an uncertainty.

One model for the whole study, so that configs lend each other strength, in two parts:

- a scaling law shared by all configs, L(N, t) = E + A (N / N_median)^-a + B (t / t_brief)^-b, in the config's
  non-embedding parameters N and the budget t, fitted to every measured point by least squares (scipy);
- each config's departure from the law, a Gaussian process over the log budget (scikit-learn): a departure of its
  own, correlated between nearby budgets and forgotten with distance, plus one shared with configs of like features
  (its searched choices, its sizes), and the noise of a measurement, all fitted by the marginal likelihood.

So a config measured only briefly is predicted near the law at its size, moved by what its own curve says (the less,
the further the target lies past it) and by what configs like it that climbed further measured. A config measured at
the target is not predicted at all.

How far to trust it is measured on the study itself: each config measured past the brief budget is left out of the
fit beyond its brief points, predicted at its longest budget, and compared with what it measured (Spearman over
those configs, and how often the interval held the truth). The intervals are widened by what that check finds, never
narrowed.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Iterable, Mapping, Optional, Sequence

import numpy as np

Z90 = 1.6449  # a two-sided 90% interval is mean +- Z90 sd
MIN_CHECKED = 3  # configs measured past the brief budget before the predictor's accuracy can be stated
MAX_FIT_POINTS = 600  # the kernel is fitted on at most this many points (the configs with most points first); every
# prediction is still conditioned on all of them
SIZE = "log_nonemb_params"  # the feature the law's size term reads
KERNEL_RESTARTS = 2  # the kernel's search starts again this many times from random settings (seeded: fits repeat)

# A length scale at its bound, or a search stopped at its step limit, is an answer here, not a warning per fit; set
# once, for the module, since a fit runs in a thread of its own and catching warnings is not thread-safe.
warnings.filterwarnings("ignore", category=UserWarning, module=r"sklearn\.gaussian_process")  # ConvergenceWarning's base


@dataclass(frozen=True)
class Prediction:
    """A config's loss at the target: measured there, or predicted with its sd and how far it reached past."""

    mean: float
    sd: float  # as its interval states it: the fit's own, widened by the study's check
    measured: bool
    last_tokens: int  # the longest budget the config was measured at
    checked: bool = True  # whether a check stands behind its sd: an unchecked sd is the fit's own, untested (it can be
    # far too narrow), and is shown as no interval at all
    fit_sd: Optional[float] = None  # the fit's own sd, before the check widened it (when it differs from sd)

    def optimistic(self, z: float = 1.0) -> float:
        """The low end of the fit's own interval: how good the config could still turn out (what promotions rank by;
        the check's widening, the same law sd added to every config, would only blur the differences between them)."""
        return self.mean - z * (self.sd if self.fit_sd is None else self.fit_sd)


@dataclass(frozen=True)
class Widening:
    """How the check widened the intervals so that they cover as they claim: a factor on every sd (the error of a
    config left out), and the sd of the law's own extrapolation, added to every prediction."""

    scale: float = 1.0
    law_sd: float = 0.0
    checked: bool = False  # whether a check measured it: the study had too few configs past the brief budget otherwise

    def sd(self, sd: float) -> float:
        return math.hypot(sd * self.scale, self.law_sd)


@dataclass(frozen=True)
class KernelFit:
    """A fitted kernel of the departures and the feature width it was fitted for: a later fit of the same width
    may keep it rather than search again (`TargetPredictor.fit(kernel=...)`)."""

    features: int
    kernel: Any


@dataclass(frozen=True)
class Accuracy:
    """How the predictor did on the study's own configs, left out one at a time."""

    configs: int  # configs checked (measured past the brief budget)
    tokens: int  # the budget they were checked at (the longest with enough configs)
    spearman: float  # of predicted against measured loss there (nan under MIN_CHECKED configs)
    coverage: float  # share of the checked configs whose 90% interval held the measured loss
    widening: Widening  # what the intervals were widened by


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
        self.law = np.zeros(5)  # E, log A, a, log B, b of the shared scaling law
        self.kernel = KernelFit(0, None)  # the fitted kernel of the departures, for its width of features
        self.widening = Widening()
        self.accuracy: Optional[Accuracy] = None
        self._departures: Any = None  # the Gaussian process of the departures from the law, conditioned on all points
        self._median_size = 0.0
        self._budgets = 0  # how many budgets were measured: with one, the law's budget term rests on its start
        self._encode: Any = None
        self._index: dict[str, int] = {}  # key -> the config's column value: one per config, so that its own term is its own
        self._predicted: dict[tuple[str, int], tuple[float, float]] = {}  # (key, tokens) -> mean and sd, unscaled

    # -- the design -------------------------------------------------------------------------------------------------

    def _points(self, data: StudyData, brief_only: Collection[str] = ()) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Every (config, tokens, loss) point, but those of the configs `brief_only` past the brief budget."""
        keys, tokens, losses = [], [], []
        for key, points in data.points.items():
            for t, loss in points.items():
                if key not in brief_only or t <= self.brief:
                    keys.append(key)
                    tokens.append(float(t))
                    losses.append(loss)
        return keys, np.array(tokens), np.array(losses)

    def _size(self, keys: Sequence[str]) -> np.ndarray:
        """Each config's log non-embedding parameters about the study's median (the median where it is unknown)."""
        return np.array([_numeric_value(self.data.features.get(key, {}).get(SIZE, self._median_size))
                         for key in keys]) - self._median_size

    def _law(self, law: np.ndarray, keys: Sequence[str], tokens: np.ndarray) -> np.ndarray:
        return _law_at(law, self._size(keys), np.log(tokens / self.brief))

    def _fit_law(self, keys: Sequence[str], tokens: np.ndarray, y: np.ndarray, start: Optional[np.ndarray] = None) -> np.ndarray:
        """The shared law by least squares: its floor between 0 and the lowest loss measured, its exponents between 0
        and 2 (size) or 3 (budget); with a single budget measured, the budget exponent stays at its start."""
        from scipy.optimize import least_squares

        floor = max(float(y.min()), 1e-6)
        low, high = np.array([0.0, -12.0, 0.0, -12.0, 0.0]), np.array([floor, 5.0, 2.0, 5.0, 3.0])
        if start is None:
            start = np.array([0.5 * floor, math.log(0.1), 0.3, math.log(max(float(y.max() - y.min()), 1e-3)), 0.5])
        start = np.clip(start, low + 1e-9, high - 1e-9)
        if len(set(tokens.tolist())) < 2:  # nothing to tell the budget exponent by: hold it where it starts
            low[4], high[4] = start[4] - 1e-9, start[4] + 1e-9
        sizes, log_budgets = self._size(keys), np.log(tokens / self.brief)
        return least_squares(lambda law: _law_at(law, sizes, log_budgets) - y, start, bounds=(low, high)).x

    def _design(self, keys: Sequence[str], tokens: np.ndarray) -> np.ndarray:
        """The departures' inputs: the log budget, the config's own column value and its standardised features."""
        z = np.array([self._features(key) for key in keys]).reshape(len(keys), -1)
        return np.column_stack([np.log(tokens / self.brief), [self._index[key] for key in keys], z])

    def _features(self, key: str) -> np.ndarray:
        return self._encode(self.data.features.get(key, {}))

    def _new_kernel(self, features: int) -> Any:
        """Its own departure (over the budget, within one config), one shared by configs of like features (over the
        budget and the features), and the noise; each term's size and length scales left to the marginal likelihood."""
        from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

        from .kernels import OnColumns

        def over_budget() -> Any:
            return OnColumns(RBF(1.0, (0.1, 20.0)), [0])

        same_config = OnColumns(RBF(0.01, "fixed"), [1])  # 1 within a config, 0 between (their values differ by 1)
        kernel = ConstantKernel(1e-2, (1e-6, 1.0)) * over_budget() * same_config + WhiteKernel(1e-4, (1e-8, 1e-1))
        if features:
            alike = OnColumns(RBF(math.sqrt(features), (0.3, 100.0)), list(range(2, 2 + features)))
            kernel += ConstantKernel(1e-3, (1e-6, 1.0)) * over_budget() * alike
        return kernel

    def _condition(self, kernel: Any, keys: Sequence[str], tokens: np.ndarray, departures: np.ndarray,
                   optimise: bool) -> Any:
        """The Gaussian process of the departures given these points, its kernel fitted to them if `optimise`."""
        from sklearn.gaussian_process import GaussianProcessRegressor

        search = {"optimizer": "fmin_l_bfgs_b", "n_restarts_optimizer": KERNEL_RESTARTS} if optimise else {"optimizer": None}
        return GaussianProcessRegressor(kernel, random_state=0, **search).fit(self._design(keys, tokens), departures)

    # -- fitting and predicting ---------------------------------------------------------------------------------

    def fit(self, data: StudyData, check: bool = True, kernel: Optional[KernelFit] = None) -> TargetPredictor:
        """Fit on every point of the study, keeping a former fit's `kernel` where it was fitted for as many features
        (a fit that skips the kernel's search), else searching one; with `check`, also measure its accuracy config by
        config (Accuracy)."""
        self.data = data
        broken = next((key for key, f in data.features.items() if not all(map(math.isfinite, map(_numeric_value, f.values())))), None)
        if broken is not None:
            raise ValueError(f"config {broken} has a feature that is not a finite number: {data.features[broken]}")
        self._encode, self._predicted = feature_encoder(data.features.values()), {}
        self._index = {key: i for i, key in enumerate(dict.fromkeys([*data.features, *data.points]))}
        sizes = [_numeric_value(f[SIZE]) for f in data.features.values() if SIZE in f]
        self._median_size = float(np.median(sizes)) if sizes else 0.0
        keys, tokens, y = self._points(data)
        self.law = self._fit_law(keys, tokens, y)
        self._budgets = len(set(tokens.tolist()))
        departures = y - self._law(self.law, keys, tokens)
        features = len(self._features(keys[0]))
        if kernel is not None and kernel.features == features:
            self.kernel = kernel
        else:
            chosen = self._fitting_sample(data)
            rows = [i for i, key in enumerate(keys) if key in chosen]
            self.kernel = KernelFit(features, self._condition(self._new_kernel(features), [keys[i] for i in rows],
                                                              tokens[rows], departures[rows], optimise=True).kernel_)
        self._departures = self._condition(self.kernel.kernel, keys, tokens, departures, optimise=False)
        self.widening = Widening()
        if check:
            self.check()
        # Every config's loss at the target, at once: the driver's promotions rank a rung's configs by it after each
        # fit, and a fit runs in the background.
        keys = [key for key, points in data.points.items() if self.target not in points and key in data.features]
        if keys:
            predicted = self._raw(self._departures, self.law, keys, self.target)
            self._predicted.update(zip([(key, self.target) for key in keys], predicted))
        return self

    def check(self) -> Accuracy:
        """Measure the fit's accuracy config by config on the points it was fitted on (Accuracy), and widen its
        intervals by what that finds."""
        self.accuracy = self._check(self.data)
        self.widening = self.accuracy.widening
        return self.accuracy

    def _fitting_sample(self, data: StudyData) -> set[str]:
        """The configs the kernel is fitted on: all, or up to MAX_FIT_POINTS points, those with most points first."""
        chosen, total = set(), 0
        for key in sorted(data.points, key=lambda k: -len(data.points[k])):  # stable: the study's order among equals
            if total + len(data.points[key]) > MAX_FIT_POINTS and chosen:
                break
            chosen.add(key)
            total += len(data.points[key])
        return chosen

    def _raw(self, departures: Any, law: np.ndarray, keys: Sequence[str], tokens: int) -> list[tuple[float, float]]:
        """Mean and sd of a measurement of each of `keys` at `tokens`: the law's, plus the departure's."""
        at = np.full(len(keys), float(tokens))
        mean, sd = departures.predict(self._design(keys, at), return_std=True)
        return [(float(m), float(s)) for m, s in zip(self._law(law, keys, at) + mean, sd)]

    def predict(self, key: str, tokens: Optional[int] = None) -> Prediction:
        """The config's loss at `tokens` (default the target): measured where it was, else predicted."""
        tokens = tokens or self.target
        points = self.data.points.get(key, {})
        last = max(points, default=0)
        if tokens in points:
            return Prediction(points[tokens], 0.0, True, last)
        if (key, tokens) not in self._predicted:  # fixed until the next fit: promotions ask for it at every ranking
            if key not in self._index:  # a config first seen since the fit: only its features' share is known
                self._index[key] = len(self._index)
            self._predicted[key, tokens] = self._raw(self._departures, self.law, [key], tokens)[0]
        mean, sd = self._predicted[key, tokens]
        return Prediction(mean, self.widening.sd(sd), False, last, self.widening.checked, sd)

    def _check(self, data: StudyData) -> Accuracy:
        """Leave each config measured past the brief budget out of the fit beyond its brief points, predict its
        loss at the longest budget that at least MIN_CHECKED configs reached, and compare. The kernel is the full
        fit's; the law and the departures are fitted again without those points. The intervals are widened by that
        error (a factor), and by the error the study as it stood before anything climbed (every config's points past
        the brief budget left out) makes beyond its sds: the law's own extrapolation, which leaving out one config at
        a time keeps anchored by the others."""
        beyond = [t for points in data.points.values() for t in points if t > self.brief]
        budgets = sorted({t for t in beyond if sum(t in p for p in data.points.values()) >= MIN_CHECKED}, reverse=True)
        if not budgets:
            reached = max(beyond, default=self.brief)
            return Accuracy(sum(any(t > self.brief for t in p) for p in data.points.values()), reached, math.nan,
                            math.nan, Widening())
        budget = budgets[0]
        checked = [key for key, points in data.points.items() if budget in points]

        def predicted(brief_only: Collection[str], keys_asked: Sequence[str]) -> np.ndarray:
            keys, tokens, y = self._points(data, brief_only)
            law = self._fit_law(keys, tokens, y, start=self.law)
            departures = self._condition(self.kernel.kernel, keys, tokens, y - self._law(law, keys, tokens),
                                         optimise=False)
            return np.array(self._raw(departures, law, keys_asked, budget)).reshape(-1, 2)

        measured = np.array([data.points[key][budget] for key in checked])
        alone = np.vstack([predicted({key}, [key]) for key in checked])
        z = (measured - alone[:, 0]) / np.maximum(alone[:, 1], 1e-9)
        scale = max(1.0, float(np.sqrt(np.mean(z ** 2))))  # widen only: a sd that undersells the error grows
        unexplained = 0.0  # a study with nothing at or below the brief budget has no "before" to measure it by
        if any(t <= self.brief for points in data.points.values() for t in points):
            before = predicted(set(data.points), checked)
            unexplained = np.mean((measured - before[:, 0]) ** 2) - np.mean((scale * before[:, 1]) ** 2)
        widening = Widening(scale, math.sqrt(max(0.0, float(unexplained))), checked=True)
        widened = np.array([widening.sd(sd) for sd in alone[:, 1]])
        coverage = float(np.mean(np.abs(measured - alone[:, 0]) <= Z90 * widened))  # of the intervals as reported
        return Accuracy(len(checked), budget, _spearman(alone[:, 0], measured), coverage, widening)

    def describe(self) -> dict[str, Any]:
        """The fitted law and kernel, as the study keeps them for the review."""
        floor, log_a, a, log_b, b = (float(v) for v in self.law)
        return {"law": {"floor": floor, "size_term": math.exp(log_a), "size_exponent": a, "budget_term": math.exp(log_b),
                        "budget_exponent": b, "budgets_measured": self._budgets}, "kernel": repr(self.kernel.kernel)}


def _law_at(law: np.ndarray, sizes: np.ndarray, log_budgets: np.ndarray) -> np.ndarray:
    """The shared law at log sizes about the median and log budgets about the brief one."""
    floor, log_a, a, log_b, b = law
    return floor + np.exp(log_a - a * sizes) + np.exp(log_b - b * log_budgets)


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
