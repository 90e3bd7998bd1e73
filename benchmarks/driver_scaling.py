"""Does the search driver keep up with a cluster? Synthetic trial completions arrive at a cluster's rate and are
handed to the real searcher (StudySearcher: ask, screen, claim, record, front upkeep) over a real SQLite study.

Completions arrive in real time, one slot at a time: at each, the driver records the finished trial and hands the
slot a new suggestion, which a thread has asked ahead (AskAhead) while the driver waited. For windows of trials
ending at each checkpoint it prints the driver's own work per finished trial (recording, twins, progress, front
upkeep: on_trial_complete), the thread's time per suggestion (sampler and screen), how long the freed slot waited
for it, and the backlog: how many completions
had arrived and were waiting when the driver got to this one. Then it times `front` and `trials` on the study.

    python benchmarks/driver_scaling.py --space spaces/gpt2.yaml --trials 3000 --rate 8.5
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from configaformer_search.front import front_trials
from configaformer_search.orchestrate import AskAhead, Drawing, StudySearcher, tune_result, wall_clock
from configaformer_search.progress import Progress
from configaformer_search.records import study_trials
from configaformer_search.space import load_space
from configaformer_search.study import make_sampler, open_storage, open_study

ROOT = Path(__file__).resolve().parent.parent


def synthetic_metrics(objectives: dict[str, str], params: dict, key: str) -> dict:
    """A record like a real trial's (every field a finished trial reports), with deterministic values for every
    objective of the space: val_loss falls with the model's size and the other objectives rise with it, each with
    its own scatter, so that the front is a trade-off of some hundreds of trials rather than one winner."""
    digest = int(hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:8], 16)
    width, depth = params.get("width", 64), params.get("depth", 1)
    size = width * depth / 1000
    values = {name: size * (1 + i) + (digest % (89 + 8 * i)) / 100 for i, name in enumerate(objectives)}
    if "val_loss" in values:
        values["val_loss"] = 2.6 - size / 5 + (digest % 1000) / 5000
    model_config = {"dim_model": width, "position": params.get("position"), "norm_type": params.get("norm"),
                    "layers": [{"type": "Attention", "heads": params.get("heads")},
                               {"type": "FFN", "ff_mult": params.get("ff_mult"), "activation": params.get("activation")}] * depth}
    return {"status": "ok", **values, "config_key": key, "model_config": model_config,
            "train": {"tokens": 196608, "batch_size": 16, "seq_len": params.get("seq_len", 64), "lr": params.get("lr", 1e-3),
                      "warmup": 0.1, "min_lr": 0.1, "weight_decay": 0.1, "grad_clip": 1.0, "seed": 0, "eval_tokens": 32768},
            "timings": {"data_s": 0.68, "build_s": 1.45, "train_s": 13.17, "probe_s": 0.6},
            "constraints": {"params<=": size - 200.0}, "params": int(size * 1e6), "nonemb_params": int(size * 9e5),
            "flops": int(size * 6e7), "train_loss": values.get("val_loss", 2.5) + 0.1, "val_bpb": 3.47, "steps": 192,
            "train_tok_s": 15893.7, "tokens_spent": 196608, "latency_ms": size, "latency_cv": 0.088,
            "latency_noisy": False, "latency_rounds": 1, "peak_mem_mb": size * 40, "peak_mem_source": "estimated",
            "val_set": "60ad8c50a971e265:512x64", "device": "cpu", "node": "49674bad9cca",
            "started_at": wall_clock(), "ended_at": wall_clock()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default=str(ROOT / "spaces" / "gpt2.yaml"))
    parser.add_argument("--trials", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=8.5, help="completions a second the cluster delivers")
    parser.add_argument("--checkpoints", default="100,1000,3000")
    parser.add_argument("--window", type=int, default=50, help="trials averaged at each checkpoint")
    parser.add_argument("--sampler", default="tpe", choices=("tpe", "nsga2", "random"))
    parser.add_argument("--ahead", type=int, default=4, help="suggestions kept ready by the threads asking ahead (0: none)")
    parser.add_argument("--draw-processes", type=int, default=0,
                        help="processes that draw suggestions (search.draw_processes; 0: a thread of the driver)")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    space = load_space(args.space)
    space.search["trials"] = args.trials
    folder = Path(tempfile.mkdtemp(prefix="driver-scaling-"))
    url = f"sqlite:///{folder / 'study.db'}"
    study = open_study(space, open_storage(url, writer=True))
    study.sampler = make_sampler(space, args.sampler, 0, args.trials)
    searcher = StudySearcher(space, study, 256, args.trials, Progress(args.trials, 0, list(space.objectives), 0))

    checkpoints = sorted(int(c) for c in args.checkpoints.split(","))
    own, waits, lateness, asking = [], [], [], []
    print(f"space {space.name}, sampler {args.sampler}, {args.trials} trials arriving at {args.rate:g}/s in real time, "
          f"{args.ahead} suggestions asked ahead " + (f"by {args.draw_processes} drawing processes" if args.draw_processes
                                                     else "by a thread") + f"; study {url}")
    print(f"{'trials':>7} {'driver ms/trial':>16} {'ask ms':>7} {'slot wait ms':>13} {'backlog':>8} {'free asks':>10}")

    def next_config(trial_id: str) -> dict:
        """The next suggestion for a freed slot, however long the slot waits for it."""
        while True:
            config = searcher.suggest(trial_id)
            if isinstance(config, dict):
                return config
            if config == "FINISHED" or searcher.stop_reason:
                raise SystemExit(f"the searcher stopped: {searcher.stop_reason or config}")
            time.sleep(0.001)

    drawing = Drawing(args.draw_processes, url, args.sampler, 1)
    with AskAhead(searcher, args.ahead, drawing) if args.ahead else contextlib.nullcontext():
        config = next_config("t0")
        start = time.perf_counter()
        for done in range(1, args.trials + 1):
            arrival = start + done / args.rate  # the cluster finishes the trial in this slot now
            time.sleep(max(0.0, arrival - time.perf_counter()))
            lateness.append(time.perf_counter() - arrival)
            trial_id = f"t{done - 1}"
            result = tune_result(synthetic_metrics(space.objectives, config["params"], searcher.live[trial_id].key))
            began = time.perf_counter()
            searcher.on_trial_complete(trial_id, result)
            own.append(time.perf_counter() - began)
            asking.append(searcher.ahead_seconds)
            if done < args.trials:
                began = time.perf_counter()
                config = next_config(f"t{done}")
                waits.append(time.perf_counter() - began)
            if done in checkpoints:
                window = slice(max(0, done - args.window), done)
                free = len(study.get_trials(deepcopy=False)) - done
                ask = (asking[-1] - asking[window.start]) / (done - 1 - window.start)  # the thread asks about once a trial
                print(f"{done:>7} {statistics.mean(own[window]) * 1e3:>16.2f} {ask * 1e3:>7.0f} {statistics.mean(waits[window]) * 1e3:>13.1f} "
                      f"{lateness[-1] * args.rate:>8.1f} {free:>10}", flush=True)
    done = args.trials
    complete = study_trials(study, (TrialState.COMPLETE,))
    print(f"study: {done} trials, {len(complete)} complete, {len(front_trials(study, complete))} on the front")

    for command in ("front", "trials"):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "configaformer_search.cli", command, str(folder)],
                       stdout=subprocess.DEVNULL, check=True)
        print(f"configaformer-search {command} at {done} trials: {time.perf_counter() - start:.2f} s")
    print(f"study file: {(folder / 'study.db').stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
