"""The runtime a model is timed on (probes.runtime): where and how it will be served.

  eager        PyTorch as it trained;
  compile      torch.compile of the forward pass, and of the cached run that prefills and decodes (dynamic shapes,
               so that each decoding step's longer cache does not recompile);
  onnxruntime  the forward pass, the prefill, and one decoding step with its cache passed in and out as tensors,
               exported with torch.onnx and run in ONNX Runtime sessions with probes.threads threads.

A runtime gives the timing probes three calls: `forward(ids) -> logits`, `prefill(ids) -> (logits, state)` and
`step(ids, state) -> (logits, state)`, the state being the decoding cache in the runtime's own form. An export is
checked against the eager model before anything is timed (the forward's logits at random tokens; the prefill's
and those of up to CHECKED_STEPS decoding steps after it), its largest absolute difference reported, and the trial refused ('export')
above EXPORT_TOLERANCE.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from configaformer import ConfigaFormer, DecodeCache
from configaformer.decode import token_stream
from configaformer.ops.dense import Embedding

from ..errors import TrialFailure

EXPORT_TOLERANCE = 1e-3  # largest absolute difference of logits an export may show against the eager model
MAX_CONTEXT = 1 << 16  # the longest cache an exported decoding step accepts
CHECKED_STEPS = 4  # decoding steps compared with the eager model after the checked prefill


class Eager:
    """The model as it trained: the reference every other runtime is checked against."""

    def __init__(self, model: ConfigaFormer) -> None:
        self.model, self.stream, self.output = model, token_stream(model), model.outputs[0]
        self.checked: dict[str, float] = {}

    def forward(self, ids: Tensor) -> Any:
        return self.model({self.stream: ids})[self.output]

    def prefill(self, ids: Tensor) -> tuple[Any, Any]:
        cache = DecodeCache()
        return self.model.step(ids, cache), cache

    def step(self, ids: Tensor, state: Any) -> tuple[Any, Any]:
        return self.model.step(ids, state), state


class Compiled(Eager):
    """torch.compile of the forward pass (at its one shape) and of the cached run that prefills and decodes (dynamic
    shapes: a longer prompt or cache does not recompile). Dynamo's caches are reset first: a process that times
    many models (a reused trial worker, a serving node) would otherwise reach its recompile limit and fall back to
    eager, timing eager PyTorch under this runtime's name."""

    def __init__(self, model: ConfigaFormer) -> None:
        super().__init__(model)
        torch.compiler.reset()
        self._forward = torch.compile(lambda ids: model({self.stream: ids})[self.output], dynamic=False)
        self._cached = torch.compile(lambda ids, cache: model({self.stream: ids}, cache=cache)[self.output], dynamic=True)

    def forward(self, ids: Tensor) -> Any:
        return self._forward(ids)

    def prefill(self, ids: Tensor) -> tuple[Any, Any]:
        cache = DecodeCache()
        return self._cached(ids, cache), cache

    def step(self, ids: Tensor, state: Any) -> tuple[Any, Any]:
        return self._cached(ids, state), state


class _DecodingStep(torch.nn.Module):
    """One decoding step as a function of tensors alone, for export: (new ids, a tensor as long as the context seen
    so far, each cached tensor in `layout` order) -> (logits, each cached tensor after the step)."""

    def __init__(self, model: ConfigaFormer, layout: list[tuple[int, str]]) -> None:
        super().__init__()
        self.model, self.layout = model, layout
        self.stream, self.output = token_stream(model), model.outputs[0]

    def forward(self, ids: Tensor, seen: Tensor, *cached: Tensor) -> tuple[Tensor, ...]:
        states: dict[int, dict[str, Tensor]] = {}
        for (index, name), tensor in zip(self.layout, cached):
            states.setdefault(index, {})[name] = tensor
        cache = DecodeCache(position=seen.shape[0], states=states)
        logits = self.model({self.stream: ids}, cache=cache)[self.output]
        return (logits, *(cache.states[index][name] for index, name in self.layout))


