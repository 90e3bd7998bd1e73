"""Shared helpers for the benchmark scripts: device, timing, and printing a table."""

from __future__ import annotations

import platform
import statistics
import time
from typing import Callable, Sequence

import torch


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
    import datetime

    return datetime.datetime.fromisoformat(iso_time).timestamp()


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def print_table(rows: list[dict], columns: Sequence[str]) -> None:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))
