"""Latency: the median forward time at the probe batch and length on the serving runtime, timed as every timing
probe is (timing.py)."""

from __future__ import annotations

from typing import Any

import torch

from configaformer import ConfigaFormer

from .base import Probe, ProbeContext
from .reference import reference_scale, served_reference
from .runtimes import served
from .timing import Timing, measure, paired, timing_on


def measure_latency(model: ConfigaFormer, batch_size: int, seq_len: int, device: torch.device, vocab_size: int,
                    repeats: int = 20, warmup: int = 3, threads: int = 1, runtime: str = "eager") -> Timing:
    """The forward pass at [batch_size, seq_len] on `runtime` (runtimes.py), paired with the reference's
    (timing.py): `warmup` untimed pairs, then `repeats` timed ones a round."""
    ids = torch.zeros(batch_size, seq_len, dtype=torch.long, device=device)
    server = served(model, runtime, threads, device)
    reference = served_reference(vocab_size, seq_len, runtime, threads, device, tuple(ids.shape))
    with timing_on(model, device, threads, exclusive=False):  # exports made and checked, compiles done: not timed
        server.forward(ids), reference.forward(ids)
    with timing_on(model, device, threads) as alone:

        def one_round() -> list[tuple[float, float]]:
            pairs = [paired(lambda: server.forward(ids), lambda: reference.forward(ids), device, i % 2 == 0)
                     for i in range(warmup + repeats)]
            return pairs[warmup:]

        scale = reference_scale("forward", tuple(ids.shape), vocab_size, runtime, threads, device, alone)
        return measure(one_round, scale, alone, server.checked.get("forward"))


class LatencyProbe(Probe):
    """latency_ms (with latency_cv, latency_ci, latency_rounds, latency_noisy; latency_export_diff on an exporting
    runtime) at the probe batch and length."""

    name = "latency"
    timing = True

    def measure(self, context: ProbeContext) -> dict[str, Any]:
        probes = context.probes
        return measure_latency(context.model, probes["batch_size"], probes["seq_len"], context.device,
                               context.vocab_size, probes["latency_repeats"], probes["latency_warmup"], probes["threads"],
                               probes["runtime"]).metrics("latency")
