"""One trial end to end without Ray: real training on the embedded corpus, real fvcore, real probes."""

import math
import tempfile
import time

import pytest
import torch
from torch.distributed._tools.mem_tracker import MemTracker
from helpers import TINY_SPACE, write_space

from configaformer import ConfigaFormer
from configaformer_search import trial
from configaformer_search.data import embedded_corpus, load_corpus, val_set
from configaformer_search.probes import count_flops, estimate_peak_memory, flop_analysis, measure_latency
from configaformer_search.probes.timing import CI_WIDTH, MAX_ROUNDS, Timing, measure, median_interval
from configaformer_search.space import load_space
from configaformer_search.steps import lm_loss, make_optimizer
from configaformer_search.train import Measurement, Snapshot, evaluate

PARAMS = {"width": 32, "heads": 2, "position": "rope", "dim_rope": 8}


@pytest.fixture(autouse=True)
def _own_lock_folder(tmp_path, monkeypatch):
    """The device gate's lock files in this test's folder: a trial here neither waits for the probes and trainers of
    other processes on this machine (searches, other test runs) nor holds them up."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


SHORT = TINY_SPACE.replace("tokens: 49152", "tokens: 8192").replace("eval_tokens: 4096", "eval_tokens: 1024") \
    .replace("probes: {latency_repeats: 5, latency_warmup: 1}", "probes: {latency: false, latency_repeats: 5, latency_warmup: 1}") \
    .replace("objectives: {val_loss: min, peak_mem_mb: min, latency_ms: min}", "objectives: {val_loss: min, peak_mem_mb: min}")
# A trial of a sixth of the tokens, without the latency probe: for the checks that need a trial, not a trained model.


@pytest.fixture(scope="module")
def tiny_space(tmp_path_factory):
    return load_space(write_space(tmp_path_factory.mktemp("space")))


@pytest.fixture(scope="module")
def short_space(tmp_path_factory):
    return load_space(write_space(tmp_path_factory.mktemp("short"), SHORT))


def test_trial_trains_on_real_text_and_reports_every_metric(tiny_space):
    metrics = trial.run(tiny_space, PARAMS, device="cpu")
    assert metrics["status"] == "ok", metrics
    model_config, _ = tiny_space.resolve(PARAMS, 256)
    untrained = ConfigaFormer.from_config(model_config, verbose=False)
    corpus = embedded_corpus()
    untrained_bpb = evaluate(untrained, val_set(corpus, 32, 4096).batches, torch.device("cpu")) / math.log(2)
    assert untrained_bpb > 7.5  # about log2(256) = 8 bits per byte before training
    assert metrics["val_bpb"] < untrained_bpb - 2.5
    assert metrics["val_loss"] == pytest.approx(metrics["val_bpb"] * math.log(2))
    assert metrics["params"] == untrained.num_params()
    assert metrics["nonemb_params"] == untrained.num_params() - 256 * 32
    assert metrics["steps"] == 49152 // (16 * 32) and metrics["train_tok_s"] > 0
    assert metrics["peak_mem_source"] == "estimated"
    weights_grads_adam = 4 * metrics["params"] * 4 / 2**20
    assert weights_grads_adam < metrics["peak_mem_mb"] < weights_grads_adam + 50
    assert 0 < metrics["latency_ms"] < 1000 and 0 <= metrics["latency_cv"] < 5
    assert 1 <= metrics["latency_rounds"] <= MAX_ROUNDS and metrics["latency_noisy"] == (metrics["latency_ci"] > CI_WIDTH)
    assert metrics["config_key"] and metrics["model_config"] == model_config and metrics["device"] == "cpu"
    assert set(metrics["timings"]) == {"data_s", "build_s", "train_s", "probe_s"}


def test_a_trial_measures_the_same_losses_whatever_ran_before(short_space):
    # Ray reuses worker processes: the weights and batches of a trial must come from its seed, not the RNG's history.
    first = trial.run(short_space, PARAMS, device="cpu")
    torch.manual_seed(1234)
    torch.rand(1000)
    again = trial.run(short_space, PARAMS, device="cpu")
    assert first["status"] == "ok" and first["steps"] == 8192 // (16 * 32)
    assert (again["val_loss"], again["train_loss"]) == (first["val_loss"], first["train_loss"])


def test_flops_match_the_analytic_count_of_a_plain_gpt():
    dim, depth, heads, ff, vocab, seq, batch = 64, 3, 4, 256, 256, 48, 2
    config = {"dim_model": dim, "vocab_size": vocab, "dim_rope": 8, "max_length": seq,
              "layers": [{"type": "Attention", "heads": heads}, {"type": "FFN", "dim_ff": ff}] * depth}
    model = ConfigaFormer.from_config(config, verbose=False)
    per_token = depth * (4 * dim * dim + 2 * dim * ff + 2 * seq * dim) + dim * vocab  # QK^T and PV over all keys
    assert count_flops(model, batch, seq) == batch * seq * per_token


def test_every_library_op_has_a_flop_handle():
    config = {"dim_model": 32, "vocab_size": 64, "max_length": 16, "position": "learned", "norm_type": "rms_norm",
              "layers": [{"type": "Attention", "heads": 4, "kv_heads": 2, "qk_norm": True, "gated": True, "token_shift": True},
                         {"type": "FFN", "activation": ["silu", "none"], "dropout": 0.1},
                         {"type": "gMLP", "activation": "relu2", "norm_type": "scale_norm"},
                         {"type": "Attention", "heads": 2, "causal": False}]}
    analysis = flop_analysis(ConfigaFormer.from_config(config, verbose=False).eval(), 1, 16)
    assert analysis.total() > 0
    assert dict(analysis.unsupported_ops()) == {}
    alibi = flop_analysis(ConfigaFormer.from_config({**config, "position": "alibi"}, verbose=False).eval(), 1, 16)
    assert alibi.total() > 0 and dict(alibi.unsupported_ops()) == {}


class Stalling(torch.nn.Module):
    """A model whose forward takes 1 ms, and 20 ms on every other call while `stalls` is set: a disturbed probe,
    whose median no number of pairs pins down."""

    input_shapes, outputs = {"emb_ids": ("B", "L")}, ["emb_ids"]  # its token stream, as a model's

    def __init__(self, stalls: bool) -> None:
        super().__init__()
        self.stalls, self.calls = stalls, 0

    def forward(self, streams):
        self.calls += 1
        time.sleep(0.02 if self.stalls and self.calls % 2 == 0 else 0.001)
        return streams


def test_a_disturbed_latency_is_timed_for_more_rounds_and_marked_noisy():
    steady = measure_latency(Stalling(False), 1, 8, torch.device("cpu"), 256, repeats=6, warmup=1)
    disturbed = measure_latency(Stalling(True), 1, 8, torch.device("cpu"), 256, repeats=6, warmup=1)
    assert isinstance(steady, Timing) and isinstance(disturbed, Timing)
    assert disturbed.rounds == MAX_ROUNDS and disturbed.ci > CI_WIDTH and disturbed.noisy  # every other call stalled
    assert 0.9 < steady.median_ms < 5 and 0.9 < disturbed.median_ms < 25
    assert steady.ci < disturbed.ci  # (how many rounds the steady model takes depends on the machine's load)
    assert disturbed.metrics("latency") == {"latency_ms": disturbed.median_ms, "latency_cv": disturbed.cv,
                                            "latency_ci": disturbed.ci, "latency_rounds": MAX_ROUNDS, "latency_noisy": True}


def test_pairs_are_timed_until_the_median_ratio_is_known_closely_enough_and_drift_cancels():
    def timing_of(*rounds):
        given = iter(rounds)
        return measure(lambda: list(next(given)), lambda reference_times: 2.0)  # the reference takes 2 ms here

    steady = [(1.0, 3.0)] * 20  # each call three times the reference: 6 ms
    assert (timing_of(steady).rounds, timing_of(steady).median_ms, timing_of(steady).ci) == (1, 6.0, 0.0)
    slowing = [(k, 3.0 * k) for k in (1.0 + i / 10 for i in range(20))]  # the machine slows threefold as it times
    assert timing_of(slowing).median_ms == pytest.approx(6.0) and not timing_of(slowing).noisy
    jumpy = [(1.0, 1.5 if i % 2 else 4.5) for i in range(20)]  # ratios 1.5 and 4.5: their median is not known
    never = timing_of(*[jumpy] * MAX_ROUNDS)
    assert never.rounds == MAX_ROUNDS and never.ci > CI_WIDTH and never.noisy
    settled = timing_of(jumpy, steady, steady)  # a disturbed round, then steady ones: the interval narrows
    assert settled.rounds == 2 and settled.median_ms == 6.0 and not settled.noisy


def test_the_medians_interval_is_its_order_statistics():
    assert median_interval([float(v) for v in range(100)]) == (39.0, 60.0)  # ranks 40 and 61, 1-based
    assert median_interval([float(v) for v in range(20)]) == (4.0, 15.0)  # ranks 5 and 16
    assert median_interval([5.0] * 5) == (-math.inf, math.inf)  # five say nothing of the median


def real_training_peak(model: ConfigaFormer, batch_size: int, seq_len: int) -> float:
    """MemTracker's peak MiB over a real (not fake) training step, once training has created the AdamW state."""
    optimizer = make_optimizer(model, 1e-3, 0.1)
    inputs = torch.randint(0, 256, (batch_size, seq_len))

    def step():
        lm_loss(model, inputs, inputs).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    tracker = MemTracker()
    tracker.track_external(model, optimizer)
    with tracker:
        step()
    return max(stats["Total"] for stats in tracker.get_tracker_snapshot("peak").values()) / 2**20


