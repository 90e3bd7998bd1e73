"""Peak memory of a training step: measured on CUDA by the training run itself, estimated elsewhere."""

from __future__ import annotations

from typing import Any, Callable

import torch

from configaformer import ConfigaFormer

from .base import Probe, ProbeContext


def estimate_peak_memory(build: Callable[[], ConfigaFormer], batch_size: int, seq_len: int, vocab_size: int) -> float:
    """Peak MiB of one fp32 training step (weights, grads, AdamW state, activations), with no GPU: MemTracker
    follows every tensor of the step under FakeTensorMode, so nothing is allocated for real."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    from ..steps import lm_loss, make_optimizer

    with FakeTensorMode():
        model = build()
        optimizer = make_optimizer(model, 1e-3, 0.1)
        inputs = torch.randint(0, vocab_size, (batch_size, seq_len))
        for param in model.parameters():  # an untracked step on zero gradients creates the AdamW state, which
            param.grad = torch.zeros_like(param)  # a training step holds throughout (no forward or backward needed)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tracker = MemTracker()
        tracker.track_external(model, optimizer)
        with tracker:
            lm_loss(model, inputs, inputs).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        peak = tracker.get_tracker_snapshot("peak")
    return max(stats["Total"] for stats in peak.values()) / 2**20


class MemoryProbe(Probe):
    """peak_mem_mb: the training run's own peak on CUDA, else an estimate of one fp32 step at the train shape."""

    name = "memory"

    def measure(self, context: ProbeContext) -> dict[str, Any]:
        if context.measured_peak_mb is not None:
            return {"peak_mem_mb": context.measured_peak_mb, "peak_mem_source": "measured"}
        build = lambda: ConfigaFormer.from_config(context.model_config, verbose=False)  # noqa: E731
        peak = estimate_peak_memory(build, context.train["batch_size"], context.train["seq_len"], context.vocab_size)
        return {"peak_mem_mb": peak, "peak_mem_source": "estimated"}
