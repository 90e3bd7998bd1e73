"""A candidate: sampled params -> a model config that builds and is shape-checked, with its cheap metrics
(params, non-embedding params, FLOPs) and cheap constraints checked before any training time is spent."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

import torch

from configaformer import ConfigaFormer, ConfigError
from configaformer.registry import OpError, check_value

from .errors import TrialFailure
from .probes import count_flops
from .space import CHEAP_METRICS, INPUT_STREAM, TRAIN_KEYS, SearchSpace



@dataclass
class Candidate:
    params: dict[str, Any]
    model_config: dict[str, Any]
    train: dict[str, Any]
    model: ConfigaFormer
    metrics: dict[str, float]
    key: str


def config_key(model_config: Mapping, train: Mapping) -> str:
    """Identifies what a trial measures: two params that resolve to the same configs share a key."""
    canonical = json.dumps({"model": model_config, "train": train}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def violations(constraints: Mapping[str, Mapping[str, float]], metrics: Mapping[str, Any],
               only: Optional[Iterable[str]] = None) -> list[str]:
    """Readable violations ('params 2.1e+06 > max 2e+06') of the constraints on metrics that are known."""
    found = []
    for metric, bound in constraints.items():
        if (only is not None and metric not in only) or metrics.get(metric) is None:
            continue
        value = metrics[metric]
        if "max" in bound and value > bound["max"]:
            found.append(f"{metric} {value:.4g} > max {bound['max']:.4g}")
        if "min" in bound and value < bound["min"]:
            found.append(f"{metric} {value:.4g} < min {bound['min']:.4g}")
    return found


def constraint_values(constraints: Mapping[str, Mapping[str, float]], metrics: Mapping[str, Any]) -> dict[str, float]:
    """Optuna's convention, one value per bound ('params<=' ...), <= 0 when met; relative, so that bounds of
    any scale mix. An unmeasured metric counts as violated."""
    values = {}
    for metric, bound in sorted(constraints.items()):
        value = metrics.get(metric)
        for side, symbol in (("max", "<="), ("min", ">=")):
            if side in bound:
                excess = None if value is None else (value - bound[side] if side == "max" else bound[side] - value)
                values[f"{metric}{symbol}"] = 1.0 if excess is None else excess / max(abs(bound[side]), 1e-12)
    return values


def _check_train(train: Mapping[str, Any]) -> None:
    for key, value in train.items():
        try:
            check_value(key, TRAIN_KEYS[key], value)
        except OpError as err:
            raise TrialFailure("rejected", f"train.{key}: {err.message}") from None


def _build(model_config: dict, vocab_size: int, seed: int) -> ConfigaFormer:
    with torch.random.fork_rng(devices=[]):  # initial weights from the trial's seed alone, not from what ran before
        torch.manual_seed(seed)
        model = ConfigaFormer.from_config(model_config, verbose=False)
    if set(model.input_shapes) != {INPUT_STREAM}:
        raise ConfigError(f"input_streams: a searched model reads one stream, {INPUT_STREAM!r}; build offsets inside "
                          f"(attention_offset with offset: causal or alibi), got {', '.join(model.input_shapes)}")
    width = model.stream_shapes[model.outputs[0]][-1]
    if width != vocab_size:
        raise ConfigError(f"outputs: the logits stream {model.outputs[0]!r} has width {width}, expected the vocab size {vocab_size}")
    return model


def make_candidate(space: SearchSpace, params: Mapping[str, Any], vocab_size: int) -> Candidate:
    """Resolve, build and cheaply measure a candidate; raises TrialFailure('rejected' or 'constraint')."""
    model_config, train = space.resolve(params, vocab_size)
    key = config_key(model_config, train)  # failures carry it too: a repeat of a refused config is refused for free
    try:
        _check_train(train)
        model = _build(model_config, vocab_size, train["seed"])
    except ConfigError as err:
        raise TrialFailure("rejected", str(err), {"config_key": key}) from None
    except TrialFailure as failure:
        raise TrialFailure(failure.kind, failure.message, {"config_key": key}) from None
    probe_len = space.probes["seq_len"]
    metrics = {"params": model.num_params(), "nonemb_params": model.num_params(non_embedding=True)}
    metrics["flops"] = count_flops(model, space.probes["batch_size"], probe_len)
    over = violations(space.constraints, metrics, only=CHEAP_METRICS)
    if over:
        raise TrialFailure("constraint", "; ".join(over), dict(metrics, config_key=key))
    return Candidate(dict(params), model_config, train, model, metrics, key)
