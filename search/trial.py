"""One trial end to end, with no Ray: params -> candidate -> brief training, measured at each rung -> probes.

Each measurement becomes a record (a flat metrics dict) told to `report`, which answers whether to go on: the Ray
trainable passes it on to Ray Tune's scheduler; alone, a trial trains its full budget. The probes run once, at the
first measurement, so that every record carries every objective. A trial never raises for a failure of its own
(impossible config, over budget, NaN, OOM, an unexpected error): its record is a failed outcome (outcome.py) with
its kind and message, and whatever was measured before.

This is the worker's side: it imports neither Optuna nor pandas nor the study's storage.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch

from . import candidate as candidates
from . import outcome
from .candidate import Candidate, constraint_values, violations
from .data import Corpus, load_corpus
from .devicegate import DeviceGate
from .errors import TrialFailure
from .metrics import SD_SUFFIX, SEEDED_METRICS
from .probes import ProbeContext, run_probes
from .space import SearchSpace
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
        return Snapshot.load(path)
    except Exception:  # a file cut short by a kill: train from the start
        return None


def _saver(folder: Path, key: str) -> Callable[[Snapshot], None]:
    """Writes a snapshot whole or not at all (a kill mid-write leaves the previous one)."""
    def save(snapshot: Snapshot) -> None:
        path = checkpoint_path(folder, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        snapshot.save(partial)
        partial.replace(path)
    return save


def train_afresh(candidate: Candidate, corpus: Corpus, seed: int, budgets: list[int], device: torch.device,
                 warmup_budget: Optional[int] = None, checkpoint: Callable[[], None] = lambda: None,
                 check_causality: bool = False, weights: Optional[Path] = None) -> list[Measurement]:
    """The candidate's config trained from scratch on another seed (its initial weights and its batches), measured
    at each of `budgets` (one run: each budget a decay branch, under a warmup-stable-decay schedule); warm-up as in a
    run whose first rung is `warmup_budget`. With `weights`, the trained model's state is saved there."""
    train_cfg = {**candidate.train, "seed": seed, "tokens": budgets[-1]}
    model = candidates.build(dataclasses.replace(candidate, train=train_cfg, model=None), check_causality)
    seen: list[Measurement] = []
    train(model, corpus, train_cfg, device, budgets, report=lambda m: seen.append(m) or True, checkpoint=checkpoint,
          warmup_budget=warmup_budget)
    if weights is not None:
        weights.parent.mkdir(parents=True, exist_ok=True)
        partial = weights.with_suffix(f".{os.getpid()}.tmp")
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, partial)
        partial.replace(weights)  # whole or not at all
    return seen


def measure_once(space: SearchSpace, params: Mapping[str, Any], seed: int, budgets: list[int], warmup_budget: int,
                 device: Optional[torch.device | str] = None, model: Optional[dict] = None,
                 weights: Optional[str | Path] = None) -> Record:
    """One config (`model`: a baseline's own layer config) trained once from `seed` and measured at each of
    `budgets`, with no probes (what calibrate and retrain run): measured, with the last budget's training metrics,
    the cheap ones and every budget's under `at` (by tokens), or failed with its reason. With `weights`, the trained
    model's state is saved there."""
    device = _prepared(space, device)
    started = time.perf_counter()
    try:
        corpus = load_corpus(space.data)
        candidate = candidates.screen(space, params, corpus.vocab_size,
                                      resolved=candidates.resolve(space, params, corpus.vocab_size, model))
        seen = train_afresh(candidate, corpus, seed, budgets, device, warmup_budget, check_causality=True,
                            weights=None if weights is None else Path(weights))
        return outcome.measured(**candidate.metrics, **seen[-1].metrics(), seconds=time.perf_counter() - started,
                                at={str(m.tokens_trained): m.metrics() for m in seen})
    except TrialFailure as failure:
        return outcome.failed(failure.kind, failure.message, seconds=time.perf_counter() - started)


def _prepared(space: SearchSpace, device: Optional[torch.device | str]) -> torch.device:
    """The device a trial runs on (default CUDA where there is one), on the CPU limited to its share of cores."""
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(space.resources["cpus_per_trial"])))
    return device


