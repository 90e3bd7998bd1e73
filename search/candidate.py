"""A candidate: sampled params -> a model config that builds and is shape-checked, with its cheap metrics
(params, non-embedding params, FLOPs) and cheap constraints checked before any training time is spent."""

from __future__ import annotations

import functools
import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

import torch

from configaformer import ConfigaFormer, ConfigError, find_future_leak
from configaformer.decode import check_decodable
from configaformer.registry import OpError, check_value

from .errors import SpaceError, TrialFailure, is_out_of_memory
from .probes.decode import DecodeProbe
from .probes.flops import count_flops
from .metrics import CHEAP_METRICS
from .space import INPUT_STREAM, TRAIN_KEYS, SearchSpace



CAUSALITY_LENGTH = 16  # positions the causality check perturbs, where the model runs at that length


@dataclass
class Candidate:
    params: dict[str, Any]
    model_config: dict[str, Any]
    train: dict[str, Any]
    metrics: dict[str, float]  # the cheap ones, known before any weight exists
    key: str
    model: Optional[ConfigaFormer] = None  # the real model, once `build` has made it


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


def _check_rungs(rungs: list[int], train: Mapping[str, Any]) -> None:
    """Each rung must add steps, the first at least two (a warm-up and a decay step)."""
    from .train import budget_steps

    steps = budget_steps(rungs, train)
    if len(rungs) > 1 and (steps[0] < 2 or any(a >= b for a, b in zip(steps, steps[1:]))):
        raise TrialFailure("rejected", f"search.min_tokens: the rungs of {', '.join(f'{t:,}' for t in rungs)} tokens make "
                                       f"{steps} steps of {train['batch_size']} x {train['seq_len']} tokens; expected at "
                                       f"least 2 steps at the first, and more at each")


def _check_model(model: ConfigaFormer, vocab_size: int) -> None:
    if set(model.input_shapes) != {INPUT_STREAM}:
        raise ConfigError(f"input_streams: a searched model reads one stream, {INPUT_STREAM!r}; build offsets inside "
                          f"(attention_offset with offset: causal or alibi), got {', '.join(model.input_shapes)}")
    width = model.stream_shapes[model.outputs[0]][-1]
    if width != vocab_size:
        raise ConfigError(f"outputs: the logits stream {model.outputs[0]!r} has width {width}, expected the vocab size {vocab_size}")


def _check_length(model: ConfigaFormer, length: int) -> None:
    """The model must run at the training length and at the validation windows' length (on meta: no work)."""
    try:
        model({INPUT_STREAM: torch.zeros(1, length, dtype=torch.long, device="meta")})
    except (ValueError, RuntimeError, IndexError) as err:
        raise ConfigError(f"the model cannot run at {length} positions, which training or the validation windows "
                          f"need: {str(err).splitlines()[0]}") from None