@pytest.mark.parametrize("batch_size", [4, 32])
def test_cpu_memory_estimate_is_the_peak_of_a_real_training_step(tiny_space, batch_size):
    model_config, _ = tiny_space.resolve(PARAMS, 256)
    build = lambda: ConfigaFormer.from_config(model_config, verbose=False)  # noqa: E731
    estimate = estimate_peak_memory(build, batch_size, 32, 256)  # nothing allocated: fake tensors, a shortcut state
    assert estimate == pytest.approx(real_training_peak(build(), batch_size, 32), rel=1e-3)
    assert estimate > 16 * build().num_params() / 2**20  # weights, gradients and AdamW's two moments in fp32


def test_impossible_and_over_budget_candidates_cost_no_training(tmp_path):
    space = load_space(write_space(tmp_path, TINY_SPACE.replace("{choice: [2, 4]}", "{choice: [3, 5]}")))
    failed = trial.run(space, {**PARAMS, "heads": 3}, device="cpu")
    assert failed["status"] == "failed" and failed["reason"] == "rejected"
    assert "layers[0].heads: dim_model 32 is not divisible by 3 heads" in failed["message"]
    assert "train_s" not in failed["timings"]

    budget = load_space(write_space(tmp_path, TINY_SPACE + "constraints: {params: {max: 1000}}\n", "budget.yaml"))
    over = trial.run(budget, PARAMS, device="cpu")
    assert over["reason"] == "constraint" and over["message"].startswith("params ") and "> max 1000" in over["message"]
    assert over["params"] > 1000 and "train_s" not in over["timings"]


