"""ConfigaFormer: blocks of op configs, each repeated, built into one flat list of ops over named streams.

Shapes flow through the ops at build time, so a bad config fails here, naming its block, op and key. The forward
pass runs a plan over a dict of streams: the ops in order, with each attention chain whose dots nothing else reads
replaced by one fused scaled_dot_product_attention call.
"""

from __future__ import annotations

import copy
import os
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from . import ops as _ops  # noqa: F401  (registers every op type)
from .errors import ConfigError
from .ops.attention import AttentionOffset, FusedAttention, MhaDots, MhaSum
from .ops.dense import Embedding, FusedLinear, Linear, PositionEmbedding
from .registry import OpError, op_class, resolve_keys
from .shapes import Shape, parse_shape, shape_to_config

if TYPE_CHECKING:
    from .decode import DecodeCache

EMBEDDING_OPS = (Embedding, PositionEmbedding)


def _fail(source: Optional[str], message: str) -> ConfigError:
    return ConfigError(f"{source}: {message}" if source else message)


def _check_structure(config: object, input_streams: object, source: Optional[str]) -> tuple[list, dict, list]:
    """The outer layout of an op-level config: {'blocks': [{'config': [op dicts], 'repeat': N}], ...}."""
    if not isinstance(config, Mapping):
        raise _fail(source, f"model_config: expected a mapping with 'blocks', got {type(config).__name__}")
    unknown = set(config) - {"blocks", "input_streams", "outputs"}
    if unknown:
        raise _fail(source, f"model_config: unknown key {sorted(unknown)[0]!r}; expected 'blocks', 'input_streams', 'outputs'")
    blocks = config.get("blocks")
    if not isinstance(blocks, list) or not blocks:
        raise _fail(source, "blocks: expected a non-empty list of {'config': [...], 'repeat': N}")
    for b, block in enumerate(blocks):
        if not isinstance(block, Mapping) or not isinstance(block.get("config"), list) or set(block) - {"config", "repeat"}:
            raise _fail(source, f"blocks[{b}]: expected {{'config': [op dicts], 'repeat': N}}, got {block!r:.80}")
        repeat = block.get("repeat", 1)
        if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 1:
            raise _fail(source, f"blocks[{b}].repeat: expected a positive int, got {repeat!r}")
        for i, op in enumerate(block["config"]):
            if not isinstance(op, Mapping) or "type" not in op:
                raise _fail(source, f"blocks[{b}].config[{i}]: expected an op dict with a 'type', got {op!r:.80}")
    streams = input_streams if input_streams is not None else config.get("input_streams")
    if not isinstance(streams, Mapping) or not streams:
        raise _fail(source, "input_streams: expected a mapping of stream name -> shape, e.g. {'emb_ids': ['B', 'L_in']}")
    shapes = {}
    for name, dims in streams.items():
        try:
            shapes[str(name)] = parse_shape(dims)
        except ValueError as err:
            raise _fail(source, f"input_streams.{name}: {err}") from None
    outputs = config.get("outputs", ["x"])
    if not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs) or not outputs:
        raise _fail(source, f"outputs: expected a list of stream names, got {outputs!r}")
    return blocks, shapes, outputs


def _build_op(spec: Mapping[str, Any], shapes: dict[str, Shape]) -> nn.Module:
    """One op from its dict, given the shapes of every stream written so far; raises OpError."""
    cls = op_class(spec["type"])
    cfg = resolve_keys(cls.keys, spec)
    names = cls.input_names(cfg)
    for name in names:
        if name not in shapes:
            key = next((k for k in cls.input_keys if cfg.get(k) == name or name in (cfg.get(k) or ())), "input_name")
            known = ", ".join(sorted(shapes))
            raise OpError(key, f"stream {name!r} is read before anything writes it (streams so far: {known})")
    op = cls(cfg, [shapes[n] for n in names])
    shapes.update(zip(op.outputs, op.out_shapes))
    return op


