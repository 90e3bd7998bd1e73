"""Normalisation of the last dim, for any rank: [B, L, D] streams and [B, H, L, d] heads (QK-norm) alike."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import Key, positive, register
from .base import Op, expect_int

NORM_TYPES = ("layer_norm", "rms_norm", "scale_norm")


@register("norm")
class Norm(Op):
    """layer_norm (scale and bias), rms_norm (scale), or scale_norm (one learned scalar times x / ||x||)."""

    keys = {**Op.keys, "norm_type": Key("layer_norm", (str,), choices=NORM_TYPES), "eps": Key(1e-5, (float,), check=positive)}

    def build(self, cfg, shape):
        width = expect_int(shape[-1], "input_name", "the normalised dim")
        self.norm_type, self.eps, self.width = cfg["norm_type"], float(cfg["eps"]), width
        if self.norm_type == "scale_norm":
            self.weight = nn.Parameter(torch.tensor(math.sqrt(width)))
        else:
            self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width)) if self.norm_type == "layer_norm" else None
        return shape

    def forward(self, x):
        if self.norm_type == "layer_norm":
            return F.layer_norm(x, (self.width,), self.weight, self.bias, self.eps)
        if self.norm_type == "rms_norm":
            return F.rms_norm(x, (self.width,), self.weight, self.eps)
        return x * (self.weight / x.norm(dim=-1, keepdim=True).clamp(min=self.eps))
