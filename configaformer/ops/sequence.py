"""Ops along the sequence dim: token shift, and sequence shortening (down_sample) with its inverse (up_sample)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import shapes
from ..registry import Key, OpError, positive, register
from .base import Op, expect_int, expect_rank


def _check_instructions(value) -> str | None:
    for item in value:
        if not (isinstance(item, dict) and set(item) == {"features", "relative_pos"}):
            return "each instruction is {'features': [start, end], 'relative_pos': k}"
        feats, pos = item["features"], item["relative_pos"]
        if not (isinstance(feats, list) and len(feats) == 2 and all(isinstance(f, int) for f in feats) and 0 <= feats[0] < feats[1]):
            return "features must be [start, end] with 0 <= start < end"
        if not isinstance(pos, int) or isinstance(pos, bool):
            return "relative_pos must be an int"
    return None if value else "expected at least one instruction"


@register("shift")
class Shift(Op):
    """Token shift: features [start, end) of each token t are taken from token t + relative_pos, zero-filled at
    the edge: -1 reads the previous token (causal), +1 the next one (not causal). Other features pass through."""

    keys = {**Op.keys, "instructions": Key(types=(list,), check=_check_instructions)}

    def build(self, cfg, shape):
        if len(shape) < 2:
            raise OpError("input_name", "shift needs a stream with [L, D] as its last dims")
        width = expect_int(shape[-1], "input_name", "the shifted stream's width")
        spans = sorted((i["features"][0], i["features"][1], i["relative_pos"]) for i in cfg["instructions"])
        pieces, cursor = [], 0
        for start, end, pos in spans:
            if start < cursor or end > width:
                raise OpError("instructions", f"feature spans must not overlap and must lie within the width {width}")
            if start > cursor:
                pieces.append((cursor, start, 0))
            pieces.append((start, end, pos))
            cursor = end
        if cursor < width:
            pieces.append((cursor, width, 0))
        self.pieces = pieces
        return shape

    def forward(self, x):
        length = x.shape[-2]
        out = []
        for start, end, pos in self.pieces:
            part = x[..., start:end]
            if pos < 0:  # from earlier tokens
                part = F.pad(part, (0, 0, -pos, 0))[..., :length, :]
            elif pos > 0:  # from later tokens
                part = F.pad(part, (0, 0, 0, pos))[..., pos:, :]
            out.append(part)
        return torch.cat(out, dim=-1)

    def decode_refusal(self):
        return "reads later tokens (a positive relative_pos)" if any(pos > 0 for _, _, pos in self.pieces) else None

    def decode(self, x, state, start):
        """The new positions, shifted with the last tokens before them (kept in the cache)."""
        back = max(-pos for _, _, pos in self.pieces)
        if not back:
            return x
        length = x.shape[-2]
        whole = torch.cat([state["tail"], x], dim=-2) if "tail" in state else x
        state["tail"] = whole[..., -back:, :]
        return self.forward(whole)[..., -length:, :]


@register("down_sample")
class DownSample(Op):
    """[B, L, D] -> [B, L/stride, D*stride]: each run of `stride` tokens becomes one wider token."""

    keys = {**Op.keys, "stride": Key(types=(int,), check=positive)}

    def build(self, cfg, shape):
        expect_rank(shape, 3, "input_name", "a [B, L, D] stream")
        self.stride = cfg["stride"]
        try:
            length = shapes.divide(shape[1], self.stride)
        except ValueError as err:
            raise OpError("stride", f"the sequence length {err}") from None
        return (shape[0], length, shapes.multiply(shape[2], self.stride))

    def forward(self, x):
        batch, length, width = x.shape
        if length % self.stride:
            raise ValueError(f"down_sample: sequence length {length} is not divisible by stride {self.stride}")
        return x.reshape(batch, length // self.stride, width * self.stride)

    def decode_refusal(self):
        return "merges runs of tokens, which a token at a time cannot fill"


@register("up_sample")
class UpSample(Op):
    """[B, L, D] -> [B, L*num_chunks, D/num_chunks]: the inverse of down_sample."""

    keys = {**Op.keys, "num_chunks": Key(types=(int,), check=positive)}

    def build(self, cfg, shape):
        expect_rank(shape, 3, "input_name", "a [B, L, D] stream")
        self.chunks = cfg["num_chunks"]
        try:
            width = shapes.divide(expect_int(shape[2], "input_name", "the width"), self.chunks)
        except ValueError as err:
            raise OpError("num_chunks", f"the width {err}") from None
        return (shape[0], shapes.multiply(shape[1], self.chunks), width)

    def forward(self, x):
        batch, length, width = x.shape
        return x.reshape(batch, length * self.chunks, width // self.chunks)

    def decode_refusal(self):
        return "splits each token into several positions, which decoding one token at a time cannot follow"
