"""Serving measurements: the KV cache's bytes at a stated context, the per-token time of cached decoding there, and
the prefill's time, on the serving runtime (runtimes.py), each timed as every timing probe is (timing.py)."""

from __future__ import annotations

from typing import Any

import torch

from .base import Probe, ProbeContext
from .runtimes import served
from .timing import measure, timed, timing_on


class DecodeProbe(Probe):
    """kv_cache_mb; decode_ms (one cached step that brings the context to probes.decode_context tokens) and
    prefill_ms (the prompt before those steps), each with its cv, rounds and noisy mark (and its export's difference
    from the eager model, on a runtime that exports)."""

    name = "decode"
    timing = True

    def measure(self, context: ProbeContext) -> dict[str, Any]:
        model, device, probes = context.model, context.device, context.probes
        batch, length = probes["batch_size"], probes["decode_context"]
        repeats, warmup = probes["latency_repeats"], probes["latency_warmup"]
        prompt = max(1, length - repeats - warmup)  # the timed steps end at the stated context
        ids = torch.randint(0, context.vocab_size, (batch, length), generator=torch.Generator().manual_seed(0)).to(device)
        states: list[Any] = []
        with timing_on(model, device, probes["threads"]) as alone:
            server = served(model, probes["runtime"], probes["threads"], device)
            server.prefill(ids[:, :prompt])  # an export is made and checked here, before any call is timed

            def prefill_round() -> list[float]:
                times = [timed(lambda: server.prefill(ids[:, :prompt]), device) for _ in range(warmup + repeats)]
                return times[warmup:]

            def decode_round() -> list[float]:
                state = [server.prefill(ids[:, :prompt])[1]]  # each step takes the state out and puts the next one back
                times = [timed(lambda: state.append(server.step(ids[:, p:p + 1], state.pop())[1]), device)
                         for p in range(prompt, length)]
                states.append(state[0])
                return times[warmup:]

            prefill = measure(prefill_round, alone, server.checked.get("prefill"))
            decode = measure(decode_round, alone, server.checked.get("decoding"))
        return {"kv_cache_mb": states[-1].nbytes() / 2**20, **decode.metrics("decode"), **prefill.metrics("prefill")}
