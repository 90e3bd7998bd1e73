"""The timing screen in a real search: how many trainings it saves, whether what it refuses really breaks the bound,
and how well it predicts. A space (default spaces/serving.yaml at a toy training budget: the screen is about
timings, not loss) gets a bound on decode_ms at the median of a few random configs' decode times, measured here
first; then a real search (random sampler, N trials) runs with it. Every config the screen refused is then timed
here by the same probes (a timing needs no training), to count how many truly break the bound.

    python benchmarks/timing_screen.py                 # spaces/serving.yaml, 32 trials
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from common import add_json_argument, brief_space, print_table, target, variant, write_results  # noqa: E402
from latency_agreement import draw, timed  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TIMING = "decode_ms"
SETTINGS = ["train.tokens=16384", "train.eval_tokens=4096"]
TRULY_OVER_GOAL = 0.95  # of the configs refused, the share that really breaks the bound


def main() -> None:
    from configaformer_search import search
    from configaformer_search.candidate import screen
    from configaformer_search.data import load_corpus
    from configaformer_search.space import load_space
    from configaformer_search.storage import read_study
    from optuna.trial import FixedTrial

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default=str(ROOT / "spaces" / "serving.yaml"))
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calibration", type=int, default=8, help="random configs whose median decode time is the bound")
    add_json_argument(parser, "timing_screen")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="timing-screen-"))
    os.environ["TMPDIR"] = tempfile.tempdir = str(work)  # the gate and the timing scale: this run's, its workers' too
    base = brief_space(variant(args.space, SETTINGS, work), work, scheduler="fifo")
    space = load_space(base)
    space.probes["decode"] = True
    vocab_size = load_corpus(space.data).vocab_size
    sample = draw(space, vocab_size, args.calibration, args.seed + 1000)
    bound = statistics.median(m[TIMING] for m in timed(space, sample, vocab_size).values())
    raw = yaml.safe_load(base.read_text())
    raw["constraints"] = {**(raw.get("constraints") or {}), TIMING: {"max": round(bound, 4)}}
    bounded = work / "bounded.yaml"
    bounded.write_text(yaml.safe_dump(raw, sort_keys=False))
    print(f"{TIMING} bound: {bound:.4g} ms (the median of {args.calibration} random configs); searching {args.trials} "
          f"trials in {work}", flush=True)

    result = search(load_space(bounded), trials=args.trials, out=work / "search", sampler="random", seed=args.seed,
                    verbosity=0)
    study = read_study(result.url)
    summary = study.user_attrs.get("timing_screen") or {"refused": 0, "measured": 0, "accuracy": {}}
    refusals = [t for t in study.trials if t.user_attrs.get("reason") == "screened"]  # a config drawn again is refused again
    refused = list({t.user_attrs["config_key"]: t for t in refusals}.values())  # each config once
    trained = [t for t in study.trials if t.finished and t.outcome.counts]
    candidates = [screen(space, space.sample(FixedTrial(t.params)), vocab_size) for t in refused]
    truth = timed(space, candidates, vocab_size) if candidates else {}
    over = sum(m[TIMING] > bound for m in truth.values())
    measured_over = sum((t.user_attrs.get(TIMING) or 0) > bound for t in trained)
    accuracy = summary["accuracy"].get(TIMING, {})
    rows = [{"trained": len(trained), "trained_over_bound": measured_over, "refusals": len(refusals), "refused": len(refused),
             "refused_truly_over": over, "held_out_within_10pct": accuracy.get("within_10pct"),
             "held_out_configs": accuracy.get("configs")}]
    print_table([{k: f"{v:.2f}" if isinstance(v, float) else v for k, v in r.items()} for r in rows], list(rows[0]))
    print(f"the screen saved {len(refused)} trainings (configs it refused, {len(refusals)} refusals) beside the "
          f"{len(trained)} it let train; {over} of the {len(refused)} configs it refused really take over {bound:.4g} ms")
    share = over / len(refused) if refused else float("nan")
    write_results("timing_screen", {"space": Path(args.space).name, "settings": SETTINGS, "bound_ms": bound,
                                    "trials": args.trials, "rows": rows,
                                    "refused_timings": {c.key: truth[c.key][TIMING] for c in candidates}},
                  {"refused_truly_over": target(share, TRULY_OVER_GOAL)}, args.json)


if __name__ == "__main__":
    main()