class OnnxRuntime:
    """The forward pass, the prefill and a decoding step exported with torch.onnx, each run in an ONNX Runtime
    session; each export checked against the eager model before it is timed (`checked`: the largest differences)."""

    def __init__(self, model: ConfigaFormer, threads: int) -> None:
        import onnxruntime

        self.model, self.eager = model, Eager(model)
        self.options = onnxruntime.SessionOptions()
        self.options.intra_op_num_threads, self.options.inter_op_num_threads = threads, 1
        self.checked: dict[str, float] = {}
        self._forward: Any = None
        self._prefill: Any = None
        self._step: Any = None
        self._step_inputs: list[str] = []
        self._seen = np.zeros(MAX_CONTEXT, dtype=np.float32)  # sliced to the context's length: its shape is the input

    def forward(self, ids: Tensor) -> Any:
        if self._forward is None:
            self._forward = self._session(_Forward(self.model), (ids,))
            tokens = torch.randint(0, _vocab_size(self.model), ids.shape, generator=torch.Generator().manual_seed(0))
            self._check("forward", self._forward.run(None, {"ids": tokens.numpy()})[0], self.eager.forward(tokens))
        return self._forward.run(None, {"ids": ids.numpy()})[0]

    def prefill(self, ids: Tensor) -> tuple[np.ndarray, _OnnxState]:
        if self._prefill is None:
            self._export_decoding(ids)
        logits, *cached = self._prefill.run(None, {"ids": ids.numpy()})
        return logits, _OnnxState(ids.shape[1], cached)

    def step(self, ids: Tensor, state: _OnnxState) -> tuple[np.ndarray, _OnnxState]:
        logits, *cached = self._step.run(None, self._feed(ids, state))
        return logits, _OnnxState(state.position + ids.shape[1], cached)

    def _feed(self, ids: Tensor, state: _OnnxState) -> dict[str, np.ndarray]:
        if state.position + ids.shape[1] > MAX_CONTEXT:
            raise TrialFailure("export", f"decoding past {MAX_CONTEXT:,} tokens, the longest context the export takes")
        return dict(zip(self._step_inputs, [ids.numpy(), self._seen[:state.position], *state.cached]))

    def _session(self, module: torch.nn.Module, args: tuple, dynamic: Optional[dict] = None) -> Any:
        import warnings

        import onnxruntime

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                program = torch.onnx.export(module, args, dynamo=True, dynamic_shapes=dynamic, verbose=False)
        except Exception as err:
            raise TrialFailure("export", f"torch.onnx could not export it: {_first_line(err)}") from None
        try:
            return onnxruntime.InferenceSession(program.model_proto.SerializeToString(), self.options,
                                                providers=["CPUExecutionProvider"])
        except Exception as err:
            raise TrialFailure("export", f"ONNX Runtime could not load its export: {_first_line(err)}") from None

    def _check(self, what: str, exported: np.ndarray, eager: Tensor) -> None:
        difference = float(np.abs(exported - eager.float().numpy()).max())
        self.checked[what] = max(difference, self.checked.get(what, 0.0))
        if not difference <= EXPORT_TOLERANCE:
            raise TrialFailure("export", f"its ONNX export's {what} logits differ from the eager model's by "
                                         f"{difference:.3g} (more than {EXPORT_TOLERANCE:g})")

    def _export_decoding(self, ids: Tensor) -> None:
        """The prefill at the prompt's shape, and one step with the context's length free (each cached tensor's axis
        that grows with it dynamic), both made from the eager cache's layout; then checked: the prefill, and
        CHECKED_STEPS steps after it, against the eager model's logits."""
        prompt_logits, cache = self.eager.prefill(ids)
        _, longer = self.eager.prefill(torch.cat([ids, ids[:, -1:]], dim=1))
        layout = [(index, name) for index in sorted(cache.states) for name in sorted(cache.states[index])]
        context = torch.export.Dim("context", min=1, max=MAX_CONTEXT)
        growing = tuple({axis: context for axis, (a, b) in enumerate(zip(cache.states[i][n].shape, longer.states[i][n].shape))
                         if a != b} or None for i, n in layout)
        cached = tuple(cache.states[i][n] for i, n in layout)
        self._prefill = self._session(_Prefill(self.model, layout), (ids,))
        self._step = self._session(_DecodingStep(self.model, layout), (ids[:, -1:], torch.zeros(cache.position), *cached),
                                   {"ids": None, "seen": {0: context}, "cached": growing})
        self._step_inputs = [node.name for node in self._step.get_inputs()]
        logits, *arrays = self._prefill.run(None, {"ids": ids.numpy()})
        self._check("prefill", logits, prompt_logits)
        state = _OnnxState(ids.shape[1], arrays)
        for k in range(min(CHECKED_STEPS, ids.shape[1])):
            token = ids[:, k:k + 1]
            logits, state = self.step(token, state)
            self._check("decoding", logits, self.eager.step(token, cache)[0])


class _OnnxState:
    """A decoding cache as ONNX Runtime holds it: the context's length and each cached array, in the export's order."""

    def __init__(self, position: int, cached: list[np.ndarray]) -> None:
        self.position, self.cached = position, cached

    def nbytes(self) -> int:
        return sum(array.nbytes for array in self.cached)


class _Prefill(torch.nn.Module):
    """The prompt run into an empty cache, as a function of its ids alone, for export: (logits, each cached tensor)."""

    def __init__(self, model: ConfigaFormer, layout: list[tuple[int, str]]) -> None:
        super().__init__()
        self.model, self.layout = model, layout
        self.stream, self.output = token_stream(model), model.outputs[0]

    def forward(self, ids: Tensor) -> tuple[Tensor, ...]:
        cache = DecodeCache()
        logits = self.model({self.stream: ids}, cache=cache)[self.output]
        return (logits, *(cache.states[index][name] for index, name in self.layout))


class _Forward(torch.nn.Module):
    """The forward pass as a function of the token ids alone, for export."""

    def __init__(self, model: ConfigaFormer) -> None:
        super().__init__()
        self.model, self.stream, self.output = model, token_stream(model), model.outputs[0]

    def forward(self, ids: Tensor) -> Tensor:
        return self.model({self.stream: ids})[self.output]


def _vocab_size(model: ConfigaFormer) -> int:
    """The token ids every embedding table of the model takes."""
    return min(op.table.num_embeddings for op in model.ops if isinstance(op, Embedding))


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


def served(model: ConfigaFormer, runtime: str, threads: int, device: torch.device) -> Eager | OnnxRuntime:
    """The model on `runtime`, ready for the timing probes (onnxruntime: on the CPU, with `threads` intra-op
    threads; torch's threads are set by the probe)."""
    if runtime == "onnxruntime":
        if device.type != "cpu":
            raise TrialFailure("export", f"probes.runtime onnxruntime times on the CPU; this trial's device is {device}")
        return OnnxRuntime(model, threads)
    return Compiled(model) if runtime == "compile" else Eager(model)
