"""Incremental decoding: a cache that carries what each op needs from earlier positions, so that a model run on a
few new tokens at a time gives the logits a full forward pass gives there.

Ops that mix positions keep their own state in the cache and take the position of the first new token: attention
keeps keys (after rope) and values, only the key/value heads under GQA; causal and ALiBi offsets take the rows of
the new positions; rope and learned positions start at it; a token shift keeps the last tokens it reads; a causal
gMLP keeps its normalised gating half. Every other op works token by token. An op that cannot decode this way
(down/up sampling, a cut along the sequence, anything that reads later positions) is refused by name up front.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Optional

import torch
from torch import Tensor

from .errors import ConfigError
from .ops.attention import AttentionOffset, MhaDots
from .ops.streams import MakeStream

if TYPE_CHECKING:
    from .builder import ConfigaFormer


@dataclass
class DecodeCache:
    """What a model has seen: `position` tokens so far, and each plan step's state (tensors it keeps)."""

    position: int = 0
    states: dict[int, dict[str, Tensor]] = field(default_factory=dict)

    def nbytes(self) -> int:
        """Bytes held by the cached tensors (keys, values, shifted tokens, gating history)."""
        return sum(t.numel() * t.element_size() for state in self.states.values() for t in state.values())


def decode_refusal(model: ConfigaFormer) -> Optional[str]:
    """Why the model cannot decode incrementally, naming the op and where it is; None when it can."""
    for op in model.ops:
        reason = op.decode_refusal()
        if reason is None and isinstance(op, MhaDots) and not _masked(model, op):
            reason = "has no causal offset (attention_offset) after it, so every position attends to later ones"
        if reason is not None:
            return f"{op.type_name} at {op.location} {reason}: it cannot decode one token at a time"
    return None


def _masked(model: ConfigaFormer, dots: MhaDots) -> bool:
    """Whether an attention_offset reads these dots (an offset stream is the caller's to make causal)."""
    return any(isinstance(op, AttentionOffset) and op.inputs[0] == dots.outputs[0] for op in model.ops)


def check_decodable(model: ConfigaFormer) -> None:
    """Raise ConfigError naming the first op that cannot decode incrementally."""
    reason = decode_refusal(model)
    if reason is not None:
        raise ConfigError(reason)


def token_stream(model: ConfigaFormer) -> str:
    """The input stream of token ids: the model's one input of shape [B, L]."""
    if "_token_stream" in model.__dict__:
        return model.__dict__["_token_stream"]
    names = [name for name, shape in model.input_shapes.items() if len(shape) == 2]
    if len(names) != 1:
        raise ConfigError(f"input_streams: decoding needs one token-id stream [B, L], found {names or 'none'}")
    model.__dict__["_token_stream"] = names[0]
    return names[0]


def _decode_plan(model: ConfigaFormer) -> list[tuple]:
    """The model's plan as (function, input names, output name or names, step index, takes state), made once per
    model: a decoding step is launch-bound, and each module call through nn.Module costs what a small op does.
    Stream copies (make_stream) become aliases (function None)."""
    plan = model.__dict__.get("_decode_calls")
    if plan is None:
        plan = []
        for index, step in enumerate(model.plan):
            decode = getattr(step, "decode", None)
            function = None if isinstance(step, MakeStream) else decode or step.forward
            outputs = step.outputs[0] if len(step.outputs) == 1 else tuple(step.outputs)
            plan.append((function, tuple(step.inputs), outputs, index, decode is not None))
        model.__dict__["_decode_calls"] = plan
    return plan


def run_steps(model: ConfigaFormer, streams: dict[str, Tensor], cache: DecodeCache) -> dict[str, Tensor]:
    """The plan over the new positions' streams, each op that mixes positions against its cached state."""
    start, states = cache.position, cache.states
    length = streams[token_stream(model)].shape[1]
    for function, inputs, outputs, index, stateful in _decode_plan(model):
        args = [streams[name] for name in inputs]
        if function is None:
            out = args[0]
        elif stateful:
            state = states.get(index)
            if state is None:
                state = states[index] = {}
            out = function(*args, state=state, start=start)
        else:
            out = function(*args)
        if isinstance(outputs, str):
            streams[outputs] = out
        else:
            streams.update(zip(outputs, out))
    cache.position = start + length
    return streams


@torch.no_grad()
def step(model: ConfigaFormer, ids: Tensor, cache: DecodeCache, streams: Optional[Mapping[str, Tensor]] = None) -> Tensor:
    """Logits ([B, L, V], the first output stream) of `ids`, the tokens after the `cache.position` already seen: the
    prompt first (prefill), then one token at a time. `streams`: any other input streams (offsets), over the whole
    context."""
    if cache.position == 0:
        check_decodable(model)
    return model({token_stream(model): ids, **(streams or {})}, cache=cache)[model.outputs[0]]


def _pick(logits: Tensor, temperature: float, top_k: Optional[int], generator: Optional[torch.Generator]) -> Tensor:
    """The next token of each row: the argmax at temperature 0, else a draw from the top_k of softmax(logits / T)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)


@torch.no_grad()
def generate(model: ConfigaFormer, ids: Tensor, max_new_tokens: int, temperature: float = 0.0,
             top_k: Optional[int] = None, use_cache: bool = True, streams: Optional[Mapping[str, Tensor]] = None,
             generator: Optional[torch.Generator] = None) -> Tensor:
    """`ids` ([B, L]) with `max_new_tokens` tokens appended, each from the logits at the last position: greedy at
    temperature 0. With the cache, the prompt runs once and each new token alone; without it, every step runs the
    whole sequence again (the reference the cached path is tested against)."""
    if temperature < 0 or max_new_tokens < 0:
        raise ValueError("generate: temperature and max_new_tokens must be >= 0")
    was_training = model.training
    model.eval()
    try:
        cache = DecodeCache() if use_cache else None
        new = ids
        for _ in range(max_new_tokens):
            if cache is not None:
                logits = step(model, new, cache, streams)
            else:
                logits = model({token_stream(model): ids, **(streams or {})})[model.outputs[0]]
            new = _pick(logits[:, -1], temperature, top_k, generator)
            ids = torch.cat([ids, new], dim=1)
    finally:
        model.train(was_training)
    return ids


def analytic_kv_bytes(layers: int, kv_heads: int, head_dim: int, context: int, batch: int = 1,
                      dtype: torch.dtype = torch.float32) -> int:
    """Keys and values of every attention layer: 2 x layers x kv_heads x head_dim x context x batch x dtype bytes."""
    return 2 * layers * kv_heads * head_dim * context * batch * torch.empty((), dtype=dtype).element_size()

