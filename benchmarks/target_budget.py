"""Loss at the user's budget: configs of a space trained once each along a ladder of budgets (0.25x to 16x the
space's train.tokens, one warmup-stable-decay run per config, each budget a fully decayed branch), cached by config
and budget. (First part: the training; the rankings come next.)

    python benchmarks/target_budget.py --configs 24
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import optuna
import torch

ROOT = Path(__file__).resolve().parent.parent
MULTS = (0.25, 0.5, 1, 4, 16)
CACHE = ROOT / "benchmarks" / "results" / "target_budget_cache.jsonl"


def sample(space, vocab_size: int, count: int, seed: int) -> list[tuple[dict, object]]:
    from configaformer_search.candidate import screen
    from configaformer_search.errors import TrialFailure

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
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


def cached() -> dict[tuple[str, int], dict]:
    entries = {}
    if CACHE.is_file():
        for line in CACHE.read_text().splitlines():
            try:
                entry = json.loads(line)
                entries[(entry["key"], entry["tokens"])] = entry
            except (ValueError, KeyError):
                continue
    return entries


def main() -> None:
    from configaformer_search import candidate as candidates
    from configaformer_search.data import load_corpus
    from configaformer_search.space import load_space
    from configaformer_search.train import train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default=str(ROOT / "spaces" / "small.yaml"))
    parser.add_argument("--configs", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0, help="of the random sample of configs")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(1)

    space = load_space(args.space)
    space.train["schedule"] = "wsd"
    base = space.train["tokens"]
    budgets = [int(base * m) for m in MULTS]
    corpus = load_corpus(space.data)
    done = cached()
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    for index, (params, candidate) in enumerate(sample(space, corpus.vocab_size, args.configs, args.seed)):
        if all((candidate.key, b) in done for b in budgets):
            continue
        start = time.perf_counter()
        cfg = {**candidate.train, "tokens": budgets[-1]}
        candidate.train = cfg
        model = candidates.build(candidate)
        with CACHE.open("a") as log:
            def report(measurement) -> bool:
                entry = {"key": candidate.key, "config": index, "config_params": params, "tokens": budgets[measurement.rung],
                         "mult": MULTS[measurement.rung], **candidate.metrics,
                         "val_loss": measurement.val_loss, "train_loss": measurement.train_loss,
                         "seconds": time.perf_counter() - start}
                log.write(json.dumps(entry, default=str) + "\n")
                log.flush()
                return True

            train(model, corpus, cfg, torch.device("cpu"), budgets, report, warmup_budget=base)
        print(f"config {index}: {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
