"""Synthetic trials: a stand-in for Ray that hands each config the driver gives out a made-up but deterministic
record at every rung, and tells the driver as Ray Tune would (reached_rung at each rung, ended at the last or where
the driver stops it). For the driver's tests and the driver-scaling benchmark: the driver, its claims, promotions
and the study are all real, only the training is not."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .. import outcome
from ..metrics import TARGET
from .searcher import DONE, Driver


def synthetic_loss(params: dict[str, Any], tokens: int, brief_tokens: int) -> float:
    """The val_loss a synthetic config reaches at `tokens`: a power law in the budget, larger configs starting slower
    and going further, with an offset of its own (what a retraining at any budget would measure)."""
    size = _size(params)
    return 1.8 - size / 5 + (_digest(params) % 1000) / 5000 + (0.4 + size / 4) * (tokens / brief_tokens) ** -0.4


def _size(params: dict[str, Any]) -> float:
    return params.get("width", 64) * params.get("depth", 1) / 1000


def _digest(params: dict[str, Any]) -> int:
    return int(hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:8], 16)


def synthetic_record(driver: Driver, params: dict[str, Any], key: str, rung: int) -> dict[str, Any]:
    """A record like a real trial's (every field a finished trial reports), with values for every objective of the
    space that depend only on the params and the rung: val_loss falls with the model's size and with the rung, the
    other objectives rise with the size, each with its own scatter, so that the front is a trade-off of many trials."""
    digest, size = _digest(params), _size(params)
    tokens = driver.budgets[rung]
    values = {name: size * (1 + i) + (digest % (89 + 8 * i)) / 100 for i, name in enumerate(driver.objectives)
              if name != TARGET}  # the driver's own, from the predictor
    values["val_loss"] = synthetic_loss(params, tokens, driver.budgets[0])
    curve = {str(t): synthetic_loss(params, t, driver.budgets[0])
             for t in [*driver.space.curve_points(), *driver.budgets[: rung + 1]]}
    return outcome.measured(**values, config_key=key, rung=rung, tokens_trained=tokens, tokens_spent=tokens, curve=curve,
                            model_config={"dim_model": params.get("width", 64), "layers": [{"type": "FFN"}]},
                            params=int(size * 1e6), nonemb_params=int(size * 9e5), flops=int(size * 6e7),
                            constraints={}, val_set="synthetic", device="cpu")


@dataclass
class Slot:
    config: dict[str, Any]
    rung: int = 0


@dataclass
class SyntheticCluster:
    """`slots` trials at a time for one driver; each `step` advances every busy slot by one rung and fills the free
    ones. `record` makes a trial's record at a rung (synthetic_record by default; one may fail a trial)."""

    driver: Driver
    slots: int = 2
    record: Callable[[Driver, dict[str, Any], str, int], Optional[dict[str, Any]]] = synthetic_record
    busy: dict[str, Slot] = field(default_factory=dict)
    done: bool = False
    _ids: int = 0

    def step(self) -> bool:
        """One round: every busy slot reports its next rung, every free slot asks for work. False once the driver
        said DONE and no slot is busy."""
        for slot_id, slot in list(self.busy.items()):
            config = slot.config
            result = self.record(self.driver, config["params"], config["key"], slot.rung)
            if result is None:  # the worker died
                del self.busy[slot_id]
                self.driver.ended(slot_id, None)
                continue
            goes_on = self.driver.reached_rung(slot_id, result)  # as the scheduler on Ray hears every result
            if not outcome.is_measured(result) or slot.rung >= self.driver.last_rung or not goes_on:
                del self.busy[slot_id]
                self.driver.ended(slot_id, result)
            else:
                slot.rung += 1
        while not self.done and len(self.busy) < self.slots:
            slot_id = f"s{self._ids}"
            answer = self.driver.next(slot_id)
            if answer == DONE:
                self.done = True
            if not isinstance(answer, dict):
                break
            self._ids += 1
            waited_at = self.driver.live[slot_id].rung  # a promoted trial reports its rung again, as a resumed worker does
            self.busy[slot_id] = Slot(answer, waited_at or 0)
        return not (self.done and not self.busy)

    def run(self, timeout_s: float = 120.0, idle_s: float = 0.02) -> None:
        """Step until the search ends, pausing `idle_s` after a step that found nothing to do (while other drivers
        work); raises RuntimeError past `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            before = (self._ids, sum(slot.rung for slot in self.busy.values()), len(self.busy))
            if not self.step():
                return
            if not self.busy and before == (self._ids, 0, 0):
                time.sleep(idle_s)
        raise RuntimeError(f"the search did not end within {timeout_s:g} s")
