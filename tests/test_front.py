"""Front, hypervolume and winner selection on a real (in-memory) Optuna study with known values."""

import json

import optuna
import pytest

from configaformer_search.cli import main
from configaformer_search.errors import SpaceError
from configaformer_search.front import front_trials, hypervolume, knee, pick, pick_default

POINTS = [(1.0, 9.0), (2.0, 4.0), (3.0, 3.0), (4.0, 1.0), (5.0, 5.0), (3.5, 3.5)]  # the last two are dominated


@pytest.fixture
def study():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["minimize", "minimize"])
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        study.set_metric_names(["val_loss", "latency_ms"])
    for i, values in enumerate(POINTS):
        trial = study.ask()
        trial.set_user_attr("params", 1000 * (i + 1))
        trial.set_constraint("params<=", -1.0)
        study.tell(trial, list(values))
    infeasible = study.ask()
    infeasible.set_constraint("params<=", 0.5)
    study.tell(infeasible, [0.5, 0.5])  # would dominate everything, but breaks a constraint
    return study


def test_front_is_the_feasible_non_dominated_set(study):
    assert [t.number for t in front_trials(study)] == [0, 1, 2, 3]


def test_hypervolume_against_a_reference(study):
    # the staircase of the front below (6, 10): 5*1 + 4*5 + 3*1 + 2*2... computed by hand as the union of boxes
    expected = (6 - 1) * (10 - 9) + (6 - 2) * (9 - 4) + (6 - 3) * (4 - 3) + (6 - 4) * (3 - 1)
    assert hypervolume(study, [6.0, 10.0]) == pytest.approx(expected)
    assert hypervolume(study, [0.5, 0.5]) == 0.0


def test_pick_knee_and_default(study):
    assert pick_default(study).number == 0  # lowest val_loss on the front
    assert pick(study, "latency_ms<=3.5").number == 2
    assert pick(study, "latency_ms < 2, params >= 1000").number == 3
    assert knee(study).number == 1  # scaled to [0, 1]: (1/3, 3/8) is nearest the ideal corner
    with pytest.raises(SpaceError, match="no trial on the front of 4 meets 'latency_ms<=0.1'.*latency_ms from 1 to 9"):
        pick(study, "latency_ms<=0.1")
    with pytest.raises(SpaceError, match="unknown metric 'speed'"):
        pick(study, "speed<=1")
    with pytest.raises(SpaceError, match="cannot read 'latency_ms ~ 2'"):
        pick(study, "latency_ms ~ 2")


def test_a_front_with_no_feasible_trial_is_empty_and_said_so(tmp_path, capsys):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="tight", storage=storage, directions=["minimize", "minimize"])
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        study.set_metric_names(["val_loss", "latency_ms"])
    for values in POINTS[:3]:
        trial = study.ask()
        trial.set_constraint("peak_mem_mb<=", 0.5)  # measured, but over its bound
        study.tell(trial, list(values))
    assert front_trials(study) == []
    assert main(["front", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "(the front is empty: no trial has finished that meets the constraints)\n"
    assert main(["front", str(tmp_path), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["plot", str(tmp_path)]) == 0  # the trials, but no hypervolume history: it is zero throughout
    assert (tmp_path / "front.png").is_file() and not (tmp_path / "front_hypervolume.png").exists()
    assert main(["export", str(tmp_path)]) == 2
    assert "nothing to export" in capsys.readouterr().err
