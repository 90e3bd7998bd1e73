"""The base every op shares: streams read and written by name, shapes computed at build time."""

from __future__ import annotations

from typing import Any, ClassVar, Mapping, Sequence

from torch import nn

from ..registry import Key, OpError
from ..shapes import Dim, Shape, Sym, format_shape

STREAM_IN = Key("x", (str,))
STREAM_OUT = Key("x", (str,))


class Op(nn.Module):
    """One registered operation.

    Subclasses declare `keys` and which of them name input and output streams, implement `build` (make the
    parameters from the validated config and input shapes, return the output shapes) and `forward` (input tensors
    in `input_keys` order -> one tensor, or a tuple in `output_keys` order).
    """

    type_name: ClassVar[str]
    keys: ClassVar[dict[str, Key]] = {"input_name": STREAM_IN, "output_name": STREAM_OUT}
    input_keys: ClassVar[tuple[str, ...]] = ("input_name",)
    output_keys: ClassVar[tuple[str, ...]] = ("output_name",)

    def __init__(self, cfg: Mapping[str, Any], in_shapes: Sequence[Shape]) -> None:
        super().__init__()
        self.cfg = dict(cfg)
        self.inputs = self.input_names(cfg)
        self.outputs = tuple(cfg[k] for k in self.output_keys)
        self.in_shapes = tuple(in_shapes)
        out = self.build(self.cfg, *in_shapes)
        self.out_shapes = tuple(out) if isinstance(out, list) else (out,)

    @classmethod
    def input_names(cls, cfg: Mapping[str, Any]) -> tuple[str, ...]:
        """The streams this op reads, in forward's argument order."""
        return tuple(cfg[k] for k in cls.input_keys)

    def build(self, cfg: dict[str, Any], *shapes: Shape) -> Shape | list[Shape]:
        raise NotImplementedError

    def summary_inputs(self) -> list[tuple[str, Shape]]:
        """(name, shape) pairs shown as the op's inputs in the model summary."""
        return list(zip(self.inputs, self.in_shapes))

    def summary_line(self) -> str:
        ins = ", ".join(f"{n} {format_shape(s)}" for n, s in self.summary_inputs())
        outs = ", ".join(f"{n} {format_shape(s)}" for n, s in zip(self.outputs, self.out_shapes))
        return f"{self.type_name} -> Input(s): {ins} - Output(s): {outs}"

    def decode_refusal(self) -> str | None:
        """Why this op cannot run a few new positions at a time against a decoding cache (None: it can). Ops that
        mix positions and can decode define `decode(*inputs, state, start)` instead: `state` is the op's own dict in
        the cache, `start` the position of the first new token."""
        return None

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.cfg.items() if k != "type")


def expect_rank(shape: Shape, rank: int, key: str, what: str) -> None:
    if len(shape) != rank:
        raise OpError(key, f"expected {what} of rank {rank}, got shape {format_shape(shape)}")


def expect_int(dim: Dim, key: str, what: str) -> int:
    """A feature dim must be a concrete int to size parameters."""
    if isinstance(dim, Sym):
        raise OpError(key, f"{what} must be a fixed size, got the symbol {dim}")
    return dim


def expect_same(a: Shape, b: Shape, key: str, what: str) -> None:
    if tuple(a) != tuple(b):
        raise OpError(key, f"{what}: shapes {format_shape(a)} and {format_shape(b)} differ")


def split_size(dim: Dim, parts: int, key: str, what: str) -> int:
    size = expect_int(dim, key, what)
    if size % parts:
        raise OpError(key, f"{what} {size} is not divisible by {parts}")
    return size // parts
