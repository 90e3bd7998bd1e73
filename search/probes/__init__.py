"""Measurements beside the loss. Each probe is one file: a `Probe` that a trial runs in turn after training
(`enabled(space)`, `measure(context)`), making the metrics declared for it in search/metrics.py. The timing probes
share one protocol (timing.py). FLOPs are not a probe: the cheap screen counts them from the shapes (flops.py)."""

from __future__ import annotations

from typing import Any, Optional

from .base import Probe, ProbeContext
from .decode import DecodeProbe
from .flops import LogitsOnly, count_flops, flop_analysis
from .latency import LatencyProbe, measure_latency
from .memory import MemoryProbe, estimate_peak_memory

PROBES: tuple[Probe, ...] = (MemoryProbe(), LatencyProbe(), DecodeProbe())


def run_probes(space: Any, context: ProbeContext, timing: Optional[bool] = None) -> dict[str, Any]:
    """Every probe the space asks for, in turn (only the timing ones, or only the others, if `timing` says which):
    their metrics in one dict. With probes.target, the timing probes run on the serving target (target.py)."""
    metrics: dict[str, Any] = {}
    chosen = [p for p in PROBES if p.enabled(space) and (timing is None or p.timing == timing)]
    if space.probes.get("target") and timing is None:
        from .target import time_on_target

        metrics.update(run_probes(space, context, timing=False))
        if any(p.timing for p in chosen):
            metrics.update(time_on_target(space, context))
        return metrics
    for probe in chosen:
        metrics.update(probe.measure(context))
    return metrics


__all__ = ["PROBES", "DecodeProbe", "LatencyProbe", "LogitsOnly", "MemoryProbe", "Probe", "ProbeContext",
           "count_flops", "estimate_peak_memory", "flop_analysis", "measure_latency", "run_probes"]
