"""Fixed training runs (a config, a seed, budgets) through the same Ray trial runner as the search, packed like its
trials: what calibrate and retrain measure. Each run is measured at every budget it names on one run (a
warmup-stable-decay schedule branches a fully decayed measurement at each), and its record goes to a callback as it
ends. A run whose worker died is run once more, then recorded as failed."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from . import outcome
from .cluster import Resources
from .space import SearchSpace


@dataclass(frozen=True)
class Job:
    """One training run of a config: `name` identifies it (results are kept by name), `budgets` are the token counts
    it is measured at (the last the run's length), `warmup_budget` the budget whose warm-up it keeps."""

    name: str
    params: dict[str, Any]
    seed: int
    budgets: tuple[int, ...]
    warmup_budget: int
    model: Optional[dict] = None  # a baseline's own layer config
    weights: Optional[str] = None  # where the trained model's state is saved (a path every worker can reach)


def run_job(config: dict[str, Any], space: SearchSpace) -> None:
    """The Ray trainable of a job: its record reported once, at the end."""
    import ray
    from ray import tune

    from .driver.tune import tune_result
    from .trial import measure_once

    job = config["job"]
    record = measure_once(space, job["params"], job["seed"], list(job["budgets"]), job["warmup_budget"],
                          "cuda" if ray.get_gpu_ids() else "cpu", job.get("model"), job.get("weights"))
    tune.report(tune_result(record))


def _job_searcher(jobs: Sequence[Job], on_result: Callable[[Job, dict[str, Any]], None]) -> Any:
    """Ray Tune's searcher over a fixed list of jobs, in order; a job whose worker died goes back in the queue once."""
    from ray.tune.search import Searcher

    from .driver.tune import record_of

    class Queue(Searcher):
        def __init__(self) -> None:
            super().__init__()
            self.waiting: deque[Job] = deque(jobs)
            self.running: dict[str, Job] = {}
            self.retried: set[str] = set()

        def suggest(self, trial_id: str) -> Optional[dict | str]:
            if not self.waiting:
                return None if self.running else Searcher.FINISHED
            job = self.waiting.popleft()
            self.running[trial_id] = job
            return {"job": {"params": job.params, "seed": job.seed, "budgets": list(job.budgets),
                            "warmup_budget": job.warmup_budget, "model": job.model, "weights": job.weights}}

        def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
            job = self.running.pop(trial_id)
            record = None if error else record_of(result)
            if record is None and job.name not in self.retried:
                self.retried.add(job.name)
                self.waiting.appendleft(job)
                return
            on_result(job, record or outcome.failed("worker_died_twice", "its worker died twice"))

        def save_to_dir(self, *args: Any, **kwargs: Any) -> None:
            """Nothing to save: the caller keeps each record as it ends."""

        def __reduce__(self) -> tuple:
            return (_unpicklable, ())  # Ray Tune pickles its searcher with the experiment; nothing is restored from it

    return Queue()


def _unpicklable() -> None:
    """What a pickled job queue unpickles to: nothing (jobs are run once, by the process that made them)."""


def run_jobs(space: SearchSpace, jobs: Sequence[Job], resources: Resources, on_result: Callable[[Job, dict[str, Any]], None],
             scratch: Optional[Path] = None) -> None:
    """Run `jobs` through Ray Tune, at most resources.concurrency at a time, telling `on_result` each record."""
    from ray import tune

    from .driver.tune import run_on_ray

    run_on_ray(tune.with_parameters(run_job, space=space), _job_searcher(jobs, on_result), resources, scratch)
