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
        u, v = x.chunk(2, dim=-1)
        return self._gate(u, self.norm(v), 0)

    def _gate(self, u, mixed, start: int):
        """u (the new positions start..) gated by their rows of the token mix over `mixed` (every position so far)."""
        end = start + u.shape[1]
        if end > self.max_length:
            raise ValueError(f"spatial_gating: sequence length {end} exceeds max_length {self.max_length}")
        mix = self.weight[start:end, :end]
        if self.causal:
            mix = mix.tril(start)
        return u * (torch.matmul(mix, mixed) + self.bias[start:end, None])

    def decode_refusal(self):
        return None if self.causal else "mixes every position with later ones (causal: false)"

    def decode(self, x, state, start):
        """The new positions, mixed with the normalised gating half of every position so far (kept in the cache)."""
        u, v = x.chunk(2, dim=-1)
        whole = self.norm(v) if "mixed" not in state else torch.cat([state["mixed"], self.norm(v)], dim=1)
        state["mixed"] = whole
        return self._gate(u, whole, start)
