"""Multi-fidelity search against full-budget search, at equal training tokens, on a CPU (small.yaml by default).

The space is searched at its brief budget (its train.target_tokens, ladder and baselines left out: every config's
full budget is train.tokens). For each seed, three searches through the public API (`configaformer_search.search`:
its run folder, study, driver and Ray Tune), in one Ray session:
  asha    successive halving (scheduler asha, rungs up to train.tokens), TPE, with a token budget (`--tokens` of the
          search) of N full-budget trials (`--trials N`); trials promoted while it runs out finish, so it
          spends more than that;
  tpe     the full budget for every config (scheduler fifo), TPE, as many configs as spend what asha really spent;
  random  the same with random sampling.
Each scheduler trains with its own default schedule (asha warmup-stable-decay, fifo cosine), as a search gets them.
Then every config on any final front (COMPLETE, feasible, non-dominated) is trained again from scratch at `--mult`
times train.tokens (once, shared by the methods that found it; the full-budget recipe, on the space's training
seed, through the search's Ray trial runner as calibrate and retrain run it), and each front is scored the same way:
the hypervolume of its members' retrained val_loss with their memory and latency measured again here, one config
at a time on an idle machine (the same conditions for every front, however its search ran), against one reference
point for all (the worst of each objective over every retrained member, plus 10%). Prints configs evaluated, tokens
spent, front sizes, hypervolumes and wall times per method and seed, and the ratios asha/tpe.

    python benchmarks/multi_fidelity.py                       # small.yaml, N = 12, 3 seeds, retrained at 4x
    python benchmarks/multi_fidelity.py --seeds 1 --trials 6  # a quick look
    python benchmarks/multi_fidelity.py --quick               # a smoke run: toy budgets, 1 seed, N = 2, asha and tpe
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import (add_json_argument, brief_space, print_table, run_search, score_fronts, target,  # noqa: E402
                    variant, write_results)

ROOT = Path(__file__).resolve().parent.parent
METHODS = {"tpe": ("fifo", "tpe"), "random": ("fifo", "random"), "asha": ("asha", "tpe")}  # scheduler, sampler
CONFIGS_PER_TOKEN_GOAL, HYPERVOLUME_GOAL = 3.0, 1.0  # asha against tpe
# --quick: the space cut to toy models at a toy budget (32 steps of 8 x 64; asha's rungs at 2, 8 and 32 steps), short
# validation and latency probes; one seed, N = 2, retrained at 2x, without the random search. A smoke run of the
# whole path, not figures to compare.
QUICK_SETTINGS = ["params.width={choice: [64, 96]}", "params.depth={int: [1, 2]}", "train.tokens=16384",
                  "train.batch_size=8", "train.eval_tokens=2048", "probes.latency_repeats=3", "probes.latency_warmup=1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default=str(ROOT / "spaces" / "small.yaml"))
    parser.add_argument("--trials", type=int, default=12, help="the compute of this many full-budget trials, for each search")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--mult", type=int, default=4, help="retraining budget, in multiples of the space's")
    parser.add_argument("--max-trials", type=int, default=500, help="a ceiling on configs (the tokens decide)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: the space at a toy budget, 1 seed, N = 2, "
                        "retrained at 2x, asha and tpe only (overrides the above); its figures are written only with --json")
    add_json_argument(parser, "multi_fidelity")
    args = parser.parse_args()

    import optuna
    from configaformer_search.cluster import ray_session
    from configaformer_search.space import load_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    methods = list(METHODS)
    if args.quick:
        args.seeds, args.trials, args.mult, args.max_trials = 1, 2, 2, 50
        methods.remove("random")
    work = Path(tempfile.mkdtemp(prefix="multi-fidelity-"))
    base = variant(args.space, QUICK_SETTINGS if args.quick else [], work)
    spaces = {scheduler: brief_space(base, work, scheduler=scheduler) for scheduler in ("fifo", "asha")}
    space = load_space(spaces["fifo"])
    budget = space.train["tokens"]
    print(f"space {Path(args.space).name} at {budget:,} tokens a config; asha's rungs at "
          f"{', '.join(f'{t:,}' for t in load_space(spaces['asha']).rungs())} tokens; work folder {work}", flush=True)
    runs = []
    with ray_session(None, work):
        for seed in range(args.seeds):  # asha first, capped at N full budgets; then the others get what it spent
            asha = run_search(spaces["asha"], "asha", "tpe", seed, args.max_trials, args.trials * budget, work)
            full = max(1, round(asha["tokens"] / budget))  # full-budget trials that spend as much
            runs += [asha] + [run_search(spaces["fifo"], method, METHODS[method][1], seed, full, None, work)
                              for method in methods if method != "asha"]
            print(f"seed {seed}: " + ", ".join(f"{r['method']} {r['configs']} configs in {r['seconds']:.0f} s"
                                               for r in runs[-len(methods):]), flush=True)
        reference = score_fronts(runs, spaces["fifo"], args.mult, work / "retrained.jsonl", work)
    rows = []
    for run in runs:
        rows.append({"method": run["method"], "seed": run["seed"], "configs": run["configs"], "complete": run["complete"],
                     "tokens": f"{run['tokens']:,}", "front": len(run["front"]), "retrained_hv": f"{run['hv']:.4g}",
                     "seconds": f"{run['seconds']:.0f}"})
    print_table(rows, ["method", "seed", "configs", "complete", "tokens", "front", "retrained_hv", "seconds"])

    def mean(method: str, field: str) -> float:
        return statistics.mean(r[field] for r in runs if r["method"] == method)

    def ratio(a: float, b: float) -> float:
        return a / b if b else float("nan")

    print(f"\nspace {Path(args.space).name}, {args.seeds} seeds, fronts retrained at {args.mult}x, "
          f"reference {[round(r, 4) for r in reference]}")
    for method in methods:
        print(f"  {method:6s}  configs {mean(method, 'configs'):6.1f}  tokens {mean(method, 'tokens'):12,.0f}  "
              f"retrained hypervolume {mean(method, 'hv'):.4g}  wall {mean(method, 'seconds'):6.0f} s")
    per_token = ratio(ratio(mean("asha", "configs"), mean("asha", "tokens")), ratio(mean("tpe", "configs"), mean("tpe", "tokens")))
    hv_ratio = ratio(mean("asha", "hv"), mean("tpe", "hv"))
    print(f"asha / tpe: configs per token {per_token:.2f}x (target >= {CONFIGS_PER_TOKEN_GOAL:g}), "
          f"configs {ratio(mean('asha', 'configs'), mean('tpe', 'configs')):.2f}x, "
          f"retrained hypervolume {hv_ratio:.3f}x (target >= {HYPERVOLUME_GOAL:g}), "
          f"wall time {ratio(mean('asha', 'seconds'), mean('tpe', 'seconds')):.2f}x")
    if "random" in methods:
        print(f"random / tpe: retrained hypervolume {ratio(mean('random', 'hv'), mean('tpe', 'hv')):.3f}x")
    if args.json or not args.quick:  # a smoke run's figures stay out of benchmarks/results unless asked for
        figures = {"space": Path(args.space).name, "tokens": budget, "trials": args.trials, "seeds": args.seeds,
                   "mult": args.mult, "reference": reference,
                   "runs": [{k: v for k, v in run.items() if k != "front"} | {"front": len(run["front"])} for run in runs]}
        write_results("multi_fidelity", figures, {"asha_configs_per_token_vs_tpe": target(per_token, CONFIGS_PER_TOKEN_GOAL),
                                                  "asha_hypervolume_vs_tpe": target(hv_ratio, HYPERVOLUME_GOAL)}, args.json)


if __name__ == "__main__":
    main()
