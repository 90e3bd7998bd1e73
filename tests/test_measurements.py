"""What a search measures means what it says: leaky candidates never train, every trial scores one validation set,
the embedded split keeps near-copies on one side, the budget counts measured configs, noisy latency is marked."""

import math
import re

import pytest
from helpers import TINY_SPACE, write_space

from configaformer_search import trial
from configaformer_search.cli import main
from configaformer_search.data import embedded_corpus, near_copy_share
from configaformer_search.space import load_space
from configaformer_search.storage import default_storage, read_study

FAST = TINY_SPACE.replace("tokens: 49152", "tokens: 8192").replace("eval_tokens: 4096", "eval_tokens: 1024")
PARAMS = {"width": 32, "heads": 2, "position": "rope", "dim_rope": 8}


def measured(study):
    """The trials that took a place of the --trials budget and ended."""
    return [t for t in study.trials if t.finished and t.outcome.counts]


def test_a_typo_in_a_layer_key_is_refused_before_any_trial(tmp_path, capsys):
    space = write_space(tmp_path, FAST.replace("{type: Attention, heads: $heads}", "{type: Attention, haeds: 2}")
                        .replace("  heads: {choice: [2, 4]}\n", ""))
    assert main(["validate", str(space)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(space) in err and "none of" in err and "haeds" in err
    out = tmp_path / "run"
    assert main(["run", str(space), "--out", str(out)]) == 2
    assert "haeds" in capsys.readouterr().err and not out.exists()


def test_leaky_candidates_are_refused_before_training(tmp_path, capsys):
    space = load_space(write_space(tmp_path, FAST.replace("  position: $position\n", "  position: $position\n  causal: false\n")))
    failed = trial.run(space, PARAMS, device="cpu")
    assert failed["status"] == "failed" and failed["reason"] == "leaks_future", failed
    assert "not causal" in failed["message"] and "mha_sum" in failed["message"]
    assert "train_s" not in failed["timings"] and "val_loss" not in failed
    assert main(["validate", str(space.path), "--samples", "1"]) == 0
    assert "refused before training (leaks_future): not causal" in capsys.readouterr().out



@pytest.mark.slow
def test_a_search_of_leaky_and_impossible_candidates_ends_with_its_budget_measured(ray_local, tmp_path, capsys):
    # Half the draws are not causal, and heads 3 divides neither width: neither kind uses up the budget.
    text = FAST.replace("{choice: [2, 4]}", "{choice: [2, 3]}").replace("  position: $position\n",
                                                                       "  position: $position\n  causal: $causal\n") \
        .replace("params:\n", "params:\n  causal: {choice: [true, false]}\n")
    out = tmp_path / "run"
    assert main(["run", str(write_space(tmp_path, text)), "--trials", "3", "--out", str(out), "--sampler", "random",
                 "--seed", "3"]) == 0
    study = read_study(default_storage(out))
    counted = measured(study)
    assert len(counted) == 3 and all(t.params["causal"] is True and t.params["heads"] == 2 for t in counted)
    assert all(t.state == "COMPLETE" for t in counted)
    refused = [t for t in study.trials if t.state == "FAIL"]
    reasons = {t.outcome.kind.name for t in refused}
    assert reasons <= {"leaks_future", "rejected"} and "leaks_future" in reasons
    assert all(t.outcome.kind.refusal and "train_s" not in t.user_attrs.get("timings", {}) for t in refused)  # never trained
    assert not study.in_state("RUNNING")
    assert "[3/3]" in capsys.readouterr().out


@pytest.mark.slow
def test_a_search_that_only_draws_leaky_candidates_stops_and_says_why(ray_local, tmp_path, capsys, monkeypatch):
    from configaformer_search.driver import suggestions

    monkeypatch.setattr(suggestions, "MAX_REFUSALS", 3)
    text = FAST.replace("  position: $position\n", "  position: $position\n  causal: false\n")
    out = tmp_path / "run"
    assert main(["run", str(write_space(tmp_path, text)), "--trials", "2", "--out", str(out), "--concurrency", "1"]) == 1
    err = capsys.readouterr().err
    assert re.search(r"the last (\d+) candidates were all refused before training, \1 of them for leaks_future", err)
    assert "no config was trained and measured" in err
    study = read_study(default_storage(out))
    assert not measured(study) and len(study.trials) >= 3 and not study.in_state("RUNNING")
    kinds = [t.outcome.kind.name for t in study.trials if t.outcome.reused_from is None]
    assert kinds.count("leaks_future") >= 3 and set(kinds) <= {"leaks_future", "withdrawn"}  # withdrawn: asked ahead


def test_every_trial_scores_the_same_validation_windows_whatever_its_seq_len(tmp_path):
    text = FAST.replace("seq_len: 32,", "seq_len: {choice: [16, 32]},") + "probes: {seq_len: 32}\n"
    text = text.replace("probes: {latency_repeats: 5, latency_warmup: 1}\n", "")
    space = load_space(write_space(tmp_path, text))
    assert space.train["eval_seq_len"] == 32  # the longest a trial can draw
    short, long = (trial.run(space, dict(PARAMS, **{"train.seq_len": n}), device="cpu") for n in (16, 32))
    assert short["status"] == long["status"] == "ok"
    assert short["train"]["seq_len"] == 16 and long["train"]["seq_len"] == 32
    assert short["val_set"] == long["val_set"] and short["val_set"].endswith("x32")


def test_an_eval_length_must_be_fixed(tmp_path, capsys):
    space = write_space(tmp_path, FAST.replace("eval_tokens: 1024", "eval_tokens: 1024, eval_seq_len: {choice: [16, 32]}"))
    assert main(["validate", str(space)]) == 2
    assert "train.eval_seq_len: must be fixed" in capsys.readouterr().err


def test_a_diverged_run_is_a_failed_trial_not_a_winner(tmp_path):
    # lr 10 blows the loss up without a NaN: worse than a uniform guess over the bytes is not a result.
    space = load_space(write_space(tmp_path, FAST.replace("lr: 1e-2", "lr: 10.0")))
    failed = trial.run(space, PARAMS, device="cpu")
    assert failed["status"] == "failed" and failed["reason"] == "diverged", failed
    assert failed["val_loss"] > math.log(256) and "uniform guess" in failed["message"]


@pytest.mark.slow
def test_the_embedded_split_keeps_near_copies_on_one_side():
    corpus = embedded_corpus()
    assert near_copy_share(corpus) < 0.01
    assert 0.05 < len(corpus.val) / (len(corpus.train) + len(corpus.val)) < 0.2


def test_noisy_latency_is_marked_on_the_progress_line():
    from configaformer_search.outcome import measured as measured_record
    from configaformer_search.probes.timing import CI_WIDTH, Timing
    from configaformer_search.progress import Progress

    lines = []
    progress = Progress(2, 0, ["val_loss", "latency_ms"])
    progress.say = lines.append
    noisy, steady = Timing(1.0, 0.8, 6, ci=0.1), Timing(1.0, 0.05, 1, ci=CI_WIDTH / 2)
    assert noisy.noisy and not steady.noisy
    progress.finished(3, {}, measured_record(val_loss=2.5, **noisy.metrics("latency")), 1)  # as the latency probe reports it
    progress.finished(4, {}, measured_record(val_loss=2.5, **steady.metrics("latency")), 1)
    assert "latency noisy: ±10%" in lines[0] and "noisy" not in lines[2]


@pytest.mark.parametrize("relative_pos, leaks", [(-1, False), (1, True)])
def test_a_layer_token_shift_reads_the_previous_token(relative_pos, leaks):
    from configaformer import ConfigaFormer, find_future_leak
    from configaformer.layers import compile_layers

    config = {"dim_model": 32, "vocab_size": 50, "layers": [{"type": "FFN", "token_shift": True}]}
    compiled = compile_layers(config)
    shifts = [op for block in compiled["blocks"] for op in block["config"] if op["type"] == "shift"]
    assert [i["relative_pos"] for op in shifts for i in op["instructions"]] == [-1]
    shifts[0]["instructions"][0]["relative_pos"] = relative_pos
    assert (find_future_leak(ConfigaFormer(compiled, verbose=False)) is not None) == leaks
