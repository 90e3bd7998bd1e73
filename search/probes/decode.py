"""Serving measurements: the KV cache's bytes at a stated context, the per-token time of cached decoding there, and
the prefill's time, with the device to itself as the latency probe has it."""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any

import torch

from configaformer import DecodeCache

from ..devicegate import DeviceGate
from .base import Probe, ProbeContext
from .latency import single_thread


class DecodeProbe(Probe):
    """kv_cache_mb, decode_ms and prefill_ms at the probe batch and a context of probes.decode_context tokens."""

    name = "decode"

    def measure(self, context: ProbeContext) -> dict[str, Any]:
        from ..train import autocast

        model, device, probes = context.model, context.device, context.probes
        batch, length = probes["batch_size"], probes["decode_context"]
        steps, warmup = probes["latency_repeats"], probes["latency_warmup"]
        prompt = max(1, length - steps - warmup)  # the timed steps end at the stated context
        ids = torch.randint(0, context.vocab_size, (batch, length), generator=torch.Generator().manual_seed(0)).to(device)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *a: None)
        model.eval()
        prefill, decode = [], []
        with torch.no_grad(), DeviceGate(device).exclusive(), \
                (single_thread() if device.type == "cpu" else contextlib.nullcontext()), autocast(device):
            for _ in range(1 + warmup // 2):  # a prefill or two to warm up, then timed ones
                prefill.append(_timed(lambda: model.step(ids[:, :prompt], DecodeCache()), sync, device))
            cache = DecodeCache()
            model.step(ids[:, :prompt], cache)
            for position in range(prompt, length):
                decode.append(_timed(lambda: model.step(ids[:, position:position + 1], cache), sync, device))
        model.train()
        return {"kv_cache_mb": cache.nbytes() / 2**20, "decode_ms": statistics.median(decode[warmup:] or decode),
                "prefill_ms": statistics.median(prefill[1:] or prefill)}


def _timed(call: Any, sync: Any, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    call()
    sync(device)
    return (time.perf_counter() - start) * 1e3