class _NoInitOnMeta(torch.overrides.TorchFunctionMode):
    """torch.nn.init's functions skipped for meta tensors: they fill no values there, yet cost most of a meta build
    (each runs through PyTorch's Python reference implementation)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init":
            tensor = args[0] if args else kwargs.get("tensor")
            if getattr(tensor, "is_meta", False):
                return tensor
        return func(*args, **kwargs)


@functools.lru_cache(maxsize=4096)
def _meta_metrics(model_json: str, vocab_size: int, length: Optional[int], probe: Optional[tuple[int, int]],
                  decodes: bool = False) -> tuple:
    """Params (and FLOPs at `probe`) of a model built on the meta device, checked to run at `length` (and to decode
    incrementally, when a serving probe will); cached by the config, since a search meets one architecture again
    with other training settings. Raises ConfigError."""
    with torch.device("meta"), _NoInitOnMeta():
        model = ConfigaFormer.from_config(json.loads(model_json), verbose=False)
    _check_model(model, vocab_size)
    if decodes:
        check_decodable(model)
    if length is not None:
        _check_length(model, length)
    metrics = {"params": model.num_params(), "nonemb_params": model.num_params(non_embedding=True)}
    if probe is not None:
        metrics["flops"] = count_flops(model, *probe)
    return tuple(metrics.items())


def resolve(space: SearchSpace, params: Mapping[str, Any], vocab_size: int,
            model: Optional[dict] = None) -> tuple[dict, dict, str]:
    """Params (and a baseline's own layer config, if any) -> (model config, train config, config key)."""
    model_config, train = space.resolve(params, vocab_size, model)
    return model_config, train, config_key(model_config, train)


def _needs_flops(space: SearchSpace) -> bool:
    """Whether the driver's quick screen counts FLOPs: a constraint on them, or on a timing the screen predicts."""
    from .timing_screen import TIMED

    return any(name == "flops" or name in TIMED for name in space.constraints)


def screen(space: SearchSpace, params: Mapping[str, Any], vocab_size: int, quick: bool = False,
           resolved: Optional[tuple[dict, dict, str]] = None) -> Candidate:
    """Resolve params and measure the cheap metrics on a model built on the meta device (no weight is allocated,
    so refusing a huge candidate costs nothing); raises TrialFailure('rejected' or 'constraint'). `quick` (the
    driver's screen, before a trial is handed out) leaves out the trace that counts FLOPs, unless a constraint needs
    them, and the run at the longest length: the trial does both."""
    model_config, train, key = resolved or resolve(space, params, vocab_size)
    probe = (space.probes["batch_size"], space.probes["seq_len"])
    length = None if quick else max(train["seq_len"], train["eval_seq_len"])
    try:
        _check_train(train)
        _check_rungs(space.rungs(), train)
        metrics = dict(_meta_metrics(json.dumps(model_config, sort_keys=True), vocab_size, length,
                                     probe if not quick or _needs_flops(space) else None,
                                     DecodeProbe().enabled(space)))
    except ConfigError as err:
        raise TrialFailure("rejected", str(err), {"config_key": key}) from None
    except TrialFailure as failure:
        raise TrialFailure(failure.kind, failure.message, {"config_key": key}) from None
    over = violations(space.constraints, metrics, only=CHEAP_METRICS)
    if over:
        raise TrialFailure("constraint", "; ".join(over), dict(metrics, config_key=key))
    return Candidate(dict(params), model_config, train, metrics, key)


def build(candidate: Candidate, check_causality: bool = True) -> ConfigaFormer:
    """The real model, its weights drawn from the trial's seed alone; raises TrialFailure('leaks_future') for a
    model whose outputs read later positions, which a next-token loss would reward (unless told that its config
    passed that check already)."""
    with torch.random.fork_rng(devices=[]):  # initial weights from the trial's seed alone, not from what ran before
        torch.manual_seed(candidate.train["seed"])
        try:
            model = ConfigaFormer.from_config(candidate.model_config, verbose=False)
        except RuntimeError as err:
            if not is_out_of_memory(err):
                raise
            raise TrialFailure("oom", f"building the model: {str(err).splitlines()[0]}",
                               dict(candidate.metrics, config_key=candidate.key)) from None
    if check_causality:
        _check_causal(model, candidate)
    candidate.model = model
    return model


def _check_causal(model: ConfigaFormer, candidate: Candidate) -> None:
    seq_len = candidate.train["seq_len"]
    try:
        leak = find_future_leak(model, length=min(CAUSALITY_LENGTH, seq_len))
    except (ValueError, RuntimeError):  # a stride that does not divide the short length: check at the trained one
        leak = find_future_leak(model, length=seq_len)
    if leak is not None:
        raise TrialFailure("leaks_future", f"{leak}: a next-token loss would reward reading ahead",
                           dict(candidate.metrics, config_key=candidate.key))


def make_candidate(space: SearchSpace, params: Mapping[str, Any], vocab_size: int) -> Candidate:
    """Screen, then build the real model; raises TrialFailure('rejected', 'constraint' or 'leaks_future')."""
    candidate = screen(space, params, vocab_size)
    build(candidate)
    return candidate


PREFLIGHT_DRAWS = 64  # random draws tried before a space counts as one that builds nothing


def check_buildable(space: SearchSpace, vocab_size: int, draws: int = PREFLIGHT_DRAWS, seed: int = 0) -> None:
    """Refuse a space none of whose random draws passes the cheap screen (a misspelt layer key, say), before any
    trial or run folder exists; stops at the first draw that passes. Raises SpaceError naming the commonest reason."""
    from .driver.samplers import random_draws

    study = random_draws(seed)
    failures: Counter = Counter()
    for _ in range(draws if space.size() is None else min(draws, space.size())):
        try:
            screen(space, space.sample(study.ask()), vocab_size, quick=True)
            return
        except TrialFailure as failure:
            failures[(failure.kind, failure.message)] += 1
    (kind, message), count = failures.most_common(1)[0]
    raise SpaceError(f"{space.path}: model: none of {sum(failures.values())} sampled candidates builds and meets the "
                     f"cheap constraints; {count} were refused ({kind}) with: {message}")
