"""Ray Tune runs the trials: a thin adapter over the driver (searcher.py). Its searcher asks the driver for each
trial and hands back each ended one; its scheduler asks the driver's rung table whether a trial at a rung goes on
(successive halving); the trainable runs one trial (trial.py) on a worker and reports each record.

The study is the truth: Ray Tune keeps its own records in a scratch folder, deleted afterwards, and saves nothing
of the searcher (a resumed search rereads the study instead).
"""

from __future__ import annotations

import datetime
import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import ray
from ray import tune
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from .. import trial as trial_module
from ..cluster import Resources
from ..space import SearchSpace
from .searcher import DONE, WAIT, Driver

CONSTRAINT_PREFIX = "constraint/"  # how a reported result carries each constraint value to Ray (<= 0 when met)


def tune_result(record: dict[str, Any]) -> dict[str, Any]:
    """A trial record as Ray Tune reads it: every number at the top level (and each constraint value under
    'constraint/'), so that any Ray scheduler can act on them, with the whole record beside them as JSON."""
    numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
               and math.isfinite(v)}
    constraints = {CONSTRAINT_PREFIX + k: v for k, v in (record.get("constraints") or {}).items()}
    return {**numbers, **constraints, "status": record["status"], "record": json.dumps(record, default=str)}


def record_of(result: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """The trial record inside a reported result, or None (a worker that died reported none)."""
    return json.loads(result["record"]) if result and "record" in result else None


def wall_clock() -> str:
    """Now, as an ISO 8601 time with its UTC offset and milliseconds."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def run_trial(config: dict, space: SearchSpace) -> None:
    """The Ray trainable: measure one candidate, reporting each rung's record (and a failure's) to Ray Tune, whose
    scheduler may stop it at a rung."""
    started = wall_clock()
    device = "cuda" if ray.get_gpu_ids() else "cpu"
    node = ray.get_runtime_context().get_node_id()[:12]

    def report(record: dict[str, Any]) -> bool:
        record.update(node=node, started_at=started, ended_at=wall_clock())  # ISO times, as optuna-dashboard shows them
        tune.report(tune_result(record))
        return True  # a trial its scheduler stops never gets here: Ray ends it inside tune.report

    trial_module.run(space, config["params"], device, report, config.get("checkpoints"), config.get("model"))


class DriverSearcher(Searcher):
    """Ray Tune's searcher: each suggestion and each ended trial go to the driver."""

    def __init__(self, driver: Driver) -> None:
        super().__init__()
        self.driver = driver

    def suggest(self, trial_id: str) -> Optional[dict | str]:
        answer = self.driver.next(trial_id)
        if answer == WAIT:
            return None
        return Searcher.FINISHED if answer == DONE else answer

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        self.driver.ended(trial_id, None if error else record_of(result))

    def save_to_dir(self, *args: Any, **kwargs: Any) -> None:
        """Nothing to save: the study is the truth."""

    def __getstate__(self) -> dict[str, Any]:
        return {}  # Ray Tune pickles its searcher with the experiment; a resumed search rereads the study instead


class RungScheduler(FIFOScheduler):
    """Successive halving through the driver's rung table: a trial at a rung goes on when the table promotes it,
    else it stops there (and waits, its state kept, until the table promotes it later)."""

    _supports_buffered_results = False  # each result is judged as it comes

    def __init__(self, driver: Driver) -> None:
        super().__init__()
        self.driver = driver

    def __getstate__(self) -> dict[str, Any]:
        return {}  # Ray Tune pickles its scheduler with the experiment; the rung table lives in the study

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        record = record_of(result)
        if record is None or self.driver.reached_rung(trial.trial_id, record):
            return TrialScheduler.CONTINUE
        return TrialScheduler.STOP


def run_on_ray(trainable: Callable, searcher: Searcher, resources: Resources, scratch: Optional[Path] = None,
               scheduler: Optional[TrialScheduler] = None, reuse: bool = True) -> None:
    """Run trials of `trainable` (a function of its config, reporting with tune.report) through Ray Tune, as many at
    once as `resources` say, until `searcher` is finished. Tune keeps its records in `scratch` (a temporary folder
    if None; a killed run's left there are cleared first), deleted afterwards. `reuse` keeps each worker process
    for the next trial (it imports torch once), holding its share of the cluster while it waits: not when other
    drivers share the cluster, whose trials would wait for it."""
    if scratch is None:
        scratch = Path(tempfile.mkdtemp(prefix="configaformer-tune-"))
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    try:
        tuner = tune.Tuner(
            tune.with_resources(trainable, resources.request()),
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=-1, reuse_actors=reuse,
                                        max_concurrent_trials=resources.concurrency),
            run_config=tune.RunConfig(storage_path=str(scratch.resolve()), name="trials", verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=0)))
        tuner.fit()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def search_on_ray(driver: Driver, resources: Resources, scratch: Optional[Path] = None, shared: bool = False) -> None:
    """Run the driver's search through Ray Tune (`shared`: other drivers may run on the same cluster)."""
    scheduler = RungScheduler(driver) if driver.last_rung else None
    run_on_ray(tune.with_parameters(run_trial, space=driver.space), DriverSearcher(driver), resources, scratch, scheduler,
               reuse=not shared)
