"""Peers side by side: the project's successive halving against other search methods, at one token budget.

One space (default: spaces/small.yaml at a quarter of its brief budget, so that three repeats of six methods end in
about a quarter of an hour on 2 cores) and one budget. The same trial function trains every config
(`configaformer_search.trial.run`: the same recipe, probes and seeds), for
  asha                 the project's successive halving with TPE, given the tokens of N trainings at the space's full
                       budget (`--trials N`); its budget is not a cap (configs promoted as it runs out finish), so it
                       runs first and every other method of the repeat gets the tokens it really spent;
  random, tpe, nsga2   Optuna's samplers through the project's search (scheduler fifo): as many configs as spend those
                       tokens at the full budget;
  moasha               Syne Tune's MOASHA as shipped, driven in-process (its scheduler asked for each config and told
                       each rung result, no backend), one config at a time until the budget is spent;
  moasha-fixed         the same with one reading corrected: Syne Tune 0.16 ranks a rung's results by the *order* its
                       non-dominated sort returns (the index of the k-th best result) as if it were each result's
                       priority, so whether a config goes on depends on which result happens to sort last, and a
                       config that dominates its whole rung can be stopped. Here the order is inverted into ranks.
Every method's front (complete, feasible, non-dominated) is trained again from scratch at `--mult` times the budget
(once per config, cached by config in benchmarks/results/peers_retrained-<recipe>.jsonl, one file per space and
settings, shared by the methods that found it), and scored the same way: the hypervolume of its members' retrained
val_loss with their memory and latency measured again here, one config at a time on an idle machine (the same
conditions for every front, however its method ran its trials), against one reference point for all (the worst of
each objective over every retrained member, plus 10%).
Prints each run, then each method's mean and spread over `--repeats` sampler seeds, with the tokens it spent.

    pip install -e '.[peers]'
    python benchmarks/peers.py                 # 3 repeats, N = 6, retrained at 4x
    python benchmarks/peers.py --quick         # a smoke run: toy budgets, 1 repeat, N = 2
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import (RESULTS, add_json_argument, brief_space, content_id, print_table, run_search,  # noqa: E402
                    score_fronts, variant, write_results)

ROOT = Path(__file__).resolve().parent.parent
SEARCHED = {"random": "random", "tpe": "tpe", "nsga2": "nsga2"}  # method -> sampler, every config the full budget
METHODS = [*SEARCHED, "asha", "moasha", "moasha-fixed"]
SETTINGS = ["train.tokens=98304"]  # a quarter of small.yaml's brief budget: 96 steps of 16 x 64
QUICK_SETTINGS = ["params.width={choice: [64, 96]}", "params.depth={int: [1, 2]}", "train.tokens=16384",
                  "train.batch_size=8", "train.eval_tokens=2048", "probes.latency_repeats=3", "probes.latency_warmup=1"]

def retrained_cache(space_path: Path) -> Path:
    """The retraining cache of one recipe: results are reused only for the same space (data, model template, training
    and probes; its search section aside), so a run with other settings never reads another's losses."""
    import yaml

    raw = {k: v for k, v in yaml.safe_load(space_path.read_text()).items() if k not in ("name", "search")}
    return RESULTS / f"peers_retrained-{content_id(raw)}.jsonl"



def syne_tune_domains(space: Any) -> dict[str, Any]:
    """The space's parameters as a Syne Tune config space, over the labels its Optuna distributions record (so that
    a sampled config maps back through `space.sample(FixedTrial(config))`); a conditional parameter is always drawn
    and ignored where its condition does not hold."""
    from optuna.distributions import CategoricalDistribution, IntDistribution
    from syne_tune.config_space import choice, loguniform, randint, uniform

    domains = {}
    for name, param in space.params.items():
        if param.per_layer:
            raise SystemExit(f"peers.py: per-layer parameter {name} is not mapped to Syne Tune")
        dist = param.distribution()
        if isinstance(dist, CategoricalDistribution):
            domains[name] = choice(list(dist.choices))
        elif isinstance(dist, IntDistribution):
            domains[name] = randint(dist.low, dist.high) if dist.step == 1 else choice(list(range(dist.low, dist.high + 1, dist.step)))
        else:
            domains[name] = (loguniform if dist.log else uniform)(dist.low, dist.high)
    return domains


def ranked_priority() -> Any:
    """Syne Tune's non-dominated priority with its order turned into each result's rank (the corrected reading)."""
    from syne_tune.optimizer.schedulers.multiobjective.multiobjective_priority import NonDominatedPriority

    class RankedPriority(NonDominatedPriority):
        def priority_unsafe(self, objectives: np.ndarray) -> np.ndarray:
            order = super().priority_unsafe(objectives)
            ranks = np.empty(len(order), dtype=int)
            ranks[order] = np.arange(len(order))
            return ranks

    return RankedPriority()


