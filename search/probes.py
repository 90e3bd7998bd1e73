"""Measurements beside the loss: FLOPs (fvcore), peak training memory (estimated without CUDA), latency.

FLOPs count one multiply-add as 1, for the matrix products only (linear, matmul, attention through a
registered scaled_dot_product_attention handle), at the probe shape; elementwise ops, norms and softmax count 0,
as in the analytic convention, so that norm types compare fairly.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from configaformer import ConfigaFormer

from .devicegate import DeviceGate

# aten ops the library emits that carry no matrix-product FLOPs: counted as 0, silently.
ZERO_FLOP_OPS = (
    "aten::add", "aten::add_", "aten::sub", "aten::mul", "aten::mul_", "aten::div", "aten::neg", "aten::square", "aten::pow",
    "aten::gelu", "aten::relu", "aten::silu", "aten::sigmoid", "aten::tanh", "aten::softmax", "aten::layer_norm",
    "aten::rms_norm", "aten::norm", "aten::linalg_vector_norm", "aten::clamp", "aten::clamp_min", "aten::dropout",
    "aten::embedding", "aten::cat", "aten::chunk", "aten::split", "aten::split_with_sizes", "aten::narrow", "aten::slice", "aten::select",
    "aten::masked_fill", "aten::tril", "aten::ones", "aten::arange", "aten::abs", "aten::repeat_interleave",
    "aten::constant_pad_nd", "aten::pad", "aten::unsqueeze", "aten::expand", "aten::to", "aten::type_as",
    "aten::bitwise_not", "aten::rsub", "aten::zeros", "aten::full", "aten::reshape", "aten::view", "aten::permute",
    "aten::transpose", "aten::contiguous", "aten::mean", "aten::rsqrt",
)


def _shape(value: Any) -> list[int]:
    return value.type().sizes()


def _no_flops(inputs: list, outputs: list) -> int:
    """A handle, not None: None only silences ops that fvcore has no handle for (it counts layer_norm)."""
    return 0


def _sdpa_flops(inputs: list, outputs: list) -> int:
    """Q.K^T and P.V: B*H*Lq*Lk*(d + dv) multiply-adds (GQA key/value heads are shared, not fewer products)."""
    q, k, v = (_shape(x) for x in inputs[:3])
    return math.prod(q[:-2]) * q[-2] * k[-2] * (q[-1] + v[-1])


def _matmul_flops(inputs: list, outputs: list) -> int:
    """Each output element of a (broadcast) matmul is one dot product over the shared dim."""
    a = _shape(inputs[0])
    return math.prod(_shape(outputs[0])) * a[-1]


class LogitsOnly(nn.Module):
    """ids -> logits: a tensor-in, tensor-out view of a model (for fvcore's tracer, and for benchmarks)."""

    def __init__(self, model: ConfigaFormer) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model({"emb_ids": ids})[self.model.outputs[0]]


def flop_analysis(model: ConfigaFormer, batch_size: int, seq_len: int) -> Any:
    """fvcore's FlopCountAnalysis of the forward pass at [batch_size, seq_len], with this module's handles."""
    from fvcore.nn import FlopCountAnalysis

    ids = torch.zeros(batch_size, seq_len, dtype=torch.long, device=next(model.parameters()).device)
    analysis = FlopCountAnalysis(LogitsOnly(model), (ids,))
    analysis.set_op_handle("aten::scaled_dot_product_attention", _sdpa_flops, "aten::matmul", _matmul_flops,
                           **{op: _no_flops for op in ZERO_FLOP_OPS})
    return analysis.uncalled_modules_warnings(False)


def count_flops(model: ConfigaFormer, batch_size: int, seq_len: int) -> int:
    """Forward-pass multiply-adds at [batch_size, seq_len], traced by fvcore on the eager module."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        total = int(flop_analysis(model, batch_size, seq_len).total())
    model.train(was_training)
    return total


def estimate_peak_memory(build: Callable[[], ConfigaFormer], batch_size: int, seq_len: int, vocab_size: int) -> float:
    """Peak MiB of one fp32 training step (weights, grads, AdamW state, activations), with no GPU: MemTracker
    follows every tensor of the step under FakeTensorMode, so nothing is allocated for real."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    from .train import lm_loss, make_optimizer

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


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
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
    from .train import autocast

    model.eval()
    ids = torch.zeros(batch_size, seq_len, dtype=torch.long, device=device)
    rounds = []
    with DeviceGate(device).exclusive(), (_single_thread() if device.type == "cpu" else contextlib.nullcontext()), autocast(device):
        while len(rounds) < LATENCY_ROUNDS and (not rounds or _cv(rounds[-1]) > MAX_LATENCY_CV):
            rounds.append(_forward_times(model, ids, device, repeats, warmup))
    model.train()
    times = min(rounds, key=_cv)
    return {"latency_ms": statistics.median(times), "latency_cv": _cv(times), "latency_rounds": len(rounds),
            "latency_noisy": _cv(times) > MAX_LATENCY_CV}
