"""Head layout and rotary position: [B, L, D] <-> [B, H, L, D/H], and RoPE on the first rotate_dim features."""

from __future__ import annotations

import torch

from ..registry import Key, OpError, positive, register
from .base import Op, expect_int, expect_rank, split_size

_HEADS = Key(types=(int,), check=positive)


# Plain views rather than einops' rearrange: these run a few times per layer, where its parsing overhead shows.
def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, L, H*d] -> [B, H, L, d], a view."""
    return x.view(*x.shape[:-1], heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, H, L, d] -> [B, L, H*d]; a view when x came from split_heads or from SDPA."""
    return x.transpose(1, 2).flatten(2)


@register("make_heads")
class MakeHeads(Op):
    keys = {**Op.keys, "num_heads": _HEADS}

    def build(self, cfg, shape):
        expect_rank(shape, 3, "input_name", "a [B, L, D] stream")
        self.heads = cfg["num_heads"]
        head_dim = split_size(shape[2], self.heads, "num_heads", f"width of '{cfg['input_name']}'")
        return (shape[0], self.heads, shape[1], head_dim)

    def forward(self, x):
        return split_heads(x, self.heads)


@register("merge_heads")
class MergeHeads(Op):
    def build(self, cfg, shape):
        expect_rank(shape, 4, "input_name", "a [B, H, L, d] stream")
        heads = expect_int(shape[1], "input_name", "the head count")
        return (shape[0], shape[2], heads * expect_int(shape[3], "input_name", "the head dim"))

    def forward(self, x):
        return merge_heads(x)


@register("rope")
class Rope(Op):
    """Rotary position embedding (GPT-NeoX's rotate-half form) on the first rotate_dim features of each head.

    Works on any stream whose last two dims are [L, d]; sin and cos are precomputed for max_length positions.
    """

    keys = {**Op.keys, "rotate_dim": Key(types=(int,), check=lambda v: None if v > 0 and v % 2 == 0 else "expected a positive even int"),
            "max_length": Key(2048, (int,), check=positive), "base": Key(10000.0, (float,), check=positive)}

    def build(self, cfg, shape):
        if len(shape) < 2:
            raise OpError("input_name", "rope needs a stream with [L, d] as its last dims")
        head_dim = expect_int(shape[-1], "input_name", "the head dim")
        self.rotate_dim, self.max_length = cfg["rotate_dim"], cfg["max_length"]
        if self.rotate_dim > head_dim:
            raise OpError("rotate_dim", f"rotate_dim {self.rotate_dim} exceeds the head dim {head_dim}")
        inv_freq = 1.0 / cfg["base"] ** (torch.arange(0, self.rotate_dim, 2, dtype=torch.float64) / self.rotate_dim)
        angles = torch.outer(torch.arange(self.max_length, dtype=torch.float64), inv_freq)
        angles = torch.cat([angles, angles], dim=-1)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)
        return shape

    def summary_inputs(self):
        return super().summary_inputs() + [(f"rope_{self.rotate_dim}", (self.max_length, self.rotate_dim))]

    def forward(self, x, start: int = 0):
        end = start + x.shape[-2]
        if end > self.max_length:
            raise ValueError(f"rope: sequence length {end} exceeds max_length {self.max_length}")
        cos = self.cos[start:end].to(x.dtype)
        sin = self.sin[start:end].to(x.dtype)
        rot, rest = x[..., : self.rotate_dim], x[..., self.rotate_dim :]
        first, second = rot.chunk(2, dim=-1)
        rotated = rot * cos + torch.cat([-second, first], dim=-1) * sin
        return torch.cat([rotated, rest], dim=-1) if rest.shape[-1] else rotated

    def decode(self, x, state, start):
        """New positions rotate by their own angles."""
        return self.forward(x, start)
