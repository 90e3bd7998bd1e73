"""`configaformer-search calibrate`: real training through the session's Ray, resumed from its folder. Each config
is trained at the budget on two seeds and at M x the budget on a third seed; under asha the first seed's run is also
measured at the first rung on the way."""

import contextlib
import io
import json
import math

import pandas as pd
import pytest
from helpers import write_space

from configaformer_search import trial
from configaformer_search.cli import main
from configaformer_search.ranking import kendall, paired_sd, spearman
from configaformer_search.space import load_space

SPACE = """
name: cal
data: {source: embedded}
params:
  width: {choice: [16, 32, 48]}
  heads: {choice: [2, 4]}
  depth: {int: [1, 2]}
model:
  dim_model: $width
  position: alibi
  layers:
    repeat: $depth
    each:
      - {type: Attention, heads: $heads}
      - {type: FFN, ff_mult: 2}
train: {tokens: 16384, batch_size: 16, seq_len: 32, lr: 1e-2, eval_tokens: 4096}
objectives: {val_loss: min, peak_mem_mb: min}
search: {seed: 3}
"""
ASHA = SPACE.replace("search: {seed: 3}", "search: {seed: 5, scheduler: asha, min_tokens: 4096}")  # rungs 4,096 / 16,384


def runs_of(out):
    """The records in calibration.jsonl (a line cut short by a kill is left out)."""
    lines = (out / "calibration.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{\"") and line.endswith("}")]


def params_of(table, config):
    return {k.removeprefix("param:"): int(v) for k, v in table.loc[config].items() if k.startswith("param:")}


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, ray_local):
    folder = tmp_path_factory.mktemp("calibrate")
    space = write_space(folder, SPACE)
    out = folder / "out"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["calibrate", str(space), "--configs", "4", "--mult", "2", "--out", str(out)])
    return space, out, code, printed.getvalue()


@pytest.mark.slow
def test_calibrate_trains_two_seeds_and_a_longer_budget_on_a_third_and_reports_agreement(calibrated):
    space_path, out, code, _ = calibrated
    assert code == 0
    table = pd.read_csv(out / "calibration.csv", index_col="config")
    assert list(table.index) == [0, 1, 2, 3] and table["key"].is_unique
    assert "val_loss@rung0" not in table  # fifo: no rungs on the way
    a, b, long = table["val_loss@seed0"], table["val_loss@seed1"], table["val_loss@2x"]
    assert (long < (a + b) / 2).all()  # twice the tokens: a lower loss for every config
    assert not (a == b).any()  # two seeds, two trainings
    summary = pd.read_csv(out / "calibration_summary.csv").iloc[0]
    assert summary["objective"] == "val_loss" and summary["configs"] == 4
    assert summary["rho_seeds"] == pytest.approx(spearman(a, b))
    assert summary["tau_seeds"] == pytest.approx(kendall(a, b))
    assert summary["rho_budgets"] == pytest.approx(spearman(a, long))  # one seed, as a search measures
    assert summary["tau_budgets"] == pytest.approx(kendall(a, long))
    assert summary["rho_budgets_mean"] == pytest.approx(spearman((a + b) / 2, long))  # the two seeds' mean
    assert summary["tau_budgets_mean"] == pytest.approx(kendall((a + b) / 2, long))
    assert summary["rho_proxy"] == pytest.approx(spearman(-table["nonemb_params"], long))
    assert math.isnan(summary["rho_first_rung"]) and math.isnan(summary["tau_first_rung"])
    assert summary["seed_sd"] == pytest.approx((((a - b) ** 2 / 2).mean()) ** 0.5) == pytest.approx(paired_sd(a, b))
    assert (out / "calibration.png").stat().st_size > 10_000
    # The longer run is on a seed of its own: seeds 0 and 1 at the budget, seed 2 at twice it, for every config.
    runs = runs_of(out)
    assert len(runs) == 12
    for config in range(4):
        assert sorted((r["seed"], r["tokens"]) for r in runs if r["config"] == config) == [(0, 16384), (1, 16384), (2, 32768)]
    # The budget run is what a search trial of that config measures.
    space = load_space(space_path)
    assert trial.run(space, params_of(table, 0), "cpu")["val_loss"] == pytest.approx(a[0], abs=1e-6)


@pytest.mark.slow
def test_calibrate_prints_its_findings_and_a_verdict(calibrated):
    _, _, _, printed = calibrated
    assert "calibrating 'cal': 4 configs x (2 seeds at 16,384 tokens + 1 at 2x, 32,768, on a third seed) = 12 runs" in printed
    assert printed.count("] config ") == 12
    for line in ("seed-to-seed sd", "seed 0 vs seed 1:", "16,384 (one seed) vs 32,768 tokens:",
                 "16,384 (two seeds' mean) vs 32,768:", "non-embedding params vs 2x:",
                 "verdict: at 16,384 tokens, val_loss differences under"):
        assert line in printed, line
    assert "first rung" not in printed  # fifo has none
    summary = pd.read_csv(calibrated[1] / "calibration_summary.csv").iloc[0]
    assert f"Spearman {summary['rho_budgets']:.2f}, Kendall {summary['tau_budgets']:.2f}" in printed
    assert f"Spearman {summary['rho_budgets_mean']:.2f}, Kendall {summary['tau_budgets_mean']:.2f}" in printed


