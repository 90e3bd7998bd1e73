"""Measurements beside the loss. Each probe is one file: a `Probe` that a trial runs in turn after training
(`enabled(space)`, `measure(context)`), making the metrics declared for it in search/metrics.py. The timing probes
share one protocol (timing.py). FLOPs are not a probe: the cheap screen counts them from the shapes (flops.py)."""

from __future__ import annotations

from typing import Any

from .base import Probe, ProbeContext
from .decode import DecodeProbe
from .flops import LogitsOnly, count_flops, flop_analysis
from .latency import LatencyProbe, measure_latency
from .memory import MemoryProbe, estimate_peak_memory

PROBES: tuple[Probe, ...] = (MemoryProbe(), LatencyProbe(), DecodeProbe())


def run_probes(space: Any, context: ProbeContext) -> dict[str, Any]:
    """Every probe the space asks for, in turn: their metrics in one dict."""
    metrics: dict[str, Any] = {}
    for probe in PROBES:
        if probe.enabled(space):
            metrics.update(probe.measure(context))
    return metrics


__all__ = ["PROBES", "DecodeProbe", "LatencyProbe", "LogitsOnly", "MemoryProbe", "Probe", "ProbeContext",
           "count_flops", "estimate_peak_memory", "flop_analysis", "measure_latency", "run_probes"]
