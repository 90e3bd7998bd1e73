"""Does the search driver keep up with a cluster? Synthetic trial reports arrive at a cluster's rate and are handed
to the real driver (searcher.py: suggestions asked ahead, claims, promotions, recording, the front) over a real study,
on SQLite or PostgreSQL, with the real heartbeat thread. Under successive halving every trial reports at each rung it
reaches, and most wait at a rung while the search goes on, as they do on a cluster.

Reports arrive in real time, one slot at a time (the slot that has trained longest reports its next rung). At each,
the driver records the rung (and, when the trial ends, its outcome) and hands a freed slot its next trial. At each
checkpoint (that many configs started, by any driver) it prints, for the last `--window` trials that ended: the
driver's own work per ended trial (rung results, promotions, outcomes, twins, front upkeep), how long a freed slot
waited, the thread's time per suggestion, the backlog (reports waiting when the driver got to this one), the trials
waiting at rungs, and the time of one heartbeat of every running trial. Then it times `front` and `trials` on the
study.

    python benchmarks/driver_scaling.py --scheduler asha --trials 3000 --rate 8.5
    python benchmarks/driver_scaling.py --postgres --drivers 2
    python benchmarks/driver_scaling.py --storage postgresql+psycopg://user@host/db --drivers 2

`--postgres` starts a throwaway local PostgreSQL server (the tests' own, but durable: commits flushed as on a real
server) in a temporary folder for the run, and removes it afterwards.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import add_json_argument, target, write_results  # noqa: E402

from configaformer_search.choices import SAMPLERS  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DRIVER_MS_GOAL = 20.0  # the driver's own work per ended trial, at 3,000 trials


def replay(args: argparse.Namespace, url: str, seed: int, trials: int, out: Any) -> None:
    """One driver's replay at args.rate / args.drivers reports a second; its figures are put on `out`."""
    from configaformer_search.driver.asking import AskAhead, Drawing
    from configaformer_search.driver.samplers import make_sampler
    from configaformer_search.driver.searcher import Driver
    from configaformer_search.driver.synthetic import synthetic_record
    from configaformer_search.progress import Progress
    from configaformer_search.space import load_space
    from configaformer_search.storage import Heartbeat, StudyStore, open_storage

    space = load_space(args.space)
    if args.scheduler == "fifo":
        space.search["scheduler"], space.search["min_tokens"] = "fifo", None
    store = StudyStore.open(open_storage(url), space.name, space.objectives, make_sampler(space, args.sampler, seed, trials),
                            space.distributions())
    driver = Driver(space, store, 256, trials, Progress(trials, 0, list(space.objectives), 0))
    rate = args.rate / args.drivers
    checkpoints = sorted(int(c) for c in args.checkpoints.split(",") if int(c) <= trials)
    own, waits, ended_at, lateness, asking = [], [], [], [], []
    busy: deque[tuple[str, dict, int]] = deque()  # (slot, config, rung it reports next), oldest first
    slot_ids = iter(range(10**9))
    rows = []

    def fill() -> None:
        """Hand every free slot a trial: a slot waits for a suggestion asked ahead, but not for trials to end (when
        the budget is spoken for, the next report may free one); with nothing in training, it waits for other
        drivers' trials until the search is done."""
        while len(busy) < args.slots:
            slot = f"s{next(slot_ids)}"
            began = time.perf_counter()
            while True:
                answer = driver.next(slot)
                if isinstance(answer, dict) or answer == "done":
                    break
                if busy and not driver.asking_ahead or busy and not driver._room():
                    return
                time.sleep(0.001)
            if answer == "done":
                return
            waits.append(time.perf_counter() - began)
            busy.append((slot, answer, driver.live[slot].rung or 0))

    drawing = Drawing(args.draw_processes, url, args.sampler, seed + 1)
    with Heartbeat(store, driver.alive_ids), AskAhead(driver, args.ahead, drawing):
        fill()
        start, event = time.perf_counter(), 0
        while busy:
            event += 1
            arrival = start + event / rate  # the cluster delivers the next report now
            time.sleep(max(0.0, arrival - time.perf_counter()))
            lateness.append(time.perf_counter() - arrival)
            slot, config, rung = busy.popleft()
            record = synthetic_record(driver, config["params"], config["key"], rung)
            began = time.perf_counter()
            goes_on = driver.reached_rung(slot, record)  # as Ray Tune reports every result, under fifo too
            if goes_on and rung < driver.last_rung:
                own.append(time.perf_counter() - began)
                busy.append((slot, config, rung + 1))
                continue
            driver.ended(slot, record)
            own.append(time.perf_counter() - began)
            ended_at.append(len(own))
            asking.append(driver.ahead_seconds)
            fill()
            done = len(driver.state.places)  # configs started, by any driver: training, waiting at a rung or ended
            if checkpoints and done >= checkpoints[0]:
                checkpoint = checkpoints.pop(0)
                window = slice(max(0, len(ended_at) - args.window), len(ended_at))
                first = ended_at[window.start - 1] if window.start else 0
                driver_ms = sum(own[first:ended_at[-1]]) / (window.stop - window.start) * 1e3
                began = time.perf_counter()
                store.heartbeat(driver.alive_ids())
                beat = time.perf_counter() - began
                rows.append({"trials": checkpoint, "driver_ms_per_trial": driver_ms,
                             "slot_wait_ms": statistics.mean(waits[-args.window:]) * 1e3,
                             "ask_ms": (asking[-1] - asking[window.start]) / max(1, window.stop - window.start) * 1e3,
                             "backlog": lateness[-1] * rate, "waiting_at_rungs": len(driver.paused),
                             "heartbeat_ms": beat * 1e3, "alive": len(driver.alive_ids())})
                print(f"[driver {seed}] " + "  ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                                                      for k, v in rows[-1].items()), flush=True)
    out.put({"seed": seed, "rows": rows, "measured": driver.state.measured, "front": len(driver.state.front)})
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default=str(ROOT / "spaces" / "gpt2.yaml"))
    parser.add_argument("--scheduler", choices=("fifo", "asha"), default="asha")
    parser.add_argument("--trials", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=8.5, help="rung reports a second the cluster delivers")
    parser.add_argument("--slots", type=int, default=64, help="trials in training at once")
    parser.add_argument("--checkpoints", default="100,1000,3000")
    parser.add_argument("--window", type=int, default=50, help="trials averaged at each checkpoint")
    parser.add_argument("--sampler", default="tpe", choices=SAMPLERS)
    parser.add_argument("--ahead", type=int, default=4, help="suggestions kept ready by the threads asking ahead")
    parser.add_argument("--draw-processes", type=int, default=0, help="processes that draw suggestions (0: a thread)")
    storage = parser.add_mutually_exclusive_group()
    storage.add_argument("--storage", help="the study's URL (default a SQLite file in a temporary folder)")
    storage.add_argument("--postgres", action="store_true", help="a throwaway local PostgreSQL server for the study")
    parser.add_argument("--drivers", type=int, default=1, help="drivers sharing the study, each its own process")
    add_json_argument(parser, "driver_scaling")
    args = parser.parse_args()
    if not args.postgres:
        return run(args)
    sys.path.insert(0, str(ROOT / "tests"))
    from postgres import PostgresServer

    server = PostgresServer.launch(durable=True)
    try:
        args.storage = server.url(server.create_database("driver_scaling"))
        run(args)
    finally:
        server.remove()