def dominating_result_decisions() -> dict[str, str]:
    """What MOASHA's rung (Syne Tune's Bracket, reduction factor 4) decides for a result that dominates the four
    recorded there before it, as shipped and corrected: the one reading this benchmark corrects, shown directly."""
    from syne_tune.optimizer.schedulers.asha import Bracket
    from syne_tune.optimizer.schedulers.multiobjective.multiobjective_priority import NonDominatedPriority

    decisions = {}
    for name, priority in (("moasha", NonDominatedPriority()), ("moasha-fixed", ranked_priority())):
        rung = Bracket(1, 16, 4, 0, priority)
        for trial, (a, b) in enumerate([(3.0, 3.0), (2.0, 4.0), (4.0, 2.0), (5.0, 5.0)]):
            rung.on_result(trial, 1, {"a": a, "b": b})
        decisions[name] = rung.on_result(4, 1, {"a": 1.0, "b": 1.0})
    return decisions


def run_moasha(space_path: Path, method: str, seed: int, tokens: int) -> dict:
    """Syne Tune's MOASHA asked for configs and told each rung result in this process, one config at a time through
    the project's trial function, until `tokens` are spent; the same summary as `run_search`, and how many configs it
    stopped that dominated every result recorded at their rung."""
    from configaformer_search.outcome import is_measured, outcome_of
    from configaformer_search.pareto import front_mask, minimised
    from configaformer_search.space import load_space
    from configaformer_search.trial import run as run_trial
    from optuna.trial import FixedTrial
    from syne_tune.backend.trial_status import Trial
    from syne_tune.optimizer.scheduler import SchedulerDecision
    from syne_tune.optimizer.schedulers.multiobjective.moasha import MOASHA

    space = load_space(space_path)
    rungs, objectives = space.rungs(), list(space.objectives)
    directions = list(space.objectives.values())
    sign = {name: 1.0 if d.startswith("min") else -1.0 for name, d in space.objectives.items()}
    np.random.seed(seed)  # Syne Tune draws configs and brackets from NumPy's global generator
    scheduler = MOASHA(syne_tune_domains(space), metrics=objectives, do_minimize=True, time_attr="tokens_trained",
                       max_t=rungs[-1], grace_period=rungs[0], reduction_factor=space.search["reduction_factor"],
                       multiobjective_priority=ranked_priority() if method == "moasha-fixed" else None, random_seed=seed)
    at_rung: dict[int, list[list[float]]] = {}
    spent, asked, configs, dominating_stopped, complete = 0, 0, 0, 0, []
    start = time.perf_counter()
    while spent < tokens:
        config = scheduler.suggest().config
        trial = Trial(trial_id=asked, config=config, creation_time=datetime.datetime.now())
        scheduler.on_trial_add(trial)
        asked += 1

        def report(record: dict) -> bool:
            nonlocal dominating_stopped
            if not is_measured(record) or record["tokens_trained"] >= rungs[-1]:
                return True  # a failure ends the trial anyway; the full budget ends it as complete
            result = {name: sign[name] * record[name] for name in objectives} | {"tokens_trained": record["tokens_trained"]}
            decision = scheduler.on_trial_result(trial, result)
            point, seen = [result[name] for name in objectives], at_rung.setdefault(record["tokens_trained"], [])
            dominates_all = bool(seen) and all(all(a <= b for a, b in zip(point, other)) and point != other for other in seen)
            seen.append(point)
            dominating_stopped += decision == SchedulerDecision.STOP and dominates_all
            return decision == SchedulerDecision.CONTINUE

        params = space.sample(FixedTrial(config))
        record = run_trial(space, params, report=report)  # on the device a search's trial would have
        spent += record.get("tokens_spent") or 0
        configs += outcome_of(record).kind.counts  # as a search counts them: refusals before training take no place
        if is_measured(record) and record["tokens_trained"] >= rungs[-1]:
            scheduler.on_trial_complete(trial, {name: sign[name] * record[name] for name in objectives}
                                        | {"tokens_trained": record["tokens_trained"]})
            if not record.get("violations"):
                complete.append((params, [record[name] for name in objectives]))
        elif not is_measured(record):
            scheduler.on_trial_remove(trial)  # failed: what Syne Tune's tuner tells its scheduler of an erred trial
    values = [v for _, v in complete]
    front = [complete[i] for i in np.flatnonzero(front_mask(minimised(values, directions)))] if values else []
    return {"method": method, "seed": seed, "configs": configs, "seconds": time.perf_counter() - start, "tokens": spent,
            "complete": len(complete), "front": front, "dominating_stopped": dominating_stopped}


