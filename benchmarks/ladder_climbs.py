"""How much the predictor owes to the configs that climbed: for run folders of searches with a target, each retrained
at it (`configaformer-search retrain RUN --trials all`), the predictor is fitted again on each study's own points with
the points past the brief budget kept for only the K lowest-numbered configs that climbed (a proxy for the first
promoted; a baseline's always kept), and its ranking of the configs is compared with their retrained loss (Spearman), with how often its 90%
intervals (as the final fit widens them) held in each run, or "unchecked" where too few climbs were kept to check
it. K = "all" is what the search itself reported (no seeds' spread is added: the quick start confirms none).

    configaformer-search spaces/small.yaml --seed 7 --out runs/seed7          # likewise other seeds
    configaformer-search retrain runs/seed7 --trials all
    python benchmarks/ladder_climbs.py runs/seed7 runs/seed11 --climbers 0 2 3 all
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import add_json_argument, print_table, write_results  # noqa: E402

from configaformer_search.predictor import Z90, StudyData, TargetPredictor, config_features  # noqa: E402
from configaformer_search.ranking import spearman  # noqa: E402
from configaformer_search.review import read_review  # noqa: E402
from configaformer_search.storage import default_storage  # noqa: E402


def refitted(folder: Path, climbers: int | None) -> dict[str, float | int]:
    """The run's predictor fitted again with the first `climbers` climbs kept (None: all), against the retrained truth."""
    review = read_review(default_storage(folder))
    attrs = review.study.user_attrs
    brief, target = attrs["predictor"]["brief_tokens"], attrs["predictor"]["target_tokens"]
    truth = {n: by_tokens[target].mean for n, by_tokens in review.retrained.items() if target in by_tokens}
    if not truth:
        raise SystemExit(f"{folder}: nothing was retrained at the target ({target:,} tokens): run "
                         f"`configaformer-search retrain {folder} --trials all` first")
    data, keys, climbed = StudyData(), {}, 0
    for row in sorted(review.measured + review.baselines, key=lambda row: row.number):
        stored = review.stored(row.number)
        points = {int(t): v for t, v in (stored.user_attrs.get("curve") or {}).items()}  # every budget it measured
        if row.values is not None:  # its last measurement (a failed trial's last record is no measurement)
            points[int(stored.user_attrs["tokens_trained"])] = stored.user_attrs["val_loss"]
        if not points:
            continue
        if any(t > brief for t in points) and not row.baseline:
            climbed += 1
            if climbers is not None and climbed > climbers:
                points = {t: v for t, v in points.items() if t <= brief}
        data.add(stored.user_attrs["config_key"], config_features(stored.params, stored.user_attrs), points)
        if row.number in truth and not row.baseline:
            keys[row.number] = stored.user_attrs["config_key"]
    predictor = TargetPredictor(brief, target).fit(data)
    numbers = sorted(keys)
    predicted = [predictor.predict(keys[n]) for n in numbers]
    measured = np.array([truth[n] for n in numbers])
    means = np.array([p.mean for p in predicted])
    checked = all(p.checked for p in predicted)  # under 3 climbs kept, the predictor states no interval
    inside = [abs(t - p.mean) <= Z90 * p.sd for t, p in zip(measured, predicted) if not p.measured]
    return {"configs": len(numbers), "climbed": climbed, "spearman": spearman(list(means), list(measured)),
            "held": float(np.mean(inside)) if checked and inside else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders of searches with a target, retrained at it")
    parser.add_argument("--climbers", nargs="+", default=["0", "2", "3", "all"],
                        help="how many climbs to keep (a count, or 'all')")
    add_json_argument(parser, "ladder_climbs")
    args = parser.parse_args()
    rows = []
    for kept in args.climbers:
        results = {run.name: refitted(run, None if kept == "all" else int(kept)) for run in args.runs}
        row = {"climbs kept": kept, **{f"{name} (of {r['climbed']})": f"{r['spearman']:.2f}" for name, r in results.items()},
               "mean Spearman": f"{statistics.mean(r['spearman'] for r in results.values()):.2f}",
               "intervals held": ", ".join("unchecked" if r["held"] is None else f"{r['held']:.0%}" for r in results.values())}
        rows.append(row)
    print_table(rows, list(rows[0]))
    write_results("ladder_climbs", {"rows": rows}, path=args.json)


if __name__ == "__main__":
    main()
