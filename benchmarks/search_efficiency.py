"""Hypervolume after N trials for the tpe, nsga2 and random samplers on a space (small.yaml), over several seeds,
on a CPU; random also at 2N. Target: the default sampler at N reaches random's hypervolume at 2N.

Trials run through the real pipeline (configaformer_search.trial.run) without Ray. Each distinct config is
measured once and shared by every study (a manager dict), so samplers are compared on the same measurements.
As in a search, a suggestion that repeats a config measured earlier in the same study is told its result and does
not count: N is the number of configs each study measured. All hypervolumes use one reference point: the worst
value of each objective over everything measured, plus 10%. Seeds spread widely at N = 12; use --seeds 10 (and
--cache) for figures to compare.

    python benchmarks/search_efficiency.py                 # N = the space's search.trials, 3 seeds, 2 processes
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import print_table  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def run_study(job: tuple) -> tuple:
    """One (sampler, seed) study of `count` measured configs; returns each one's objective values in order (None
    for a failed or infeasible one)."""
    import optuna

    from configaformer_search import trial as trial_module
    from configaformer_search.space import load_space
    from configaformer_search.study import Asked, Streak, ask_new, make_sampler, open_study, record

    space_path, sampler_name, seed, count, budget, cache, overrides = job
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space(space_path)
    space.search.update({k: v for k, v in overrides.items() if v is not None})
    study = open_study(space, None, make_sampler(space, sampler_name, seed, budget))  # in memory
    values, own = [], {}  # own: this study's measurements, which its repeats reuse as in a search
    streak = Streak()
    while len(values) < count:
        asked = ask_new(study, space, 256, own, lambda number, metrics: None, {}, streak)
        if not isinstance(asked, Asked):
            break  # the space is exhausted, or holds nothing but refusals
        trial, params, key = asked.trial, asked.params, asked.key
        if key not in cache:
            cache[key] = trial_module.run(space, params, device="cpu")
        metrics = cache[key]
        state = record(study, trial, metrics)
        own[key] = dict(metrics, reused_from=trial.number)
        feasible = all(v <= 0 for v in (metrics.get("constraints") or {}).values())
        values.append([metrics[name] for name in space.objectives] if state.name == "COMPLETE" and feasible else None)
    return sampler_name, seed, values, [d.name.lower() for d in study.directions]


def main() -> None:
    from configaformer_search.front import hypervolume_of
    from configaformer_search.space import load_space

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default=str(ROOT / "spaces" / "small.yaml"))
    parser.add_argument("--trials", type=int, help="N (default: the space's search.trials)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--cache", help="JSON file of measured configs, read and updated, so that sampler settings "
                        "can be compared without measuring again")
    parser.add_argument("--startup-trials", type=int, help="override TPE's startup trials")
    parser.add_argument("--population-size", type=int, help="override NSGA-II's population")
    args = parser.parse_args()
    overrides = {"startup_trials": args.startup_trials, "population_size": args.population_size}
    space = load_space(args.space)
    n = args.trials or space.search["trials"]
    start = time.perf_counter()
    cache_path = Path(args.cache) if args.cache else None
    known = json.loads(cache_path.read_text()) if cache_path and cache_path.exists() else {}
    with multiprocessing.Manager() as manager:
        cache = manager.dict(known)
        jobs = [(args.space, name, seed, n * (2 if name == "random" else 1), n, cache, overrides)
                for seed in range(args.seeds) for name in ("random", "tpe", "nsga2")]
        with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
            results = pool.map(run_study, jobs, chunksize=1)
        measured = len(cache) - len(known)
        if cache_path:
            cache_path.write_text(json.dumps(dict(cache)))
    directions = results[0][3]
    every = [p for _, _, values, _ in results for p in values if p is not None]
    reference = [max(p[i] for p in every) * 1.1 if d == "minimize" else min(p[i] for p in every) * 0.9
                 for i, d in enumerate(directions)]
    table: dict = {}
    for name, seed, values, _ in results:
        table.setdefault((name, n), []).append(hypervolume_of([p for p in values[:n] if p], reference, directions))
        if name == "random":
            table.setdefault((name, 2 * n), []).append(hypervolume_of([p for p in values if p], reference, directions))
    target = statistics.mean(table[("random", 2 * n)])
    rows = [{"sampler": name, "trials": count, "hypervolume (mean)": f"{statistics.mean(v):.4g}",
             "std": f"{statistics.pstdev(v):.3g}", "per seed": ", ".join(f"{x:.3g}" for x in v),
             "vs random at 2N": f"{statistics.mean(v) / target:.2f}"} for (name, count), v in table.items()]
    settings = ", ".join(f"{k} {v}" for k, v in overrides.items() if v is not None) or "defaults"
    print(f"space {Path(args.space).name} ({settings}): N = {n}, {args.seeds} seeds, {measured} new configs measured in "
          f"{time.perf_counter() - start:.0f} s; objectives {', '.join(space.objectives)}; "
          f"reference point {', '.join(f'{r:.4g}' for r in reference)}")
    print_table(rows, list(rows[0]))


if __name__ == "__main__":
    main()