def say(run: dict) -> None:
    print(f"repeat {run['seed']}: {run['method']} {run['configs']} configs, {run['tokens']:,} tokens, front "
          f"{len(run['front'])}, {run['seconds']:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default=str(ROOT / "spaces" / "small.yaml"))
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                        help=f"a setting of the space for every method (default: {' '.join(SETTINGS)})")
    parser.add_argument("--trials", type=int, default=6, help="the budget: the tokens of this many full-budget trainings")
    parser.add_argument("--repeats", type=int, default=3, help="sampler seeds 0, 1, ... (default 3)")
    parser.add_argument("--mult", type=int, default=4, help="retraining budget, in multiples of the space's")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"a comma-separated subset of {', '.join(METHODS)}")
    parser.add_argument("--max-trials", type=int, default=500, help="a ceiling on asha's configs (the tokens decide)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: toy budgets, 1 repeat, N = 2, retrained at "
                        "2x (overrides the above); its figures are written only with --json, its retraining not cached")
    add_json_argument(parser, "peers")
    args = parser.parse_args()
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"--methods: unknown {', '.join(unknown)} (expected some of {', '.join(METHODS)})")

    import optuna
    from configaformer_search.cluster import ray_session
    from configaformer_search.space import load_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    threads = torch.get_num_threads()  # MOASHA's in-process trials set one thread; the results file names the machine's
    settings = args.set if args.set is not None else SETTINGS
    if args.quick:
        args.repeats, args.trials, args.mult, settings = 1, 2, 2, QUICK_SETTINGS
    work = Path(tempfile.mkdtemp(prefix="peers-"))
    base = variant(args.space, settings, work)
    spaces = {scheduler: brief_space(base, work, scheduler=scheduler) for scheduler in ("fifo", "asha")}
    space = load_space(spaces["fifo"])
    budget, tokens = space.train["tokens"], args.trials * space.train["tokens"]
    print(f"space {Path(args.space).name} at {budget:,} tokens a config, {tokens:,} tokens for asha; rungs of asha "
          f"and moasha at {', '.join(f'{t:,}' for t in load_space(spaces['asha']).rungs())}; work folder {work}", flush=True)
    decisions = dominating_result_decisions()
    print("a result that dominates its 4 rung-mates, at a MOASHA rung (reduction factor 4): "
          + ", ".join(f"{name} says {decision}" for name, decision in decisions.items()), flush=True)
    runs = []
    with ray_session(None, work):
        for seed in range(args.repeats):
            spend = tokens
            if "asha" in methods:  # first: its budget is not a cap (promoted trials finish), so the others get what it spent
                runs.append(run_search(spaces["asha"], "asha", "tpe", seed, args.max_trials, tokens, work))
                spend = runs[-1]["tokens"]
                say(runs[-1])
            for method in (m for m in methods if m != "asha"):
                if method in SEARCHED:
                    full = max(1, round(spend / budget))  # full-budget trainings that spend as much
                    runs.append(run_search(spaces["fifo"], method, SEARCHED[method], seed, full, None, work))
                else:
                    runs.append(run_moasha(spaces["asha"], method, seed, spend))
                say(runs[-1])
        reference = score_fronts(runs, spaces["fifo"], args.mult,
                                 work / "retrained.jsonl" if args.quick else retrained_cache(spaces["fifo"]), work)
    print_table([{"method": r["method"], "repeat": r["seed"], "configs": r["configs"], "complete": r["complete"],
                  "tokens": f"{r['tokens']:,}", "front": len(r["front"]), "retrained_hv": f"{r['hv']:.4g}",
                  "seconds": f"{r['seconds']:.0f}", "dominating_stopped": r.get("dominating_stopped", "")} for r in runs],
                ["method", "repeat", "configs", "complete", "tokens", "front", "retrained_hv", "seconds", "dominating_stopped"])

    summary = []
    for method in methods:
        mine = [r for r in runs if r["method"] == method]
        hvs = [r["hv"] for r in mine]
        summary.append({"method": method, "hv_mean": statistics.fmean(hvs),
                        "hv_sd": statistics.stdev(hvs) if len(hvs) > 1 else 0.0, "hv_min": min(hvs), "hv_max": max(hvs),
                        "configs": statistics.fmean(r["configs"] for r in mine),
                        "tokens": statistics.fmean(r["tokens"] for r in mine),
                        "seconds": statistics.fmean(r["seconds"] for r in mine)})
    print(f"\nspace {Path(args.space).name} at {budget:,} tokens, {args.trials} trainings' tokens for asha, {args.repeats} repeats, "
          f"fronts retrained at {args.mult}x, reference {[round(r, 4) for r in reference]}")
    print_table([{"method": s["method"], "retrained hypervolume": f"{s['hv_mean']:.4g} ± {s['hv_sd']:.2g}",
                  "range": f"{s['hv_min']:.4g}-{s['hv_max']:.4g}", "configs": f"{s['configs']:.1f}",
                  "tokens": f"{s['tokens']:,.0f}", "seconds": f"{s['seconds']:.0f}"} for s in summary],
                ["method", "retrained hypervolume", "range", "configs", "tokens", "seconds"])
    if args.json or not args.quick:  # a smoke run's figures stay out of benchmarks/results unless asked for
        figures = {"space": Path(args.space).name, "settings": settings, "tokens_per_config": budget,
                   "asha_tokens": tokens, "repeats": args.repeats, "mult": args.mult, "reference": reference,
                   "dominating_result_decisions": decisions, "methods": summary,
                   "runs": [{k: v for k, v in r.items() if k != "front"} | {"front": len(r["front"])} for r in runs]}
        torch.set_num_threads(threads)
        write_results("peers", figures, {}, args.json)


if __name__ == "__main__":
    main()
