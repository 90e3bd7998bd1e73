"""Front, hypervolume and winner selection on a real Optuna study with known values, read back as the review reads it
(storage.read_study: StoredTrial lists, constraints from Optuna's own Trial.set_constraint)."""

import json

import optuna
import pytest

from configaformer_search import front as fronts
from configaformer_search.cli import main
from configaformer_search.errors import SpaceError
from configaformer_search.pareto import hypervolume, minimised
from configaformer_search.review import build_review
from configaformer_search.storage import read_study

POINTS = [(1.0, 9.0), (2.0, 4.0), (3.0, 3.0), (4.0, 1.0), (5.0, 5.0), (3.5, 3.5)]  # the last two are dominated
NAMES, DIRECTIONS = ["val_loss", "latency_ms"], ["minimize", "minimize"]


def known_study(folder, points=POINTS, bound=-1.0, infeasible=True) -> str:
    """A SQLite study (study.db in `folder`) whose trials have `points` as values, a `params` user attribute and
    the constraint value `bound`; with `infeasible`, one more trial that would dominate them all but breaks it."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{folder / 'study.db'}"
    study = optuna.create_study(study_name="known", storage=url, directions=DIRECTIONS)
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        study.set_metric_names(NAMES)
    for i, values in enumerate(points):
        trial = study.ask()
        trial.set_user_attr("params", 1000 * (i + 1))
        trial.set_user_attr("status", "ok")
        trial.set_constraint("params<=", bound)
        study.tell(trial, list(values))
    if infeasible:
        trial = study.ask()
        trial.set_user_attr("status", "ok")
        trial.set_constraint("params<=", 0.5)
        study.tell(trial, [0.5, 0.5])
    return url


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return read_study(known_study(tmp_path_factory.mktemp("front")))


@pytest.fixture(scope="module")
def review(study):
    return build_review(study)


def test_front_is_the_feasible_non_dominated_set(study, review):
    assert [t.number for t in fronts.front_trials(study.trials, DIRECTIONS)] == [0, 1, 2, 3]
    assert [t.number for t in review.front] == [0, 1, 2, 3]
    assert [t.number for t in fronts.candidates(study.trials)] == [0, 1, 2, 3, 4, 5]  # trial 6 is infeasible
    assert not study.trial(6).feasible and study.trial(6).constraints == {"params<=": 0.5}
    assert not review.trials[6].on_front and not review.trials[6].feasible


def test_a_maximised_objective_turns_the_front_around(study):
    flipped = fronts.front_trials(study.trials, ["maximize", "minimize"])
    assert [t.number for t in flipped] == [3, 4]  # (4, 1) and (5, 5): the largest first objective, then the least second


def test_hypervolume_against_a_reference(study, review):
    front = fronts.front_trials(study.trials, DIRECTIONS)
    points = minimised([t.values for t in front], DIRECTIONS)
    # the staircase of the front below (6, 10), as a union of boxes computed by hand
    expected = (6 - 1) * (10 - 9) + (6 - 2) * (9 - 4) + (6 - 3) * (4 - 3) + (6 - 4) * (3 - 1)
    assert hypervolume(points, [6.0, 10.0]) == pytest.approx(expected)
    assert hypervolume(points, [0.5, 0.5]) == 0.0
    assert fronts.reference_point(study.trials, DIRECTIONS) == pytest.approx([5.5, 9.9])  # the worst complete + 10%
    volumes = dict(review.hypervolume)  # the review's history, over the feasible complete trials in order
    reference = review.reference
    assert reference == pytest.approx([5.5, 9.9])
    assert volumes[0] == pytest.approx((reference[0] - 1) * (reference[1] - 9))
    assert volumes[5] == volumes[3] == pytest.approx(hypervolume(points, reference))  # dominated trials add nothing
    assert volumes[6] == volumes[5]  # nor does the infeasible one


def test_pick_knee_and_default(review):
    assert review.pick_default().number == 0  # lowest val_loss on the front
    assert review.pick("latency_ms<=3.5").number == 2
    assert review.pick("latency_ms < 2, params >= 1000").number == 3
    assert review.knee().number == 1  # scaled to [0, 1]: (1/3, 3/8) is nearest the ideal corner
    with pytest.raises(SpaceError, match="no trial on the front of 4 meets 'latency_ms<=0.1'.*latency_ms from 1 to 9"):
        review.pick("latency_ms<=0.1")
    with pytest.raises(SpaceError, match="unknown metric 'speed'"):
        review.pick("speed<=1")
    with pytest.raises(SpaceError, match="cannot read 'latency_ms ~ 2'"):
        review.pick("latency_ms ~ 2")


def test_the_front_functions_take_the_directions_they_are_given(study):
    front = fronts.front_trials(study.trials, DIRECTIONS)
    assert fronts.best(front, NAMES, DIRECTIONS).number == 0
    assert fronts.best(front, NAMES, ["maximize", "minimize"]).number == 3
    assert fronts.best(front, ["loss", "latency_ms"], ["minimize", "minimize"]).number == 0  # no val_loss: the first
    assert fronts.pick(front, "params>=3000", NAMES, DIRECTIONS).number == 2
    assert fronts.knee(front, DIRECTIONS).number == 1


def test_a_front_with_no_feasible_trial_is_empty_and_said_so(tmp_path, capsys):
    known_study(tmp_path, POINTS[:3], bound=0.5, infeasible=False)  # measured, but each over its bound
    assert fronts.front_trials(read_study(f"sqlite:///{tmp_path / 'study.db'}").trials, DIRECTIONS) == []
    assert main(["front", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "(the front is empty: no trial has finished that meets the constraints)\n"
    assert main(["front", str(tmp_path), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["plot", str(tmp_path)]) == 0  # the trials, but no hypervolume history: it is zero throughout
    assert (tmp_path / "front.png").is_file() and not (tmp_path / "front_hypervolume.png").exists()
    assert main(["export", str(tmp_path)]) == 2
    assert "nothing to export" in capsys.readouterr().err
