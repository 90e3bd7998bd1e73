"""One trial end to end, with no Ray: params -> candidate -> brief training -> probes -> a metrics dict.

A trial never raises for a failure of its own (impossible config, over budget, NaN, OOM): the dict says
status 'failed' with a reason kind and message, and whatever was measured before.
"""

from __future__ import annotations

import time
from typing import Any, Mapping, Optional

import torch

from configaformer import ConfigaFormer

from . import candidate as candidates
from .candidate import constraint_values, violations
from .data import load_corpus
from .devicegate import DeviceGate
from .errors import TrialFailure
from .probes import estimate_peak_memory, measure_latency
from .space import SearchSpace
from .train import train


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def run(space: SearchSpace, params: Mapping[str, Any], device: Optional[torch.device | str] = None) -> dict[str, Any]:
    """Measure one candidate. Returns {'status': 'ok' | 'failed', metrics..., 'timings': {...}}."""
    device = torch.device(device) if device is not None else default_device()
    timings: dict[str, float] = {}
    metrics: dict[str, Any] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = timings.get(name, 0.0) + now - clock
        clock = now

    if device.type == "cpu":
        torch.set_num_threads(max(1, int(space.resources["cpus_per_trial"])))
    try:
        corpus = load_corpus(space.data)
        lap("data_s")
        candidate = candidates.screen(space, params, corpus.vocab_size)
        metrics.update(candidate.metrics)
        metrics.update(config_key=candidate.key, model_config=candidate.model_config, train=candidate.train)
        candidates.build(candidate)
        lap("build_s")
        with DeviceGate(device).sharing() as checkpoint:
            result = train(candidate.model, corpus, candidate.train, device, checkpoint)
        metrics.update(val_loss=result.val_loss, train_loss=result.train_loss, train_tok_s=result.train_tok_s,
                       steps=result.steps, val_set=result.val_set)
        if result.val_bpb is not None:
            metrics["val_bpb"] = result.val_bpb
        lap("train_s")
        probes, batch, seq = space.probes, candidate.train["batch_size"], candidate.train["seq_len"]
        if probes["memory"]:
            if result.peak_mem_mb is not None:
                metrics.update(peak_mem_mb=result.peak_mem_mb, peak_mem_source="measured")
            else:
                build = lambda: ConfigaFormer.from_config(candidate.model_config, verbose=False)  # noqa: E731
                metrics.update(peak_mem_mb=estimate_peak_memory(build, batch, seq, corpus.vocab_size),
                               peak_mem_source="estimated")
        if probes["latency"]:
            metrics.update(measure_latency(candidate.model, probes["batch_size"], probes["seq_len"], device,
                                           probes["latency_repeats"], probes["latency_warmup"]))
        lap("probe_s")
        metrics["constraints"] = constraint_values(space.constraints, metrics)
        over = violations(space.constraints, metrics)
        if over:  # measured, but infeasible: recorded with its values, kept off the front
            metrics["violations"] = "; ".join(over)
        return {"status": "ok", **metrics, "device": str(device), "timings": timings}
    except TrialFailure as failure:
        metrics.update(failure.metrics)
        lap("failed_s")
        return {"status": "failed", "reason": failure.kind, "message": failure.message, **metrics,
                "device": str(device), "timings": timings}
