"""Where a trial's wall time goes at small.yaml's brief budget: Ray scheduling, data, build (with FLOPs), training,
probes, and the driver with the study's storage. Trials run one at a time, through the search's own driver and Ray
Tune adapter, so the wall time divides cleanly. The space is searched at its brief budget (its target and ladder, and
its baselines, left out: every trial trains train.tokens once), with random sampling.

The driver's share is its work on the critical path: the study and the sampler in the calls a free slot waits for,
and recording each outcome. The thread that asks ahead draws beside the trials; its time is shown apart.

    python benchmarks/overhead.py                  # 6 trials of spaces/small.yaml on this machine's device
    python benchmarks/overhead.py --trials 2 --json /tmp/overhead.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import add_json_argument, brief_space, drive, print_table, seconds, target, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OVERHEAD_GOAL = 0.10  # everything but training, as a share of the trials' wall time
PARTS = {"data_s": "data", "build_s": "build + FLOPs", "train_s": "training", "probe_s": "probes", "confirm_s": "confirm seeds"}


def main() -> None:
    import torch

    from configaformer_search.cluster import Resources, ray_session
    from configaformer_search.space import load_space
    from configaformer_search.storage import read_study

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default=str(ROOT / "spaces" / "small.yaml"))
    parser.add_argument("--trials", type=int, default=6)
    add_json_argument(parser, "overhead")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    workdir = Path(tempfile.mkdtemp(prefix="overhead-"))
    space = load_space(brief_space(args.space, workdir, scheduler="fifo"))
    url = f"sqlite:///{workdir}/study.db"
    resources = Resources(cpus_per_trial=1, gpus_per_trial=1 if cuda else 0, concurrency=1)
    with ray_session(None, workdir):
        start, start_clock = time.perf_counter(), time.time()
        driver = drive(space, url, args.trials, resources, "random", 0, workdir / "tune")
        wall = time.perf_counter() - start
    trials = sorted((t for t in read_study(url).trials if t.finished and t.outcome.counts and "timings" in t.user_attrs),
                    key=lambda t: seconds(t.user_attrs["started_at"]))
    if not trials:
        raise SystemExit(f"no trial was measured: see {workdir}")
    parts = {name: 0.0 for name in ("data", "build + FLOPs", "training", "probes")}
    parts["trial wrapper"] = 0.0
    for trial in trials:
        timings = trial.user_attrs["timings"]
        for key, value in timings.items():
            name = PARTS.get(key, key)
            parts[name] = parts.get(name, 0.0) + value
        parts["trial wrapper"] += seconds(trial.user_attrs["ended_at"]) - seconds(trial.user_attrs["started_at"]) - sum(timings.values())
    parts["driver + study storage"] = driver.study_seconds + driver.recording_seconds
    # Ray's share per trial: the gaps between one trial's end and the next one's start (one at a time).
    parts["Ray scheduling"] = sum(seconds(b.user_attrs["started_at"]) - seconds(a.user_attrs["ended_at"]) for a, b in zip(trials, trials[1:]))
    count = len(trials)
    per_trial_wall = sum(parts.values())
    startup = seconds(trials[0].user_attrs["started_at"]) - start_clock
    beside = 1 - parts["training"] / per_trial_wall
    print(f"device: {torch.cuda.get_device_name() if cuda else 'CPU'}; {count} trials of {Path(args.space).name} at "
          f"{space.train['tokens']:,} tokens, one at a time; wall {wall:.1f} s")
    print(f"once per search (Ray Tune start, first worker process, CUDA context): {startup:.1f} s")
    rows = [{"part": name, "seconds": f"{value:.2f}", "per trial": f"{value / count:.3f}",
             "share": f"{value / per_trial_wall:.1%}"} for name, value in parts.items()]
    print_table(rows, ["part", "seconds", "per trial", "share"])
    print(f"asking ahead (a thread, beside the trials): {driver.ahead_seconds / count:.3f} s per trial")
    print(f"everything but training: {beside:.1%} of the trials' wall time (target <= {OVERHEAD_GOAL:.0%}); "
          f"{1 - parts['training'] / wall:.1%} of the whole run, start-up included")
    figures = {"space": Path(args.space).name, "tokens": space.train["tokens"], "trials": count, "wall_s": wall,
               "startup_s": startup, "parts_s": parts, "per_trial_s": {k: v / count for k, v in parts.items()},
               "ask_ahead_s_per_trial": driver.ahead_seconds / count, "not_training_share": beside,
               "not_training_share_of_run": 1 - parts["training"] / wall}
    write_results("overhead", figures, {"not_training_share": target(beside, OVERHEAD_GOAL, at_least=False)}, args.json,
                  torch.device("cuda" if cuda else "cpu"))


if __name__ == "__main__":
    main()
