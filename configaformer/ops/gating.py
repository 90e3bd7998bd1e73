"""gMLP's spatial gating unit (Liu et al. 2021): half the features gate the other half mixed across positions."""

from __future__ import annotations

import torch
from torch import nn

from ..registry import Key, OpError, positive, register
from .base import Op, expect_int, expect_rank
from .norms import NORM_TYPES, Norm


@register("spatial_gating")
class SpatialGating(Op):
    """[B, L, D] -> [B, L, D/2]: u * (W @ norm(v) + b), with W a learned [L, L] token-mixing matrix (lower
    triangular when causal), initialised near zero with b = 1 so the unit starts as an identity gate."""

    keys = {**Op.keys, "max_length": Key(types=(int,), check=positive), "causal": Key(True, (bool,)),
            "norm_type": Key("layer_norm", (str,), choices=NORM_TYPES)}

    def build(self, cfg, shape):
        expect_rank(shape, 3, "input_name", "a [B, L, D] stream")
        width = expect_int(shape[2], "input_name", "the width")
        if width % 2:
            raise OpError("input_name", f"the spatial gating unit splits the width in two, got {width}")
        self.max_length, self.causal = cfg["max_length"], cfg["causal"]
        half = shape[:2] + (width // 2,)
        self.norm = Norm({"input_name": "v", "output_name": "v", "norm_type": cfg["norm_type"], "eps": 1e-5}, [half])
        self.weight = nn.Parameter(torch.empty(self.max_length, self.max_length).uniform_(-1e-3, 1e-3))
        self.bias = nn.Parameter(torch.ones(self.max_length))
        return half

    def forward(self, x):
        length = x.shape[1]
        if length > self.max_length:
            raise ValueError(f"spatial_gating: sequence length {length} exceeds max_length {self.max_length}")
        u, v = x.chunk(2, dim=-1)
        mix = self.weight[:length, :length]
        if self.causal:
            mix = mix.tril()
        return u * (torch.matmul(mix, self.norm(v)) + self.bias[:length, None])
