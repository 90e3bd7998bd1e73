"""Does the quick start's front rank configs as a longer training would? The check a user would make, automated.

For each seed: the quick start as the README runs it (`configaformer-search SPACE`, here with `--seed S` and a
scratch `--out`), timed on the wall clock; then every complete trial is trained again from scratch at `--mult` times
the space's budget (train.tokens) on the space's training seed (through the search's Ray trial runner, packed like its
trials, shared between seeds that found the same config), and the value the search ranks by is compared with the
retrained val_loss: Spearman, Kendall, and where the pick (the front's lowest loss, what `export` writes) ranks among
the retrained configs. The value ranked is the loss at the space's train.target_tokens where it has one (measured
where a config climbed that far, else predicted), and otherwise the reported val_loss (the seed mean, where seeds
are confirmed); `--mult` defaults to the target (as `configaformer-search retrain` does), else 4x.
Targets: mean Spearman at least 0.8, the pick in the top third for every seed, the quick start within 3 minutes.

    python benchmarks/ranking_holds.py                                    # spaces/small.yaml, 3 seeds, to its target
    python benchmarks/ranking_holds.py --mult 4 --set search.confirm_seeds=1 --seeds 1

Retrained runs are kept in --work (resumable); a variant (--set) is written there as its own space file.
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import add_json_argument, print_table, target, variant, write_results

ROOT = Path(__file__).resolve().parent.parent
SPEARMAN_GOAL, QUICK_START_GOAL_S = 0.8, 180.0


def quick_start(space: Path, seed: int, out: Path) -> float:
    """The quick start's search, as the README runs it (`configaformer-search SPACE`, the module run by this Python);
    its wall time in seconds (the interpreter's and Ray's start-up included)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "configaformer_search.cli", str(space), "--seed", str(seed), "--out", str(out),
                    "--fresh", "-q"], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default=str(ROOT / "spaces" / "small.yaml"))
    parser.add_argument("--seeds", type=int, default=3, help="quick starts, with sampler seeds 0, 1, ...")
    parser.add_argument("--mult", type=int, help="retraining budget, in multiples of the space's train.tokens "
                                                 "(default: its target_tokens, else 4)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="change the space")
    parser.add_argument("--work", default="runs/ranking-holds", help="scratch folder (retrained runs are kept)")
    add_json_argument(parser, "ranking_holds")
    args = parser.parse_args()

    from configaformer_search.calibrate import Config, Run, read_results, train_runs
    from configaformer_search.cluster import plan_resources, ray_session
    from configaformer_search.outcome import is_measured
    from configaformer_search.ranking import kendall, spearman
    from configaformer_search.review import TARGET, read_review
    from configaformer_search.space import load_space
    from configaformer_search.storage import default_storage
    from optuna.trial import FixedTrial

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    space_path = variant(Path(args.space), args.set, work)
    space = load_space(space_path)
    brief = space.train["tokens"]
    mult = args.mult or (max(2, round(space.target / brief)) if space.target else 4)
    searches = []
    for seed in range(args.seeds):
        out = work / f"seed{seed}"
        wall = quick_start(space_path, seed, out)
        review = read_review(default_storage(out))
        ranked = TARGET if TARGET in review.names else "val_loss"
        index = review.names.index(ranked)
        complete = [t for t in review.complete if not t.baseline]
        searches.append({"seed": seed, "wall": wall, "pick": review.pick_default().number if review.front else None,
                         "ranked": ranked,
                         "trials": [(t.number, space.sample(FixedTrial(t.params)), t.metrics["config_key"], t.values[index])
                                    for t in complete]})
        print(f"seed {seed}: {len(complete)} complete trials in {wall:.0f} s", flush=True)

    warmup = space.rungs()[0] if len(space.rungs()) > 1 else brief  # where calibrate takes the warm-up
    found = {}  # config key -> params, each config once whichever searches found it
    for search in searches:
        for _, params, key, _ in search["trials"]:
            found.setdefault(key, params)
    configs = {key: Config(i, params, key, {}, brief, warmup) for i, (key, params) in enumerate(found.items())}
    seed = space.train["seed"] if isinstance(space.train["seed"], int) else 0
    runs = {key: Run(config, seed, mult) for key, config in configs.items()}
    log = work / f"retrained-{space_path.stem}.jsonl"
    results = read_results(log)
    missing = [run for run in runs.values() if run.name not in results]
    print(f"retraining {len(missing)} of {len(runs)} configs at {mult}x ({brief * mult:,} tokens) ...", flush=True)
    if missing:
        with ray_session(None, work):
            train_runs(space, missing, results, log, plan_resources(space, None, None), lambda text: None,
                       scratch=work / ".tune")

    def retrained(key: str) -> float | None:
        record = results.get(runs[key].name) or {}
        return record.get("val_loss") if is_measured(record) else None

    rows = []
    for search in searches:
        pairs = [(number, value, retrained(key)) for number, _, key, value in search["trials"]]
        pairs = [(n, a, b) for n, a, b in pairs if b is not None]
        retrained_order = [p[0] for p in sorted(pairs, key=lambda p: p[2])]
        rank = retrained_order.index(search["pick"]) + 1 if search["pick"] in retrained_order else None
        search.update(rho=spearman([p[1] for p in pairs], [p[2] for p in pairs]),
                      tau=kendall([p[1] for p in pairs], [p[2] for p in pairs]), rank=rank, n=len(pairs),
                      top_third=rank is not None and rank <= math.ceil(len(pairs) / 3))
        rows.append({"seed": search["seed"], "complete": search["n"], "wall_s": f"{search['wall']:.0f}",
                     "spearman": f"{search['rho']:.2f}", "kendall": f"{search['tau']:.2f}",
                     "pick_rank": f"{rank} of {search['n']}" if rank else "not retrained", "pick_top_third": search["top_third"]})
    print_table(rows, ["seed", "complete", "wall_s", "spearman", "kendall", "pick_rank", "pick_top_third"])
    mean = lambda field: statistics.mean(s[field] for s in searches)
    top_third = sum(s["top_third"] for s in searches)
    print(f"\n{space_path.name} ({', '.join(args.set) or 'as it is'}), {searches[0]['ranked']} against {mult}x retrained: "
          f"mean Spearman {mean('rho'):.2f} (target >= {SPEARMAN_GOAL:g}), Kendall {mean('tau'):.2f}, pick in the top "
          f"third {top_third} of {len(searches)}, quick start {mean('wall'):.0f} s (target <= {QUICK_START_GOAL_S:.0f} on 2 cores)")
    figures = {"space": space_path.name, "settings": args.set, "ranked_by": searches[0]["ranked"], "mult": mult,
               "retrained_tokens": brief * mult, "configs": len(runs),
               "searches": [{k: v for k, v in s.items() if k != "trials"} for s in searches]}
    write_results("ranking_holds", figures,
                  {"spearman": target(mean("rho"), SPEARMAN_GOAL),
                   "pick_top_third_share": target(top_third / len(searches), 1.0),
                   "quick_start_s": target(mean("wall"), QUICK_START_GOAL_S, at_least=False)}, args.json)


if __name__ == "__main__":
    main()