@pytest.mark.slow
def test_calibrate_of_an_asha_space_reports_how_the_first_rung_ranks(tmp_path, ray_local, capsys):
    space_path = write_space(tmp_path, ASHA)
    out = tmp_path / "out"
    assert main(["calibrate", str(space_path), "--configs", "3", "--mult", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "calibrating 'cal': 3 configs x (2 seeds at 16,384 tokens + 1 at 2x, 32,768, on a third seed) = 9 runs" in printed
    assert "first rung (4,096) vs 16,384:" in printed
    table = pd.read_csv(out / "calibration.csv", index_col="config")
    rung0, a, b, long = table["val_loss@rung0"], table["val_loss@seed0"], table["val_loss@seed1"], table["val_loss@2x"]
    assert (rung0 > a).all()  # a quarter of the tokens: a higher loss for every config
    summary = pd.read_csv(out / "calibration_summary.csv").iloc[0]
    assert summary["rho_first_rung"] == pytest.approx(spearman(rung0, a))  # rung 0 against the full budget, one seed
    assert summary["tau_first_rung"] == pytest.approx(kendall(rung0, a))
    assert summary["rho_budgets"] == pytest.approx(spearman(a, long))
    assert summary["rho_budgets_mean"] == pytest.approx(spearman((a + b) / 2, long))
    assert f"Spearman {summary['rho_first_rung']:.2f}, Kendall {summary['tau_first_rung']:.2f}" in printed
    # Seeds 0 and 1 at the budget (the first measured at each rung on the way), seed 2 at twice it.
    runs = runs_of(out)
    assert len(runs) == 9
    for config in range(3):
        mine = {r["seed"]: r for r in runs if r["config"] == config}
        assert sorted(mine) == [0, 1, 2] and mine[2]["tokens"] == 32768 and mine[0]["tokens"] == mine[1]["tokens"] == 16384
        assert sorted(map(int, mine[0]["at"])) == [4096, 16384] and list(mine[1]["at"]) == ["16384"]
    # The first seed's run measures what a search trial of that config measures at each rung.
    told = []
    trial.run(load_space(space_path), params_of(table, 0), "cpu", report=lambda record: told.append(record) or True)
    assert [r["rung"] for r in told] == [0, 1]
    assert told[0]["val_loss"] == pytest.approx(rung0[0], abs=1e-6) and told[1]["val_loss"] == pytest.approx(a[0], abs=1e-6)


@pytest.mark.slow
def test_calibrate_resumes_and_trains_only_what_is_missing(calibrated, capsys):
    space, out, _, _ = calibrated
    before = (out / "calibration.csv").read_text()
    lines = (out / "calibration.jsonl").read_text().splitlines()
    (out / "calibration.jsonl").write_text("\n".join(lines[:-2]) + "\n" + lines[-2][:40])  # a kill mid-write
    capsys.readouterr()
    assert main(["calibrate", str(space), "--configs", "4", "--mult", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "resuming: 10 runs kept" in printed and printed.count("] config ") == 2
    assert (out / "calibration.csv").read_text() == before  # the same figures: each run is a function of its seed
    assert main(["calibrate", str(space), "--configs", "4", "--mult", "2", "--out", str(out)]) == 0
    assert "every run is measured already" in capsys.readouterr().out
    assert len({r["run"] for r in runs_of(out)}) == 12


def test_calibrate_refuses_too_few_configs_before_writing_anything(tmp_path, capsys):
    space = write_space(tmp_path, SPACE)
    assert main(["calibrate", str(space), "--configs", "2", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "configaformer-search: error: --configs: expected at least 3 configs to rank, got 2"
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_calibrate_of_a_space_with_a_target_reports_how_the_predictor_ranks(tmp_path, ray_local, capsys):
    from configaformer_search.predictor import StudyData, TargetPredictor, config_features

    space_path = write_space(tmp_path, SPACE.replace("eval_tokens: 4096}", "eval_tokens: 4096, target_tokens: 262144}"))
    out = tmp_path / "out"
    assert main(["calibrate", str(space_path), "--configs", "4", "--mult", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    table = pd.read_csv(out / "calibration.csv", index_col="config")
    summary = pd.read_csv(out / "calibration_summary.csv").iloc[0]
    # The first seed's run measures the brief curve a search measures (its points below the budget); the predictor,
    # fitted on those curves alone, is ranked against the longer runs.
    curve = load_space(space_path).curve_points()
    data, first = StudyData(), {r["config"]: r for r in runs_of(out) if r["seed"] == 0}
    for config, record in sorted(first.items()):
        assert sorted(map(int, record["at"])) == [*curve, 16384]
        data.add(str(config), config_features(params_of(table, config), record),
                 {int(t): v["val_loss"] for t, v in record["at"].items()})
    predictor = TargetPredictor(16384, 32768).fit(data, check=False)
    predicted = [predictor.predict(str(config)).mean for config in table.index]
    assert summary["rho_predictor"] == pytest.approx(spearman(predicted, table["val_loss@2x"]))
    assert "the predictor (brief curves) vs 2x:" in printed and f"Spearman {summary['rho_predictor']:.2f}" in printed