def _readers(ops: Sequence[nn.Module], after: int, stream: str, final: set[str]) -> list[int]:
    """Indices of the ops that read `stream` as written by op `after`, up to its next write; len(ops) stands for
    the caller, when the stream is one of the model's outputs."""
    found = []
    for j in range(after + 1, len(ops)):
        if stream in ops[j].inputs:
            found.append(j)
        if stream in ops[j].outputs:
            return found
    return found + ([len(ops)] if stream in final else [])


def _attention_chain(ops: Sequence[nn.Module], i: int, final: set[str]) -> Optional[tuple[Optional[int], int]]:
    """(offset index or None, sum index) when ops[i] (mha_dots) heads a chain that can run fused, else None."""
    dots = ops[i]
    readers = _readers(ops, i, dots.outputs[0], final)
    if len(readers) != 1 or readers[0] == len(ops):
        return None
    offset_at, sum_at = None, readers[0]
    if isinstance(ops[sum_at], AttentionOffset) and ops[sum_at].inputs[0] == dots.outputs[0]:
        offset_at = sum_at
        readers = _readers(ops, offset_at, ops[offset_at].outputs[0], final)
        if len(readers) != 1 or readers[0] == len(ops):
            return None
        sum_at = readers[0]
    summation = ops[sum_at]
    scores = (ops[offset_at] if offset_at is not None else dots).outputs[0]
    if not isinstance(summation, MhaSum) or summation.inputs[1] != scores:
        return None
    # The fused call reads q, k and the offset stream at the sum's position: none may be rewritten before it.
    guarded = set(dots.inputs) | (set(ops[offset_at].inputs[1:]) if offset_at is not None else set())
    if any(guarded & set(ops[m].outputs) for m in range(i + 1, sum_at)):
        return None
    return offset_at, sum_at


def _sibling_linears(ops: Sequence[nn.Module], i: int) -> list[int]:
    """ops[i] and the linear ops right after it that read the same stream with the same bias setting, as long as
    none of them overwrites that stream or writes another's output."""
    first = ops[i]
    group, written = [i], {first.outputs[0]}
    if first.tied:
        return [i]
    for j in range(i + 1, len(ops)):
        op = ops[j]
        if not (type(op) is Linear and not op.tied and op.inputs == first.inputs and (op.proj.bias is None) == (first.proj.bias is None)
                and op.outputs[0] not in written):
            break
        group.append(j)
        written.add(op.outputs[0])
    return group if first.inputs[0] not in written else [i]


def linear_groups(ops: Sequence[nn.Module]) -> list[list[int]]:
    """The runs of two or more sibling linears (see _sibling_linears), each as its op indices."""
    groups, taken = [], set()
    for i, op in enumerate(ops):
        if type(op) is Linear and i not in taken:
            group = _sibling_linears(ops, i)
            if len(group) > 1:
                groups.append(group)
                taken.update(group)
    return groups


def plan_steps(ops: Sequence[nn.Module], outputs: Sequence[str], fuse_attention: bool = True,
               fused_linear_groups: Sequence[Sequence[int]] = ()) -> list[nn.Module]:
    """The forward plan: the ops in order, with each fusable attention chain run as one FusedAttention step and
    each of the given groups of sibling linears as one FusedLinear step (which takes over their weights). Both give
    the same numbers as the ops they replace."""
    skip, fused = set(), {}
    for group in fused_linear_groups:
        skip.update(group[1:])
        fused[group[0]] = FusedLinear([ops[j] for j in group])
    for i, op in enumerate(ops):
        if fuse_attention and isinstance(op, MhaDots):
            chain = _attention_chain(ops, i, set(outputs))
            if chain is not None:
                offset_at, sum_at = chain
                skip.update({i} | ({offset_at} if offset_at is not None else set()))
                fused[sum_at] = FusedAttention(op, ops[offset_at] if offset_at is not None else None, ops[sum_at])
    return [fused.get(i, op) for i, op in enumerate(ops) if i not in skip]


