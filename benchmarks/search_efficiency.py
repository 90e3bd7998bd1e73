"""Hypervolume after N trials for the tpe, nsga2 and random samplers on a space (small.yaml), over several seeds,
on a CPU; random also at 2N. Target: the default sampler at N reaches random's hypervolume at 2N.

The space is searched at its brief budget (its train.target_tokens, ladder and baselines left out): every config
trains train.tokens and is ranked by its val_loss there. Each study is the search's own (a StudyStore in a SQLite
file, the space's sampler sized to N, suggestions drawn and screened as the driver draws them), and trials run one at
a time through the real pipeline (configaformer_search.trial.run) without Ray. Each distinct config is
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
from common import (add_json_argument, brief_space, hypervolume_of, print_table, reference_of, target,  # noqa: E402
                    write_results)

ROOT = Path(__file__).resolve().parent.parent
GOAL = 1.0  # the default sampler's hypervolume at N against random's at 2N


def run_study(job: tuple) -> tuple:
    """One (sampler, seed) study of `count` measured configs; returns each one's objective values in order (None
    for a failed or infeasible one)."""
    from configaformer_search import outcome
    from configaformer_search import trial as trial_module
    from configaformer_search.data import load_corpus
    from configaformer_search.driver.samplers import make_sampler
    from configaformer_search.driver.suggestions import (
        NEW,
        REFUSED,
        REPEAT,
        Streak,
        draw,
    )
    from configaformer_search.space import load_space
    from configaformer_search.storage import StudyStore, open_storage

    space_path, sampler_name, seed, count, budget, cache, overrides, folder = job
    space = load_space(space_path)
    space.search.update({k: v for k, v in overrides.items() if v is not None})
    url = f"sqlite:///{Path(folder) / f'{sampler_name}-{seed}.db'}"
    store = StudyStore.open(open_storage(url), space.name, space.objectives, make_sampler(space, sampler_name, seed, budget),
                            space.distributions())
    vocab = load_corpus(space.data).vocab_size
    values, own = [], {}  # own: this study's measurements, which its repeats reuse as in a search
    streak = Streak()
    try:
        while len(values) < count:
            suggestion = draw(store, space, vocab)
            if suggestion.refusal is not None:  # refused by the screen: recorded, costs nothing
                failure = suggestion.refusal
                store.record(suggestion.trial, suggestion.trial_id, outcome.failed(failure.kind, failure.message, **failure.metrics))
                what = REFUSED
            elif suggestion.key in own:  # a repeat of a config this study measured: told its result, not counted
                record, number = own[suggestion.key]
                store.record(suggestion.trial, suggestion.trial_id, outcome.reused(record, number))
                what = REPEAT
            else:
                if suggestion.key not in cache:
                    cache[suggestion.key] = trial_module.run(space, suggestion.params, device="cpu")
                record = cache[suggestion.key]
                told = store.record(suggestion.trial, suggestion.trial_id, record)
                if told.settles:
                    own[suggestion.key] = (record, suggestion.number)
                feasible = all(v <= 0 for v in (record.get("constraints") or {}).values())
                values.append([record[name] for name in space.objectives] if told.state == "COMPLETE" and feasible else None)
                what = NEW
            if streak.count(what, suggestion) is not None:
                break  # the space is exhausted, or holds nothing but refusals
            if what == NEW:
                streak.measured()
    finally:
        store.close()
    return sampler_name, seed, values, list(store.directions)


def main() -> None:
    import tempfile

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
    add_json_argument(parser, "search_efficiency")
    args = parser.parse_args()
    overrides = {"startup_trials": args.startup_trials, "population_size": args.population_size}
    folder = Path(tempfile.mkdtemp(prefix="search-efficiency-"))
    space_path = str(brief_space(args.space, folder))
    space = load_space(space_path)
    n = args.trials or space.search["trials"]
    start = time.perf_counter()
    cache_path = Path(args.cache) if args.cache else None
    known = json.loads(cache_path.read_text()) if cache_path and cache_path.exists() else {}
    with multiprocessing.Manager() as manager:
        cache = manager.dict(known)
        jobs = [(space_path, name, seed, n * (2 if name == "random" else 1), n, cache, overrides, str(folder))
                for seed in range(args.seeds) for name in ("random", "tpe", "nsga2")]
        with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
            results = pool.map(run_study, jobs, chunksize=1)
        measured = len(cache) - len(known)
        if cache_path:
            cache_path.write_text(json.dumps(dict(cache)))
    directions = results[0][3]
    every = [p for _, _, values, _ in results for p in values if p is not None]
    if not every:
        raise SystemExit(f"no study measured a feasible config: see {folder}")
    reference = reference_of(every, directions)
    table: dict = {}
    for name, seed, values, _ in results:
        table.setdefault((name, n), []).append(hypervolume_of([p for p in values[:n] if p], reference, directions))
        if name == "random":
            table.setdefault((name, 2 * n), []).append(hypervolume_of([p for p in values if p], reference, directions))
    random_2n = statistics.mean(table[("random", 2 * n)])
    ratio = lambda v: statistics.mean(v) / random_2n if random_2n else float("nan")
    rows = [{"sampler": name, "trials": count, "hypervolume (mean)": f"{statistics.mean(v):.4g}",
             "std": f"{statistics.pstdev(v):.3g}", "per seed": ", ".join(f"{x:.3g}" for x in v),
             "vs random at 2N": f"{ratio(v):.2f}"} for (name, count), v in table.items()]
    settings = ", ".join(f"{k} {v}" for k, v in overrides.items() if v is not None) or "defaults"
    print(f"space {Path(args.space).name} ({settings}): N = {n}, {args.seeds} seeds, {measured} new configs measured in "
          f"{time.perf_counter() - start:.0f} s; objectives {', '.join(space.objectives)}; "
          f"reference point {', '.join(f'{r:.4g}' for r in reference)}")
    print_table(rows, list(rows[0]))
    default = space.search["sampler"]
    figures = {"space": Path(args.space).name, "n": n, "seeds": args.seeds, "settings": settings, "measured": measured,
               "seconds": time.perf_counter() - start, "reference": reference,
               "rows": [{"sampler": name, "trials": count, "hypervolume": statistics.mean(v), "std": statistics.pstdev(v),
                         "per_seed": v, "vs_random_2n": ratio(v)} for (name, count), v in table.items()]}
    targets = {f"{default}_at_n_vs_random_at_2n": target(ratio(table[(default, n)]), GOAL)} if (default, n) in table else {}
    write_results("search_efficiency", figures, targets, args.json)


if __name__ == "__main__":
    main()