def seed_summary(measurements: list[Measurement], seeds: list[int]) -> Record:
    """What seed-confirmed training reports: each seeded metric's mean over the seeds and its sample sd
    (`val_loss_sd`), how many seeds, each seed's val_loss, and the tokens all of them spent."""
    summary: Record = {"seeds": len(measurements),
                       "seed_results": {str(seed): m.val_loss for seed, m in zip(seeds, measurements)},
                       "tokens_spent": sum(m.tokens_spent for m in measurements)}
    for name in SEEDED_METRICS:
        values = [m.metrics()[name] for m in measurements if name in m.metrics()]
        if len(values) == len(measurements):
            summary[name] = statistics.fmean(values)
            summary[name + SD_SUFFIX] = statistics.stdev(values)
    return summary


def run(space: SearchSpace, params: Mapping[str, Any], device: Optional[torch.device | str] = None,
        report: Callable[[Record], bool] = lambda record: True, checkpoints: Optional[str | Path] = None,
        model: Optional[dict] = None) -> Record:
    """Measure one candidate at each of the space's rungs, telling `report` each record; returns the last record:
    measured (the full budget), stopped (report answered stop) or failed (outcome.py). With `checkpoints` (a folder), the
    state at each rung is kept there, and a config found there resumes after its last measured rung. With
    search.confirm_seeds k, the full budget is trained k more times on other seeds and its record reports the
    means (val_loss_sd beside val_loss). `model`: a baseline's own layer config, in place of the space's."""
    device = _prepared(space, device)
    timer = _Timer()
    metrics: Record = {"device": str(device)}
    probed: Record = {}
    try:
        corpus = load_corpus(space.data)
        timer.lap("data_s")
        candidate = candidates.screen(space, params, corpus.vocab_size,
                                      resolved=candidates.resolve(space, params, corpus.vocab_size, model))
        metrics.update(candidate.metrics)
        metrics.update(config_key=candidate.key, model_config=candidate.model_config, train=candidate.train)
        candidates.build(candidate)
        timer.lap("build_s")

        rungs = space.rungs()

        def confirmed(measurement: Measurement) -> Record:
            """The full budget's metrics, with the means over search.confirm_seeds more seeds."""
            base = candidate.train["seed"]
            seeds = [base + i for i in range(1 + space.search["confirm_seeds"])]
            if len(seeds) == 1 or measurement.rung < len(rungs) - 1:
                return measurement.metrics()
            measurements = [measurement]
            for seed in seeds[1:]:
                try:
                    measurements += train_afresh(candidate, corpus, seed, rungs[-1:], device, rungs[0], yield_device)
                except TrialFailure as failure:
                    raise TrialFailure(failure.kind, f"confirming seed {seed}: {failure.message}") from None
            timer.lap("confirm_s")
            return {**measurement.metrics(), **seed_summary(measurements, seeds)}

        def measured(measurement: Measurement) -> bool:
            timer.lap("train_s")
            if not probed:  # once: every record then carries every objective
                probed.update(run_probes(space, ProbeContext(candidate.model, candidate.model_config, device,
                                                             candidate.train, space.probes, corpus.vocab_size,
                                                             measurement.peak_mem_mb)))
                timer.lap("probe_s")
            metrics.update(confirmed(measurement), **probed)
            metrics["constraints"] = constraint_values(space.constraints, metrics)
            over = violations(space.constraints, metrics)
            metrics.pop("violations", None)
            if over:  # measured, but infeasible: recorded with its values, kept off the front
                metrics["violations"] = "; ".join(over)
            with DeviceGate.of(device).aside():  # reporting waits on the driver: no probe waits on this trial meanwhile
                return report(outcome.measured(**metrics, timings=dict(timer.timings)))

        folder = Path(checkpoints) if checkpoints and len(rungs) > 1 else None
        start = _load_checkpoint(folder, candidate.key)
        if start is not None:
            metrics["resumed_at_rung"] = start.rung  # its rungs up to this one were trained by an interrupted trial
        with DeviceGate.of(device).sharing() as yield_device:
            final = train(candidate.model, corpus, candidate.train, device, rungs, measured, yield_device,
                          save=_saver(folder, candidate.key) if folder else None, start=start, points=space.curve_points())
        if final is None:
            return outcome.stopped(f"stopped at rung {metrics['rung']} ({metrics['tokens_trained']:,} tokens)",
                                   **metrics, timings=timer.timings)
        return outcome.measured(**metrics, timings=timer.timings)
    except Exception as err:
        if type(err).__module__.startswith("ray"):
            raise  # Ray's own (a scheduler that stops the trial ends it from inside report)
        failure = err if isinstance(err, TrialFailure) else TrialFailure("error", f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        metrics.update(failure.metrics)
        timer.lap("failed_s")
        record = outcome.failed(failure.kind, failure.message, **metrics, timings=timer.timings)
        report(record)
        return record
