"""Search spaces: a YAML file -> a validated `SearchSpace` that samples params and resolves them to configs.

Any value under `model` or `train` may be a distribution ({choice: [...]}, {int: [lo, hi], step: k},
{float: [lo, hi]}, {log: [lo, hi]}) or a reference `$name` to one declared under `params:`. A parameter may
carry a condition (`if: {position: rope}`: sampled only then, else null) or `per_layer: true` (one value per
repeat of `layers: {repeat: $depth, each: [...]}`). Sampling goes through an Optuna trial (define-by-run), so
the same code serves the search, the `validate` command and the tests.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from configaformer.registry import Key, positive, probability

from .choices import RUNTIMES, SAMPLERS, SCHEDULERS

KINDS = ("choice", "int", "float", "log")
DIST_KEYS = set(KINDS) | {"step", "if", "per_layer"}
SECTIONS = ("name", "data", "params", "model", "train", "probes", "objectives", "constraints", "search", "resources",
            "baselines")
BUILTIN_REFS = ("vocab_size", "seq_len")  # filled from the data and train sections
INPUT_STREAM = "emb_ids"  # the one input stream of a searched model: token ids


def _non_negative(value: Any) -> Optional[str]:
    return None if value >= 0 else "expected a number >= 0"


DATA_KEYS = {"source": Key("embedded", (str,), choices=("embedded", "text", "tokens")),
             "path": Key(None, (str, type(None))), "vocab_size": Key(None, (int, type(None))),
             "val_fraction": Key(0.1, (float,), check=lambda v: None if 0 < v < 1 else "expected a fraction in (0, 1)"),
             "max_bytes": Key(None, (int, type(None)))}
TRAIN_KEYS = {"tokens": Key(200_000, (int,), check=positive), "batch_size": Key(16, (int,), check=positive),
              "seq_len": Key(64, (int,), check=positive), "lr": Key(3e-3, (float,), check=positive),
              "warmup": Key(0.1, (float,), check=probability), "min_lr": Key(0.1, (float,), check=probability),
              "weight_decay": Key(0.1, (float,), check=_non_negative), "grad_clip": Key(1.0, (float,), check=_non_negative),
              "seed": Key(0, (int,)), "eval_tokens": Key(32_768, (int,), check=positive),
              "eval_seq_len": Key(None, (int, type(None)), check=lambda v: None if v is None or v > 0 else "expected a positive int"),
              "schedule": Key(None, (str, type(None)), choices=(None, "cosine", "wsd")), "decay": Key(0.2, (float,), check=probability),
              "target_tokens": Key(None, (int, type(None)), check=lambda v: None if v is None or v > 0 else "expected a positive int")}
EVAL_KEYS = ("eval_tokens", "eval_seq_len")  # what every trial scores: fixed for the whole space, never searched
PROBE_KEYS = {"batch_size": Key(1, (int,), check=positive), "seq_len": Key(None, (int, type(None))),
              "latency_repeats": Key(20, (int,), check=positive), "latency_warmup": Key(3, (int,), check=_non_negative),
              "memory": Key(True, (bool,)), "latency": Key(True, (bool,)),
              "decode": Key(False, (bool,)), "decode_context": Key(None, (int, type(None))),
              "target": Key(None, (str, type(None))), "threads": Key(1, (int,), check=positive),
              "runtime": Key("eager", (str,), choices=RUNTIMES)}
SEARCH_KEYS = {"trials": Key(24, (int,), check=positive), "sampler": Key("tpe", (str,), choices=SAMPLERS),
               "seed": Key(0, (int,)), "startup_trials": Key(None, (int, type(None))),
               "population_size": Key(None, (int, type(None))),
               "scheduler": Key("fifo", (str,), choices=SCHEDULERS), "min_tokens": Key(None, (int, type(None))),
               "reduction_factor": Key(3, (int,), check=lambda v: None if v >= 2 else "expected an int >= 2"),
               "confirm_seeds": Key(0, (int,), check=_non_negative), "draw_processes": Key(0, (int,), check=_non_negative),
               "max_tokens": Key(None, (int, type(None))), "curve_points": Key(None, (list, type(None)))}
CURVE_POINTS = [0.25, 0.5]  # with a target: the shares of the first rung measured on the way, for the predictor
RESOURCE_KEYS = {"cpus_per_trial": Key(1, (float,), check=positive), "gpus_per_trial": Key(0.0, (float,), check=_non_negative),
                 "concurrency": Key(None, (int, type(None)))}


@dataclass(frozen=True)
class Param:
    """One searched parameter."""

    name: str
    kind: str
    choices: tuple = ()
    low: float = 0
    high: float = 0
    step: Optional[float] = None
    condition: Mapping[str, tuple] = field(default_factory=dict)
    per_layer: bool = False

    def suggest(self, trial: Any, name: str) -> Any:
        """Draw a value from `distribution()` through an Optuna trial (or anything with its suggest_* methods)."""
        dist = self.distribution()
        if self.kind == "choice":
            return self.value_of(trial.suggest_categorical(name, list(dist.choices)))
        if self.kind == "int":
            return trial.suggest_int(name, dist.low, dist.high, step=dist.step)
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)

    def distribution(self) -> Any:
        """The Optuna distribution that `suggest` draws from (recorded with every trial)."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "choice":
            return CategoricalDistribution(self.labels())
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), step=int(self.step or 1))
        return FloatDistribution(self.low, self.high, log=self.kind == "log", step=self.step)

    def field(self) -> str:
        """Where the parameter is declared: params.NAME, or the path of an inline distribution (model.dim_model)."""
        return self.name if "." in self.name else f"params.{self.name}"

    def labels(self) -> list:
        """The choices as Optuna records them: scalars as they are, lists and mappings (which Optuna cannot
        store) as JSON text; all as JSON text in the unlikely case that a scalar string equals such a text."""
        scalar = lambda c: isinstance(c, (str, int, float, bool, type(None)))  # noqa: E731
        labels = [c if scalar(c) else json.dumps(c) for c in self.choices]
        if len(set(map(json.dumps, labels))) < len(labels):
            labels = [json.dumps(c) for c in self.choices]
        return labels

    def value_of(self, label: Any) -> Any:
        """The value a recorded label stands for (the inverse of `labels`); anything else as it is."""
        labels = self.labels() if self.kind == "choice" else []
        return copy.deepcopy(self.choices[labels.index(label)]) if label in labels else label

    def contains(self, value: Any) -> bool:
        """Whether `value` is one this parameter can draw."""
        if self.kind == "choice":
            return value in list(self.choices)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not self.low <= value <= self.high:
            return False
        return not self.step or abs((value - self.low) / self.step - round((value - self.low) / self.step)) < 1e-9

    def size(self) -> Optional[int]:
        if self.kind == "choice":
            return len(self.choices)
        if self.kind == "int":
            return (int(self.high) - int(self.low)) // int(self.step or 1) + 1
        if self.step:
            return int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        return None