def test_a_measured_metric_over_its_bound_leaves_the_trial_measured_but_infeasible(tmp_path):
    space = load_space(write_space(tmp_path, SHORT + "constraints: {peak_mem_mb: {max: 0.5}}\n"))
    result = trial.run(space, PARAMS, device="cpu")
    assert result["status"] == "ok" and math.isfinite(result["val_loss"]) and result["peak_mem_mb"] > 0.5
    assert result["violations"] == f"peak_mem_mb {result['peak_mem_mb']:.4g} > max 0.5"
    assert result["constraints"]["peak_mem_mb<="] == pytest.approx(result["peak_mem_mb"] / 0.5 - 1)


def test_diverging_training_fails_with_its_reason(tmp_path):
    space = load_space(write_space(tmp_path, TINY_SPACE.replace("lr: 1e-2", "lr: 1e6").replace("tokens: 49152", "tokens: 16384")))
    failed = trial.run(space, PARAMS, device="cpu")
    assert failed["status"] == "failed" and failed["reason"] == "nan_loss", failed
    assert "at step" in failed["message"] or "validation loss" in failed["message"]


def test_data_sources_and_fixed_validation(tmp_path):
    corpus = embedded_corpus()
    assert corpus.vocab_size == 256 and corpus.is_bytes and len(corpus.val) > 100_000
    assert 0.05 < len(corpus.val) / (len(corpus.train) + len(corpus.val)) < 0.2
    first, second = val_set(corpus, 32, 1024), val_set(corpus, 32, 1024)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first.batches, second.batches))
    assert first.fingerprint == second.fingerprint != val_set(corpus, 64, 1024).fingerprint
    text = tmp_path / "t.txt"
    text.write_text("hello world. " * 500)
    assert bytes(load_corpus({"source": "text", "path": str(text), "val_fraction": 0.1}).train[:6].tolist()) == b"hello "
    tokens = tmp_path / "t.bin"
    torch.arange(5000, dtype=torch.int32).numpy().astype("uint16").tofile(tokens)
    corpus = load_corpus({"source": "tokens", "path": str(tokens), "vocab_size": 5000, "val_fraction": 0.1})
    assert not corpus.is_bytes and len(corpus.train) == 4500 and int(corpus.val[0]) == 4500


