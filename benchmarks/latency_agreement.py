"""Does the timing protocol rank configs the same way on an idle machine and beside a busy one? K configs of a space
(drawn at random, untrained: a timing does not depend on the weights) are timed by the search's own probes in this
process, once on an idle machine, then again in reverse order beside one busy process (a training loop on one
thread, as when two trials share the machine; `--busy N` for more), on each runtime. For latency_ms and decode_ms: Spearman between the
two runs, and the share of config pairs at least 10% apart whose order agrees.

    python benchmarks/latency_agreement.py                                  # 16 configs of spaces/serving.yaml
    python benchmarks/latency_agreement.py --runtimes eager --configs 8     # a quick look
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import add_json_argument, agreement, print_table, target, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TIMINGS = ("latency_ms", "decode_ms")
SPEARMAN_GOAL, PAIRS_GOAL = 0.98, 0.98
BUSY = """
import torch
torch.set_num_threads(1)
model = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 256))
optimizer = torch.optim.AdamW(model.parameters())
x = torch.randn(64, 256)
while True:
    model(x).pow(2).mean().backward()
    optimizer.step()
    optimizer.zero_grad()
"""


def draw(space: Any, vocab_size: int, count: int, seed: int) -> list[Any]:
    """`count` distinct configs that pass the cheap screen, drawn at random (the same ones for the same seed)."""
    from configaformer_search.candidate import screen
    from configaformer_search.driver.samplers import random_draws
    from configaformer_search.errors import TrialFailure

    study, found = random_draws(seed), {}
    while len(found) < count:
        try:
            candidate = screen(space, space.sample(study.ask()), vocab_size)
        except TrialFailure:
            continue
        found.setdefault(candidate.key, candidate)
    return list(found.values())


def timed(space: Any, candidates: list[Any], vocab_size: int) -> dict[str, dict[str, float]]:
    """Each config's timings by the search's timing probes (config key -> metrics), in the order given."""
    from configaformer_search import candidate as builder
    from configaformer_search.probes import ProbeContext, run_probes

    out = {}
    for candidate in candidates:
        model = builder.build(candidate, check_causality=False)
        out[candidate.key] = run_probes(space, ProbeContext(model, candidate.model_config, torch.device("cpu"),
                                                            candidate.train, space.probes, vocab_size), timing=True)
    return out


def main() -> None:
    from configaformer_search.data import load_corpus
    from configaformer_search.ranking import spearman
    from configaformer_search.space import load_space

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default=str(ROOT / "spaces" / "serving.yaml"))
    parser.add_argument("--configs", type=int, default=16)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--runtimes", default="eager,onnxruntime", help="comma-separated: eager, compile, onnxruntime")
    parser.add_argument("--busy", type=int, default=1, help="busy processes beside the second run (default 1, as when "
                        "two trials share a machine)")
    add_json_argument(parser, "latency_agreement")
    args = parser.parse_args()

    tempfile.tempdir = tempfile.mkdtemp(prefix="latency-agreement-")  # the gate and the reference's scale: this run's own
    space = load_space(args.space)
    space.probes.update(latency=True, decode=True)
    vocab_size = load_corpus(space.data).vocab_size
    candidates = draw(space, vocab_size, args.configs, args.seed)
    rows = []
    for runtime in args.runtimes.split(","):
        space.probes["runtime"] = runtime
        start = time.perf_counter()
        idle = timed(space, candidates, vocab_size)
        busy_processes = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(args.busy)]
        try:
            time.sleep(2)  # under way
            busy = timed(space, candidates[::-1], vocab_size)
        finally:
            for process in busy_processes:
                process.kill()
        for metric in TIMINGS:
            first, second = [idle[c.key][metric] for c in candidates], [busy[c.key][metric] for c in candidates]
            rows.append({"runtime": runtime, "timing": metric, "configs": len(candidates),
                         "spearman": spearman(first, second), "pairs_10pct_agree": agreement(first, second),
                         "busy_over_idle": f"{min(b / a for a, b in zip(first, second)):.2f}-"
                                           f"{max(b / a for a, b in zip(first, second)):.2f}",
                         "noisy": sum(bool(r[metric.replace('_ms', '_noisy')]) for r in (*idle.values(), *busy.values())),
                         "seconds": round(time.perf_counter() - start)})
        print_table([{k: f"{v:.3f}" if isinstance(v, float) else v for k, v in r.items()} for r in rows[-len(TIMINGS):]],
                    list(rows[-1]))
    write_results("latency_agreement", {"space": Path(args.space).name, "configs": len(candidates), "rows": rows},
                  {f"{r['runtime']}_{r['timing']}_{name}": target(r[field], goal) for r in rows
                   for name, field, goal in (("spearman", "spearman", SPEARMAN_GOAL), ("pairs", "pairs_10pct_agree", PAIRS_GOAL))},
                  args.json)


if __name__ == "__main__":
    main()
