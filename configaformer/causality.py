"""Does any output position depend on a later input position? A perturbation test over every position at once.

A batch holds the input once as it is and once more for each position p with the token (or vector) at p changed.
In float64, an output at a position before p that moves in row p has read the future. The weights are jittered
first, so that no zero-initialised path hides a dependence that training would open. Each step of the forward
plan is watched, so the message names the first op whose output leaked.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Mapping, Optional

import torch
from torch import Tensor, nn

from .ops.attention import FusedAttention
from .ops.dense import Embedding
from .shapes import Sym

SEQUENCE = "L_in"  # the symbol of the sequence length in every stream's shape
JITTER = 0.02  # weight noise that opens zero-initialised paths
TOLERANCE = 1e-9  # relative change in float64 that counts as a dependence (rounding alone stays near 1e-16)


@dataclass(frozen=True)
class FutureLeak:
    """Output `position` of stream `stream` depends on the later input position `source`; `op` is the first op
    (its config path and type) whose output showed such a dependence."""

    stream: str
    position: int
    source: int
    op: Optional[str]

    def __str__(self) -> str:
        where = f"; first seen in the output of {self.op}" if self.op else ""
        return (f"not causal: output {self.stream!r} at position {self.position} depends on the later input "
                f"position {self.source}{where}")


def _sequence_dims(shape: tuple) -> list[int]:
    return [d for d, dim in enumerate(shape) if isinstance(dim, Sym) and dim.name == SEQUENCE and dim.factor == 1]


def _sequence_dim(shape: tuple, value: Tensor, length: int) -> Optional[int]:
    """The dim of `value` that runs over the input positions: the one dim of shape L_in, or, where an op cut the
    sequence to a fixed size and joined it again, a [B, L, ...] layout that has the input's length."""
    dims = _sequence_dims(shape)
    if dims:
        return dims[0] if len(dims) == 1 else None
    fixed = len(shape) >= 2 and isinstance(shape[1], int) and value.dim() >= 2 and value.shape[1] == length
    return 1 if fixed else None


def _step_shapes(step: nn.Module) -> tuple:
    """The symbolic shapes of a plan step's outputs (a fused step writes what its last op writes)."""
    if isinstance(step, FusedAttention):
        return step.summation[0].out_shapes
    return step.out_shapes


def _step_name(step: nn.Module) -> str:
    if isinstance(step, FusedAttention):
        dots, summation = step.dots[0], step.summation[0]
        return f"the attention chain {dots.location} (mha_dots) -> {summation.location} (mha_sum)"
    return f"{step.location} ({step.type_name})"


def _default_inputs(model: nn.Module, length: int, generator: torch.Generator) -> dict[str, Tensor]:
    """One sequence for every input stream: token ids for a stream an embedding reads, else normal noise."""
    vocab = {op.inputs[0]: op.cfg["num_classes"] for op in model.ops if isinstance(op, Embedding)}
    inputs = {}
    for name, shape in model.input_shapes.items():
        sizes = [1 if d == 0 and isinstance(dim, Sym) else length if isinstance(dim, Sym) and dim.name == SEQUENCE
                 else dim for d, dim in enumerate(shape)]
        if any(not isinstance(s, int) for s in sizes):
            raise ValueError(f"input stream {name!r} has the shape {shape}: pass its tensor in `inputs`")
        if name in vocab:
            inputs[name] = torch.randint(0, vocab[name], sizes, generator=generator)
        else:
            inputs[name] = torch.randn(sizes, generator=generator, dtype=torch.float64)
    return inputs


