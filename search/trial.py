"""One trial end to end, with no Ray: params -> candidate -> brief training, measured at each rung -> probes.

Each measurement becomes a record (a flat metrics dict) told to `report`, which answers whether to go on: the Ray
trainable passes it on to Ray Tune's scheduler; alone, a trial trains its full budget. The probes run once, at the
first measurement, so that every record carries every objective. A trial never raises for a failure of its own
(impossible config, over budget, NaN, OOM): its record says status 'failed' with a reason kind and message, and
whatever was measured before.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch

from . import candidate as candidates
from .candidate import constraint_values, violations
from .data import load_corpus
from .devicegate import DeviceGate
from .errors import TrialFailure
from .probes import ProbeContext, run_probes
from .space import SearchSpace
from .study import STOPPED
from .train import Measurement, Snapshot, train

Record = dict[str, Any]


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


class _Timer:
    """Seconds spent in each part of a trial."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._clock = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + now - self._clock
        self._clock = now


def checkpoint_path(folder: Path, key: str) -> Path:
    """Where a config's stable-phase state at its last measured rung is kept, for a resumed search."""
    return Path(folder) / f"{key}.pt"


def _load_checkpoint(folder: Optional[Path], key: str) -> Optional[Snapshot]:
    path = checkpoint_path(folder, key) if folder else None
    if path is None or not path.is_file():
        return None
    try:
        return torch.load(path, weights_only=False)
    except Exception:  # a file cut short by a kill: train from the start
        return None


def _saver(folder: Path, key: str) -> Callable[[Snapshot], None]:
    """Writes a snapshot whole or not at all (a kill mid-write leaves the previous one)."""
    def save(snapshot: Snapshot) -> None:
        path = checkpoint_path(folder, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(snapshot, partial)
        partial.replace(path)
    return save


def run(space: SearchSpace, params: Mapping[str, Any], device: Optional[torch.device | str] = None,
        report: Callable[[Record], bool] = lambda record: True, checkpoints: Optional[str | Path] = None) -> Record:
    """Measure one candidate at each of the space's rungs, telling `report` each record; returns the last record:
    status 'ok' (the full budget), 'stopped' (report answered stop) or 'failed'. With `checkpoints` (a folder), the
    state at each rung is kept there, and a config found there resumes after its last measured rung."""
    device = torch.device(device) if device is not None else default_device()
    timer = _Timer()
    metrics: Record = {"device": str(device)}
    probed: Record = {}
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(space.resources["cpus_per_trial"])))
    try:
        corpus = load_corpus(space.data)
        timer.lap("data_s")
        candidate = candidates.screen(space, params, corpus.vocab_size)
        metrics.update(candidate.metrics)
        metrics.update(config_key=candidate.key, model_config=candidate.model_config, train=candidate.train)
        candidates.build(candidate)
        timer.lap("build_s")

        def measured(measurement: Measurement) -> bool:
            timer.lap("train_s")
            if not probed:  # once: every record then carries every objective
                probed.update(run_probes(space, ProbeContext(candidate.model, candidate.model_config, device,
                                                             candidate.train, space.probes, corpus.vocab_size,
                                                             measurement.peak_mem_mb)))
                timer.lap("probe_s")
            metrics.update(measurement.metrics(), **probed)
            metrics["constraints"] = constraint_values(space.constraints, metrics)
            over = violations(space.constraints, metrics)
            metrics.pop("violations", None)
            if over:  # measured, but infeasible: recorded with its values, kept off the front
                metrics["violations"] = "; ".join(over)
            return report({"status": "ok", **metrics, "timings": dict(timer.timings)})

        folder = Path(checkpoints) if checkpoints and len(space.rungs()) > 1 else None
        start = _load_checkpoint(folder, candidate.key)
        if start is not None:
            metrics["resumed_at_rung"] = start.rung  # its rungs up to this one were trained by an interrupted trial
        with DeviceGate(device).sharing() as yield_device:
            final = train(candidate.model, corpus, candidate.train, device, space.rungs(), measured, yield_device,
                          save=_saver(folder, candidate.key) if folder else None, start=start)
        if final is None:
            return {"status": STOPPED, **metrics, "message": f"stopped at rung {metrics['rung']} "
                    f"({metrics['tokens_trained']:,} tokens)", "timings": timer.timings}
        return {"status": "ok", **metrics, "timings": timer.timings}
    except TrialFailure as failure:
        metrics.update(failure.metrics)
        timer.lap("failed_s")
        record = {"status": "failed", "reason": failure.kind, "message": failure.message, **metrics,
                  "timings": timer.timings}
        report(record)
        return record