def test_serving_probes_measure_the_cache_and_decoding_and_refuse_what_cannot_decode(tmp_path):
    text = TINY_SPACE.replace("objectives: {val_loss: min, peak_mem_mb: min, latency_ms: min}",
                              "objectives: {val_loss: min, kv_cache_mb: min, decode_ms: min}")
    text = text.replace("- {type: Attention, heads: $heads}", "- {type: Attention, heads: 4, kv_heads: $heads}")
    text = text.replace("probes: {latency_repeats: 5, latency_warmup: 1}", "probes: {latency_repeats: 5, latency_warmup: 1, batch_size: 2, decode_context: 48}")
    space = load_space(write_space(tmp_path, text.replace("tokens: 49152", "tokens: 4096")))
    results = {kv: trial.run(space, {"width": 32, "heads": kv, "position": "rope", "dim_rope": 4}, "cpu") for kv in (2, 4)}
    for kv, result in results.items():
        assert result["status"] == "ok", result
        assert result["kv_cache_mb"] * 2**20 == 2 * 1 * kv * 8 * 48 * 2 * 4  # k and v, 1 layer, head dim 8, fp32
        assert result["decode_ms"] > 0 and result["prefill_ms"] > 0
    assert results[2]["kv_cache_mb"] * 2 == results[4]["kv_cache_mb"]  # one kv head per two: half the cache
    leaky = load_space(write_space(tmp_path, text.replace("position: $position", "position: $position\n  causal: false"), "leaky.yaml"))
    refused = trial.run(leaky, {"width": 32, "heads": 2, "position": "rope", "dim_rope": 4}, "cpu")
    assert refused["reason"] == "rejected" and "cannot decode one token at a time" in refused["message"]


def snapshot() -> Snapshot:
    model = torch.nn.Linear(4, 3)
    optimizer = make_optimizer(model, 1e-3, 0.1)
    lm = lambda: model(torch.ones(2, 4)).sum()  # noqa: E731
    lm().backward()
    optimizer.step()
    measurement = Measurement(rung=0, tokens_trained=512, tokens_spent=640, steps=4, val_loss=5.25, val_bpb=7.5,
                              train_loss=5.5, train_tok_s=1e4, peak_mem_mb=None, val_set="abc123")
    return Snapshot(step=4, rung=0, model=model.state_dict(), optimizer=optimizer.state_dict(), measurement=measurement)


def test_a_checkpoint_loads_back_whole(tmp_path):
    saved = snapshot()
    saved.save(tmp_path / "k.pt")
    loaded = Snapshot.load(tmp_path / "k.pt")
    assert (loaded.step, loaded.rung, loaded.measurement) == (saved.step, saved.rung, saved.measurement)
    assert loaded.model.keys() == saved.model.keys() and all(torch.equal(loaded.model[k], saved.model[k]) for k in saved.model)
    assert loaded.optimizer["param_groups"] == saved.optimizer["param_groups"]
    assert all(torch.equal(loaded.optimizer["state"][0][k], saved.optimizer["state"][0][k]) for k in ("exp_avg", "exp_avg_sq"))


class Payload:
    """An object whose unpickling runs code: it touches `path`."""

    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_checkpoint_holding_a_pickled_object_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "ran"
    data = {"step": 4, "rung": 0, "model": {}, "optimizer": {}, "measurement": Payload(marker)}
    torch.save(data, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="[Ww]eights only load failed|Unsupported global"):
        Snapshot.load(tmp_path / "evil.pt")
    assert not marker.exists()
    run, arguments = data["measurement"].__reduce__()  # what unpickling the file in full would call
    run(*arguments).close()
    assert marker.exists()
    marker.unlink()
    assert trial._load_checkpoint(tmp_path, "evil") is None and not marker.exists()  # a trial trains from the start


def test_a_trial_trains_afresh_past_a_checkpoint_that_would_run_code(tmp_path):
    """A resumed multi-fidelity trial finds its config's checkpoint replaced by a pickle that runs code: it is not
    run, and the trial trains from the start (no resumed_at_rung), keeping its rungs' checkpoints as usual."""
    text = TINY_SPACE.replace("tokens: 49152", "tokens: 6144").replace("search: {trials: 4, sampler: random}",
                                                                         "search: {trials: 4, sampler: random, scheduler: asha, min_tokens: 2048}")
    space = load_space(write_space(tmp_path, text))
    assert len(space.rungs()) > 1
    key = trial.candidates.screen(space, PARAMS, 256).key
    marker, folder = tmp_path / "ran", tmp_path / "checkpoints"
    folder.mkdir()
    torch.save({"step": 1, "rung": 0, "model": {}, "optimizer": {}, "measurement": Payload(marker)}, trial.checkpoint_path(folder, key))
    told = []
    result = trial.run(space, PARAMS, device="cpu", report=lambda record: told.append(record) or True, checkpoints=folder)
    assert result["status"] == "ok" and "resumed_at_rung" not in result and not marker.exists()
    assert [r["rung"] for r in told] == list(range(len(space.rungs())))
    assert Snapshot.load(trial.checkpoint_path(folder, key)).rung == len(space.rungs()) - 2  # written over, whole
