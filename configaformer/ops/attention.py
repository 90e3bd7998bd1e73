"""Attention as three ops, mha_dots -> attention_offset -> mha_sum, and their fused single-kernel form.

The explicit chain exposes the dots for any wiring a config wants. When nothing else reads the dots, the builder
replaces the chain with `FusedAttention`, one scaled_dot_product_attention call with the same numbers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..offsets import alibi_bias, alibi_slopes, causal_mask
from ..registry import Key, OpError, register
from ..shapes import format_shape
from .base import Op, expect_int, expect_rank
from .heads import merge_heads, split_heads

OFFSETS = ("causal", "alibi", "alibi_bidirectional")


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """GQA: query head h reads key/value head h // groups, as scaled_dot_product_attention(enable_gqa=True) does."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def extend(state: dict, name: str, new: torch.Tensor, dim: int) -> torch.Tensor:
    """A decoding cache entry grown by the new positions along `dim`; returns the whole of it."""
    whole = new if name not in state else torch.cat([state[name], new], dim=dim)
    state[name] = whole
    return whole


def _head_groups(query_heads, kv_heads, key: str) -> int:
    query_heads = expect_int(query_heads, key, "the query head count")
    kv_heads = expect_int(kv_heads, key, "the key/value head count")
    if query_heads % kv_heads:
        raise OpError(key, f"{query_heads} query heads are not a multiple of {kv_heads} key/value heads")
    return query_heads // kv_heads


@register("mha_dots")
class MhaDots(Op):
    """Scaled q.k^T: queries [B, H, Lq, d] and keys [B, Hkv, Lk, d] -> [B, H, Lq, Lk]; Hkv < H is GQA."""

    keys = {"input_name_queries": Key("queries", (str,)), "input_name_keys": Key("keys", (str,)),
            "output_name": Key("attn_dots", (str,)), "scale": Key(None, (float, type(None)), check=lambda v: None if v is None or v > 0 else "expected a positive scale")}
    input_keys = ("input_name_queries", "input_name_keys")

    def build(self, cfg, q, k):
        expect_rank(q, 4, "input_name_queries", "queries in head layout [B, H, L, d]")
        expect_rank(k, 4, "input_name_keys", "keys in head layout [B, H, L, d]")
        if q[0] != k[0] or q[3] != k[3]:
            raise OpError("input_name_keys", f"queries {format_shape(q)} and keys {format_shape(k)} differ in batch or head dim")
        self.groups = _head_groups(q[1], k[1], "input_name_keys")
        self.scale = cfg["scale"] or 1.0 / math.sqrt(expect_int(q[3], "input_name_queries", "the head dim"))
        return (q[0], q[1], q[2], k[2])

    def forward(self, q, k):
        return torch.matmul(q, _repeat_kv(k, self.groups).transpose(-2, -1)) * self.scale

    def decode(self, q, k, state, start):
        """The new queries against every key so far (cached as given: only the key/value heads under GQA)."""
        return self.forward(q, extend(state, "keys", k, dim=-2))


@register("attention_offset")
class AttentionOffset(Op):
    """Adds an offset to the dots: an offset stream trimmed to [Lq, Lk] (e.g. get_alibi's), or, with `offset`
    set, one built here: 'causal' (a mask, no bias), 'alibi' (ALiBi plus the causal mask), 'alibi_bidirectional'."""

    keys = {"input_name_attn_dots": Key("attn_dots", (str,)), "input_name_attn_offset": Key("attn_offset", (str,)),
            "output_name": Key("attn_dots", (str,)), "offset": Key(None, (str, type(None)), choices=(None,) + OFFSETS)}
    input_keys = ("input_name_attn_dots", "input_name_attn_offset")

    @classmethod
    def input_names(cls, cfg):
        names = super().input_names(cfg)
        return names if cfg["offset"] is None else names[:1]

    def build(self, cfg, dots, offset_shape=None):
        expect_rank(dots, 4, "input_name_attn_dots", "attention dots [B, H, Lq, Lk]")
        self.offset = cfg["offset"]
        if offset_shape is not None:
            expect_rank(offset_shape, 4, "input_name_attn_offset", "an offset [B or 1, H or 1, L, L]")
            if offset_shape[1] not in (1, dots[1]):
                raise OpError("input_name_attn_offset", f"offset {format_shape(offset_shape)} does not match {dots[1]} heads")
        if self.offset in ("alibi", "alibi_bidirectional"):
            heads = expect_int(dots[1], "input_name_attn_dots", "the head count")
            self.register_buffer("slopes", alibi_slopes(heads), persistent=False)
        return dots

    def bias(self, len_q: int, len_k: int, device: torch.device, start: int = 0) -> torch.Tensor:
        """The offset this op builds itself: a bool mask for 'causal', an additive float bias for ALiBi; the queries
        are positions start.. of the keys."""
        if self.offset == "causal":
            return causal_mask(len_q, len_k, device, start)
        return alibi_bias(self.slopes.to(device), len_q, len_k, causal=self.offset == "alibi", start=start)

    def forward(self, dots, offset=None, start: int = 0):
        len_q, len_k = dots.shape[-2:]
        if self.offset is None:
            return dots + offset[..., start:start + len_q, :len_k].to(dots.dtype)
        if self.offset == "causal":
            return dots.masked_fill(~self.bias(len_q, len_k, dots.device, start), float("-inf"))
        return dots + self.bias(len_q, len_k, dots.device, start).to(dots.dtype)

    def decode_refusal(self):
        return "attends to later positions (alibi_bidirectional)" if self.offset == "alibi_bidirectional" else None

    def decode(self, dots, offset=None, *, state, start):
        """The rows of the new positions (offset streams span the whole context)."""
        return self.forward(dots, offset, start)


