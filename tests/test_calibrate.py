"""`configaformer-search calibrate`: real training through the session's Ray, resumed from its folder."""

import json

import pandas as pd
import pytest
from helpers import write_space

from configaformer_search import trial
from configaformer_search.cli import main
from configaformer_search.ranking import kendall, spearman
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


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, ray_local):
    folder = tmp_path_factory.mktemp("calibrate")
    space = write_space(folder, SPACE)
    out = folder / "out"
    code = main(["calibrate", str(space), "--configs", "4", "--mult", "2", "--out", str(out)])
    return space, out, code


def test_calibrate_trains_two_seeds_and_a_longer_budget_and_reports_agreement(calibrated, capsys):
    space_path, out, code = calibrated
    assert code == 0
    table = pd.read_csv(out / "calibration.csv", index_col="config")
    assert list(table.index) == [0, 1, 2, 3] and table["key"].is_unique
    a, b, long = table["val_loss@seed0"], table["val_loss@seed1"], table["val_loss@2x"]
    assert (long < (a + b) / 2).all()  # twice the tokens: a lower loss for every config
    assert not (a == b).any()  # two seeds, two trainings
    summary = pd.read_csv(out / "calibration_summary.csv").iloc[0]
    assert summary["objective"] == "val_loss" and summary["configs"] == 4
    assert summary["rho_seeds"] == pytest.approx(spearman(a, b))
    assert summary["tau_budgets"] == pytest.approx(kendall((a + b) / 2, long))
    assert summary["rho_proxy"] == pytest.approx(spearman(-table["nonemb_params"], long))
    assert summary["seed_sd"] == pytest.approx((((a - b) ** 2 / 2).mean()) ** 0.5)
    assert (out / "calibration.png").stat().st_size > 10_000
    # The budget run is what a search trial of that config measures.
    space = load_space(space_path)
    params = {k.removeprefix("param:"): v for k, v in table.loc[0].items() if k.startswith("param:")}
    assert trial.run(space, {k: int(v) for k, v in params.items()}, "cpu")["val_loss"] == pytest.approx(a[0], abs=1e-6)


def test_calibrate_prints_its_findings_and_a_verdict(tmp_path, ray_local, capsys):
    space = write_space(tmp_path, SPACE.replace("seed: 3", "seed: 5"))
    assert main(["calibrate", str(space), "--configs", "3", "--mult", "2", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "calibrating 'cal': 3 configs x (2 seeds at 16,384 tokens + 1 at 2x, 32,768) = 9 runs" in out
    assert out.count("] config ") == 9
    for line in ("seed-to-seed sd", "seed 0 vs seed 1:", "16,384 vs 32,768 tokens:", "non-embedding params vs 2x:",
                 "verdict: at 16,384 tokens, val_loss differences under"):
        assert line in out, line


def test_calibrate_resumes_and_trains_only_what_is_missing(calibrated, capsys, tmp_path):
    space, out, _ = calibrated
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
    runs = [json.loads(line) for line in (out / "calibration.jsonl").read_text().splitlines() if line.startswith("{\"")
            and line.endswith("}")]
    assert len({r["run"] for r in runs}) == 12


def test_calibrate_refuses_too_few_configs_before_writing_anything(tmp_path, capsys):
    space = write_space(tmp_path, SPACE)
    assert main(["calibrate", str(space), "--configs", "2", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "configaformer-search: error: --configs: expected at least 3 configs to rank, got 2"
    assert not (tmp_path / "out").exists()