def run(args: argparse.Namespace) -> None:
    """Replay the search with args.drivers drivers, then time the review commands on the study."""
    folder = Path(tempfile.mkdtemp(prefix="driver-scaling-"))
    url = args.storage or f"sqlite:///{folder / 'study.db'}"
    print(f"{Path(args.space).name}, {args.scheduler}, {args.sampler}, {args.trials} trials, {args.drivers} driver(s), "
          f"{args.rate:g} reports/s, {args.slots} slots; study {url.split('@')[-1]}", flush=True)
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=replay, args=(args, url, seed, args.trials, results)) for seed in range(args.drivers)]
    for process in processes:
        process.start()
    outcomes = [results.get() for _ in processes]
    for process in processes:
        process.join()

    from configaformer_search.review import read_review

    review = read_review(url)
    counted = [t for t in review.trials if t.measured]
    figures = {"drivers": outcomes, "measured": len(counted), "front": len(review.front), "study_trials": len(review.trials)}
    print(f"study: {len(review.trials)} trials, {len(counted)} measured, {len(review.front)} on the front")
    for command in ("front", "trials"):  # the review commands, as a user runs them on this study
        began = time.perf_counter()
        subprocess.run([sys.executable, "-m", "configaformer_search.cli", command, str(folder),
                        *(["--storage", args.storage] if args.storage else [])], stdout=subprocess.DEVNULL, check=True)
        figures[f"{command}_s"] = time.perf_counter() - began
        print(f"configaformer-search {command} at {len(review.trials)} trials: {figures[f'{command}_s']:.2f} s")
    if args.storage is None:
        figures["study_mib"] = (folder / "study.db").stat().st_size / 2**20
    last = [o["rows"][-1] for o in outcomes if o["rows"]]
    targets = {"driver_ms_per_trial": target(max(r["driver_ms_per_trial"] for r in last), DRIVER_MS_GOAL, at_least=False),
               "backlog": target(max(r["backlog"] for r in last), 1.0, at_least=False),
               "measured_exactly": target(len(counted), args.trials, at_least=True),
               "front_members": target(len(review.front), 1, at_least=True)} if last else {}
    write_results(f"driver_scaling-{args.scheduler}-{'postgresql' if args.storage else 'sqlite'}-{args.drivers}d",
                  figures, targets, args.json)


if __name__ == "__main__":
    main()
