"""Shared helpers for the benchmark scripts: device, timing, printing a table, the JSON results file every
benchmark writes (benchmarks/results/NAME-DEVICE.json: its figures, targets, date, machine, command and versions),
from which the performance page is written, variants of a space, hypervolumes, driving a search's trials, and
searches whose fronts are retrained at a longer budget and scored there."""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def timed(step: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Seconds per call of `step`, after warm-up, synchronising the device around each call."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return times


def seconds(iso_time: str) -> float:
    """A trial's recorded wall-clock time (ISO 8601) as epoch seconds."""
    return datetime.datetime.fromisoformat(iso_time).timestamp()


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def print_table(rows: list[dict], columns: Sequence[str]) -> None:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))


def add_json_argument(parser: argparse.ArgumentParser, name: str) -> None:
    """--json PATH: where the figures go (default benchmarks/results/NAME-DEVICE.json)."""
    parser.add_argument("--json", metavar="PATH", help=f"results file (default benchmarks/results/{name}-<device>.json)")


def target(value: float, goal: float, at_least: bool = True) -> dict[str, Any]:
    """A target's entry: the measured value, the goal, and whether it is met (value >= goal, or <= when not at_least)."""
    return {"value": value, "goal": goal, "met": bool(value >= goal if at_least else value <= goal),
            "rule": ">=" if at_least else "<="}


def write_results(name: str, figures: dict[str, Any], targets: dict[str, dict] | None = None,
                  path: str | None = None, device: torch.device | None = None) -> Path:
    """Write a benchmark's figures with what makes them reproducible; returns the file."""
    device = device or torch.device("cpu")
    slug = "cpu" if device.type == "cpu" else torch.cuda.get_device_name(device).lower().replace(" ", "-")
    out = Path(path) if path else RESULTS / f"{name}-{slug}.json"
    versions = {}
    for package in ("torch", "optuna", "ray", "fvcore", "scikit-learn", "onnxruntime", "syne-tune", "psycopg"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    document = {"benchmark": name, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                "machine": f"{platform.node()}: {platform.machine()}, {_cores()} cores, {platform.system()} {platform.release()}",
                "device": device_name(device), "cuda": torch.version.cuda if device.type == "cuda" else None,
                "python": platform.python_version(), "versions": versions,
                "targets": targets or {}, "figures": figures}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_plain(document), indent=1, default=str) + "\n")
    print(f"wrote {out}")
    return out


def brief_space(path: str | Path, work: Path, scheduler: str | None = None, baselines: bool = False) -> Path:
    """The space at `path` searched at its brief budget, written to `work`: without train.target_tokens and the ladder
    that climbs towards it (search.max_tokens, search.curve_points), so that every config trains train.tokens (or
    its rungs under asha) and is ranked by its val_loss there; its baselines left out unless `baselines`;
    search.scheduler set when given. What the benchmarks that time or compare trials at one budget search."""
    import yaml

    raw = yaml.safe_load(Path(path).read_text())
    raw.setdefault("train", {}).pop("target_tokens", None)
    search = raw.setdefault("search", {})
    for key in ("max_tokens", "curve_points"):
        search.pop(key, None)
    if scheduler is not None:
        search["scheduler"] = scheduler
    if not baselines:
        raw.pop("baselines", None)
    objectives = raw.get("objectives") or {}
    if "val_loss_at_target" in objectives:
        raw["objectives"] = {("val_loss" if k == "val_loss_at_target" else k): v for k, v in objectives.items()}
    out = Path(work) / f"{Path(path).stem}-brief{'-' + scheduler if scheduler else ''}.yaml"
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


def variant(space: str | Path, settings: Sequence[str], work: Path) -> Path:
    """The space at `space` with each SECTION.KEY=VALUE of `settings` applied (values read as YAML), written to `work`
    as a space file of its own; the space itself when there are none."""
    import yaml

    if not settings:
        return Path(space)
    raw = yaml.safe_load(Path(space).read_text())
    for setting in settings:
        path, _, value = setting.partition("=")
        section, _, key = path.partition(".")
        raw.setdefault(section, {})[key] = yaml.safe_load(value)
    out = Path(work) / f"{Path(space).stem}-variant.yaml"
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


def hypervolume_of(points: Sequence[Sequence[float]], reference: Sequence[float], directions: Sequence[str]) -> float:
    """The hypervolume of objective vectors (in their own directions: 'minimize'/'maximize' or 'min'/'max') up to
    `reference`; 0 for no points."""
    from configaformer_search.pareto import hypervolume, minimised

    if not len(points):
        return 0.0
    return hypervolume(minimised(points, directions), minimised([reference], directions)[0])


