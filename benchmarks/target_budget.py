"""Loss at the user's budget: how well does each way of ranking configs predict their loss after a long training?

Configs of a space (default: 24 random ones of spaces/small.yaml) are each trained once along a ladder of budgets,
0.25x to 16x the space's train.tokens (one warmup-stable-decay run per config, each budget a fully decayed branch;
warm-up as in a search whose first rung is the brief budget), cached by config and budget. Then each way of ranking
is compared with the 16x truth: the brief (1x) loss, non-embedding parameters, FLOPs, a power law fitted to each
config's own brief curve (one exponent shared by all), and the project's predictor given only what a search with
a ladder would have had (every config's brief curve, the best quarter measured at 4x, the best of those at 16x,
chosen as the search chooses them). For each: Spearman and pairwise agreement with the truth, the hypervolume at 16x
of the front it would report (val_loss, peak memory, latency) against the true 16x front's, and the tokens spent.

    python benchmarks/target_budget.py --configs 24               # trains what the cache lacks, then compares
    python benchmarks/target_budget.py --part 0/2 --train-only    # one of two parallel training runs
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, add_json_argument, print_table, target, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MULTS = (0.25, 0.5, 1, 4, 16)
CACHE = RESULTS / "target_budget_cache.jsonl"
ETA = 4  # the ladder's reduction factor: a quarter climbs from each rung
SPEARMAN_GOAL, HYPERVOLUME_GOAL = 0.9, 0.95


def sample(space: Any, vocab_size: int, count: int, seed: int) -> list[tuple[dict, Any]]:
    """`count` distinct configs that pass the cheap screen, drawn at random (the same ones for the same seed)."""
    from configaformer_search.candidate import screen
    from configaformer_search.driver.samplers import random_draws
    from configaformer_search.errors import TrialFailure

    study = random_draws(seed)
    found, keys = [], set()
    while len(found) < count:
        params = space.sample(study.ask())
        try:
            candidate = screen(space, params, vocab_size)
        except TrialFailure:
            continue
        if candidate.key not in keys:
            keys.add(candidate.key)
            found.append((params, candidate))
    return found


def config_id(params: dict) -> str:
    """A config as the cache knows it: its params (the same whatever the space's other settings)."""
    return json.dumps(params, sort_keys=True, default=str)


def cached() -> dict[tuple[str, int], dict]:
    """(config id, tokens) -> the measurement cached for it."""
    entries = {}
    if CACHE.is_file():
        for line in CACHE.read_text().splitlines():
            try:
                entry = json.loads(line)
                entries[(config_id(entry["config_params"]), entry["tokens"])] = entry
            except (ValueError, KeyError):
                continue
    return entries


def train_missing(space: Any, corpus: Any, configs: list[tuple[dict, Any]], part: int, parts: int) -> None:
    """Train every config of this part that the cache lacks at some budget, appending each budget as it is measured."""
    from configaformer_search import candidate as candidates
    from configaformer_search.train import train

    base = space.train["tokens"]
    budgets = [int(base * m) for m in MULTS]
    done = cached()
    missing = [(index, params, candidate) for index, (params, candidate) in enumerate(configs)
               if not all((config_id(params), b) in done for b in budgets)]
    for index, params, candidate in missing[part::parts]:
        start = time.perf_counter()
        cfg = {**candidate.train, "tokens": budgets[-1]}
        candidate.train = cfg
        model = candidates.build(candidate)
        with CACHE.open("a") as log:
            def report(measurement: Any) -> bool:
                entry = {"key": candidate.key, "config": index, "config_params": params, "tokens": budgets[measurement.rung],
                         "mult": MULTS[measurement.rung], **candidate.metrics, "val_loss": measurement.val_loss,
                         "train_loss": measurement.train_loss, "seconds": time.perf_counter() - start}
                log.write(json.dumps(entry, default=str) + "\n")
                log.flush()
                return True

            train(model, corpus, cfg, torch.device("cpu"), budgets, report, warmup_budget=base)
        print(f"config {index}: {time.perf_counter() - start:.0f} s", flush=True)


def probe(space: Any, corpus: Any, configs: list[tuple[dict, Any]]) -> dict[str, dict[str, float]]:
    """Each config's peak memory (estimated) and latency (measured once, by the search's own probes), cached."""
    from configaformer_search import candidate as candidates
    from configaformer_search.probes import ProbeContext, run_probes

    path = RESULTS / "target_budget_probes.json"
    known = json.loads(path.read_text()) if path.is_file() else {}
    for params, candidate in configs:
        if candidate.key not in known:
            model = candidates.build(candidate)
            measured = run_probes(space, ProbeContext(model, candidate.model_config, torch.device("cpu"), candidate.train,
                                                      space.probes, corpus.vocab_size))
            known[candidate.key] = {"peak_mem_mb": measured["peak_mem_mb"], "latency_ms": measured["latency_ms"]}
            path.write_text(json.dumps(known, indent=1))
    return known


def shared_power_law(curves: dict[str, dict[int, float]], brief: int, at: int) -> dict[str, float]:
    """Each config's own L = E + A (t/brief)^-alpha fitted to its brief curve (least squares), one alpha for all
    chosen by the total error, extrapolated to `at`: the per-config curve fit a search could do alone."""
    best = None
    for alpha in np.linspace(0.05, 1.5, 59):
        error, out = 0.0, {}
        for key, points in curves.items():
            t = np.array(sorted(points))
            x = np.column_stack([np.ones(len(t)), (t / brief) ** -alpha])
            coef, *_ = np.linalg.lstsq(x, np.array([points[s] for s in t]), rcond=None)
            error += float(np.sum((x @ coef - np.array([points[s] for s in t])) ** 2))
            out[key] = float(coef[0] + coef[1] * (at / brief) ** -alpha)
        if best is None or error < best[0]:
            best = (error, out)
    return best[1]


def ladder(keys: list[str], truth: dict[str, dict[int, float]], features: dict[str, dict], brief: int, top: int,
           target_tokens: int) -> tuple[dict[str, Any], int]:
    """What a search climbing a ladder (eta 4, up to `top`) would predict at the target: every config measured at
    its brief curve, then at each rung the best quarter by the optimistic end of the predicted target loss climbs."""
    from configaformer_search.predictor import StudyData, TargetPredictor

    data = StudyData()
    curve_budgets = [t for t in sorted(next(iter(truth.values()))) if t <= brief]
    for key in keys:
        data.add(key, features[key], {t: truth[key][t] for t in curve_budgets})
    spent = sum(brief * 1.2 + sum(0.2 * t for t in curve_budgets if t < brief) for _ in keys)  # the decay branches too
    climbing, rung = list(keys), brief
    while rung * ETA <= top:
        predictor = TargetPredictor(brief, target_tokens).fit(data, check=False)
        climbing = sorted(climbing, key=lambda k: predictor.predict(k).optimistic())[: max(1, len(climbing) // ETA)]
        rung *= ETA
        for key in climbing:
            data.add(key, features[key], {rung: truth[key][rung]})
            spent += rung - rung // ETA + (0.2 * rung if rung * ETA <= top else 0)
    predictor = TargetPredictor(brief, target_tokens).fit(data, check=True)
    return {key: predictor.predict(key) for key in keys}, int(spent)


def pairwise(score: list[float], truth: list[float]) -> float:
    """The share of config pairs that `score` orders as the truth does."""
    pairs = [(i, j) for i in range(len(truth)) for j in range(i + 1, len(truth)) if truth[i] != truth[j]]
    return sum((score[i] - score[j]) * (truth[i] - truth[j]) > 0 for i, j in pairs) / len(pairs)


def front_hypervolume(scores: list[float], others: np.ndarray, truth: list[float], reference: np.ndarray) -> float:
    """The hypervolume, at the true 16x losses, of the front a method reports (ranked by its scores)."""
    from configaformer_search.pareto import front_mask, hypervolume

    reported = front_mask(np.column_stack([scores, others]))
    return hypervolume(np.column_stack([np.array(truth), others])[reported], reference)


def rankings(keys: list[str], truth: dict[str, dict[int, float]], metrics: dict[str, dict], features: dict[str, dict],
             base: int, budgets: list[int]) -> dict[str, tuple[list[float], int, Optional[list[Any]]]]:
    """Each way of ranking `keys` by their loss at the last budget: its scores (lower is better), the tokens it
    spent, and for the predictor its predictions (measured or with an sd)."""
    curves = {k: {t: v for t, v in truth[k].items() if t <= base} for k in keys}
    per_config = shared_power_law(curves, base, budgets[-1])
    methods: dict[str, tuple[list[float], int, Optional[list[Any]]]] = {
        "1x loss": ([truth[k][base] for k in keys], int(len(keys) * base * 1.2), None),
        "non-embedding params": ([-metrics[k]["nonemb_params"] for k in keys], 0, None),
        "FLOPs": ([-metrics[k]["flops"] for k in keys], 0, None),
        "per-config curve (shared alpha)": ([per_config[k] for k in keys], int(len(keys) * base * 1.35), None)}
    for top in (budgets[3], budgets[4]):
        predictions, spent = ladder(keys, truth, features, base, top, budgets[-1])
        methods[f"predictor, ladder to {top // base}x"] = ([predictions[k].mean for k in keys], spent,
                                                           [predictions[k] for k in keys])
    return methods


def compare(space: Any, configs: list[tuple[dict, Any]], probes: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    from configaformer_search.pareto import front_mask, hypervolume
    from configaformer_search.predictor import Z90, config_features
    from configaformer_search.ranking import spearman

    base = space.train["tokens"]
    budgets = [int(base * m) for m in MULTS]
    done = cached()
    ids = {c.key: config_id(p) for p, c in configs}
    keys = [c.key for _, c in configs if all((ids[c.key], b) in done for b in budgets)]
    if len(keys) < 3:
        raise SystemExit(f"only {len(keys)} configs are trained at every budget: train more first")
    truth = {k: {b: done[(ids[k], b)]["val_loss"] for b in budgets} for k in keys}
    metrics = {k: done[(ids[k], budgets[0])] for k in keys}
    params = {c.key: p for p, c in configs}
    features = {k: config_features(params[k], metrics[k]) for k in keys}
    final = [truth[k][budgets[-1]] for k in keys]
    others = np.array([[probes[k]["peak_mem_mb"], probes[k]["latency_ms"]] for k in keys])
    points = np.column_stack([final, others])
    reference = points.max(axis=0) * 1.1
    best_volume = hypervolume(points[front_mask(points)], reference)
    rows = []
    for name, (scores, spent, predictions) in rankings(keys, truth, metrics, features, base, budgets).items():
        row = {"ranking": name, "spearman": spearman(scores, final), "pairs": pairwise(scores, final),
               "hypervolume": front_hypervolume(scores, others, final, reference) / best_volume, "tokens": spent}
        if predictions is not None:  # how often the predicted configs' 90% intervals held the truth, and how wide
            predicted = [(p, t) for p, t in zip(predictions, final) if not p.measured]
            row["coverage_90"] = float(np.mean([abs(t - p.mean) <= Z90 * p.sd for p, t in predicted]))
            row["half_width_90"] = float(np.median([Z90 * p.sd for p, _ in predicted]))
        rows.append(row)
    print(f"\n{len(keys)} configs of {Path(args.space).name}, truth at {budgets[-1]:,} tokens ({MULTS[-1]:g}x):")
    print_table([{k: (f"{v:.2f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else v) for k, v in r.items()}
                 for r in rows], ["ranking", "spearman", "pairs", "hypervolume", "tokens", "coverage_90", "half_width_90"])
    print(f"(half_width_90: the median predicted config's, in nats; the truth's sd over the configs is {np.std(final):.3f})")
    spread = subsets(keys, truth, metrics, features, base, budgets, args.subsets)
    print(f"\nSpearman with the truth over {args.subsets} random subsets of {len(keys) * 2 // 3} configs "
          "(each method run afresh on each): mean ± sd (lowest)")
    for name, values in spread.items():
        print(f"  {name:34s} {np.mean(values):.2f} ± {np.std(values):.2f} ({np.min(values):.2f})")
    predictor = rows[-1]
    write_results("target_budget", {"configs": len(keys), "truth_tokens": budgets[-1], "rows": rows,
                                    "subsets": {name: {"configs": len(keys) * 2 // 3, "spearman": values}
                                                for name, values in spread.items()}},
                  {"predictor_spearman": target(predictor["spearman"], SPEARMAN_GOAL),
                   "predictor_hypervolume": target(predictor["hypervolume"], HYPERVOLUME_GOAL)}, args.json)


def subsets(keys: list[str], truth: dict[str, dict[int, float]], metrics: dict[str, dict], features: dict[str, dict],
            base: int, budgets: list[int], count: int) -> dict[str, list[float]]:
    """Each method's Spearman with the truth on `count` random two-thirds of the configs: how much one sample's
    figure owes to the configs drawn."""
    from configaformer_search.ranking import spearman

    rng, found = np.random.default_rng(0), {}
    for _ in range(count):
        chosen = [str(k) for k in rng.choice(keys, len(keys) * 2 // 3, replace=False)]
        final = [truth[k][budgets[-1]] for k in chosen]
        for name, (scores, _, _) in rankings(chosen, truth, metrics, features, base, budgets).items():
            found.setdefault(name, []).append(spearman(scores, final))
    return found


def main() -> None:
    from configaformer_search.data import load_corpus
    from configaformer_search.space import load_space

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default=str(ROOT / "spaces" / "small.yaml"))
    parser.add_argument("--configs", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0, help="of the random sample of configs")
    parser.add_argument("--part", default="0/1", help="train only the i-th of n shares of the configs the cache lacks (i/n): parallel runs")
    parser.add_argument("--train-only", action="store_true", help="train what the cache lacks, compare nothing")
    parser.add_argument("--subsets", type=int, default=20, help="random two-thirds of the configs to rank again")
    add_json_argument(parser, "target_budget")
    args = parser.parse_args()
    torch.set_num_threads(1)
    space = load_space(args.space)
    space.train["schedule"] = "wsd"
    space.train["target_tokens"] = None
    corpus = load_corpus(space.data)
    configs = sample(space, corpus.vocab_size, args.configs, args.seed)
    part, parts = (int(x) for x in args.part.split("/"))
    train_missing(space, corpus, configs, part, parts)
    if not args.train_only:
        compare(space, configs, probe(space, corpus, configs), args)


if __name__ == "__main__":
    main()
