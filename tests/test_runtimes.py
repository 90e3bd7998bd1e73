"""The serving runtimes the timing probes time a model on (probes.runtime): ONNX Runtime's export of the forward
pass and of decoding gives the eager model's logits, a trial on it reports how far they were, and an export that
disagrees is refused with its reason. Real torch.onnx exports run in real ONNX Runtime sessions."""

import tempfile

import numpy as np
import pytest
import torch
from helpers import TINY_SPACE, write_space

from configaformer_search import candidate as candidates
from configaformer_search import trial
from configaformer_search.data import load_corpus
from configaformer_search.errors import SpaceError
from configaformer_search.probes import runtimes
from configaformer_search.probes.runtimes import served
from configaformer_search.space import load_space

ONNX = TINY_SPACE.replace("tokens: 49152", "tokens: 4096").replace(
    "probes: {latency_repeats: 5, latency_warmup: 1}",
    "probes: {latency_repeats: 5, latency_warmup: 1, decode: true, decode_context: 40, runtime: onnxruntime}")
PARAMS = {"width": 32, "heads": 2, "position": "rope", "dim_rope": 8}


@pytest.fixture(autouse=True)
def _own_lock_folder(tmp_path, monkeypatch):
    """The device gate's lock files in this test's folder (see test_trial.py)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


def model_of(space, params):
    corpus = load_corpus(space.data)
    candidate = candidates.screen(space, params, corpus.vocab_size)
    return candidates.build(candidate).eval(), corpus.vocab_size


@pytest.mark.parametrize("position", ["rope", "alibi", "learned"])
def test_onnxruntime_forward_and_decoding_give_the_eager_models_logits(tmp_path, position):
    space = load_space(write_space(tmp_path, ONNX.replace("{choice: [rope, alibi]}", "{choice: [rope, alibi, learned]}")))
    model, vocab = model_of(space, {**PARAMS, "position": position} if position == "rope" else
                            {"width": 32, "heads": 2, "position": position})
    ids = torch.randint(0, vocab, (2, 24), generator=torch.Generator().manual_seed(1))
    eager, onnx = served(model, "eager", 1, torch.device("cpu")), served(model, "onnxruntime", 1, torch.device("cpu"))
    with torch.no_grad():
        np.testing.assert_allclose(onnx.forward(ids), eager.forward(ids).numpy(), atol=1e-4)
        (expected, cache), (logits, state) = eager.prefill(ids[:, :16]), onnx.prefill(ids[:, :16])
        np.testing.assert_allclose(logits, expected.numpy(), atol=1e-4)
        for p in range(16, 24):  # past the steps the export was checked on: the context grows as it decodes
            (expected, cache), (logits, state) = eager.step(ids[:, p:p + 1], cache), onnx.step(ids[:, p:p + 1], state)
            np.testing.assert_allclose(logits, expected.numpy(), atol=1e-4)
    assert state.position == cache.position == 24 and state.nbytes() == cache.nbytes()
    assert set(onnx.checked) == {"forward", "prefill", "decoding"}
    assert all(0 <= d <= runtimes.EXPORT_TOLERANCE for d in onnx.checked.values())


@pytest.mark.slow  # torch.compile builds its kernels with the C++ compiler: tens of seconds
def test_the_compiled_runtime_gives_the_eager_models_logits(tmp_path):
    model, vocab = model_of(load_space(write_space(tmp_path, ONNX)), PARAMS)
    ids = torch.randint(0, vocab, (1, 20), generator=torch.Generator().manual_seed(2))
    eager, compiled = served(model, "eager", 1, torch.device("cpu")), served(model, "compile", 1, torch.device("cpu"))
    with torch.no_grad():
        torch.testing.assert_close(compiled.forward(ids), eager.forward(ids), atol=1e-4, rtol=1e-4)
        (expected, cache), (logits, state) = eager.prefill(ids[:, :16]), compiled.prefill(ids[:, :16])
        for p in range(16, 20):
            (expected, cache), (logits, state) = eager.step(ids[:, p:p + 1], cache), compiled.step(ids[:, p:p + 1], state)
            torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


def test_a_trial_on_onnxruntime_reports_each_timings_export_difference(tmp_path):
    result = trial.run(load_space(write_space(tmp_path, ONNX)), PARAMS, "cpu")
    assert result["status"] == "ok", result
    for name in ("latency", "decode", "prefill"):
        assert result[f"{name}_ms"] > 0 and 0 <= result[f"{name}_export_diff"] <= runtimes.EXPORT_TOLERANCE


def test_an_export_that_disagrees_with_the_eager_model_is_refused_with_its_reason(tmp_path, monkeypatch):
    eager_forward = runtimes.Eager.forward
    monkeypatch.setattr(runtimes.Eager, "forward", lambda self, ids: eager_forward(self, ids) + 0.01)  # what it checks against
    failed = trial.run(load_space(write_space(tmp_path, ONNX)), PARAMS, "cpu")
    assert failed["status"] == "failed" and failed["reason"] == "export", failed
    assert failed["message"].startswith("its ONNX export's forward logits differ from the eager model's by 0.01")


def test_an_unknown_runtime_is_refused_by_name(tmp_path):
    with pytest.raises(SpaceError, match=r"probes\.runtime.*eager.*compile.*onnxruntime"):
        load_space(write_space(tmp_path, ONNX.replace("runtime: onnxruntime", "runtime: tflite")))