@dataclass(frozen=True)
class Baseline:
    """A fixed config measured like any trial, to compare the front with: a value for each searched parameter, or
    a layer config of its own (`model`, with values for any searched training setting in `params`)."""

    name: str
    params: dict[str, Any]
    model: Optional[dict] = None


@dataclass
class SearchSpace:
    """A validated search space. `sample(trial)` -> params; `resolve(params)` -> (model config, train config)."""

    path: str
    name: str
    params: dict[str, Param]
    model: dict
    data: dict
    train: dict
    probes: dict
    objectives: dict[str, str]
    constraints: dict[str, dict[str, float]]
    search: dict
    resources: dict
    baselines: list[Baseline] = field(default_factory=list)

    def sample(self, trial: Any) -> dict[str, Any]:
        """Draw every active parameter; per-layer ones once per layer, named 'name[i]'."""
        values: dict[str, Any] = {}
        for param in self.params.values():
            if not param.per_layer and self._active(param, values):
                values[param.name] = param.suggest(trial, param.name)
        for i in range(self._depth(values)):
            for param in self.params.values():
                if param.per_layer and self._active(param, values):
                    values[f"{param.name}[{i}]"] = param.suggest(trial, f"{param.name}[{i}]")
        return values

    def values_of(self, recorded: Mapping[str, Any]) -> dict[str, Any]:
        """A trial's params as the study records them (choices by their labels) -> the values `sample` drew."""
        params = {name: self.params.get(name.split("[")[0]) for name in recorded}  # 'heads[2]': the per-layer heads
        return {name: label if params[name] is None else params[name].value_of(label) for name, label in recorded.items()}

    def _active(self, param: Param, values: Mapping[str, Any]) -> bool:
        return all(values.get(name) in allowed for name, allowed in param.condition.items())

    def _depth(self, values: Mapping[str, Any]) -> int:
        layers = self.model.get("layers")
        if isinstance(layers, Mapping):
            return int(_substitute(layers["repeat"], values, None))
        return 0

    def resolve(self, values: Mapping[str, Any], vocab_size: int, model: Optional[dict] = None) -> tuple[dict, dict]:
        """Params -> (model config, train config), with $refs substituted and per-layer units expanded; `model`
        (a baseline's own layer config) in place of the space's."""
        train = {k: _substitute(v, values, None) for k, v in self.train.items()}
        values = {**values, "vocab_size": vocab_size, "seq_len": train["seq_len"]}
        model = copy.deepcopy(self.model if model is None else model)
        layers = model.get("layers")
        if isinstance(layers, Mapping):
            depth = int(_substitute(layers["repeat"], values, None))
            model["layers"] = [_substitute(unit, values, i) for i in range(depth) for unit in layers["each"]]
        model = _substitute(model, values, None)
        if "layers" in model:  # a layer config: the data decides the vocabulary, the train section the length
            model.setdefault("vocab_size", vocab_size)
            model.setdefault("max_length", max(train["seq_len"], self.probes["seq_len"], self.probes["decode_context"],
                                               train["eval_seq_len"]))
        else:
            model.setdefault("input_streams", {INPUT_STREAM: ["B", "L_in"]})
        return model, train

    @property
    def target(self) -> Optional[int]:
        """train.target_tokens: the budget the user will train the winner for, or None."""
        return self.train["target_tokens"]

    def rungs(self) -> list[int]:
        """The token budgets a trial is measured at: under scheduler asha min_tokens, times reduction_factor at each
        rung while that leaves a factor's room below the full budget, then the full budget; under fifo only the full
        budget. The full budget is train.tokens, or with a target the ladder's top (search.max_tokens, or the target
        itself): the ladder then climbs from the brief budget (train.tokens) towards the user's budget."""
        full = self.search["max_tokens"] if self.target else self.train["tokens"]
        if self.search["scheduler"] != "asha":
            return [full]
        budgets, tokens, factor = [], self.search["min_tokens"], self.search["reduction_factor"]
        while tokens * factor <= full:  # a rung closer to the full budget than one factor would measure it twice
            budgets.append(tokens)
            tokens *= factor
        return budgets + [full]

    def curve_points(self) -> list[int]:
        """Budgets below the first rung where a trial's loss is measured on the way (for the predictor), not ranked."""
        first = self.rungs()[0]
        return [int(first * share) for share in self.search["curve_points"] or ()]

    def describe_scheduler(self) -> str:
        """The scheduler in a phrase, as the run and validate commands print it and the report shows it."""
        rungs = self.rungs()
        if len(rungs) == 1:
            return f"fifo (every config trains the full {rungs[0]:,} tokens)"
        return (f"asha (rungs at {' / '.join(f'{t:,}' for t in rungs)} tokens; a config goes on from a "
                f"rung once it ranks in the top 1/{self.search['reduction_factor']} of the results there)")

    def distributions(self) -> dict[str, Any]:
        """Each parameter's Optuna distribution, as its trials record it (a per-layer one once, for every layer)."""
        return {name: param.distribution() for name, param in self.params.items()}

    def size(self) -> Optional[int]:
        """The number of distinct configs when every parameter is discrete (per-layer ones at the largest depth)."""
        sizes = {name: p.size() for name, p in self.params.items()}
        if any(s is None for s in sizes.values()):
            return None
        depth = self._max_depth()
        total = 1
        for name, param in self.params.items():
            total *= sizes[name] ** (depth if param.per_layer else 1)
        return total

    def _max_depth(self) -> int:
        layers = self.model.get("layers")
        if not isinstance(layers, Mapping):
            return 0
        repeat = layers["repeat"]
        if isinstance(repeat, str) and repeat.startswith("$"):
            param = self.params[repeat[1:]]
            return int(param.high) if param.kind == "int" else int(max(param.choices))
        return int(repeat)


def _substitute(node: Any, values: Mapping[str, Any], layer: Optional[int]) -> Any:
    """Replace '$name' strings (per-layer ones as name[layer]) throughout a nested structure."""
    if isinstance(node, str) and node.startswith("$"):
        name = node[1:]
        if layer is not None and f"{name}[{layer}]" in values:
            return values[f"{name}[{layer}]"]
        return values.get(name)
    if isinstance(node, Mapping):
        return {k: _substitute(v, values, layer) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, values, layer) for v in node]
    return node


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space YAML file (space_loader.py); raises SpaceError with one line on any problem."""
    from .space_loader import load

    return load(path)
