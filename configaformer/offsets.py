"""Attention offsets: the causal mask and ALiBi, built with tensor ops (no Python loops over positions)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def alibi_slopes(num_heads: int) -> Tensor:
    """The per-head slopes of ALiBi (Press et al. 2022): a geometric sequence, interleaved for non-powers of 2."""

    def powers(n: int) -> Tensor:
        start = 2.0 ** (-8.0 / n)
        return start ** torch.arange(1, n + 1, dtype=torch.float64)

    closest = 2 ** math.floor(math.log2(num_heads))
    slopes = powers(closest)
    if closest < num_heads:
        slopes = torch.cat([slopes, powers(2 * closest)[0::2][: num_heads - closest]])
    return slopes.float()


def causal_mask(len_q: int, len_k: int, device: torch.device | None = None, start: int = 0) -> Tensor:
    """True where query i may attend key j (j <= start + i): the queries are positions start.. of the keys (0: aligned
    top-left as in scaled_dot_product_attention; a decoding step's queries come after the cached keys)."""
    return torch.ones(len_q, len_k, dtype=torch.bool, device=device).tril(start)


def alibi_bias(slopes: Tensor, len_q: int, len_k: int, causal: bool = True, start: int = 0) -> Tensor:
    """[1, H, len_q, len_k] additive bias: -slope * distance, and -inf above the diagonal when causal; the queries
    are positions start.. of the keys."""
    device = slopes.device
    distance = torch.arange(start, start + len_q, device=device)[:, None] - torch.arange(len_k, device=device)[None, :]
    bias = -slopes[:, None, None] * distance.abs().to(slopes.dtype)
    if causal:
        bias = bias.masked_fill(~causal_mask(len_q, len_k, device, start), float("-inf"))
    return bias.unsqueeze(0)


def get_alibi(num_heads: int, max_length: int = 2048, causal: bool = True) -> Tensor:
    """The ALiBi offset stream that op configs pass as attn_offset, [1, num_heads, max_length, max_length].

    `attention_offset` trims it to the sequence at hand, so one offset serves every length up to max_length.
    """
    return alibi_bias(alibi_slopes(num_heads), max_length, max_length, causal)
