"""Does the quick start's front rank configs as a longer training would? The check a user would make, automated.

For each seed: the quick start as the README runs it (`configaformer-search SPACE`, here with `--seed S` and a
scratch `--out`), timed on the wall clock; then every complete trial is trained again from scratch at `--mult` times
its budget on the space's training seed (through Ray, a run per core, shared between seeds that found the same config),
and the reported val_loss (the seed mean, where seeds are confirmed) is compared with the retrained one: Spearman,
Kendall, and where the pick (the front's lowest val_loss, what `export` writes) ranks among the retrained configs.

    python benchmarks/ranking_holds.py                                    # spaces/small.yaml, 3 seeds, 4x
    python benchmarks/ranking_holds.py --set train.tokens=393216 --set search.confirm_seeds=1 --seeds 1

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
from common import print_table  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def variant(space: Path, settings: list[str], work: Path) -> Path:
    """The space with each SECTION.KEY=VALUE of `settings` applied (values read as YAML)."""
    import yaml

    if not settings:
        return space
    raw = yaml.safe_load(space.read_text())
    for setting in settings:
        path, _, value = setting.partition("=")
        section, _, key = path.partition(".")
        raw.setdefault(section, {})[key] = yaml.safe_load(value)
    out = work / f"{space.stem}-variant.yaml"
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


def quick_start(space: Path, seed: int, out: Path) -> float:
    """The quick start's search, as the README runs it; its wall time in seconds (Ray's start-up included)."""
    start = time.perf_counter()
    subprocess.run(["configaformer-search", str(space), "--seed", str(seed), "--out", str(out), "--fresh", "-q"],
                   check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default=str(ROOT / "spaces" / "small.yaml"))
    parser.add_argument("--seeds", type=int, default=3, help="quick starts, with sampler seeds 0, 1, ...")
    parser.add_argument("--mult", type=int, default=4, help="retraining budget, in multiples of the space's")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="change the space")
    parser.add_argument("--work", default="runs/ranking-holds", help="scratch folder (retrained runs are kept)")
    args = parser.parse_args()

    import optuna
    import ray
    from optuna.trial import FixedTrial, TrialState

    from configaformer_search.calibrate import Config, Run, read_results, train_runs
    from configaformer_search.front import pick_default
    from configaformer_search.orchestrate import plan_resources
    from configaformer_search.ranking import kendall, spearman
    from configaformer_search.records import study_trials
    from configaformer_search.space import load_space
    from configaformer_search.study import default_storage, load_existing

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    space_path = variant(Path(args.space), args.set, work)
    space = load_space(space_path)
    searches = []
    for seed in range(args.seeds):
        out = work / f"seed{seed}"
        wall = quick_start(space_path, seed, out)
        study = load_existing(default_storage(out))
        complete = study_trials(study, (TrialState.COMPLETE,))
        searches.append({"seed": seed, "wall": wall, "pick": pick_default(study).number,
                         "trials": [(t.number, space.sample(FixedTrial(t.params)), t.user_attrs["config_key"],
                                     t.user_attrs["val_loss"], t.user_attrs["tokens_trained"]) for t in complete]})
        print(f"seed {seed}: {len(complete)} complete trials in {wall:.0f} s", flush=True)

    warmup = space.rungs()[0] if len(space.rungs()) > 1 else None
    found = {}  # config key -> (params, budget), each config once whichever searches found it
    for search in searches:
        for _, params, key, _, tokens in search["trials"]:
            found.setdefault(key, (params, tokens))
    configs = {key: Config(i, params, key, {}, tokens, warmup or tokens) for i, (key, (params, tokens)) in enumerate(found.items())}
    seed = space.train["seed"] if isinstance(space.train["seed"], int) else 0
    runs = {key: Run(config, seed, args.mult) for key, config in configs.items()}
    log = work / f"retrained-{space_path.stem}.jsonl"
    results = read_results(log)
    ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    missing = [run for run in runs.values() if run.name not in results]
    print(f"retraining {len(missing)} of {len(runs)} configs at {args.mult}x ...", flush=True)
    train_runs(space, missing, results, log, plan_resources(space, None, None), lambda text: None)
    ray.shutdown()

    rows = []
    for search in searches:
        pairs = [(number, loss, results[runs[key].name].get("val_loss")) for number, _, key, loss, _ in search["trials"]]
        pairs = [(n, a, b) for n, a, b in pairs if b is not None]
        retrained_order = sorted(pairs, key=lambda p: p[2])
        rank = next(i for i, p in enumerate(retrained_order, 1) if p[0] == search["pick"])
        search.update(rho=spearman([p[1] for p in pairs], [p[2] for p in pairs]),
                      tau=kendall([p[1] for p in pairs], [p[2] for p in pairs]), rank=rank, n=len(pairs))
        rows.append({"seed": search["seed"], "complete": search["n"], "wall_s": f"{search['wall']:.0f}",
                     "spearman": f"{search['rho']:.2f}", "kendall": f"{search['tau']:.2f}",
                     "pick_rank": f"{rank} of {search['n']}", "pick_top_third": rank <= math.ceil(search["n"] / 3)})
    print_table(rows, ["seed", "complete", "wall_s", "spearman", "kendall", "pick_rank", "pick_top_third"])
    mean = lambda field: statistics.mean(s[field] for s in searches)  # noqa: E731
    print(f"\n{space_path.name} ({', '.join(args.set) or 'as it is'}), retrained at {args.mult}x: mean Spearman "
          f"{mean('rho'):.2f} (target >= 0.8), Kendall {mean('tau'):.2f}, pick in the top third "
          f"{sum(s['rank'] <= math.ceil(s['n'] / 3) for s in searches)} of {len(searches)}, "
          f"quick start {mean('wall'):.0f} s (target <= 180 on 2 cores)")


if __name__ == "__main__":
    main()
