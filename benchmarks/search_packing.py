"""Aggregate training throughput of search-scale trials packed on one GPU through Ray (fractional GPUs),
against one trial at a time. Every trial goes through the real search path (the search's driver over its study,
its Ray Tune adapter, the trial pipeline, probes); latency probes stay exclusive through the per-device gate.

Every level runs the same number of waves (trials per worker), so each worker's start-up weighs the same at every
level. Two aggregates: over the trials' span (first trial start to last trial end: everything a trial does,
its probes and the scheduling between trials included, but not the once-per-search Tuner start) and over the wall
time of the whole driven search (Tuner start included). Speed-ups are against the first level, in the same process
and the same Ray session.

    python benchmarks/search_packing.py                  # packing 1, 2, 4, 8 on a GPU; 1, 2 on a CPU
    python benchmarks/search_packing.py --packing 1,4 --tokens 1000000
    python benchmarks/search_packing.py --quick          # a smoke run: packing 1, 2, one wave of a toy model
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import add_json_argument, drive, print_table, seconds, write_results

SPACE = """
name: packing
data: {{source: embedded}}
params:
  seed: {{int: [0, 1000000]}}          # distinct configs, so no trial reuses another's result
model:
  dim_model: {dim_model}
  position: rope
  dim_rope: 16
  layers:
    repeat: {layers}
    each:
      - {{type: Attention, heads: {heads}}}
      - {{type: FFN, ff_mult: 4}}
train: {{tokens: {tokens}, batch_size: {batch_size}, seq_len: {seq_len}, lr: 1e-3, seed: $seed, eval_tokens: {eval_tokens}}}
probes: {{batch_size: {probe_batch}, seq_len: {seq_len}, latency_repeats: {latency_repeats}}}
objectives: {{val_loss: min, latency_ms: min}}
search: {{sampler: random}}
resources: {{cpus_per_trial: 1}}
"""
# The search-scale model every level trains, and a toy one for --quick (a smoke run of the whole path, not figures).
SCALE = {"dim_model": 256, "layers": 4, "heads": 4, "seq_len": 256, "batch_size": 32, "probe_batch": 8,
         "eval_tokens": 65_536, "latency_repeats": 20}
QUICK_SCALE = {"dim_model": 64, "layers": 1, "heads": 2, "seq_len": 64, "batch_size": 8, "probe_batch": 1,
               "eval_tokens": 2_048, "latency_repeats": 3}
QUICK = {"packing": "1,2", "waves": 1, "tokens": 4_096}


def main() -> None:
    import torch
    from configaformer_search.cluster import Resources, ray_session
    from configaformer_search.outcome import MEASURED
    from configaformer_search.space import load_space
    from configaformer_search.storage import read_study

    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packing", default="1,2,4,8" if cuda else "1,2", help="trials per device")
    parser.add_argument("--waves", type=int, default=3, help="trials per worker: each level runs waves x packing trials")
    parser.add_argument("--tokens", type=int, default=4_194_304 if cuda else 131_072, help="training tokens per trial")
    parser.add_argument("--quick", action="store_true", help="a smoke run: packing 1,2, one wave of a toy model "
                        f"({QUICK_SCALE['dim_model']} wide, {QUICK['tokens']:,} tokens; overrides the above); its "
                        "figures are written only with --json")
    add_json_argument(parser, "search_packing")
    args = parser.parse_args()
    scale = QUICK_SCALE if args.quick else SCALE
    if args.quick:
        args.packing, args.waves, args.tokens = QUICK["packing"], QUICK["waves"], QUICK["tokens"]
    levels = [int(k) for k in args.packing.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="packing-"))
    space_path = workdir / "packing.yaml"
    space_path.write_text(SPACE.format(tokens=args.tokens, **scale))
    space = load_space(space_path)
    batch, seq_len = space.train["batch_size"], space.train["seq_len"]
    print(f"device: {torch.cuda.get_device_name() if cuda else f'CPU, {os.cpu_count()} cores'}; "
          f"{args.waves} waves of trials per level, {args.tokens:,} tokens each, {'toy' if args.quick else 'search-scale'} "
          f"model ({scale['dim_model']} wide, {scale['layers']} layers, seq {seq_len}, batch {batch})", flush=True)
    rows, figures, base = [], [], None
    with ray_session(None, workdir):
        for packing in levels:
            count = args.waves * packing
            resources = Resources(cpus_per_trial=1, gpus_per_trial=1 / packing if cuda else 0, concurrency=packing)
            url = f"sqlite:///{workdir}/packing-{packing}.db"
            start = time.perf_counter()
            drive(space, url, count, resources, "random", packing, workdir / f"tune-{packing}")
            wall = time.perf_counter() - start
            done = [t for t in read_study(url).trials if t.finished and t.outcome.counts and t.outcome.kind is MEASURED]
            if not done:
                raise SystemExit(f"packing {packing}: no trial was measured; see {workdir} (ray.log, the study)")
            tokens = sum(t.user_attrs["tokens_trained"] for t in done)
            span = max(seconds(t.user_attrs["ended_at"]) for t in done) - min(seconds(t.user_attrs["started_at"]) for t in done)
            aggregate, aggregate_wall = tokens / span, tokens / wall
            base = base or (aggregate, aggregate_wall)
            mean = {key: statistics.fmean(t.user_attrs[key] for t in done)
                    for key in ("train_tok_s", "latency_ms", "latency_cv", "peak_mem_mb")}
            figures.append({"packing": packing, "trials": count, "measured": len(done), "span_s": span, "wall_s": wall,
                            "aggregate_tok_s": aggregate, "speedup": aggregate / base[0],
                            "aggregate_wall_tok_s": aggregate_wall, "speedup_wall": aggregate_wall / base[1], **mean})
            rows.append({"per device": packing, "trials ok": f"{len(done)}/{count}", "span s": f"{span:.1f}",
                         "aggregate tok/s": f"{aggregate:,.0f}", "speed-up": f"{aggregate / base[0]:.2f}x",
                         "wall s": f"{wall:.1f}", "speed-up (wall)": f"{aggregate_wall / base[1]:.2f}x",
                         "per-trial train tok/s": f"{mean['train_tok_s']:,.0f}",
                         "latency ms": f"{mean['latency_ms']:.3f}", "latency cv": f"{mean['latency_cv']:.3f}",
                         "peak MiB": f"{mean['peak_mem_mb']:.0f}"})
            print(f"packing {packing}: {len(done)}/{count} trials measured in {wall:.1f} s", flush=True)
    print()
    print_table(rows, list(rows[0]))
    if args.json or not args.quick:  # a smoke run's figures stay out of benchmarks/results unless asked for
        write_results("search_packing", {"tokens": args.tokens, "waves": args.waves, "levels": figures},
                      path=args.json, device=torch.device("cuda" if cuda else "cpu"))


if __name__ == "__main__":
    main()
