"""Serving measurements: the KV cache's bytes at a stated context, the per-token time of cached decoding there, and
the prefill's time, on the serving runtime (runtimes.py), each timed as every timing probe is (timing.py)."""

from __future__ import annotations

from typing import Any

import torch

from .base import Probe, ProbeContext
from .reference import reference_scale, served_reference
from .runtimes import served
from .timing import measure, paired, timing_on


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
        prompt_ids, states = ids[:, :prompt], []
        server = served(model, probes["runtime"], probes["threads"], device)
        reference = served_reference(context.vocab_size, length, probes["runtime"], probes["threads"], device,
                                     tuple(prompt_ids.shape))
        with timing_on(model, device, probes["threads"], exclusive=False):  # exports made and checked, compiles done
            for runtime in (server, reference):
                runtime.step(ids[:, prompt:prompt + 1], runtime.prefill(prompt_ids)[1])
        with timing_on(model, device, probes["threads"]) as alone:

            def prefill_round() -> list[tuple[float, float]]:
                pairs = [paired(lambda: server.prefill(prompt_ids), lambda: reference.prefill(prompt_ids), device,
                                i % 2 == 0) for i in range(warmup + repeats)]
                return pairs[warmup:]

            def decode_round() -> list[tuple[float, float]]:
                # each step takes its state out of the list and puts the next one back
                mine, theirs = [server.prefill(prompt_ids)[1]], [reference.prefill(prompt_ids)[1]]
                pairs = [paired(lambda: mine.append(server.step(ids[:, p:p + 1], mine.pop())[1]),
                                lambda: theirs.append(reference.step(ids[:, p:p + 1], theirs.pop())[1]), device, p % 2 == 0)
                         for p in range(prompt, length)]
                states.append(mine[0])
                return pairs[warmup:]

            def scale(call: str) -> Any:
                return reference_scale(call, (batch, length), context.vocab_size, probes["runtime"], probes["threads"],
                                       device, alone)

            prefill = measure(prefill_round, scale("prefill"), alone, server.checked.get("prefill"))
            decode = measure(decode_round, scale("decode"), alone, server.checked.get("decoding"))
        return {"kv_cache_mb": states[-1].nbytes() / 2**20, **decode.metrics("decode"), **prefill.metrics("prefill")}
