"""Where a trial's wall time goes at small.yaml's budget: Ray scheduling, data, build (with FLOPs), training,
probes, and the study's storage. Trials run one at a time so the wall time divides cleanly.

    python benchmarks/overhead.py                  # 6 trials of spaces/small.yaml on this machine's device
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import print_table, seconds  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    import ray
    import torch

    from configaformer_search import orchestrate
    from configaformer_search.data import load_corpus
    from configaformer_search.progress import Progress
    from configaformer_search.space import load_space
    from configaformer_search.study import counts, make_sampler, open_storage, open_study

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default=str(ROOT / "spaces" / "small.yaml"))
    parser.add_argument("--trials", type=int, default=6)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    space = load_space(args.space)
    corpus = load_corpus(space.data)
    workdir = Path(tempfile.mkdtemp(prefix="overhead-"))
    ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    study = open_study(space, open_storage(f"sqlite:///{workdir}/study.db", writer=True))
    study.sampler = make_sampler(space, "random", 0, args.trials)
    resources = orchestrate.Resources(cpus_per_trial=1, gpus_per_trial=1 if cuda else 0, concurrency=1)
    start, start_clock = time.perf_counter(), time.time()
    searcher = orchestrate.run_trials(space, study, corpus.vocab_size, args.trials, resources,
                                      Progress(args.trials, 0, [], verbosity=0), shared=False)  # one driver, alone
    wall = time.perf_counter() - start
    trials = sorted((t for t in study.trials if counts(t.user_attrs)), key=lambda t: seconds(t.user_attrs["started_at"]))
    parts = {"data": 0.0, "build + FLOPs": 0.0, "training": 0.0, "probes": 0.0, "trial wrapper": 0.0}
    keys = {"data_s": "data", "build_s": "build + FLOPs", "train_s": "training", "probe_s": "probes"}
    for trial in trials:
        timings = trial.user_attrs["timings"]
        for key, value in timings.items():
            parts[keys[key]] += value
        parts["trial wrapper"] += seconds(trial.user_attrs["ended_at"]) - seconds(trial.user_attrs["started_at"]) - sum(timings.values())
    parts["study storage"] = searcher.study_seconds
    # Ray's share per trial: the gaps between one trial's end and the next one's start (one at a time).
    parts["Ray scheduling"] = sum(seconds(b.user_attrs["started_at"]) - seconds(a.user_attrs["ended_at"]) for a, b in zip(trials, trials[1:]))
    per_trial_wall = sum(parts.values())
    startup = seconds(trials[0].user_attrs["started_at"]) - start_clock
    print(f"device: {torch.cuda.get_device_name() if cuda else 'CPU'}; {args.trials} trials of {Path(args.space).name}, "
          f"one at a time; wall {wall:.1f} s")
    print(f"once per search (Ray Tune start, first worker process, CUDA context): {startup:.1f} s")
    rows = [{"part": name, "seconds": f"{value:.2f}", "per trial": f"{value / args.trials:.3f}",
             "share": f"{value / per_trial_wall:.1%}"} for name, value in parts.items()]
    print_table(rows, ["part", "seconds", "per trial", "share"])
    print(f"everything but training: {1 - parts['training'] / per_trial_wall:.1%} of the trials' wall time; "
          f"{1 - parts['training'] / wall:.1%} of the whole run, start-up included")
    ray.shutdown()


if __name__ == "__main__":
    main()
