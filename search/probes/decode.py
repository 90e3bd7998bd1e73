"""Serving measurements: the KV cache's bytes at a stated context, the per-token time of cached decoding there, and
the prefill's time, each timed as every timing probe is (timing.py)."""

from __future__ import annotations

from typing import Any

import torch

from configaformer import DecodeCache

from .base import Probe, ProbeContext
from .timing import measure, timed, timing_on


class DecodeProbe(Probe):
    """kv_cache_mb; decode_ms (one cached step that brings the context to probes.decode_context tokens) and
    prefill_ms (the prompt before those steps), each with its cv, rounds and noisy mark."""

    name = "decode"
    timing = True

    def measure(self, context: ProbeContext) -> dict[str, Any]:
        model, device, probes = context.model, context.device, context.probes
        batch, length = probes["batch_size"], probes["decode_context"]
        repeats, warmup = probes["latency_repeats"], probes["latency_warmup"]
        prompt = max(1, length - repeats - warmup)  # the timed steps end at the stated context
        ids = torch.randint(0, context.vocab_size, (batch, length), generator=torch.Generator().manual_seed(0)).to(device)
        caches: list[DecodeCache] = []
        with timing_on(model, device, probes["threads"]) as alone:
            def prefill_round() -> list[float]:
                times = [timed(lambda: model.step(ids[:, :prompt], DecodeCache()), device) for _ in range(warmup + repeats)]
                return times[warmup:]

            def decode_round() -> list[float]:
                cache = DecodeCache()
                model.step(ids[:, :prompt], cache)
                times = [timed(lambda: model.step(ids[:, p:p + 1], cache), device) for p in range(prompt, length)]
                caches.append(cache)
                return times[warmup:]

            prefill, decode = measure(prefill_round, alone), measure(decode_round, alone)
        return {"kv_cache_mb": caches[-1].nbytes() / 2**20, **decode.metrics("decode"), **prefill.metrics("prefill")}
