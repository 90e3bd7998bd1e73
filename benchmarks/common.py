"""Shared helpers for the benchmark scripts: device, timing, printing a table, and the JSON results file every
benchmark writes (benchmarks/results/NAME-DEVICE.json: its figures, targets, date, machine, command and versions),
from which the performance page is written."""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def timed(step: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Seconds per call of `step`, after warm-up, synchronising the device around each call."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return times


def seconds(iso_time: str) -> float:
    """A trial's recorded wall-clock time (ISO 8601) as epoch seconds."""
    return datetime.datetime.fromisoformat(iso_time).timestamp()


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def print_table(rows: list[dict], columns: Sequence[str]) -> None:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))


def add_json_argument(parser: argparse.ArgumentParser, name: str) -> None:
    """--json PATH: where the figures go (default benchmarks/results/NAME-DEVICE.json)."""
    parser.add_argument("--json", metavar="PATH", help=f"results file (default benchmarks/results/{name}-<device>.json)")


def target(value: float, goal: float, at_least: bool = True) -> dict[str, Any]:
    """A target's entry: the measured value, the goal, and whether it is met (value >= goal, or <= when not at_least)."""
    return {"value": value, "goal": goal, "met": bool(value >= goal if at_least else value <= goal),
            "rule": ">=" if at_least else "<="}


def write_results(name: str, figures: dict[str, Any], targets: Optional[dict[str, dict]] = None,
                  path: Optional[str] = None, device: Optional[torch.device] = None) -> Path:
    """Write a benchmark's figures with what makes them reproducible; returns the file."""
    device = device or torch.device("cpu")
    slug = "cpu" if device.type == "cpu" else torch.cuda.get_device_name(device).lower().replace(" ", "-")
    out = Path(path) if path else RESULTS / f"{name}-{slug}.json"
    versions = {}
    for package in ("torch", "optuna", "ray", "fvcore", "scikit-learn", "onnxruntime", "syne-tune", "psycopg"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    document = {"benchmark": name, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                "machine": f"{platform.node()}: {platform.machine()}, {_cores()} cores, {platform.system()} {platform.release()}",
                "device": device_name(device), "cuda": torch.version.cuda if device.type == "cuda" else None,
                "python": platform.python_version(), "versions": versions,
                "targets": targets or {}, "figures": figures}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=1, default=str) + "\n")
    print(f"wrote {out}")
    return out


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