def _perturbed_batch(tensor: Tensor, dim: Optional[int], length: int, vocab: Optional[int],
                     generator: torch.Generator) -> Tensor:
    """[1 + length, ...]: the input, then one copy per position p with position p changed (all copies alike if dim
    is None: a stream without a single sequence dim, such as an offset, is held fixed)."""
    if tensor.shape[0] != 1:
        raise ValueError(f"expected a batch of one sequence, got a batch of {tensor.shape[0]}")
    batch = tensor.repeat(1 + length, *[1] * (tensor.dim() - 1))
    for p in range(length if dim is not None else 0):
        index = [1 + p] + [slice(None)] * (tensor.dim() - 1)
        index[dim] = p
        where = tuple(index)
        if vocab is not None:
            batch[where] = (batch[where] + torch.randint(1, vocab, (), generator=generator)) % vocab
        else:
            batch[where] += torch.randn(batch[where].shape, generator=generator, dtype=batch.dtype)
    return batch


def _earliest_leak(out: Tensor, dim: int) -> Optional[tuple[int, int]]:
    """(position, source) of a dependence of `out` (rows as in _perturbed_batch) on a later position, or None."""
    length = out.shape[dim]
    if out.shape[0] != 1 + length:
        return None
    change = (out[1:] - out[:1]).abs().movedim(dim, 1).reshape(length, length, -1).amax(dim=-1)  # [source, position]
    scale = out[:1].abs().max().item() + 1.0
    later = torch.ones(length, length, dtype=torch.bool).triu(1).T  # source p > position t
    leaks = ((change > TOLERANCE * scale) & later).nonzero()
    if not len(leaks):
        return None
    source, position = min(leaks.tolist(), key=lambda st: (st[1], st[0]))
    return position, source


@torch.no_grad()
def find_future_leak(model: nn.Module, length: int = 16, inputs: Optional[Mapping[str, Tensor]] = None,
                     seed: int = 0) -> Optional[FutureLeak]:
    """The first dependence of a model output on a later input position, or None when the model is causal.

    `inputs` gives one sequence ([1, ...]) per input stream; by default token ids for streams an embedding
    reads and noise for the rest, at `length` positions. Streams with no single sequence dim (an attention
    offset [B, H, L, L], say) are held fixed. Raises ValueError when the model cannot run at that length.
    """
    generator = torch.Generator().manual_seed(seed)
    probe = copy.deepcopy(model).to(torch.float64).eval()
    for param in probe.parameters():
        param.add_(torch.randn(param.shape, generator=generator, dtype=param.dtype) * JITTER)
    given = dict(inputs) if inputs is not None else _default_inputs(model, length, generator)
    vocab = {op.inputs[0]: op.cfg["num_classes"] for op in model.ops if isinstance(op, Embedding)}
    dims = {name: _sequence_dims(model.input_shapes[name]) for name in given}
    dims = {name: found[0] if len(found) == 1 else None for name, found in dims.items()}
    lengths = {given[name].shape[dim] for name, dim in dims.items() if dim is not None}
    if len(lengths) != 1:
        raise ValueError(f"expected one input stream (or several of one length) along {SEQUENCE}, got lengths {sorted(lengths)}")
    length = lengths.pop()
    batch = {name: _perturbed_batch(tensor.to(torch.float64) if tensor.is_floating_point() else tensor, dims[name],
                                    length, vocab.get(name), generator) for name, tensor in given.items()}
    first: list[str] = []
    written: dict[str, tuple] = dict(probe.input_shapes)

    def watch(step: nn.Module, _args: tuple, out) -> None:
        outs = out if isinstance(out, tuple) else (out,)
        for name, shape, value in zip(step.outputs, _step_shapes(step), outs):
            written[name] = shape
            dim = _sequence_dim(shape, value, length)
            if not first and dim is not None and _earliest_leak(value, dim) is not None:
                first.append(_step_name(step))

    hooks = [step.register_forward_hook(watch) for step in probe.plan]
    try:
        streams = probe(batch)
    finally:
        for hook in hooks:
            hook.remove()
    for name in probe.outputs:
        dim = _sequence_dim(written[name], streams[name], length)
        found = _earliest_leak(streams[name], dim) if dim is not None else None
        if found is not None:
            return FutureLeak(name, found[0], found[1], first[0] if first else None)
    return None
