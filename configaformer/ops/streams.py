"""Stream plumbing: copy a stream (the residual), merge two, cut one, concatenate several."""

from __future__ import annotations

import torch

from .. import shapes
from ..registry import Key, OpError, register
from .base import STREAM_IN, STREAM_OUT, Op, expect_same


@register("make_stream")
class MakeStream(Op):
    """Names a second reference to a stream; no copy is made, since no op writes in place."""

    keys = {"input_name": STREAM_IN, "output_name": Key(types=(str,))}

    def build(self, cfg, shape):
        return shape

    def forward(self, x):
        return x


_MERGES = {"add": torch.add, "subtract": torch.sub, "multiply": torch.mul}


@register("merge_streams")
class MergeStreams(Op):
    """Elementwise add, subtract or multiply of two streams of one shape."""

    keys = {
        "input_name_1": Key(types=(str,)),
        "input_name_2": STREAM_IN,
        "merge_type": Key(types=(str,), choices=tuple(_MERGES)),
        "output_name": STREAM_OUT,
    }
    input_keys = ("input_name_1", "input_name_2")

    def build(self, cfg, a, b):
        expect_same(a, b, "input_name_2", f"cannot {cfg['merge_type']} '{cfg['input_name_1']}' and '{cfg['input_name_2']}'")
        self.merge = _MERGES[cfg["merge_type"]]
        return a

    def forward(self, a, b):
        return self.merge(a, b)


def _check_dim(dim: int, shape: tuple, key: str) -> int:
    if not -len(shape) <= dim < len(shape):
        raise OpError(key, f"dim {dim} is out of range for shape {shapes.format_shape(shape)}")
    return dim % len(shape)


@register("cut_stream")
class CutStream(Op):
    """Slice [start:end) along one dim."""

    keys = {**Op.keys, "start": Key(types=(int,)), "end": Key(types=(int,)), "cut_dim": Key(-1, (int,))}

    def build(self, cfg, shape):
        dim = _check_dim(cfg["cut_dim"], shape, "cut_dim")
        start, end = cfg["start"], cfg["end"]
        size = shape[dim]
        if not 0 <= start < end or (isinstance(size, int) and end > size):
            raise OpError("end", f"cannot cut [{start}:{end}) from a dim of size {size}")
        self.dim, self.start, self.length = dim, start, end - start
        return shape[:dim] + (end - start,) + shape[dim + 1 :]

    def forward(self, x):
        return x.narrow(self.dim, self.start, self.length)

    def decode_refusal(self):
        return _along_sequence(self.in_shapes[0], self.dim, "cuts")


@register("cat_streams")
class CatStreams(Op):
    """Concatenate streams along one dim; the other dims must agree."""

    keys = {
        "input_list": Key(types=(list,), check=lambda v: None if len(v) >= 2 and all(isinstance(n, str) for n in v) else "expected a list of 2 or more stream names"),
        "cat_dim": Key(-1, (int,)),
        "output_name": STREAM_OUT,
    }

    @classmethod
    def input_names(cls, cfg):
        return tuple(cfg["input_list"])

    def build(self, cfg, *parts):
        first = parts[0]
        dim = _check_dim(cfg["cat_dim"], first, "cat_dim")
        for name, shape in zip(cfg["input_list"][1:], parts[1:]):
            if len(shape) != len(first) or any(a != b for i, (a, b) in enumerate(zip(first, shape)) if i != dim):
                raise OpError("input_list", f"cannot concatenate '{name}' {shapes.format_shape(shape)} with {shapes.format_shape(first)} along dim {cfg['cat_dim']}")
        try:
            size = shapes.add([p[dim] for p in parts])
        except ValueError as err:
            raise OpError("cat_dim", str(err)) from None
        self.dim = dim
        return first[:dim] + (size,) + first[dim + 1 :]

    def forward(self, *parts):
        return torch.cat(parts, dim=self.dim)

    def decode_refusal(self):
        return _along_sequence(self.in_shapes[0], self.dim, "concatenates")


def _along_sequence(shape: tuple, dim: int, verb: str) -> str | None:
    """A stream op along a dim of symbolic size (the batch or the sequence) mixes positions: it cannot decode."""
    return f"{verb} along dim {dim} of {shapes.format_shape(shape)}, a dim of symbolic size" \
        if isinstance(shape[dim], shapes.Sym) else None
