"""Ray Tune runs the trials; `StudySearcher` asks the Optuna study for each one and tells it the result.

The study is the source of truth, so resuming is: mark stale RUNNING rows FAIL (interrupted), count what is
finished, and start a fresh Tuner for the trials still owed. Trials pack onto GPUs through fractional GPU
resources; latency probes take a per-device lock inside the trial.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Ray's console output stays off unless asked for
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no per-trial CSV/JSON/TensorBoard files
os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Ctrl-C stops the search at once (see run_trials)

import optuna  # noqa: E402
import ray  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.search import Searcher  # noqa: E402

from . import trial as trial_module  # noqa: E402
from .errors import UsageError  # noqa: E402
from .front import front_trials  # noqa: E402
from .progress import Progress  # noqa: E402
from .space import SearchSpace  # noqa: E402
from .study import ask_new, mark_interrupted, measured_by_key, record, tell_parked  # noqa: E402


class StudySearcher(Searcher):
    """Suggests each Ray trial from an Optuna study (ask, define-by-run) and records its result (tell).

    A suggestion identical to a config already measured is told its twin's result at once and costs no Ray trial
    and no budget (study.ask_new); one identical to a config still training waits for that trial's result, so that
    packed trials never train one config twice. When the study suggests nothing new, the search ends early
    (`exhausted`).
    """

    def __init__(self, space: SearchSpace, study: optuna.Study, vocab_size: int, progress: Progress) -> None:
        super().__init__()
        self.space, self.study, self.vocab_size, self.progress = space, study, vocab_size, progress
        self.measured = measured_by_key(study)
        self.live: dict[str, tuple[optuna.Trial, dict, str]] = {}  # Ray trial id -> (study trial, params, config key)
        self.parked: dict[str, list[optuna.Trial]] = {}  # config key in training -> repeats waiting for its result
        self.exhausted = False
        self.study_seconds = 0.0  # time spent asking and telling the study (the storage's share of a search)

    def suggest(self, trial_id: str) -> Optional[dict | str]:
        start = time.perf_counter()
        asked = ask_new(self.study, self.space, self.vocab_size, self.measured, self.progress.repeated, self.parked)
        self.study_seconds += time.perf_counter() - start
        if asked is None:
            self.exhausted = True
            return Searcher.FINISHED
        trial, params, key = asked
        self.live[trial_id] = (trial, params, key)
        self.parked[key] = []
        self.progress.started()
        return {"params": params, "number": trial.number}

    def running_numbers(self) -> set[int]:
        """Study numbers of the trials in training and of the repeats waiting for them."""
        return {trial.number for trial, _, _ in self.live.values()} | {t.number for ts in self.parked.values() for t in ts}

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        if trial_id not in self.live:
            return
        trial, params, key = self.live.pop(trial_id)
        if result and "metrics" in result:
            metrics = json.loads(result["metrics"])
        else:
            metrics = {"status": "failed", "reason": "error",
                       "message": "the trial's process raised or died (see the Ray session logs)"}
        parked = self.parked.pop(key)
        start = time.perf_counter()
        record(self.study, trial, metrics)
        reused = tell_parked(self.study, parked, trial.number, metrics)
        self.study_seconds += time.perf_counter() - start
        if "config_key" in metrics:
            self.measured[metrics["config_key"]] = reused
        self.progress.finished(trial.number, params, metrics, len(front_trials(self.study)))
        for twin in parked:
            self.progress.repeated(twin.number, reused)


def run_trial(config: dict, space: SearchSpace) -> None:
    """The Ray trainable: measure one candidate and report it once."""
    started = time.time()
    device = "cuda" if ray.get_gpu_ids() else "cpu"
    metrics = trial_module.run(space, config["params"], device)
    metrics["node"] = ray.get_runtime_context().get_node_id()[:12]
    metrics.update(started_at=started, ended_at=time.time())  # wall clock, for the scheduler's share
    tune.report({"metrics": json.dumps(metrics, default=str)})


@dataclass
class Resources:
    cpus_per_trial: float
    gpus_per_trial: float
    concurrency: int


def plan_resources(space: SearchSpace, gpus_per_trial: Optional[float], concurrency: Optional[int]) -> Resources:
    """Per-trial resources from the space or the flags, and how many trials run at once on this cluster."""
    cpus = float(space.resources["cpus_per_trial"])
    gpus = float(space.resources["gpus_per_trial"] if gpus_per_trial is None else gpus_per_trial)
    available = ray.cluster_resources()
    if gpus > 0 and available.get("GPU", 0) == 0:
        raise UsageError(f"--gpus-per-trial {gpus:g}: the Ray cluster has no GPU")
    if cpus > available.get("CPU", 0):
        raise UsageError(f"resources.cpus_per_trial {cpus:g}: the Ray cluster has only {available.get('CPU', 0):g} CPUs")
    fit = math.floor(available.get("CPU", 1) / cpus)
    if gpus > 0:
        fit = min(fit, math.floor(available["GPU"] / gpus + 1e-9))
    chosen = concurrency or space.resources["concurrency"] or max(1, fit)
    return Resources(cpus, gpus, chosen)


def check_address(address: Optional[str]) -> None:
    """Fail fast on a HOST:PORT (or ray://HOST:PORT) that nothing answers, before Ray retries it for minutes."""
    if not address or address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--address {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as err:
        raise UsageError(f"--address {address}: nothing answers there ({err.strerror or err})") from None


def connect(address: Optional[str]) -> bool:
    """Join a Ray cluster (address) or start a quiet local one; False when Ray was already running here."""
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                 configure_logging=True)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise UsageError(f"--address {address}: cannot join the Ray cluster ({str(err).splitlines()[0]})") from None
    return True


def run_trials(space: SearchSpace, study: optuna.Study, vocab_size: int, count: int, resources: Resources,
               progress: Progress, scratch: Optional[Path] = None) -> StudySearcher:
    """Run `count` more trials through Ray Tune, recording each in the study as it finishes.

    Tune keeps its own records in `scratch` (a temporary folder if None), deleted afterwards: the study is what
    persists. A search folder's scratch left by a killed run is cleared here."""
    searcher = StudySearcher(space, study, vocab_size, progress)
    trainable = tune.with_resources(tune.with_parameters(run_trial, space=space),
                                    {"cpu": resources.cpus_per_trial, "gpu": resources.gpus_per_trial})
    if scratch is None:
        scratch = Path(tempfile.mkdtemp(prefix="configaformer-tune-"))
    else:
        shutil.rmtree(scratch, ignore_errors=True)  # a killed run's records
    try:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=count, reuse_actors=True,
                                        max_concurrent_trials=resources.concurrency),
            run_config=tune.RunConfig(storage_path=str(scratch.resolve()), name="trials", verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=0)),
        )
        tuner.fit()
    except KeyboardInterrupt:
        mark_interrupted(study, searcher.running_numbers())  # owed again, as after a kill, but known now
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return searcher


def describe_cluster() -> dict[str, Any]:
    resources = ray.cluster_resources()
    return {"nodes": len([n for n in ray.nodes() if n.get("Alive")]), "cpus": resources.get("CPU", 0), "gpus": resources.get("GPU", 0)}
