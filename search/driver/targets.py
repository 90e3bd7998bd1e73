"""The driver's side of the predictor (predictor.py): it learns every config's measured curve and features as rung
results arrive, from any driver (they travel with the rung table's rows), refits in a thread of its own (so that the
driver is never held up by a fit), and gives each trial its loss at the target budget: for the record it tells, and,
at the optimistic end of its interval, for the rank that decides whether it climbs the ladder."""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..metrics import SD_SUFFIX, TARGET
from ..predictor import KernelFit, Prediction, StudyData, TargetPredictor, Widening, config_features
from ..space import SearchSpace
from ..storage import StoredTrial

REFIT_S = 5.0  # past EAGER_CONFIGS configs, the predictor is fitted again at most this often while results arrive
EAGER_CONFIGS = 50  # up to this many configs, a fit is cheap: every new result gets one
REGROW = 1.25  # in the background, the kernel is searched again once the study has grown by this factor
MEASURED_AS = "val_loss"  # what a rung measures of the objective TARGET


class TargetModel:
    """Predictions of val_loss_at_target for the configs of a search with train.target_tokens."""

    def __init__(self, space: SearchSpace, refitted: Callable[[], None] = lambda: None) -> None:
        self.brief, self.target = space.train["tokens"], space.target
        self.data = StudyData()
        self.seed_sd: dict[str, float] = {}  # key -> the seeds' spread at its last rung, for configs confirmed on several
        self.predictor: Optional[TargetPredictor] = None
        self.refitted = refitted  # told when a fit in the background has replaced the predictor
        self._fitted_at, self._changed = -math.inf, False
        self._fitting: Optional[threading.Thread] = None
        self._widening = Widening()  # how the last check widened the intervals: kept until the next check
        self._checked_on: frozenset = frozenset()  # the points past the brief budget that the last check saw
        self.failure: Optional[str] = None  # why the last fit failed, if it did
        self._kernel: tuple[int, Optional[KernelFit]] = (0, None)  # the last kernel searched, and the configs it saw

    def extra(self, params: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
        """What a rung result carries for the predictor: the config's features and its curve so far; confirmed on
        several seeds, its last point is their mean and the spread of its seeds goes with it."""
        curve = dict(record.get("curve") or {})
        curve[str(record["tokens_trained"])] = record["val_loss"]
        extra = {"features": config_features(params, record), "curve": curve}
        if isinstance(record.get(MEASURED_AS + SD_SUFFIX), (int, float)):
            extra["seed_sd"] = record[MEASURED_AS + SD_SUFFIX]
        return extra

    def learn(self, key: str, extra: dict[str, Any]) -> None:
        if "features" in extra:
            before = dict(self.data.points.get(key, {}))
            self.data.add(key, extra["features"], extra.get("curve") or {})
            self._changed = self._changed or self.data.points[key] != before
        if "seed_sd" in extra:
            self.seed_sd[key] = float(extra["seed_sd"])

    def refit(self, force: bool = False, final: bool = False) -> None:
        """Fit again if anything new was learnt (and REFIT_S has passed, past EAGER_CONFIGS configs): in the
        background, unless `force`d (waiting for the fit). `final`: the end of a search, whose fit searches the
        kernel afresh."""
        if len(self.data.points) < 3 and sum(len(p) for p in self.data.points.values()) < 3:
            return
        if force:
            if self._fitting is not None:
                self._fitting.join()
            self._fit(self.data.snapshot(), final)
            return
        eager = len(self.data.points) <= EAGER_CONFIGS
        busy = self._fitting is not None and self._fitting.is_alive()
        if busy or not self._changed or not eager and time.monotonic() - self._fitted_at < REFIT_S:
            return
        self._changed, self._fitted_at = False, time.monotonic()
        self._fitting = threading.Thread(target=self._fit, args=(self.data.snapshot(), False),
                                         name="configaformer-predictor", daemon=True)
        self._fitting.start()

    def _fit(self, data: StudyData, final: bool) -> None:
        """Fit, keeping the last kernel while the study has barely grown (not at the end), and check the fit when
        the kernel is searched afresh or (up to EAGER_CONFIGS configs) the points past the brief budget, what a check
        learns from, changed since the last check: so the intervals shown during the search are widened as the
        final ones are."""
        configs, former = self._kernel
        keep = not final and former is not None and len(data.points) < REGROW * configs  # the kernel barely moves
        evidence = frozenset((key, t, loss) for key, points in data.points.items() for t, loss in points.items()
                             if t > self.brief)
        try:
            predictor = TargetPredictor(self.brief, self.target).fit(data, check=False, kernel=former if keep else None)
            eager = len(data.points) <= EAGER_CONFIGS  # past that, a check costs about a kernel search: made with one
            checked = predictor.kernel is not former or eager and evidence != self._checked_on
            if checked:
                predictor.check()
        except (np.linalg.LinAlgError, ValueError, FloatingPointError) as err:  # a fit that fails numerically
            self.failure = f"{type(err).__name__}: {err}"  # the last predictor stands; the summary says why
            logging.getLogger(__name__).warning("the target predictor could not be fitted: %s", self.failure)
            return
        self.failure = None
        if predictor.kernel is not former:  # searched afresh (asked to, or the features' width changed)
            self._kernel = (len(data.points), predictor.kernel)
        if checked:
            self._widening, self._checked_on = predictor.widening, evidence
        else:
            predictor.widening = self._widening
        predictor.data = self.data  # predictions read the points learnt since the fit too
        self.predictor = predictor
        self.refitted()

    def predict(self, key: str) -> Prediction:
        """The config's loss at the target; before the first fit (fewer than three points in the study), its last
        measurement, with no spread to tell (unchecked)."""
        points = self.data.points.get(key, {})
        if self.target in points:
            return Prediction(points[self.target], 0.0, True, self.target)
        if self.predictor is None or key not in self.data.features:
            last = max(points, default=0)
            return Prediction(points.get(last, math.nan), 0.0, False, last, checked=False)
        return self.predictor.predict(key)

    def fields(self, key: str) -> dict[str, Any]:
        """What a trial's record says of its target loss: the value, its sd (with the spread of its seeds, for a
        config confirmed on several; None, no interval, while the predictor is unchecked), measured or not, and how
        far it reached."""
        prediction = self.predict(key)
        sd = math.hypot(prediction.sd, self.seed_sd.get(key, 0.0)) if prediction.checked else None
        return {TARGET: prediction.mean, TARGET + SD_SUFFIX: sd, "target_measured": prediction.measured,
                "target_reach": self.target / prediction.last_tokens if prediction.last_tokens else math.inf}

    def final(self, trials: Sequence[StoredTrial]) -> dict[str, Any]:
        """The predictor fitted on everything and checked config by config, and each of `trials` that counts, and
        each baseline, with its loss at the target as it now stands (the review shows these, not the values told when
        each ended, so that a baseline and the configs it is compared with are predicted by one fit)."""
        self.refit(force=True, final=True)
        by_number = {str(trial.number): self.fields(trial.user_attrs["config_key"]) for trial in trials
                     if (trial.outcome.counts or trial.outcome.baseline is not None)
                     and trial.user_attrs.get("config_key") in self.data.points}
        return {"predictions": by_number, "predictor": self.summary()}

    def summary(self) -> dict[str, Any]:
        """The final fit's settings and accuracy, as the study keeps them for the review."""
        predictor = self.predictor
        failed = {} if self.failure is None else {"fit_failure": self.failure}
        if predictor is None:
            return {"configs": len(self.data.points), "fitted": False, **failed}
        accuracy = predictor.accuracy
        return {"configs": len(self.data.points), "fitted": True, **predictor.describe(), "brief_tokens": self.brief,
                "target_tokens": self.target, "longest_tokens": max(t for p in self.data.points.values() for t in p),
                **({} if accuracy is None else {"checked_configs": accuracy.configs, "checked_at_tokens": accuracy.tokens,
                                                "spearman": accuracy.spearman, "coverage": accuracy.coverage,
                                                "interval_scale": accuracy.widening.scale,
                                                "law_sd": accuracy.widening.law_sd}), **failed}