def reference_of(points: Sequence[Sequence[float]], directions: Sequence[str], margin: float = 0.1) -> list[float]:
    """One reference point for comparing hypervolumes: the worst value of each objective over `points`, pushed out
    by `margin` of itself."""
    worst = [max(p[i] for p in points) if d.startswith("min") else min(p[i] for p in points)
             for i, d in enumerate(directions)]
    return [w + margin * abs(w) if d.startswith("min") else w - margin * abs(w) for w, d in zip(worst, directions)]


def agreement(first: list[float], second: list[float], gap: float = 0.10) -> float:
    """The share of pairs at least `gap` apart (in both runs' mean) that the two runs order alike."""
    pairs = [(i, j) for i in range(len(first)) for j in range(i + 1, len(first))
             if abs(first[i] + second[i] - first[j] - second[j]) >= gap * (first[i] + second[i] + first[j] + second[j]) / 2]
    return sum((first[i] - first[j]) * (second[i] - second[j]) > 0 for i, j in pairs) / len(pairs) if pairs else float("nan")


def drive(space: Any, url: str, trials: int, resources: Any, sampler: str = "random", seed: int = 0,
          scratch: Path | None = None) -> Any:
    """Run `trials` measured configs of `space` into a study at `url` as a search does (the driver, its heartbeat and
    a thread asking ahead, through Ray Tune with `resources`); Ray must be running. Returns the driver: its
    `study_seconds` (the study and the sampler, in the calls a free slot waits for) and `recording_seconds` (recording
    rung results and outcomes) are its work on the critical path; `ahead_seconds` its thread's, beside the trials."""
    from configaformer_search.data import load_corpus
    from configaformer_search.driver.asking import AskAhead, Drawing
    from configaformer_search.driver.samplers import make_sampler
    from configaformer_search.driver.searcher import Driver
    from configaformer_search.driver.tune import search_on_ray
    from configaformer_search.progress import Progress
    from configaformer_search.storage import Heartbeat, StudyStore, open_storage

    class TimedDriver(Driver):
        recording_seconds = 0.0

        def reached_rung(self, slot: str, record: dict) -> bool:
            start = time.perf_counter()
            try:
                return super().reached_rung(slot, record)
            finally:
                self.recording_seconds += time.perf_counter() - start

        def ended(self, slot: str, record: dict | None) -> None:
            start = time.perf_counter()
            try:
                super().ended(slot, record)
            finally:
                self.recording_seconds += time.perf_counter() - start

    store = StudyStore.open(open_storage(url), space.name, space.objectives, make_sampler(space, sampler, seed, trials),
                            space.distributions())
    try:
        vocab = load_corpus(space.data).vocab_size
        driver = TimedDriver(space, store, vocab, trials, Progress(trials, 0, list(space.objectives), verbosity=0))
        with Heartbeat(store, driver.alive_ids), \
                AskAhead(driver, max(1, min(4, resources.concurrency // 2)), Drawing(0, url, sampler, seed + 1)):
            search_on_ray(driver, resources, scratch)
    finally:
        store.close()
    return driver


def run_search(space_path: Path, method: str, sampler: str, seed: int, trials: int, tokens: int | None,
               work: Path) -> dict:
    """One search through the public API (its run folder, study, driver and Ray Tune); returns its measured trials'
    count, tokens spent, wall time and front (each member's sampled params and objective values)."""
    from configaformer_search import search
    from configaformer_search.front import front_trials
    from configaformer_search.space import load_space
    from configaformer_search.storage import read_study
    from optuna.trial import FixedTrial

    space = load_space(space_path)
    start = time.perf_counter()
    result = search(space, trials=trials, tokens=tokens, out=work / f"{method}-{seed}", sampler=sampler, seed=seed,
                    verbosity=0)
    elapsed = time.perf_counter() - start
    if result.stopped_by is not None:
        raise SystemExit(f"{method} search, seed {seed}: interrupted")
    if result.stop_reason:
        print(f"{method} search, seed {seed}: {result.stop_reason}", flush=True)
    study = read_study(result.url)
    counted = [t for t in study.trials if t.finished and t.outcome.counts]  # what --trials counts
    front = front_trials(study.trials, study.directions)
    return {"method": method, "seed": seed, "configs": len(counted), "seconds": elapsed,
            "tokens": sum(t.user_attrs.get("tokens_spent") or 0 for t in counted),
            "complete": sum(t.state == "COMPLETE" for t in counted),
            "front": [(space.sample(FixedTrial(t.params)), list(t.values)) for t in front]}


def content_id(value: Any) -> str:
    """A short id of a JSON-able value, the same wherever it is made: a config as a retraining cache knows it (its
    sampled params, whichever search found it), or a training recipe."""
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def retrain(space_path: Path, members: list[dict], mult: int, log: Path, work: Path) -> dict[str, float | None]:
    """Each config (its params) trained once from scratch at mult x the space's budget on its training seed, with
    the space's full-budget recipe, through the search's Ray trial runner (Ray must be running); runs already in
    `log` are kept, new ones appended. Returns content_id -> val_loss (None if it failed)."""
    from configaformer_search.calibrate import Config, Run, read_results, train_runs
    from configaformer_search.cluster import plan_resources
    from configaformer_search.outcome import is_measured
    from configaformer_search.space import load_space

    space = load_space(space_path)
    budget = space.train["tokens"]
    seed = space.train["seed"] if isinstance(space.train["seed"], int) else 0
    unique = {content_id(params): params for params in members}
    runs = {key: Run(Config(i, params, key, {}, budget, budget), seed, mult) for i, (key, params) in enumerate(unique.items())}
    results = read_results(log)
    missing = [run for run in runs.values() if not is_measured(results.get(run.name) or {})]
    print(f"retraining {len(missing)} of {len(runs)} front members at {mult}x the budget (the rest cached in {log})",
          flush=True)
    if missing:
        train_runs(space, missing, results, log, plan_resources(space, None, None), lambda text: None,
                   scratch=work / ".tune")
    return {key: results[run.name]["val_loss"] if is_measured(results.get(run.name) or {}) else None
            for key, run in runs.items()}


def remeasure(space_path: Path, members: list[dict]) -> dict[str, dict[str, float]]:
    """Each config's cheap metrics and its probed ones (memory, latency, ...) measured again in this process, one config after another
    on an otherwise idle machine: the same conditions for every method's front, however its search ran its trials
    (several at a time under Ray, or one at a time). Returns content_id -> metrics."""
    from configaformer_search import candidate as candidates
    from configaformer_search.data import load_corpus
    from configaformer_search.probes import ProbeContext, run_probes
    from configaformer_search.space import load_space

    space = load_space(space_path)
    corpus = load_corpus(space.data)
    measured = {}
    for params in members:
        key = content_id(params)
        if key not in measured:
            candidate = candidates.screen(space, params, corpus.vocab_size)
            model = candidates.build(candidate)
            measured[key] = {**candidate.metrics, **run_probes(space, ProbeContext(
                model, candidate.model_config, torch.device("cpu"), candidate.train, space.probes, corpus.vocab_size))}
    return measured


def scored_front(front: list[tuple[dict, list[float]]], objectives: Sequence[str], retrained: dict[str, float | None],
                 remeasured: dict[str, dict[str, float]]) -> list[list[float]]:
    """A front as it is scored: each member's retrained val_loss and its remeasured other objectives (members whose
    retraining failed left out)."""
    return [[retrained[content_id(params)] if name == "val_loss" else remeasured[content_id(params)][name]
             for name in objectives] for params, _ in front if retrained.get(content_id(params)) is not None]


def score_fronts(runs: list[dict], space_path: Path, mult: int, log: Path, work: Path) -> list[float]:
    """Every run's front retrained at `mult` x (retrain, cached in `log`; Ray must be running) and remeasured
    (remeasure), and each run's `hv` set: the hypervolume of its scored front against one reference point for all
    (the worst of each objective over every scored member, plus 10%). Returns that reference."""
    from configaformer_search.space import load_space

    space = load_space(space_path)
    objectives, directions = list(space.objectives), list(space.objectives.values())
    members = [params for run in runs for params, _ in run["front"]]
    start = time.perf_counter()
    retrained = retrain(space_path, members, mult, log, work)
    print(f"retrained in {time.perf_counter() - start:.0f} s", flush=True)
    remeasured = remeasure(space_path, members)
    points = [scored_front(run["front"], objectives, retrained, remeasured) for run in runs]
    if not any(points):
        raise SystemExit(f"no front member was retrained: see {work}")
    reference = reference_of([p for run_points in points for p in run_points], directions)
    for run, run_points in zip(runs, points):
        run["hv"] = hypervolume_of(run_points, reference, directions)
    return reference


def _plain(value: Any) -> Any:
    """JSON as the standard has it: a NaN or infinite float (a figure with too few points) becomes null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
