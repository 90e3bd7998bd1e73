"""Rankings that hold: seed-confirmed trials (real training on each seed), the front's leads that are within
the seed noise, and the rank statistics calibration reports."""

import math
import statistics

import optuna
import pytest
from helpers import TINY_SPACE, write_space

from configaformer_search import outcome, trial
from configaformer_search.cli import main
from configaformer_search.front import front_trials, leads_within_noise
from configaformer_search.ranking import kendall, noise_band, paired_sd, spearman
from configaformer_search.review import build_review
from configaformer_search.space import load_space
from configaformer_search.storage import StudyStore, default_storage, open_storage, read_study
from configaformer_search.tables import front_frame

PARAMS = {"width": 32, "heads": 2, "position": "alibi"}
FAST = TINY_SPACE.replace("tokens: 49152", "tokens: 8192").replace("eval_tokens: 4096", "eval_tokens: 1024")
CONFIRMED = FAST.replace("search: {trials: 4, sampler: random}", "search: {trials: 4, sampler: random, confirm_seeds: 2}")


def test_a_confirmed_trial_reports_the_mean_and_sd_of_independent_seeds(tmp_path):
    space = load_space(write_space(tmp_path, CONFIRMED))
    confirmed = trial.run(space, PARAMS, device="cpu")
    plain = trial.run(load_space(write_space(tmp_path, FAST, "plain.yaml")), PARAMS, device="cpu")
    assert confirmed["status"] == "ok" and confirmed["seeds"] == 3
    seeds = confirmed["seed_results"]
    assert list(seeds) == ["0", "1", "2"]
    assert seeds["0"] == plain["val_loss"]  # the trial's own seed, as an unconfirmed trial measures it
    tokens = space.train["tokens"]
    again = trial.measure_once(space, PARAMS, 1, [tokens], tokens, "cpu")
    assert seeds["1"] == again["val_loss"] and list(again["at"]) == [str(tokens)]  # a run of its own
    assert len(set(seeds.values())) == 3  # other weights, other batches: other losses
    assert confirmed["val_loss"] == pytest.approx(statistics.fmean(seeds.values()))
    assert confirmed["val_loss_sd"] == pytest.approx(statistics.stdev(seeds.values()))
    assert confirmed["val_bpb"] == pytest.approx(confirmed["val_loss"] / math.log(2))
    assert confirmed["tokens_spent"] == 3 * plain["tokens_spent"]
    assert "confirm_s" in confirmed["timings"]


def test_a_space_refuses_a_negative_seed_count(tmp_path, capsys):
    path = write_space(tmp_path, TINY_SPACE.replace("sampler: random}", "sampler: random, confirm_seeds: -1}"))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "search.confirm_seeds" in err and "expected a number >= 0" in err and err.count("\n") == 1


def confirmed_study(tmp_path, trials):
    """A study whose trials were recorded through the project's own path, each with made-up means and sds; read
    back as the review reads it."""
    space = load_space(write_space(tmp_path, TINY_SPACE.replace("latency_ms: min}", "}")))
    url = default_storage(tmp_path)
    store = StudyStore.open(open_storage(url), space.name, space.objectives, optuna.samplers.RandomSampler(seed=0))
    for loss, memory, sd in trials:
        asked, trial_id = store.ask()
        space.sample(asked)
        store.record(asked, trial_id, outcome.measured(val_loss=loss, val_loss_sd=sd, seeds=2, peak_mem_mb=memory,
                                                       config_key=f"{loss}-{memory}"))
    store.close()
    return read_study(url)


def noise_notes(study):
    names, directions = list(study.metric_names), list(study.directions)
    return leads_within_noise(study.trials, front_trials(study.trials, directions), names, directions)


def test_a_front_member_whose_lead_is_within_the_noise_is_marked(tmp_path, capsys):
    # Seed sd 0.02 pooled over the trials: two means of 2 seeds differ by noise up to 2 * 0.02 * sqrt(1/2 + 1/2).
    study = confirmed_study(tmp_path, [(2.50, 10, 0.02), (2.51, 12, 0.02),   # #0 leads #1 by 0.01: noise
                                       (2.40, 20, 0.02), (2.60, 25, 0.02)])  # #2 leads #3 by 0.2: a real lead
    notes = noise_notes(study)
    assert set(notes) == {0}
    assert notes[0] == "lead over #1 within noise (val_loss 0.01 < 0.04)"
    review = build_review(study)
    frame = front_frame(review)
    assert list(frame.index) == [0, 2] and frame.loc[0, "val_loss_sd"] == 0.02 and frame.loc[0, "seeds"] == 2
    assert frame.loc[0, "noise"] == notes[0] and frame.loc[2, "noise"] != frame.loc[2, "noise"]  # NaN: no note for #2
    assert [(t.number, bool(t.noise)) for t in review.front] == [(0, True), (2, False)]
    assert review.front[0].sd("val_loss") == 0.02 and review.front[0].sd("peak_mem_mb") == 0.0


def test_the_front_table_shows_means_with_their_sd(tmp_path, capsys):
    confirmed_study(tmp_path, [(2.50, 10, 0.02), (2.51, 12, 0.03), (2.40, 20, 0.01)])
    assert main(["front", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2.5 ± 0.02" in out and "2.4 ± 0.01" in out and "lead over #1 within noise" in out
    assert main(["report", str(tmp_path)]) == 0
    page = (tmp_path / "report.html").read_text()
    assert "2.5 ± 0.02" in page and "lead over #1 within noise" in page
    assert "#0 \\u2248" in page or "#0 ≈" in page  # the front's label in the plot's JSON
    assert main(["plot", str(tmp_path)]) == 0
    assert (tmp_path / "front.png").stat().st_size > 10_000


def test_without_confirmed_seeds_nothing_is_marked(tmp_path):
    study = confirmed_study(tmp_path, [(2.50, 10, None), (2.51, 12, None)])
    assert noise_notes(study) == {}
    assert not any(t.noise for t in build_review(study).front)


def test_rank_statistics_match_hand_counts():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4, 5], [3, 1, 2, 5, 4]) == pytest.approx(1 - 6 * 8 / (5 * 24))  # sum d^2 = 8
    assert kendall([1, 2, 3, 4, 5], [3, 1, 2, 5, 4]) == pytest.approx((7 - 3) / 10)  # 7 concordant, 3 discordant
    assert kendall([1, 2, 3], [1, 1, 2]) == pytest.approx(2 / math.sqrt(3 * 2))  # tau-b: a tie on one side
    assert math.isnan(spearman([1, 2], [1, 2])) and math.isnan(kendall([1, 1, 1], [1, 2, 3]))
    assert paired_sd([1.0, 2.0], [1.2, 1.8]) == pytest.approx(math.sqrt(0.02))  # each pair: (0.2)^2 / 2
    assert noise_band(0.05) == pytest.approx(2 * 0.05 * math.sqrt(2)) and noise_band(0.05, 2) == pytest.approx(0.1)
