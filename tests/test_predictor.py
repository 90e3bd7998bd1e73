"""The loss at the user's budget: the study-level predictor on curves of a known law, the ladder a space with a
target climbs, and a search over it (synthetic trials, real study) whose front ranks by that loss."""

import math

import numpy as np
import pytest
from helpers import write_space

from configaformer_search.predictor import StudyData, TargetPredictor, config_features
from configaformer_search.ranking import spearman
from configaformer_search.space import load_space

BRIEF, TARGET = 1000, 16000


def law(width: int, depth: int, tokens: int) -> float:
    """Deeper, wider configs start slower and go further: the brief loss ranks them against the long one."""
    size = width * depth / 100
    return 1.5 - 0.12 * size + (0.3 + 0.15 * size) * (tokens / BRIEF) ** -0.5


def study(configs, climbed=(), noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    data = StudyData()
    for width, depth in configs:
        budgets = [250, 500, 1000] + ([4000] if (width, depth) in climbed else [])
        data.add(f"{width}x{depth}", config_features({"width": width, "depth": depth}, {"nonemb_params": 100 * width * depth}),
                 {t: law(width, depth, t) + noise * rng.normal() for t in budgets})
    return data


CONFIGS = [(w, d) for w in (32, 48, 64, 96) for d in (1, 2, 3, 4)]


def test_the_predictor_ranks_the_long_budget_where_the_brief_loss_does_not():
    climbed = CONFIGS[::3]
    predictor = TargetPredictor(BRIEF, TARGET).fit(study(CONFIGS, climbed, noise=0.003))
    keys = [f"{w}x{d}" for w, d in CONFIGS]
    truth = [law(w, d, TARGET) for w, d in CONFIGS]
    brief = [law(w, d, BRIEF) for w, d in CONFIGS]
    predicted = [predictor.predict(k).mean for k in keys]
    assert spearman(brief, truth) < 0.5 < 0.9 < spearman(predicted, truth)
    accuracy = predictor.accuracy  # checked on the configs that climbed, each left out in turn
    assert accuracy.configs == len(climbed) and accuracy.tokens == 4000
    at_4x, brief_of = [law(w, d, 4000) for w, d in climbed], [law(w, d, BRIEF) for w, d in climbed]
    assert spearman(brief_of, at_4x) < 0 < accuracy.spearman  # left out, they rank better than by their brief loss
    held = [abs(t - predictor.predict(k).mean) <= 1.6449 * predictor.predict(k).sd for k, t in zip(keys, truth)]
    assert np.mean(held) >= 0.7  # the intervals hold the truth about as often as they claim


def test_predictions_made_together_at_the_fit_match_those_made_one_at_a_time():
    data = study(CONFIGS[:10], CONFIGS[:10:3], noise=0.003)
    data.add("unmeasured", config_features({"width": 40, "depth": 2}, {"nonemb_params": 3200}), {})
    together = TargetPredictor(BRIEF, TARGET).fit(data)  # its target's predictions made with the fit
    alone = TargetPredictor(BRIEF, 2 * TARGET).fit(data)  # the same fit, asked for TARGET one config at a time
    for key in [*data.points, "unmeasured"]:
        made, asked = together.predict(key), alone.predict(key, TARGET)
        assert made.mean == pytest.approx(asked.mean, rel=1e-9) and made.sd == pytest.approx(asked.sd, rel=1e-9)


def test_a_measured_config_is_not_predicted_and_an_unchecked_predictor_says_so():
    data = study(CONFIGS[:5])
    data.add("32x1", {}, {TARGET: 1.23})
    predictor = TargetPredictor(BRIEF, TARGET).fit(data)
    measured = predictor.predict("32x1")
    assert measured.measured and measured.mean == 1.23 and measured.sd == 0
    guessed = predictor.predict("48x1")
    assert not guessed.measured and guessed.sd > 0 and guessed.last_tokens == 1000
    assert math.isnan(predictor.accuracy.spearman)  # nothing past the brief budget but one config: unchecked


def test_a_target_makes_a_ladder_from_the_brief_budget(tmp_path, capsys):
    from configaformer_search.cli import main

    text = """
name: ladder
data: {source: embedded}
params: {width: {choice: [32, 48]}}
model: {dim_model: $width, layers: [{type: FFN}]}
train: {tokens: 8192, target_tokens: 131072, batch_size: 16, seq_len: 32}
objectives: {val_loss: min, params: min}
search: {reduction_factor: 4}
"""
    space = load_space(write_space(tmp_path, text))
    assert space.rungs() == [8192, 32768, 131072] and space.curve_points() == [2048, 4096]
    assert list(space.objectives) == ["val_loss_at_target", "params"] and space.train["schedule"] == "wsd"
    capped = load_space(write_space(tmp_path, text.replace("reduction_factor: 4", "reduction_factor: 4, max_tokens: 32768"), "c.yaml"))
    assert capped.rungs() == [8192, 32768]
    bad = text.replace("target_tokens: 131072", "target_tokens: 4096")
    assert main(["validate", str(write_space(tmp_path, bad, "bad.yaml"))]) == 2
    assert "train.target_tokens: expected a budget above train.tokens (8,192)" in capsys.readouterr().err
    bad = text.replace("target_tokens: 131072, ", "").replace("reduction_factor: 4", "max_tokens: 32768")
    assert main(["validate", str(write_space(tmp_path, bad, "bad2.yaml"))]) == 2
    assert "search.max_tokens: only a search with train.target_tokens" in capsys.readouterr().err


LADDER = """
name: synth
data: {source: embedded}
params:
  width: {choice: [32, 48, 64]}
  depth: {int: [1, 3]}
  heads: {choice: [2, 4]}
model:
  dim_model: $width
  position: alibi
  layers:
    repeat: $depth
    each:
      - {type: Attention, heads: $heads}
      - {type: FFN, ff_mult: 2}
train: {tokens: 8192, target_tokens: 131072, batch_size: 16, seq_len: 32, eval_tokens: 1024}
objectives: {val_loss: min, peak_mem_mb: min}
search: {trials: 12, sampler: random, reduction_factor: 4, max_tokens: 32768}
"""


@pytest.mark.slow
@pytest.mark.parametrize("objectives", ["{val_loss: min, peak_mem_mb: min}", "{peak_mem_mb: min, val_loss: min}"])
def test_a_search_with_a_target_puts_every_measured_config_on_its_front_by_its_loss_there(tmp_path, objectives, capsys):
    from configaformer_search.driver.samplers import make_sampler
    from configaformer_search.driver.searcher import Driver
    from configaformer_search.driver.synthetic import SyntheticCluster
    from configaformer_search.progress import Progress, plural
    from configaformer_search.review import read_review
    from configaformer_search.storage import StudyStore, open_storage

    baseline = "baselines: [{name: plain, params: {width: 64, depth: 3, heads: 4}}]\n"  # told while unchecked
    space = load_space(write_space(tmp_path, LADDER.replace("{val_loss: min, peak_mem_mb: min}", objectives) + baseline))
    loss = list(space.objectives).index("val_loss_at_target")  # wherever the space lists it
    url = f"sqlite:///{tmp_path / 'study.db'}"
    store = StudyStore.open(open_storage(url), space.name, space.objectives, make_sampler(space, "random", 0, 12),
                            space.distributions())
    driver = Driver(space, store, 256, 12, Progress(12, 0, list(space.objectives), 1))
    SyntheticCluster(driver, slots=2).run()
    store.set_study_attrs(**driver.predictions())
    first = next(line for line in capsys.readouterr().out.splitlines() if "rung 0 at 8,192 tokens" in line)
    assert "val_loss_at_target " in first and "±" not in first  # nothing climbed yet: no interval to stand by
    review = read_review(url)
    counted = review.measured
    assert len(counted) == 12 and all(t.state == "COMPLETE" for t in counted)  # stopped ones are predicted, not PRUNED
    kinds = {review.stored(t.number).outcome.kind.name for t in counted}
    assert kinds == {"measured", "predicted"}
    for row in counted:  # each told its loss at the target, with its sd, and how far it reached
        assert row.metrics["target_reach"] in (4.0, 16.0) and row.metrics["val_loss_at_target_sd"] > 0
        assert not row.metrics["target_measured"]
    latest = review.study.user_attrs["predictions"]
    assert {int(n) for n in latest} == {t.number for t in counted} | {b.number for b in review.baselines}
    assert [t.values[loss] for t in counted] == [latest[str(t.number)]["val_loss_at_target"] for t in counted]
    summary = "\n".join(review.summary("run"))
    climbed = sum("1" in review.stored(t.number).user_attrs["rungs"] for t in counted)
    spent = sum(t.metrics["tokens_spent"] for t in counted)  # each rung's share of it, as the trials spent it
    assert f"rungs: 8,192 tokens (12 configs, 98,304 tokens spent), 32,768 tokens ({plural(climbed, 'config')}, " \
           f"{climbed * (32768 - 8192):,} tokens spent); {spent:,} training tokens in all" in summary
    assert "val_loss_at_target: the loss at 131,072 tokens, measured for 0 and predicted for 12 configs; " \
           "predicted 4x past the longest measurement (32,768 tokens)" in summary
    assert "the predictor, checked on " in summary and "left out one at a time at 32,768 tokens: Spearman" in summary
    from configaformer_search.console import fitted
    from configaformer_search.tables import trials_frame

    plain = review.baselines[0]  # compared with the front by the final fit's prediction, as the configs are
    assert plain.values[loss] == latest[str(plain.number)]["val_loss_at_target"] and plain.sd("val_loss_at_target") > 0
    from configaformer_search.storage import read_study

    told = next(t for t in read_study(url).trials if t.number == plain.number).user_attrs
    assert told["val_loss_at_target_sd"] is None  # told before the predictor could be checked: no interval, as none
    table = fitted(trials_frame(review), list(review.names), width=200)  # every trial, the baseline among them
    assert next(line for line in table.splitlines() if line.startswith(f"{plain.number} ")).count("±") == 1
    resumed = Driver(space, store, 256, 12, Progress(12, 12, list(space.objectives), 0))
    SyntheticCluster(resumed, slots=2).run()  # the study is complete: nothing is measured again, the baseline included
    again = resumed.predictions()["predictions"]  # yet it is predicted by the resumed driver's final fit too
    assert len(read_study(url).trials) == len(review.trials) and again.keys() == latest.keys()

    # Every config retrained at the target (as `retrain --trials all` records it): the review checks the search's
    # ranking, front and intervals there.
    from configaformer_search.driver.synthetic import synthetic_loss
    from configaformer_search.predictor import Z90
    from configaformer_search.retrain import PREFIX

    truth = {t.number: synthetic_loss(t.params, 131072, 8192) for t in counted}
    store.set_study_attrs(train_tokens=8192,  # as `run` records it
                          **{f"{PREFIX}{n}:131072:0": {"status": "ok", "val_loss": v} for n, v in truth.items()})
    review = read_review(url)
    held = sum(abs(truth[t.number] - t.values[loss]) <= Z90 * t.metrics["val_loss_at_target_sd"] for t in review.measured)
    line = next(line for line in review.retrain_lines() if line.startswith("retrained at 131,072 tokens (16x)"))
    assert f"the 90% intervals of val_loss_at_target held {held} of the 12 predicted configs" in line
    rho = spearman([t.values[loss] for t in counted], [truth[t.number] for t in counted])
    assert f"ranks them at Spearman {rho:.2f} there" in line and rho > 0.8
    members = len(review.front)
    assert f"of the {members} front member{'s' * (members > 1)} retrained are on the front there" in line


def test_a_fit_that_fails_numerically_keeps_the_last_predictor_and_says_why(tmp_path, caplog):
    from configaformer_search.driver.targets import TargetModel

    model = TargetModel(load_space(write_space(tmp_path, LADDER)))
    model.brief, model.target = BRIEF, TARGET
    model.data = study(CONFIGS[:6])
    model.refit(force=True)
    fitted = model.predictor
    assert fitted is not None and model.summary()["fitted"] and "fit_failure" not in model.summary()
    model.data.add("broken", {"param:width": math.nan, "log_nonemb_params": math.inf}, {250: 3.0, 500: 2.5})
    model.refit(force=True)
    assert model.predictor is fitted  # the last good fit stands
    assert model.summary()["fit_failure"].startswith("ValueError") and "could not be fitted" in caplog.text


def test_a_config_confirmed_on_several_seeds_carries_their_spread_and_is_learnt_at_their_mean(tmp_path):
    from configaformer_search.driver.targets import TargetModel

    model = TargetModel(load_space(write_space(tmp_path, LADDER)))
    model.brief, model.target = BRIEF, TARGET
    for width, depth in CONFIGS[:6]:
        record = {"tokens_trained": 4000, "val_loss": law(width, depth, 4000), "nonemb_params": 100 * width * depth,
                  "curve": {str(t): law(width, depth, t) for t in (250, 500, 1000, 4000)}}  # the first seed's run
        if (width, depth) == CONFIGS[0]:  # the mean of its seeds, with their spread
            record.update(val_loss=law(width, depth, 4000) - 0.01, val_loss_sd=0.02)
        model.learn(f"{width}x{depth}", model.extra({"width": width, "depth": depth}, record))
    model.refit(force=True)
    confirmed, single = (model.fields(f"{w}x{d}") for w, d in CONFIGS[:2])
    assert model.data.points["32x1"][4000] == law(32, 1, 4000) - 0.01  # the seeds' mean, not the first seed's
    assert model.data.points["32x1"][1000] == law(32, 1, 1000)
    spread = model.predict("32x1").sd
    assert confirmed["val_loss_at_target_sd"] == pytest.approx(math.hypot(spread, 0.02))
    assert single["val_loss_at_target_sd"] == pytest.approx(model.predict("32x2").sd)


def test_intervals_are_withheld_until_the_predictor_can_be_checked_and_widened_by_each_check_during_a_search(tmp_path):
    from configaformer_search.driver.targets import TargetModel

    model = TargetModel(load_space(write_space(tmp_path, LADDER)))
    model.brief, model.target = BRIEF, TARGET
    assert model.fields("32x1")["val_loss_at_target_sd"] is None  # before any fit: its last point, no interval
    model.data = study(CONFIGS[:8], CONFIGS[:2])  # two configs past the brief budget: too few to check the fit
    model.refit(force=True)
    shown, unchecked = model.fields("48x2"), model.predict("48x2")
    assert math.isfinite(shown["val_loss_at_target"]) and shown["val_loss_at_target_sd"] is None
    assert not unchecked.checked and unchecked.sd > 0  # the fit's own sd still ranks promotions; it is not shown
    model.data.add("32x3", {}, {4000: law(32, 3, 4000) + 0.3})  # a third climbs, flatter than the law: a fit during
    # the search checks, and widens every interval by the error that finds
    model.refit(force=True)
    checked = model.predictor.accuracy
    assert checked is not None and checked.configs == 3 and checked.widening.checked and checked.widening.scale > 1
    widened = model.predict("48x2")
    assert model.fields("48x2")["val_loss_at_target_sd"] == pytest.approx(widened.sd) and widened.sd > widened.fit_sd
    assert widened.optimistic() == pytest.approx(widened.mean - widened.fit_sd)  # promotions: the fit's own sd
    model.data.add("40x2", config_features({"width": 40, "depth": 2}, {"nonemb_params": 8000}), {250: 2.9, 500: 2.5})
    model.refit(force=True)  # nothing new past the brief budget, the kernel kept: no check, the last one's widening
    assert model.predictor.accuracy is None and model.predictor.widening == checked.widening
    assert model.fields("40x2")["val_loss_at_target_sd"] == pytest.approx(model.predict("40x2").sd)


def test_a_kernel_on_some_columns_matches_its_kernel_on_those_columns_with_true_gradients():
    from scipy.optimize import approx_fprime
    from sklearn.gaussian_process.kernels import RBF

    from configaformer_search.kernels import OnColumns

    x = np.random.default_rng(0).normal(size=(7, 3))
    kernel, inner = OnColumns(RBF([0.7, 1.3]), [0, 2]), RBF([0.7, 1.3])
    value, gradient = kernel(x, eval_gradient=True)
    assert np.allclose(value, inner(x[:, [0, 2]])) and np.allclose(kernel.diag(x), 1.0)

    def at(theta):
        kernel.theta = theta
        return kernel(x)[2, 5]

    numeric = approx_fprime(kernel.theta, at, 1e-7)
    assert np.allclose(gradient[2, 5], numeric, atol=1e-5) and np.abs(numeric).max() > 1e-3


def test_the_kernel_is_searched_again_when_the_features_change_and_kept_while_they_do_not(tmp_path):
    from configaformer_search.driver.targets import TargetModel

    model = TargetModel(load_space(write_space(tmp_path, LADDER)))
    model.brief, model.target = BRIEF, TARGET
    model.data = study(CONFIGS[:6], CONFIGS[:6:2])
    model.refit(force=True)
    first = model.predictor.kernel
    model.data.add("new-choice", config_features({"width": 40, "depth": 2, "norm": "rms"}, {"nonemb_params": 8000}),
                   {250: 2.4, 500: 2.2, 1000: 2.1})  # one more one-hot column: the former kernel no longer fits
    model.refit(force=True)
    second = model.predictor.kernel
    assert second is not first and second.features == first.features + 1
    assert model.predictor.accuracy is not None  # a kernel searched afresh is checked, though nothing new climbed
    model.data.add("48x5", config_features({"width": 48, "depth": 5, "norm": "rms"}, {"nonemb_params": 24000}),
                   {250: 2.5, 500: 2.3})
    model.refit(force=True)
    assert model.predictor.kernel is second  # the study grew by under a quarter: the kernel stands


def test_a_study_measured_at_one_budget_holds_the_laws_budget_exponent_and_the_review_says_so(tmp_path):
    from configaformer_search.driver.targets import TargetModel
    from configaformer_search.review import build_review
    from configaformer_search.storage import StudyView

    model = TargetModel(load_space(write_space(tmp_path, LADDER)))
    model.brief, model.target = BRIEF, TARGET
    for width, depth in CONFIGS[:8]:  # one budget, past the brief one: the exponent would move if it were free
        model.data.add(f"{width}x{depth}", config_features({"width": width, "depth": depth},
                                                            {"nonemb_params": 100 * width * depth}),
                       {4000: law(width, depth, 4000)})
    model.refit(force=True, final=True)
    summary = model.summary()
    assert summary["law"]["budgets_measured"] == 1 and summary["law"]["budget_exponent"] == pytest.approx(0.5, abs=1e-6)
    study = StudyView("one-budget", ("minimize",), ("val_loss_at_target",), {"predictor": summary}, [])
    assert any("saw a single budget" in line and "assumed (exponent 0.50)" in line
               for line in build_review(study).ladder_lines())
