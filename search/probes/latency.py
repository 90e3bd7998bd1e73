"""Latency: the median forward time at the probe batch and length, with the device to itself."""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any, Iterator, Mapping

import torch

from configaformer import ConfigaFormer

from ..devicegate import DeviceGate
from .base import Probe, ProbeContext


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


MAX_LATENCY_CV = 0.25  # a round noisier than this was disturbed (idle CPUs show 3-22%): measure again
LATENCY_ROUNDS = 3


def _forward_times(model: ConfigaFormer, ids: torch.Tensor, device: torch.device, repeats: int, warmup: int) -> list[float]:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *a: None)
    times = []
    for i in range(warmup + repeats):
        sync(device)
        start = time.perf_counter()
        model({"emb_ids": ids})
        sync(device)
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    return times


def _cv(times: list[float]) -> float:
    return statistics.pstdev(times) / statistics.mean(times) if len(times) > 1 else 0.0


@torch.no_grad()
def measure_latency(model: ConfigaFormer, batch_size: int, seq_len: int, device: torch.device,
                    repeats: int = 20, warmup: int = 3) -> Mapping[str, float]:
    """Median forward time (ms) and its coefficient of variation, after warm-up, with the device to itself (trials
    packed on the GPU pause meanwhile). On the CPU it runs single-threaded: the setting that stays steady beside
    other busy processes. A round whose CV exceeds MAX_LATENCY_CV is measured again, up to LATENCY_ROUNDS, and the
    steadiest round is kept; `latency_noisy` says that even it stayed over."""
    from ..train import autocast

    model.eval()
    ids = torch.zeros(batch_size, seq_len, dtype=torch.long, device=device)
    rounds = []
    with DeviceGate(device).exclusive(), (single_thread() if device.type == "cpu" else contextlib.nullcontext()), autocast(device):
        while len(rounds) < LATENCY_ROUNDS and (not rounds or _cv(rounds[-1]) > MAX_LATENCY_CV):
            rounds.append(_forward_times(model, ids, device, repeats, warmup))
    model.train()
    times = min(rounds, key=_cv)
    return {"latency_ms": statistics.median(times), "latency_cv": _cv(times), "latency_rounds": len(rounds),
            "latency_noisy": _cv(times) > MAX_LATENCY_CV}


class LatencyProbe(Probe):
    """latency_ms (with latency_cv, latency_rounds, latency_noisy) at the probe batch and length."""

    name = "latency"

    def measure(self, context: ProbeContext) -> dict[str, Any]:
        probes = context.probes
        return dict(measure_latency(context.model, probes["batch_size"], probes["seq_len"], context.device,
                                    probes["latency_repeats"], probes["latency_warmup"]))
