"""Per-token dense ops: embeddings, linear projections, activations (GLU variants too), dropout, scales."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import Key, OpError, positive, probability, register
from .base import STREAM_OUT, Op, expect_int, expect_rank

INIT_STD = 0.02  # GPT-2's initialisation, which trains well in short runs


@register("embedding")
class Embedding(Op):
    """Token ids [B, L] -> vectors [B, L, output_dim]."""

    keys = {"input_name": Key("emb_ids", (str,)), "output_name": STREAM_OUT,
            "num_classes": Key(types=(int,), check=positive), "output_dim": Key(types=(int,), check=positive)}

    def build(self, cfg, shape):
        self.table = nn.Embedding(cfg["num_classes"], cfg["output_dim"])
        nn.init.normal_(self.table.weight, std=INIT_STD)
        return tuple(shape) + (cfg["output_dim"],)

    def forward(self, ids):
        return self.table(ids)


@register("pos_embedding")
class PositionEmbedding(Op):
    """Adds a learned absolute position vector to each token of [B, L, D], for L up to max_length."""

    keys = {**Op.keys, "max_length": Key(2048, (int,), check=positive)}

    def build(self, cfg, shape):
        expect_rank(shape, 3, "input_name", "a [B, L, D] stream")
        self.max_length = cfg["max_length"]
        self.table = nn.Parameter(torch.randn(self.max_length, expect_int(shape[-1], "input_name", "the width")) * INIT_STD)
        return shape

    def forward(self, x, start: int = 0):
        end = start + x.shape[-2]
        if end > self.max_length:
            raise ValueError(f"pos_embedding: sequence length {end} exceeds max_length {self.max_length}")
        return x + self.table[start:end]

    def decode(self, x, state, start):
        """New positions take their own rows of the table."""
        return self.forward(x, start)


@register("linear")
class Linear(Op):
    """Projection of the last dim, any rank; output_dim defaults to the input width. When the builder runs this op
    in a FusedLinear group, the group holds its weight and `proj` is None. With tie_embedding, its weight is the
    model's first embedding table (output logits over the input vocabulary, counted once)."""

    keys = {**Op.keys, "output_dim": Key(None, (int, type(None)), check=lambda v: None if v is None or v > 0 else "expected a positive int"),
            "bias": Key(True, (bool,)), "init_std": Key(INIT_STD, (float,), check=positive),
            "tie_embedding": Key(False, (bool,))}

    def build(self, cfg, shape):
        width = expect_int(shape[-1], "input_name", "the input's last dim")
        out = cfg["output_dim"] or width
        self.tied = cfg["tie_embedding"]  # the builder shares the first embedding's table as this weight
        self.proj = nn.Linear(width, out, bias=cfg["bias"])
        nn.init.normal_(self.proj.weight, std=cfg["init_std"])
        if self.proj.bias is not None:
            nn.init.zeros_(self.proj.bias)
        return tuple(shape[:-1]) + (out,)

    def forward(self, x):
        return F.linear(x, self.proj.weight, self.proj.bias)  # not self.proj(x): one module call less per use


def _relu2(x):
    return F.relu(x).square()


class FusedLinear(nn.Module):
    """Sibling `linear` ops that read one stream (queries, keys and values, say) as one GEMM over one weight.

    The group's weights move here, concatenated into one matrix (and one bias), so the group costs one kernel,
    one autograd node and one optimizer tensor instead of one per op: what a launch-bound model feels. The member
    ops keep their config, shapes and summary line; their `proj` becomes None.
    """

    def __init__(self, members: list[Linear]) -> None:
        super().__init__()
        first = members[0].proj
        self.type_name, self.location = "linear", members[0].location
        self.inputs = members[0].inputs
        self.outputs = tuple(m.outputs[0] for m in members)
        self.sizes = [m.proj.out_features for m in members]
        self.out_shapes = tuple(m.out_shapes[0] for m in members)
        self.proj = nn.Linear(first.in_features, sum(self.sizes), bias=first.bias is not None,
                              device=first.weight.device, dtype=first.weight.dtype)
        with torch.no_grad():
            self.proj.weight.copy_(torch.cat([m.proj.weight for m in members]))
            if self.proj.bias is not None:
                self.proj.bias.copy_(torch.cat([m.proj.bias for m in members]))
        for member in members:
            member.proj = None

    def forward(self, x):
        return F.linear(x, self.proj.weight, self.proj.bias).split(self.sizes, dim=-1)


ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "relu2": _relu2, "silu": F.silu,
               "sigmoid": torch.sigmoid, "tanh": torch.tanh, "none": None}


def check_activation(value) -> str | None:
    """None for a valid activation name or GLU list, else the problem."""
    names = [value] if isinstance(value, str) else value
    if isinstance(value, list) and not 2 <= len(value) <= 4:
        return "a GLU takes a list of 2 to 4 activations"
    bad = [n for n in names if n not in ACTIVATIONS]
    return f"unknown activation {bad[0]!r}; known: {', '.join(ACTIVATIONS)}" if bad else None


@register("activation")
class Activation(Op):
    """A pointwise nonlinearity, or with a list of k names a GLU: the last dim splits into k parts, each goes
    through its own activation, and the parts multiply (['gelu', 'none'] is GEGLU, ['silu', 'none'] SwiGLU)."""

    keys = {**Op.keys, "activation_function": Key("gelu", (str, list), check=check_activation)}

    def build(self, cfg, shape):
        names = cfg["activation_function"]
        self.functions = [ACTIVATIONS[n] for n in ([names] if isinstance(names, str) else names)]
        parts = len(self.functions)
        if parts == 1:
            return shape
        width = expect_int(shape[-1], "input_name", "a GLU's input width")
        if width % parts:
            raise OpError("activation_function", f"a {parts}-way GLU needs a width divisible by {parts}, got {width}")
        return tuple(shape[:-1]) + (width // parts,)

    def forward(self, x):
        if len(self.functions) == 1:
            fn = self.functions[0]
            return x if fn is None else fn(x)
        out = None
        for fn, part in zip(self.functions, x.chunk(len(self.functions), dim=-1)):
            part = part if fn is None else fn(part)
            out = part if out is None else out * part
        return out


@register("dropout")
class Dropout(Op):
    keys = {**Op.keys, "prob": Key(types=(float,), check=probability)}

    def build(self, cfg, shape):
        self.prob = float(cfg["prob"])
        return shape

    def forward(self, x):
        return F.dropout(x, self.prob, self.training)


@register("scale_dim")
class ScaleDim(Op):
    """A learned scale (initialised to 1) for each index along one dim, broadcast over the others."""

    keys = {**Op.keys, "dim_to_scale": Key(-1, (int,))}

    def build(self, cfg, shape):
        dim = cfg["dim_to_scale"]
        if not -len(shape) <= dim < len(shape):
            raise OpError("dim_to_scale", f"dim {dim} is out of range for a rank-{len(shape)} stream")
        dim %= len(shape)
        size = expect_int(shape[dim], "dim_to_scale", "the scaled dim")
        self.scale = nn.Parameter(torch.ones(size))
        self.view = (size,) + (1,) * (len(shape) - dim - 1)
        return shape

    def forward(self, x):
        return x * self.scale.view(self.view)

