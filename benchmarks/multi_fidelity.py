"""Multi-fidelity search against full-budget search, at equal training tokens, on a CPU (small.yaml by default).

For each seed, three searches through the real pipeline (`configaformer_search.search`, Ray, the study):
  asha    successive halving (scheduler asha), TPE, with a token budget (`--tokens`) of N full-budget trials
          (`--trials N`); trials promoted while it runs out finish, so it overshoots a little;
  tpe     the full budget for every config (scheduler fifo), TPE, as many configs as spend what asha spent;
  random  the same with random sampling.
Then every config on any final front (COMPLETE, feasible, non-dominated) is trained again at `--mult` times the
space's budget (once, shared by the methods that found it), and each front is scored the same way: the hypervolume
of its members' retrained val_loss with their recorded memory and latency, against one reference point for all (the
worst of each objective over every retrained member, plus 10%). Prints configs evaluated, tokens spent, front sizes
and hypervolumes per method and seed, and the ratios asha/tpe.

    python benchmarks/multi_fidelity.py                       # small.yaml, N = 12, 3 seeds, retrained at 4x
    python benchmarks/multi_fidelity.py --seeds 1 --trials 6  # a quick look
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import print_table  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
METHODS = {"tpe": ("fifo", "tpe"), "random": ("fifo", "random"), "asha": ("asha", "tpe")}  # scheduler, sampler


def space_text(path: Path, scheduler: str) -> str:
    """The space's YAML with its search.scheduler set."""
    import yaml

    raw = yaml.safe_load(path.read_text())
    raw.setdefault("search", {})["scheduler"] = scheduler
    return yaml.safe_dump(raw, sort_keys=False)


def run_search(space_path: Path, method: str, seed: int, trials: int, tokens: int | None, work: Path) -> dict:
    """One search; returns its measured trials' count, tokens spent and front (config params and objectives)."""
    from configaformer_search import search
    from configaformer_search.front import front_trials
    from configaformer_search.study import measured

    scheduler, sampler = METHODS[method]
    variant = work / f"{method}-{seed}.yaml"
    variant.write_text(space_text(space_path, scheduler))
    start = time.perf_counter()
    result = search(variant, trials=trials, tokens=tokens, out=work / f"{method}-{seed}", sampler=sampler, seed=seed,
                    verbosity=0)
    counted = measured(result.study)
    return {"method": method, "seed": seed, "configs": len(counted), "seconds": time.perf_counter() - start,
            "tokens": sum(t.user_attrs.get("tokens_spent") or 0 for t in counted),
            "complete": sum(t.state.name == "COMPLETE" for t in counted),
            "front": [(dict(t.params), t.user_attrs["config_key"], list(t.values)) for t in front_trials(result.study)]}


def retrain(job: tuple) -> tuple[str, float | None]:
    """Train one config at mult x the budget (one core); its val_loss, or None if it failed."""
    space_path, params, key, mult = job
    import torch

    from configaformer_search import trial as trial_module
    from configaformer_search.space import load_space

    torch.set_num_threads(1)
    space = load_space(space_path)
    space.train["tokens"] *= mult
    space.probes.update(memory=False, latency=False)
    record = trial_module.run(space, params, "cpu")
    return key, record.get("val_loss") if record["status"] == "ok" else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default=str(ROOT / "spaces" / "small.yaml"))
    parser.add_argument("--trials", type=int, default=12, help="the compute of this many full-budget trials, for each search")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--mult", type=int, default=4, help="retraining budget, in multiples of the space's")
    parser.add_argument("--max-trials", type=int, default=500, help="a ceiling on configs (the tokens decide)")
    args = parser.parse_args()

    import optuna
    import ray

    from configaformer_search.front import hypervolume_of
    from configaformer_search.space import load_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space_path = Path(args.space)
    space = load_space(space_path)
    directions = list(space.objectives.values())
    work = Path(tempfile.mkdtemp(prefix="multi-fidelity-"))
    ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    runs = []
    tokens = args.trials * space.train["tokens"]
    for seed in range(args.seeds):  # asha first, capped at N full budgets; then the others get what it spent
        asha = run_search(space_path, "asha", seed, args.max_trials, tokens, work)
        full = max(1, round(asha["tokens"] / space.train["tokens"]))  # full-budget trials that spend as much
        runs += [asha, run_search(space_path, "tpe", seed, full, None, work),
                 run_search(space_path, "random", seed, full, None, work)]
        print(f"seed {seed}: " + ", ".join(f"{r['method']} {r['configs']} configs in {r['seconds']:.0f} s"
                                           for r in runs[-3:]), flush=True)
    ray.shutdown()

    members = {key: params for run in runs for params, key, _ in run["front"]}
    print(f"retraining {len(members)} front members at {args.mult}x the budget ...", flush=True)
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        retrained = dict(pool.map(retrain, [(str(space_path), params, key, args.mult) for key, params in members.items()]))
    print(f"retrained in {time.perf_counter() - start:.0f} s")

    loss_index = list(space.objectives).index("val_loss")

    def points(run: dict) -> list[list[float]]:
        out = []
        for _, key, values in run["front"]:
            if retrained.get(key) is not None:
                out.append([retrained[key] if i == loss_index else v for i, v in enumerate(values)])
        return out

    everything = [p for run in runs for p in points(run)]
    reference = [max(p[i] for p in everything) * 1.1 if d == "min" else min(p[i] for p in everything) * 0.9
                 for i, d in enumerate(directions)]
    rows = []
    for run in runs:
        run["hv"] = hypervolume_of(points(run), reference, ["minimize" if d == "min" else "maximize" for d in directions])
        rows.append({"method": run["method"], "seed": run["seed"], "configs": run["configs"], "complete": run["complete"],
                     "tokens": f"{run['tokens']:,}", "front": len(run["front"]), "retrained_hv": f"{run['hv']:.4g}",
                     "seconds": f"{run['seconds']:.0f}"})
    print_table(rows, ["method", "seed", "configs", "complete", "tokens", "front", "retrained_hv", "seconds"])

    def mean(method: str, field: str) -> float:
        return statistics.mean(r[field] for r in runs if r["method"] == method)

    print(f"\nspace {space_path.name}, {args.seeds} seeds, fronts retrained at {args.mult}x, reference {[round(r, 4) for r in reference]}")
    for method in METHODS:
        print(f"  {method:6s}  configs {mean(method, 'configs'):6.1f}  tokens {mean(method, 'tokens'):12,.0f}  "
              f"retrained hypervolume {mean(method, 'hv'):.4g}")
    per_token = lambda m: mean(m, "configs") / mean(m, "tokens")  # noqa: E731
    print(f"asha / tpe: configs per token {per_token('asha') / per_token('tpe'):.2f}x (target >= 3), "
          f"configs {mean('asha', 'configs') / mean('tpe', 'configs'):.2f}x, "
          f"retrained hypervolume {mean('asha', 'hv') / mean('tpe', 'hv'):.3f}x (target >= 1)")
    print(f"random / tpe: retrained hypervolume {mean('random', 'hv') / mean('tpe', 'hv'):.3f}x")


if __name__ == "__main__":
    main()
