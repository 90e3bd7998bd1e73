"""FLOPs of a forward pass at the probe shape, traced by fvcore: a cheap metric, measured by the screen on the meta
device before any weight exists.

One multiply-add counts as 1, for the matrix products only (linear, matmul, attention through a registered
scaled_dot_product_attention handle); elementwise ops, norms and softmax count 0, as in the analytic convention,
so that norm types compare fairly.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from configaformer import ConfigaFormer

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
