"""A search space's YAML file read and validated into a `SearchSpace` (space.py): every problem is a SpaceError of one
line naming the file, the field path, what was found and what was expected."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

from configaformer.io import read_structured
from configaformer.registry import Key, OpError, check_value, resolve_keys

from .errors import SpaceError
from .metrics import METRICS, TARGET
from .space import (BUILTIN_REFS, CURVE_POINTS, DATA_KEYS, DIST_KEYS, EVAL_KEYS, KINDS, PROBE_KEYS, RESOURCE_KEYS,
                    SEARCH_KEYS, SECTIONS, TRAIN_KEYS, Baseline, Param, SearchSpace)

_EXPONENT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _coerce_numbers(node: Any) -> Any:
    """YAML 1.1 reads '3e-3' and '2e6' as strings: read such exponent forms as numbers."""
    if isinstance(node, str) and _EXPONENT_RE.match(node):
        number = float(node)
        return int(number) if number.is_integer() and number >= 1 else number
    if isinstance(node, Mapping):
        return {k: _coerce_numbers(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_coerce_numbers(v) for v in node]
    return node


def _label(param: Param, value: Any) -> Any:
    """A value as Optuna records it for its parameter (a choice's label); a value that is not a choice as it is."""
    if param.kind == "choice" and value in list(param.choices):
        return param.labels()[list(param.choices).index(value)]
    return value


def _is_distribution(node: Any) -> bool:
    return isinstance(node, Mapping) and bool(set(node) & set(KINDS)) and set(node) <= DIST_KEYS


class _Loader:
    """Validates one space file; every error is a SpaceError naming the file and the field path."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, where: str, message: str) -> SpaceError:
        return SpaceError(f"{self.path}: {where}: {message}")

    def section(self, raw: Mapping, name: str, keys: Mapping[str, Key]) -> dict:
        given = raw.get(name) or {}
        if not isinstance(given, Mapping):
            raise self.fail(name, f"expected a mapping, got {given!r:.60}")
        try:
            return resolve_keys(keys, given, ignore=())
        except OpError as err:
            raise self.fail(f"{name}.{err.key}", err.message) from None

    def param(self, where: str, name: str, spec: Any) -> Param:
        if not _is_distribution(spec):
            raise self.fail(where, f"expected a distribution such as {{choice: [...]}}, {{int: [lo, hi]}}, {{float: [lo, hi]}} or {{log: [lo, hi]}}, got {spec!r:.60}")
        kinds = [k for k in KINDS if k in spec]
        if len(kinds) != 1:
            raise self.fail(where, f"expected exactly one of {', '.join(KINDS)}, got {', '.join(kinds)}")
        kind, bounds = kinds[0], spec[kinds[0]]
        condition = spec.get("if") or {}
        if not isinstance(condition, Mapping):
            raise self.fail(f"{where}.if", f"expected a mapping such as {{position: rope}}, got {condition!r:.60}")
        condition = {k: tuple(v) if isinstance(v, list) else (v,) for k, v in condition.items()}
        per_layer = spec.get("per_layer", False)
        if not isinstance(per_layer, bool):
            raise self.fail(f"{where}.per_layer", f"expected true or false, got {per_layer!r}")
        if kind == "choice":
            if not isinstance(bounds, list) or not bounds:
                raise self.fail(f"{where}.choice", f"expected a non-empty list, got {bounds!r:.60}")
            return Param(name, kind, choices=tuple(bounds), condition=condition, per_layer=per_layer)
        numeric = all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds) if isinstance(bounds, list) else False
        if not numeric or len(bounds) != 2 or not bounds[0] < bounds[1]:
            raise self.fail(f"{where}.{kind}", f"expected [low, high] with low < high, got {bounds!r:.60}")
        if kind == "int" and not all(isinstance(b, int) for b in bounds):
            raise self.fail(f"{where}.int", f"expected integer bounds, got {bounds!r}")
        if kind == "log" and bounds[0] <= 0:
            raise self.fail(f"{where}.log", f"expected positive bounds for a log scale, got {bounds!r}")
        step = spec.get("step")
        if step is not None and (not isinstance(step, (int, float)) or step <= 0 or kind == "log"):
            raise self.fail(f"{where}.step", f"expected a positive number (and no step on a log scale), got {step!r}")
        return Param(name, kind, low=bounds[0], high=bounds[1], step=step, condition=condition, per_layer=per_layer)

    def longest(self, value: Any, params: Mapping[str, Param]) -> Any:
        """The largest value a train key can take: itself, or the top of the parameter it refers to."""
        if not (isinstance(value, str) and value.startswith("$")) or value[1:] not in params:
            return value
        param = params[value[1:]]
        if param.kind == "choice" and not all(isinstance(c, int) and not isinstance(c, bool) for c in param.choices):
            raise self.fail(param.field(), f"expected integer choices for a sequence length, got {list(param.choices)!r:.60}")
        return int(param.high) if param.kind != "choice" else max(param.choices)

    def lift_inline(self, node: Any, where: str, params: dict[str, Param]) -> Any:
        """Inline distributions become params named by their field path; returns the node with $refs."""
        if _is_distribution(node):
            params[where] = self.param(where, where, node)
            return f"${where}"
        if isinstance(node, Mapping):
            return {k: self.lift_inline(v, f"{where}.{k}", params) for k, v in node.items()}
        if isinstance(node, list):
            return [self.lift_inline(v, f"{where}[{i}]", params) for i, v in enumerate(node)]
        return node

    def check_refs(self, node: Any, where: str, params: Mapping[str, Param], used: set) -> None:
        if isinstance(node, str) and node.startswith("$"):
            if node[1:] not in params and node[1:] not in BUILTIN_REFS:
                raise self.fail(where, f"reference {node} names no parameter (declared: {', '.join(sorted(params)) or 'none'})")
            used.add(node[1:])
        elif isinstance(node, Mapping):
            for k, v in node.items():
                self.check_refs(v, f"{where}.{k}", params, used)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                self.check_refs(v, f"{where}[{i}]", params, used)

    def check_fidelity(self, train: dict, search: dict) -> None:
        """The schedule and the rungs of a multi-fidelity search (scheduler asha), which measures each trial at
        several budgets on one run: that takes a warmup-stable-decay schedule and a fixed token budget."""
        target = train["target_tokens"]
        if target is not None:
            self.check_ladder(train, search)
        elif search["max_tokens"] is not None or search["curve_points"]:
            raise self.fail("search.max_tokens" if search["max_tokens"] is not None else "search.curve_points",
                            "only a search with train.target_tokens climbs a ladder past train.tokens")
        asha = search["scheduler"] == "asha"
        if train["schedule"] is None:
            train["schedule"] = "wsd" if asha else "cosine"
        if asha and train["schedule"] != "wsd":
            raise self.fail("train.schedule", "search.scheduler asha measures each trial at several budgets on one run, "
                                              "which needs schedule wsd (a short decay branched off a stable rate)")
        if train["schedule"] == "wsd" and isinstance(train["warmup"], float) and isinstance(train["decay"], float) \
                and train["warmup"] + train["decay"] > 1:
            raise self.fail("train.decay", f"warmup {train['warmup']:g} + decay {train['decay']:g} exceed the whole budget")
        if not asha:
            if search["min_tokens"] is not None:
                raise self.fail("search.min_tokens", "only a multi-fidelity search (scheduler: asha) has rungs")
            return
        tokens = train["tokens"]
        if not isinstance(tokens, int):
            raise self.fail("train.tokens", "must be fixed under search.scheduler asha: the rungs divide it")
        if target is not None:
            return
        factor = search["reduction_factor"]
        if search["min_tokens"] is None:
            search["min_tokens"] = tokens // factor ** 2  # three rungs: N, 3N, 9N (with the default factor)
        if not 0 < search["min_tokens"] < tokens:
            raise self.fail("search.min_tokens", f"expected a positive count under train.tokens ({tokens:,}), got {search['min_tokens']}")

    def check_ladder(self, train: dict, search: dict) -> None:
        """A target budget climbs a ladder of rungs from the brief budget (train.tokens) towards it: successive halving
        up to search.max_tokens (default the target), with curve points measured below the first rung."""
        target, tokens = train["target_tokens"], train["tokens"]
        if not isinstance(tokens, int):
            raise self.fail("train.tokens", "must be fixed with a target_tokens: the ladder climbs from it")
        if target <= tokens:
            raise self.fail("train.target_tokens", f"expected a budget above train.tokens ({tokens:,}), got {target:,}")
        search["scheduler"] = "asha"
        if search["min_tokens"] is None:
            search["min_tokens"] = tokens
        if search["max_tokens"] is None:
            search["max_tokens"] = target
        if not tokens <= search["max_tokens"] <= target:
            raise self.fail("search.max_tokens", f"expected the ladder's top between train.tokens ({tokens:,}) and "
                                                 f"train.target_tokens ({target:,}), got {search['max_tokens']:,}")
        if not search["min_tokens"] <= tokens:
            raise self.fail("search.min_tokens", f"expected the first rung at or below train.tokens ({tokens:,})")
        if search["curve_points"] is None:
            search["curve_points"] = list(CURVE_POINTS)
        if not all(isinstance(p, (int, float)) and 0 < p < 1 for p in search["curve_points"]):
            raise self.fail("search.curve_points", f"expected shares of the first rung between 0 and 1, got {search['curve_points']}")

    def baselines(self, raw: Any, space: SearchSpace) -> list[Baseline]:
        """The `baselines:` list: each a name with a value for every searched parameter it uses (each within its
        distribution, all of them drawn as a fixed trial would be), or a layer config of its own."""
        from optuna.trial import FixedTrial

        params = space.params
        if raw is None:
            return []
        if not isinstance(raw, list):
            raise self.fail("baselines", f"expected a list of {{name: ..., params: {{...}}}} or {{name: ..., model: {{...}}}}, got {raw!r:.60}")
        found: list[Baseline] = []
        for i, entry in enumerate(raw):
            where = f"baselines[{i}]"
            if not isinstance(entry, Mapping) or set(entry) - {"name", "params", "model"}:
                raise self.fail(where, f"expected name, params and/or model, got {entry!r:.60}")
            name = entry.get("name")
            if not isinstance(name, str) or not name.replace("-", "_").isidentifier() or name in [b.name for b in found]:
                raise self.fail(f"{where}.name", f"expected a simple name of its own (letters, digits, _ or -), got {name!r}")
            values = entry.get("params") or {}
            model = entry.get("model")
            if not isinstance(values, Mapping) or (model is not None and not (isinstance(model, Mapping) and "layers" in model)):
                raise self.fail(where, "expected params as a mapping and model as a layer config (with 'layers')")
            for key, value in values.items():
                param = params.get(key.split("[")[0])
                if param is None:
                    raise self.fail(f"{where}.params.{key}", f"names no searched parameter (declared: {', '.join(params)})")
                if not param.contains(value):
                    raise self.fail(f"{where}.params.{key}", f"{value!r} is not a value {param.field()} can take")
            if model is None:  # every active parameter given
                labels = {k: _label(params[k.split("[")[0]], v) for k, v in values.items()}
                try:
                    space.sample(FixedTrial(labels))
                except (ValueError, KeyError) as err:
                    raise self.fail(f"{where}.params", f"expected a value for every searched parameter it uses, "
                                                       f"within its distribution ({str(err).splitlines()[0]})") from None
            found.append(Baseline(name, dict(values), None if model is None else dict(model)))
        return found

    def load(self, raw: Any) -> SearchSpace:
        if not isinstance(raw, Mapping):
            raise self.fail("(top level)", f"expected a mapping with sections {', '.join(SECTIONS)}, got {type(raw).__name__}")
        unknown = [k for k in raw if k not in SECTIONS]
        if unknown:
            raise self.fail(str(unknown[0]), f"unknown section; expected one of {', '.join(SECTIONS)}")
        raw = _coerce_numbers(dict(raw))
        name = raw.get("name") or Path(self.path).stem
        if not isinstance(name, str) or not name.replace("-", "_").isidentifier():
            raise self.fail("name", f"expected a simple name (letters, digits, _ or -), got {name!r}")

        params: dict[str, Param] = {}
        declared = raw.get("params") or {}
        if not isinstance(declared, Mapping):
            raise self.fail("params", f"expected a mapping of name -> distribution, got {declared!r:.60}")
        for pname, spec in declared.items():
            params[str(pname)] = self.param(f"params.{pname}", str(pname), spec)
        for pname, param in params.items():
            for other, allowed in param.condition.items():
                if other not in params or params[other].per_layer:
                    raise self.fail(f"params.{pname}.if.{other}", "a condition must name a parameter declared before it (not per-layer)")
                if list(params).index(other) > list(params).index(pname):
                    raise self.fail(f"params.{pname}.if.{other}", f"'{other}' must be declared before '{pname}'")
                if params[other].kind == "choice" and not set(allowed) & set(params[other].choices):
                    raise self.fail(f"params.{pname}.if.{other}", f"{list(allowed)} matches none of {list(params[other].choices)}")

        model = raw.get("model")
        if not isinstance(model, Mapping) or not ("layers" in model or "blocks" in model):
            raise self.fail("model", "expected a layer config (with 'layers') or an op-level template (with 'blocks')")
        model = self.lift_inline(dict(model), "model", params)
        layers = model.get("layers")
        if isinstance(layers, Mapping):
            if set(layers) != {"repeat", "each"} or not isinstance(layers["each"], list):
                raise self.fail("model.layers", "expected a list of layers, or {repeat: N or $depth, each: [layers]}")
        elif "layers" in model and not isinstance(layers, list):
            raise self.fail("model.layers", f"expected a list or {{repeat, each}}, got {layers!r:.60}")
        per_layer = [p for p in params.values() if p.per_layer]
        if per_layer and not isinstance(layers, Mapping):
            raise self.fail(f"params.{per_layer[0].name}.per_layer", "per-layer parameters need model.layers: {repeat: ..., each: [...]}")

        train_raw = raw.get("train") or {}
        train_raw = self.lift_inline(dict(train_raw), "train", params) if isinstance(train_raw, Mapping) else train_raw
        train = self.section({"train": train_raw}, "train", {k: Key(v.default) for k, v in TRAIN_KEYS.items()})
        for key in EVAL_KEYS:
            if isinstance(train[key], str) and train[key].startswith("$"):
                raise self.fail(f"train.{key}", "must be fixed: every trial scores the same validation windows")
        if train["eval_seq_len"] is None:  # the longest context any trial trains at
            train["eval_seq_len"] = self.longest(train["seq_len"], params)
        for key, value in train.items():  # searched values are checked when sampled; fixed ones now
            if not (isinstance(value, str) and value.startswith("$")):
                try:
                    check_value(key, TRAIN_KEYS[key], value)
                except OpError as err:
                    raise self.fail(f"train.{key}", err.message) from None
        used: set = set()
        self.check_refs(model, "model", params, used)
        self.check_refs(train, "train", params, used)
        for pname, param in params.items():
            if pname not in used and not any(pname in p.condition for p in params.values()):
                raise self.fail(f"params.{pname}", "declared but never referenced as $" + pname)
        if isinstance(layers, Mapping):
            repeat = layers["repeat"]
            ref = repeat[1:] if isinstance(repeat, str) and repeat.startswith("$") else None
            if ref is not None and (params[ref].kind != "int" and not all(isinstance(c, int) for c in params[ref].choices)):
                raise self.fail("model.layers.repeat", f"${ref} must be an integer parameter")
            if ref is None and not (isinstance(repeat, int) and repeat > 0):
                raise self.fail("model.layers.repeat", f"expected a positive int or a $parameter, got {repeat!r}")

        data = self.section(raw, "data", DATA_KEYS)
        if data["source"] in ("text", "tokens") and not data["path"]:
            raise self.fail("data.path", f"source {data['source']} needs a path")
        if data["path"]:
            resolved = (Path(self.path).parent / data["path"]).resolve()
            if not resolved.is_file():
                raise self.fail("data.path", f"no such file: {resolved}")
            data["path"] = str(resolved)
        if data["source"] == "tokens" and not (isinstance(data["vocab_size"], int) and data["vocab_size"] > 0):
            raise self.fail("data.vocab_size", "a token file needs its vocab_size")
        probes = self.section(raw, "probes", PROBE_KEYS)
        if probes["seq_len"] is None:
            if not isinstance(train["seq_len"], int):
                raise self.fail("probes.seq_len", "required when train.seq_len is searched: latency compares at one fixed shape")
            probes["seq_len"] = train["seq_len"]
        if probes["decode_context"] is None:
            probes["decode_context"] = probes["seq_len"]
        if probes["runtime"] == "onnxruntime":
            try:
                import onnxruntime  # noqa: F401
                import onnxscript  # noqa: F401  (torch.onnx's exporter)
            except ImportError:
                raise self.fail("probes.runtime", "onnxruntime needs the onnx extra: pip install -e '.[onnx]'") from None
        steps = probes["latency_repeats"] + probes["latency_warmup"]
        if probes["decode_context"] <= steps:
            raise self.fail("probes.decode_context", f"expected more than the {steps} timed and warm-up decoding steps "
                                                      f"(latency_repeats + latency_warmup), got {probes['decode_context']}")

        objectives = raw.get("objectives") or {"val_loss": "min", "peak_mem_mb": "min", "latency_ms": "min"}
        if not isinstance(objectives, Mapping) or not objectives:
            raise self.fail("objectives", "expected a mapping of metric -> min or max")
        for metric, direction in objectives.items():
            if metric not in METRICS:
                raise self.fail(f"objectives.{metric}", f"unknown metric; expected one of {', '.join(METRICS)}")
            if direction not in ("min", "max"):
                raise self.fail(f"objectives.{metric}", f"expected min or max, got {direction!r}")
        constraints = raw.get("constraints") or {}
        if not isinstance(constraints, Mapping):
            raise self.fail("constraints", "expected a mapping of metric -> {max: x} or {min: x}")
        for metric, bound in constraints.items():
            if metric not in METRICS:
                raise self.fail(f"constraints.{metric}", f"unknown metric; expected one of {', '.join(METRICS)}")
            if not isinstance(bound, Mapping) or not bound or set(bound) - {"min", "max"} or \
                    not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bound.values()):
                raise self.fail(f"constraints.{metric}", f"expected {{max: number}} and/or {{min: number}}, got {bound!r:.60}")
        search = self.section(raw, "search", SEARCH_KEYS)
        self.check_fidelity(train, search)
        if train["target_tokens"] is not None and "val_loss" in objectives:  # ranked at the user's budget instead
            objectives = {(TARGET if k == "val_loss" else k): v for k, v in objectives.items()}
        if TARGET in objectives and train["target_tokens"] is None:
            raise self.fail(f"objectives.{TARGET}", "needs train.target_tokens: the budget it is predicted at")
        resources = self.section(raw, "resources", RESOURCE_KEYS)
        space = SearchSpace(self.path, name, params, model, data, train, probes, dict(objectives),
                            {k: dict(v) for k, v in constraints.items()}, search, resources)
        space.baselines = self.baselines(raw.get("baselines"), space)
        return space


def load(path: str | Path) -> SearchSpace:
    """Read and validate a search-space YAML file; raises SpaceError with one line on any problem."""
    path = str(path)
    try:
        raw = read_structured(path)
    except Exception as err:  # ConfigError from configaformer.io: already one line naming the file
        raise SpaceError(str(err)) from None
    return _Loader(path).load(raw)
