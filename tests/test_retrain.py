"""`configaformer-search retrain`: the front trained again at a longer budget through the session's Ray, each result
in the study beside the search's own, resumable, reproducing a separate run of that budget, and the weights handed
over by `export --weights` giving back the measured loss."""

import pytest
import torch
from helpers import TINY_SPACE, write_space

from configaformer import ConfigaFormer
from configaformer_search import trial
from configaformer_search.cli import main
from configaformer_search.data import load_corpus
from configaformer_search.retrain import weights_path
from configaformer_search.review import read_review
from configaformer_search.space import load_space
from configaformer_search.storage import default_storage
from configaformer_search.train import evaluate
from configaformer_search.data import val_set
from configaformer_search.tables import front_frame

FAST = TINY_SPACE.replace("tokens: 49152", "tokens: 8192").replace("eval_tokens: 4096", "eval_tokens: 1024") \
    .replace("search: {trials: 4, sampler: random}", "search: {trials: 3, sampler: random}\n"
             "baselines:\n  - {name: tiny-rope, params: {width: 32, heads: 2, position: rope, dim_rope: 8}}\n")


@pytest.mark.slow
def test_retrain_keeps_its_results_beside_the_search_and_hands_over_trained_weights(ray_local, tmp_path, capsys,
                                                                                    monkeypatch):
    space_path = write_space(tmp_path, FAST)
    out = tmp_path / "run"
    assert main(["run", str(space_path), "--out", str(out), "-q"]) == 0
    before = read_review(default_storage(out))
    retrained = [*before.front, *before.baselines]
    assert main(["retrain", str(out), "--mult", "2", "-q"]) == 0
    printed = capsys.readouterr().out
    review = read_review(default_storage(out))
    assert set(review.retrained) == {t.number for t in retrained}
    assert [t.values for t in review.trials] == [t.values for t in before.trials]  # the search's values untouched
    assert all(16384 in by_tokens for by_tokens in review.retrained.values())
    if len(before.front) >= 2:
        assert "retrained at 16,384 tokens (2x) on 1 seed" in printed
    assert "val_loss@2x" in front_frame(review)

    # A separate run of that budget and seed measures the same.
    space = load_space(space_path)
    number = before.front[0].number
    alone = trial.measure_once(space, before.front[0].params, space.train["seed"], [16384], 16384, "cpu")
    assert review.retrained[number][16384].values[space.train["seed"]] == pytest.approx(alone["val_loss"], abs=1e-5)

    # Resumable: run again, nothing is trained.
    assert main(["retrain", str(out), "--mult", "2"]) == 0
    assert "0 runs to train" in capsys.readouterr().out

    # Every complete trial, from a run folder named relative to the working folder: the weights land in it.
    monkeypatch.chdir(tmp_path)
    assert main(["retrain", "run", "--mult", "2", "--trials", "all", "-q"]) == 0
    review = read_review(default_storage(out))
    assert {t.number for t in review.complete} <= set(review.retrained)  # and the baselines, retrained before
    assert all(weights_path(out, n, 16384, space.train["seed"]).is_file() for n in review.retrained)
    assert main(["retrain", "run", "--trials", "al"]) == 2
    assert "--trials al: expected trial numbers such as 3,7,12, or all" in capsys.readouterr().err

    # The exported weights load in one call and score what was stored.
    assert main(["export", str(out), "--trial", str(number), "--weights", "-o", str(tmp_path / "best.yaml")]) == 0
    model = ConfigaFormer.from_config(tmp_path / "best.yaml", weights=tmp_path / "best.pt", verbose=False)
    corpus = load_corpus(space.data)
    scored = val_set(corpus, space.train["eval_seq_len"], space.train["eval_tokens"])
    assert evaluate(model, scored.batches, torch.device("cpu")) == pytest.approx(
        review.retrained[number][16384].mean, abs=1e-5)
