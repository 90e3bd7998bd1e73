"""The layer config, compiled to op-level blocks so that both APIs share one engine.

    {'dim_model': 768, 'vocab_size': 50257, 'dim_rope': 16, 'classifiers': [50257, 6], 'input_emb_size': 512,
     'layers': [{'type': 'Attention', 'heads': 12}, {'type': 'FFN', 'ff_mult': 4}, ...]}

Model-level keys (norm_type, norm_placement, dropout, bias, causal, dim_rope) are defaults that each layer may
override. Consecutive identical layers become one block with a repeat count, so the summary stays short.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from .errors import ConfigError
from .ops.dense import check_activation
from .ops.norms import NORM_TYPES
from .registry import Key, OpError, positive, probability, resolve_keys

POSITIONS = ("rope", "alibi", "learned", "none")
PLACEMENTS = ("pre", "post", "sandwich")
_POSITIVE_OR_NONE = Key(None, (int, type(None)), check=lambda v: None if v is None or v > 0 else "expected a positive int")


def _classifiers(value) -> str | None:
    ok = value and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in value)
    return None if ok else "expected a non-empty list of positive class counts"


MODEL_KEYS = {
    "dim_model": Key(types=(int,), check=positive),
    "vocab_size": Key(types=(int,), check=positive),
    "layers": Key(types=(list,), check=lambda v: None if v else "expected a non-empty list of layers"),
    "classifiers": Key(None, (list, type(None)), check=lambda v: None if v is None else _classifiers(v)),
    "input_emb_size": _POSITIVE_OR_NONE,
    "dim_rope": _POSITIVE_OR_NONE,
    "max_length": Key(2048, (int,), check=positive),
    "position": Key("rope", (str,), choices=POSITIONS),
    "causal": Key(True, (bool,)),
    "norm_type": Key("layer_norm", (str,), choices=NORM_TYPES),
    "norm_placement": Key("pre", (str,), choices=PLACEMENTS),
    "dropout": Key(0.0, (float,), check=probability),
    "bias": Key(True, (bool,)),
    "head_bias": Key(None, (bool, type(None))),  # the logits' bias; default: as `bias`
    "tie_embedding": Key(False, (bool,)),  # the first classifier's weight is the token embedding table
    "scaled_init": Key(False, (bool,)),  # residual output projections start at std 0.02 / sqrt(residual layers)
}
# Layer keys whose default is the model-level value of the same name.
INHERITED = ("norm_type", "norm_placement", "dropout", "bias", "causal", "dim_rope")
COMMON_KEYS = {"type": Key(types=(str,)), "token_shift": Key(False, (bool,)),
               **{name: MODEL_KEYS[name] for name in INHERITED}}
LAYER_KEYS = {
    "Attention": {**COMMON_KEYS, "heads": Key(types=(int,), check=positive), "kv_heads": _POSITIVE_OR_NONE,
                  "dim_head": _POSITIVE_OR_NONE, "qk_norm": Key(False, (bool,)), "gated": Key(False, (bool,))},
    "FFN": {**COMMON_KEYS, "ff_mult": Key(4.0, (float,), check=positive), "dim_ff": _POSITIVE_OR_NONE,
            "activation": Key("gelu", (str, list), check=check_activation), "matched_glu": Key(False, (bool,))},
    "gMLP": {**COMMON_KEYS, "ff_mult": Key(4.0, (float,), check=positive), "dim_ff": _POSITIVE_OR_NONE,
             "activation": Key("gelu", (str, list), check=check_activation), "matched_glu": Key(False, (bool,))},
}


def is_layer_config(config: Mapping[str, Any]) -> bool:
    return isinstance(config, Mapping) and "layers" in config


def _resolve(keys: Mapping[str, Key], given: Any, path: str) -> dict[str, Any]:
    if not isinstance(given, Mapping):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {given!r:.60}")
    try:
        return resolve_keys(keys, given, ignore=())
    except OpError as err:
        raise ConfigError(f"{path + '.' if path else ''}{err.key}: {err.message}") from None


def _norm(kind: str, stream: str = "x") -> dict:
    return {"type": "norm", "norm_type": kind, "input_name": stream, "output_name": stream}


def _glu_parts(activation) -> int:
    return 1 if isinstance(activation, str) else len(activation)


def _residual(layer: dict, dim_model: int, body: list[dict]) -> list[dict]:
    """x -> x + body(x) with the layer's norm placement: pre norm(x), post norm(x + .), or sandwich (both)."""
    placement, kind = layer["norm_placement"], layer["norm_type"]
    ops = [{"type": "make_stream", "output_name": "residual"}]
    if placement in ("pre", "sandwich"):
        ops.append(_norm(kind))
    if layer["token_shift"]:
        ops.append({"type": "shift", "instructions": [{"features": [0, dim_model // 2], "relative_pos": -1}]})
    ops += body
    if layer["dropout"]:
        ops.append({"type": "dropout", "prob": layer["dropout"]})
    if placement == "sandwich":
        ops.append(_norm(kind))
    ops.append({"type": "merge_streams", "input_name_1": "residual", "merge_type": "add"})
    if placement == "post":
        ops.append(_norm(kind))
    return ops


def _attention(layer: dict, model: dict, path: str) -> list[dict]:
    dim, heads = model["dim_model"], layer["heads"]
    kv_heads = layer["kv_heads"] or heads
    if heads % kv_heads:
        raise ConfigError(f"{path}.kv_heads: {heads} heads are not a multiple of {kv_heads} key/value heads")
    if layer["dim_head"] is None and dim % heads:
        raise ConfigError(f"{path}.heads: dim_model {dim} is not divisible by {heads} heads (or set dim_head)")
    dim_head = layer["dim_head"] or dim // heads
    bias = layer["bias"]
    body = [{"type": "make_stream", "output_name": "attn_in"}] if layer["gated"] else []
    body += [
        {"type": "linear", "output_name": "queries", "output_dim": heads * dim_head, "bias": bias},
        {"type": "linear", "output_name": "keys", "output_dim": kv_heads * dim_head, "bias": bias},
        {"type": "linear", "output_name": "values", "output_dim": kv_heads * dim_head, "bias": bias},
        {"type": "make_heads", "input_name": "queries", "output_name": "queries", "num_heads": heads},
        {"type": "make_heads", "input_name": "keys", "output_name": "keys", "num_heads": kv_heads},
        {"type": "make_heads", "input_name": "values", "output_name": "values", "num_heads": kv_heads},
    ]
    if layer["qk_norm"]:
        body += [_norm(layer["norm_type"], "queries"), _norm(layer["norm_type"], "keys")]
    if model["position"] == "rope":
        rotate = layer["dim_rope"] or max(2, dim_head // 2 // 2 * 2)
        if rotate > dim_head or rotate % 2:
            raise ConfigError(f"{path}.dim_rope: expected an even number of features up to the head dim {dim_head}, got {rotate}")
        body += [{"type": "rope", "input_name": s, "output_name": s, "rotate_dim": rotate, "max_length": model["max_length"]}
                 for s in ("queries", "keys")]
    body.append({"type": "mha_dots", "input_name_queries": "queries", "input_name_keys": "keys"})
    if model["position"] == "alibi":
        body.append({"type": "attention_offset", "offset": "alibi" if layer["causal"] else "alibi_bidirectional"})
    elif layer["causal"]:
        body.append({"type": "attention_offset", "offset": "causal"})
    body += [{"type": "mha_sum", "input_name_values": "values"}, {"type": "merge_heads"}]
    if layer["gated"]:
        body += [{"type": "linear", "input_name": "attn_in", "output_name": "gate", "output_dim": heads * dim_head, "bias": bias},
                 {"type": "activation", "input_name": "gate", "output_name": "gate", "activation_function": "sigmoid"},
                 {"type": "merge_streams", "input_name_1": "gate", "merge_type": "multiply"}]
    body.append(_out_projection(model, dim, bias))
    return _residual(layer, dim, body)


def _out_projection(model: dict, dim: int, bias: bool) -> dict:
    """A residual branch's last linear; GPT-2's scaled init shrinks it with the number of residual branches."""
    op = {"type": "linear", "output_dim": dim, "bias": bias}
    if model["scaled_init"]:
        op["init_std"] = 0.02 / len(model["layers"]) ** 0.5
    return op


def _feed_forward(layer: dict, model: dict, path: str) -> list[dict]:
    dim = model["dim_model"]
    hidden = layer["dim_ff"] or int(round(layer["ff_mult"] * dim))
    parts = _glu_parts(layer["activation"])
    if layer["matched_glu"] and parts > 1:  # LLaMA's convention: a 2-part GLU then has the parameters of a plain FFN
        hidden = int(round(hidden * 2 / (parts + 1)))
    gmlp = layer["type"] == "gMLP"
    up = hidden * parts * (2 if gmlp else 1)
    body = [{"type": "linear", "output_dim": up, "bias": layer["bias"]},
            {"type": "activation", "activation_function": layer["activation"]}]
    if gmlp:
        body.append({"type": "spatial_gating", "max_length": model["max_length"], "causal": layer["causal"],
                     "norm_type": layer["norm_type"]})
    body.append(_out_projection(model, dim, layer["bias"]))
    return _residual(layer, dim, body)


def _embedding(model: dict) -> list[dict]:
    emb_size = model["input_emb_size"] or model["dim_model"]
    ops = [{"type": "embedding", "num_classes": model["vocab_size"], "output_dim": emb_size}]
    if emb_size != model["dim_model"]:
        ops.append({"type": "linear", "output_dim": model["dim_model"], "bias": model["bias"]})
    if model["position"] == "learned":
        ops.append({"type": "pos_embedding", "max_length": model["max_length"]})
    if model["dropout"]:
        ops.append({"type": "dropout", "prob": model["dropout"]})
    return ops


def _group_repeats(units: list[list[dict]], max_period: int = 4) -> list[dict]:
    """Consecutive runs of an identical unit of 1-4 layers (Attention + FFN, say) become one repeated block."""
    blocks, i = [], 0
    while i < len(units):
        period, count = 1, 1
        for p in range(1, max_period + 1):
            n = 1
            while i + (n + 1) * p <= len(units) and units[i + n * p : i + (n + 1) * p] == units[i : i + p]:
                n += 1
            if n > 1 and p * n > period * count:
                period, count = p, n
        blocks.append({"config": [op for unit in units[i : i + period] for op in unit], "repeat": count})
        i += period * count
    return blocks


def compile_layers(config: Mapping[str, Any]) -> dict[str, Any]:
    """A layer config -> the op-level config {'blocks', 'input_streams', 'outputs'} that builds the same model.

    Raises ConfigError naming the field path ('layers[3].heads: ...') for anything it cannot compile.
    """
    model = _resolve(MODEL_KEYS, config, "")
    units = []
    for i, given in enumerate(model["layers"]):
        path = f"layers[{i}]"
        kind = given.get("type") if isinstance(given, Mapping) else None
        if kind not in LAYER_KEYS:
            raise ConfigError(f"{path}.type: expected one of {', '.join(LAYER_KEYS)}, got {kind!r}")
        keys = {name: dataclasses.replace(key, default=model[name]) if name in INHERITED else key
                for name, key in LAYER_KEYS[kind].items()}
        layer = _resolve(keys, given, path)
        units.append(_attention(layer, model, path) if kind == "Attention" else _feed_forward(layer, model, path))
    blocks = [{"config": _embedding(model), "repeat": 1}] + _group_repeats(units)
    classifiers = model["classifiers"] or [model["vocab_size"]]
    head = [_norm(model["norm_type"])] if model["norm_placement"] in ("pre", "sandwich") else []
    head_bias = model["bias"] if model["head_bias"] is None else model["head_bias"]
    head += [{"type": "linear", "output_name": f"logits_{i}", "output_dim": n, "bias": head_bias} for i, n in enumerate(classifiers)]
    if model["tie_embedding"]:
        if (model["input_emb_size"] or model["dim_model"]) != model["dim_model"]:
            raise ConfigError(f"tie_embedding: the embedding is {model['input_emb_size']} wide (input_emb_size) and the "
                              f"logits read {model['dim_model']} (dim_model): a shared table needs one width")
        if classifiers[0] != model["vocab_size"]:
            raise ConfigError(f"tie_embedding: the first classifier has {classifiers[0]} classes, the embedding "
                              f"{model['vocab_size']} tokens: a shared table needs one vocabulary")
        head[-len(classifiers)]["tie_embedding"] = True
    blocks.append({"config": head, "repeat": 1})
    return {"blocks": blocks, "input_streams": {"emb_ids": ["B", "L_in"]},
            "outputs": [f"logits_{i}" for i in range(len(classifiers))]}
