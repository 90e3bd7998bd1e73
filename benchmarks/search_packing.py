"""Aggregate training throughput of search-scale trials packed on one GPU through Ray (fractional GPUs),
against one trial at a time. Every trial goes through the real search path (study, Ray Tune, trial pipeline,
probes); latency probes stay exclusive through the per-device lock.

Every level runs the same number of waves (trials per worker), so each worker's start-up weighs the same at every
level. Two aggregates: over the trials' span (first trial start to last trial end: everything a trial does,
its probes and the scheduling between trials included, but not the once-per-search Tuner start) and over the wall
time of the whole run_trials call.

    python benchmarks/search_packing.py                  # packing 1, 2, 4, 8 on a GPU; 1, 2 on a CPU
    python benchmarks/search_packing.py --packing 1,4 --tokens 1000000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import print_table, seconds  # noqa: E402

SPACE = """
name: packing
data: {{source: embedded}}
params:
  seed: {{int: [0, 1000000]}}          # distinct configs, so no trial reuses another's result
model:
  dim_model: 256
  position: rope
  dim_rope: 16
  layers:
    repeat: 4
    each:
      - {{type: Attention, heads: 4}}
      - {{type: FFN, ff_mult: 4}}
train: {{tokens: {tokens}, batch_size: 32, seq_len: 256, lr: 1e-3, seed: $seed, eval_tokens: 65536}}
probes: {{batch_size: 8, seq_len: 256, latency_repeats: 20}}
objectives: {{val_loss: min, latency_ms: min}}
search: {{sampler: random}}
resources: {{cpus_per_trial: 1}}
"""


def main() -> None:
    import ray
    import torch

    from configaformer_search import orchestrate
    from configaformer_search.progress import Progress
    from configaformer_search.space import load_space
    from configaformer_search.study import open_storage, open_study

    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packing", default="1,2,4,8" if cuda else "1,2", help="trials per device")
    parser.add_argument("--waves", type=int, default=3, help="trials per worker: each level runs waves x packing trials")
    parser.add_argument("--tokens", type=int, default=4_194_304 if cuda else 131_072, help="training tokens per trial")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="packing-"))
    space_path = workdir / "packing.yaml"
    space_path.write_text(SPACE.format(tokens=args.tokens))
    space = load_space(space_path)
    ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    print(f"device: {torch.cuda.get_device_name() if cuda else f'CPU, {os.cpu_count()} cores'}; "
          f"{args.waves} waves of trials per level, {args.tokens:,} tokens each, search-scale model (256 wide, 4 layers, seq 256, batch 32)")
    rows, base = [], None
    for packing in (int(k) for k in args.packing.split(",")):
        count = args.waves * packing
        resources = orchestrate.Resources(cpus_per_trial=1, gpus_per_trial=1 / packing if cuda else 0, concurrency=packing)
        study = open_study(space, open_storage(f"sqlite:///{workdir}/packing-{packing}.db", writer=True))
        start = time.perf_counter()
        orchestrate.run_trials(space, study, 256, count, resources, Progress(count, 0, [], verbosity=0))
        wall = time.perf_counter() - start
        done = [t for t in study.trials if t.user_attrs.get("status") == "ok"]
        tokens = sum(t.user_attrs["steps"] * 32 * 256 for t in done)
        span = max(seconds(t.user_attrs["ended_at"]) for t in done) - min(seconds(t.user_attrs["started_at"]) for t in done)
        aggregate, aggregate_wall = tokens / span, tokens / wall
        base = base or (aggregate, aggregate_wall)
        mean = lambda key: sum(t.user_attrs[key] for t in done) / len(done)  # noqa: E731
        rows.append({"per device": packing, "trials ok": f"{len(done)}/{count}", "span s": f"{span:.1f}",
                     "aggregate tok/s": f"{aggregate:,.0f}", "speed-up": f"{aggregate / base[0]:.2f}x",
                     "wall s": f"{wall:.1f}", "speed-up (wall)": f"{aggregate_wall / base[1]:.2f}x",
                     "per-trial train tok/s": f"{mean('train_tok_s'):,.0f}",
                     "latency ms": f"{mean('latency_ms'):.3f}", "latency cv": f"{mean('latency_cv'):.3f}",
                     "peak MiB": f"{mean('peak_mem_mb'):.0f}"})
    print()
    print_table(rows, list(rows[0]))
    ray.shutdown()


if __name__ == "__main__":
    main()