def _match_linear_layout(model: "ConfigaFormer", state: dict, prefix: str, *_args: object) -> None:
    """load_state_dict pre-hook: a checkpoint saved with the other linear layout (each group of sibling linears as
    one fused weight, or one weight per op) is converted to this model's, so fused and unfused models share them."""
    for i, group in enumerate(model.linear_groups):
        for name in ("weight", "bias"):
            joined, parts = f"{prefix}fused_linears.{i}.proj.{name}", [f"{prefix}ops.{j}.proj.{name}" for j in group]
            if model.fused_linears and all(part in state for part in parts):
                state[joined] = torch.cat([state.pop(part) for part in parts])
            elif not model.fused_linears and joined in state:
                sizes = [model.ops[j].proj.out_features for j in group]
                state.update(zip(parts, state.pop(joined).split(sizes)))


def _tie_embeddings(ops: Sequence[nn.Module], source: Optional[str]) -> None:
    """Linear ops with tie_embedding take the first embedding's table as their weight (one parameter, shared)."""
    embedding = next((op for op in ops if isinstance(op, Embedding)), None)
    for op in ops:
        if isinstance(op, Linear) and op.tied:
            if embedding is None or op.proj.weight.shape != embedding.table.weight.shape:
                have = "no embedding" if embedding is None else f"an embedding table of {tuple(embedding.table.weight.shape)}"
                raise _fail(source, f"{op.location} (linear), key 'tie_embedding': its weight of "
                                    f"{tuple(op.proj.weight.shape)} cannot be the embedding table: the model has {have}")
            op.proj.weight = embedding.table.weight


def _check_flat_values(ops: Sequence[nn.Module], source: Optional[str]) -> None:
    """Values given flat ([B, L, D]) are split into the dots' query heads: under GQA (fewer key/value heads) that
    would pair each query head with the wrong values, so it is refused by name."""
    writers: dict[str, nn.Module] = {}  # stream -> the op that last wrote it
    offset_of: dict[int, Optional[nn.Module]] = {}  # an attention_offset -> the op that wrote the dots it read
    for op in ops:
        if isinstance(op, AttentionOffset):
            offset_of[id(op)] = writers.get(op.inputs[0])
        if isinstance(op, MhaSum) and op.flat_values:
            dots = writers.get(op.inputs[1])
            if isinstance(dots, AttentionOffset):
                dots = offset_of[id(dots)]
            if isinstance(dots, MhaDots) and dots.groups > 1:
                raise _fail(source, f"{op.location} (mha_sum), key 'input_name_values': values {op.inputs[0]!r} are flat "
                                    f"[B, L, D] but the keys have {dots.groups}x fewer heads than the queries; give "
                                    f"the values in head layout (make_heads with the key/value head count)")
        writers.update((name, op) for name in op.outputs)