@register("mha_sum")
class MhaSum(Op):
    """Softmax over the keys, then the weighted sum of values. Values as [B, Lk, D] are split into the dots' heads
    and merged back ([B, Lq, D] out, as op configs without make_heads on values expect); values as [B, Hkv, Lk, d] give [B, H, Lq, d]."""

    keys = {"input_name_values": Key("values", (str,)), "input_name_attn_dots": Key("attn_dots", (str,)), "output_name": Key("x", (str,))}
    input_keys = ("input_name_values", "input_name_attn_dots")

    def build(self, cfg, values, dots):
        expect_rank(dots, 4, "input_name_attn_dots", "attention dots [B, H, Lq, Lk]")
        batch, heads, len_q, len_k = dots
        self.heads = expect_int(heads, "input_name_attn_dots", "the head count")
        self.flat_values = len(values) == 3
        if self.flat_values:
            width = expect_int(values[2], "input_name_values", "the values' width")
            if width % self.heads:
                raise OpError("input_name_values", f"values width {width} is not divisible by {self.heads} heads")
            self.groups = 1
            key_len, out = values[1], (batch, len_q, width)
        else:
            expect_rank(values, 4, "input_name_values", "values as [B, L, D] or [B, H, L, d]")
            self.groups = _head_groups(heads, values[1], "input_name_values")
            key_len, out = values[2], (batch, heads, len_q, values[3])
        if key_len != len_k or values[0] != batch:
            raise OpError("input_name_values", f"values {format_shape(values)} do not match dots {format_shape(dots)}")
        return out

    def split(self, values):
        return split_heads(values, self.heads) if self.flat_values else values

    def merge(self, out):
        return merge_heads(out) if self.flat_values else out

    def forward(self, values, dots):
        return self._sum(self.split(values), dots)

    def _sum(self, values, dots):
        probs = dots.softmax(dim=-1)
        return self.merge(torch.matmul(probs, _repeat_kv(values, self.groups)))

    def decode(self, values, dots, state, start):
        """The new rows of weights over every value so far (cached in head layout)."""
        return self._sum(extend(state, "values", self.split(values), dim=-2), dots)


class FusedAttention(nn.Module):
    """A mha_dots -> [attention_offset] -> mha_sum chain as one scaled_dot_product_attention call.

    Causal-only offsets take `is_causal` (flash kernel); ALiBi and offset streams become an additive mask.
    It owns no parameters: it reuses the chain's ops, which stay in the model for the summary and state_dict.
    """

    def __init__(self, dots: MhaDots, offset: AttentionOffset | None, summation: MhaSum) -> None:
        super().__init__()
        self.dots, self.offset, self.summation = [dots], [offset], [summation]  # lists: not submodules
        self.inputs = dots.inputs + summation.inputs[:1] + (offset.inputs[1:] if offset is not None else ())
        self.outputs = summation.outputs
        self.scale, self.groups = dots.scale, dots.groups
        self.offset_kind = None if offset is None else (offset.offset or "stream")

    def forward(self, q, k, v, offset_stream=None):
        return self._attend(q, k, self.summation[0].split(v), offset_stream, 0)

    def decode(self, q, k, v, offset_stream=None, *, state, start):
        """The new queries against every key and value so far (cached in head layout, the key/value heads only)."""
        k = extend(state, "keys", k, dim=-2)
        v = extend(state, "values", self.summation[0].split(v), dim=-2)
        return self._attend(q, k, v, offset_stream, start)

    def decode_refusal(self):
        return self.offset[0].decode_refusal() if self.offset[0] is not None else None

    def _attend(self, q, k, v, offset_stream, start):
        summation = self.summation[0]
        len_q, len_k = q.shape[-2], k.shape[-2]
        mask, causal = None, False
        if self.offset_kind == "causal":
            causal = bool(start == 0)  # a step after a cached prefix: its last query sees every key (bool: start may be symbolic, as in an exported step)
            if start and len_q > 1:
                mask = causal_mask(len_q, len_k, q.device, start)
        elif self.offset_kind == "stream":
            mask = offset_stream[..., start:start + len_q, :len_k]
        elif self.offset_kind is not None:
            mask = self.offset[0].bias(len_q, len_k, q.device, start)
        autocast = q.device.type != "meta" and torch.is_autocast_enabled(q.device.type)
        dtype = torch.get_autocast_dtype(q.device.type) if autocast else q.dtype
        if q.dtype != dtype or k.dtype != dtype or v.dtype != dtype:
            q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        if mask is not None and mask.dtype not in (torch.bool, dtype):
            mask = mask.to(dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=self.scale,
                                             enable_gqa=self.groups > 1)
        return summation.merge(out)
