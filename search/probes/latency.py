"""Latency: the median forward time at the probe batch and length on the serving runtime, timed as every timing
probe is (timing.py)."""

from __future__ import annotations

from typing import Any

import torch

from configaformer import ConfigaFormer

from .base import Probe, ProbeContext
from .runtimes import served
from .timing import Timing, measure, timed, timing_on


def measure_latency(model: ConfigaFormer, batch_size: int, seq_len: int, device: torch.device,
                    repeats: int = 20, warmup: int = 3, threads: int = 1, runtime: str = "eager") -> Timing:
    """The forward pass at [batch_size, seq_len] on `runtime` (runtimes.py): `warmup` untimed calls, then the
    median of `repeats`."""
    ids = torch.zeros(batch_size, seq_len, dtype=torch.long, device=device)
    with timing_on(model, device, threads) as alone:
        server = served(model, runtime, threads, device)
        server.forward(ids)  # an export is made and checked here, before any call is timed

        def one_round() -> list[float]:
            times = [timed(lambda: server.forward(ids), device) for _ in range(warmup + repeats)]
            return times[warmup:]

        return measure(one_round, alone, server.checked.get("forward"))


class LatencyProbe(Probe):
    """latency_ms (with latency_cv, latency_rounds, latency_noisy; latency_export_diff on an exporting runtime) at
    the probe batch and length."""

    name = "latency"
    timing = True

    def measure(self, context: ProbeContext) -> dict[str, Any]:
        probes = context.probes
        return measure_latency(context.model, probes["batch_size"], probes["seq_len"], context.device,
                               probes["latency_repeats"], probes["latency_warmup"], probes["threads"],
                               probes["runtime"]).metrics("latency")