class ConfigaFormer(nn.Module):
    """A transformer built from op configs.

    `model_config` is {'blocks': [{'config': [op dicts], 'repeat': N}, ...]}, optionally with 'input_streams'
    and 'outputs' (the streams a caller reads; default ['x']). The forward pass takes a dict of named tensors
    and returns the dict of all streams: `model({'emb_ids': ids, 'attn_offset': offset})['x']`.
    """

    def __init__(self, model_config: Mapping[str, Any], input_streams: Optional[Mapping[str, Sequence]] = None,
                 verbose: bool = True, fuse_attention: bool = True, fuse_linears: bool = True,
                 source: Optional[str] = None) -> None:
        super().__init__()
        blocks, shapes, outputs = _check_structure(model_config, input_streams, source)
        self.input_shapes = dict(shapes)
        built, sections = [], []
        for b, block in enumerate(blocks):
            repeat = block.get("repeat", 1)
            lines = []
            for r in range(repeat):
                for i, spec in enumerate(block["config"]):
                    try:
                        op = _build_op(spec, shapes)
                    except OpError as err:
                        key = f", key {err.key!r}" if err.key else ""
                        where = f"blocks[{b}].config[{i}] (block #{b + 1}, op #{i + 1}, {spec.get('type')}){key}"
                        raise _fail(source, f"{where}: {err.message}") from None
                    op.location = f"blocks[{b}].config[{i}]" + (f" (repeat {r + 1} of {repeat})" if repeat > 1 else "")
                    built.append(op)
                    if r == 0:
                        lines.append(op.summary_line())
            sections.append(f"Block #{b + 1}, {repeat}x\n" + "\n".join(lines))
        missing = [o for o in outputs if o not in shapes]
        if missing:
            raise _fail(source, f"outputs: stream {missing[0]!r} is never written (streams: {', '.join(sorted(shapes))})")
        _tie_embeddings(built, source)
        _check_flat_values(built, source)
        self.ops = nn.ModuleList(built)
        self.outputs = list(outputs)
        self.stream_shapes = shapes
        self.linear_groups = linear_groups(built)
        self.plan = plan_steps(built, outputs, fuse_attention, self.linear_groups if fuse_linears else ())
        # Each group of sibling linears keeps one weight here (fused_linears.i.proj); checkpoints of either layout load.
        self.fused_linears = nn.ModuleList(step for step in self.plan if isinstance(step, FusedLinear))
        if self.linear_groups:
            self.register_load_state_dict_pre_hook(_match_linear_layout)
        self.config = {"blocks": copy.deepcopy(list(blocks)), "outputs": list(outputs),
                       "input_streams": {n: shape_to_config(s) for n, s in self.input_shapes.items()}}
        self._summary = "\n\n\n".join(sections)
        if verbose:
            print(self._summary)

    @classmethod
    def from_config(cls, config: Union[Mapping[str, Any], str, os.PathLike],
                    weights: Optional[Union[str, os.PathLike]] = None, **kwargs: Any) -> ConfigaFormer:
        """Build from an op-level config, a layer config, or a YAML/JSON file holding either; with `weights`, a
        state dict saved by torch.save, loaded without running any code from the file (weights_only)."""
        from .io import load_config
        from .layers import compile_layers, is_layer_config

        if weights is not None:
            model = cls.from_config(config, **kwargs)
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            return model
        source = None
        if isinstance(config, (str, os.PathLike)):
            source = str(config)
            config = load_config(config)
        if is_layer_config(config):
            try:
                config = compile_layers(config)
            except ConfigError as err:
                raise _fail(source, str(err)) from None
        return cls(config, source=source, **kwargs)

    def summary(self) -> str:
        """The text printed at build: each block once, one line per op with its streams and shapes."""
        return self._summary

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count; non_embedding leaves out token and position embedding tables."""
        embedding = sum(p.numel() for op in self.ops if isinstance(op, EMBEDDING_OPS) for p in op.parameters())
        return sum(p.numel() for p in self.parameters()) - (embedding if non_embedding else 0)

    def generate(self, ids: Tensor, max_new_tokens: int, temperature: float = 0.0, top_k: Optional[int] = None,
                 use_cache: bool = True, **kwargs: Any) -> Tensor:
        """`ids` with `max_new_tokens` tokens appended (greedy at temperature 0); see decode.generate."""
        from .decode import generate

        return generate(self, ids, max_new_tokens, temperature, top_k, use_cache, **kwargs)

    def step(self, ids: Tensor, cache: "DecodeCache", streams: Optional[Mapping[str, Tensor]] = None) -> Tensor:
        """Logits of the tokens after those the cache has seen (the prompt, then one token at a time)."""
        from .decode import step

        return step(self, ids, cache, streams)

    @property
    def fused_attention_count(self) -> int:
        return sum(isinstance(step, FusedAttention) for step in self.plan)

    def forward(self, streams: Mapping[str, Tensor], cache: Optional["DecodeCache"] = None) -> dict[str, Tensor]:
        """All streams, from the input ones. With a decoding `cache`, the inputs hold only the positions after those
        it has seen, and it is updated (see decode.py)."""
        missing = [name for name in self.input_shapes if name not in streams]
        if missing:
            raise ValueError(f"ConfigaFormer: input stream {missing[0]!r} is missing (expected {', '.join(self.input_shapes)})")
        streams = dict(streams)
        if cache is not None:
            from .decode import run_steps

            return run_steps(self, streams, cache)
        for step in self.plan:
            out = step(*[streams[name] for name in step.inputs])
            if len(step.outputs) == 1:
                streams[step.outputs[0]] = out
            else:
                streams.update(zip(step.outputs, out))
        return streams
