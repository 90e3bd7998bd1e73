"""Do the timing probes rank configs the same way twice? The same configs are searched twice (a random sampler with one
seed draws the same configs whatever the timings), each time in a real search on this machine with its trials
packed as the space says, and each timed objective (latency_ms, decode_ms, prefill_ms) is compared between the two:
Spearman, and the share of config pairs at least 10% apart whose order agrees.

    python benchmarks/timing_agreement.py                       # 16 configs of spaces/serving.yaml, twice
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from common import add_json_argument, agreement, print_table, target, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TIMINGS = ("latency_ms", "decode_ms", "prefill_ms")
SPEARMAN_GOAL = 0.95


def searched(space: Path, configs: int, out: Path, seed: int) -> dict[str, dict[str, float]]:
    """One real search of `configs` configs drawn at random with `seed`; config key -> its timings."""
    from configaformer_search.run import search
    from configaformer_search.storage import read_study

    result = search(space, trials=configs, out=out, sampler="random", seed=seed, fresh=True, verbosity=0)
    return {t.user_attrs["config_key"]: {m: t.user_attrs[m] for m in TIMINGS if m in t.user_attrs}
            for t in read_study(result.url).trials if t.finished and t.outcome.counts and "config_key" in t.user_attrs}


def main() -> None:
    from configaformer_search.ranking import spearman

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default=str(ROOT / "spaces" / "serving.yaml"))
    parser.add_argument("--configs", type=int, default=16)
    parser.add_argument("--seed", type=int, default=7)
    add_json_argument(parser, "timing_agreement")
    args = parser.parse_args()

    raw = yaml.safe_load(Path(args.space).read_text())
    raw.setdefault("probes", {}).update(latency=True, decode=True)  # every timing, whatever the space optimises
    raw.pop("baselines", None)
    work = Path(tempfile.mkdtemp(prefix="timing-agreement-"))
    space = work / Path(args.space).name
    space.write_text(yaml.safe_dump(raw, sort_keys=False))
    runs = [searched(space, args.configs, work / f"run{i}", args.seed) for i in range(2)]
    keys = sorted(set(runs[0]) & set(runs[1]))
    rows = []
    for metric in TIMINGS:
        pairs = [(runs[0][k][metric], runs[1][k][metric]) for k in keys if metric in runs[0][k] and metric in runs[1][k]]
        if len(pairs) < 3:
            continue
        first, second = zip(*pairs)
        rows.append({"timing": metric, "configs": len(pairs), "spearman": spearman(first, second),
                     "pairs_10pct_agree": agreement(list(first), list(second)),
                     "ratio_range": f"{min(b / a for a, b in pairs):.2f}-{max(b / a for a, b in pairs):.2f}"})
    print_table([{k: f"{v:.3f}" if isinstance(v, float) else v for k, v in r.items()} for r in rows],
                ["timing", "configs", "spearman", "pairs_10pct_agree", "ratio_range"])
    write_results("timing_agreement", {"space": Path(args.space).name, "configs": len(keys), "rows": rows},
                  {f"{r['timing']}_spearman": target(r["spearman"], SPEARMAN_GOAL) for r in rows}, args.json)


if __name__ == "__main__":
    main()
