"""The study's trials read with plain SQL (through SQLAlchemy, or sqlite3 for a review) are Optuna's own, field for
field; a trial's attributes written in one transaction read back as Optuna writes them."""

import math

import optuna
import pytest
from helpers import synthetic_run

from configaformer_search.records import study_trials
from configaformer_search.studyfile import StudyFile
from configaformer_search.study import default_storage, load_existing, write_attrs


def _fields(trial: optuna.trial.FrozenTrial) -> tuple:
    return (trial.number, trial.state, trial.values, trial.params, trial.distributions, trial.user_attrs,
            trial.system_attrs, trial.datetime_start, trial.datetime_complete, trial._trial_id)


def test_trials_read_from_the_tables_equal_optunas(tmp_path):
    out, _ = synthetic_run(tmp_path, trials=30)
    study = load_existing(default_storage(out))
    trial = study.ask()  # one still running, with an attribute in flight and a constraint
    write_attrs(study, trial, {"config_key": "x", "claimed": True, "odd": [1, {"a": None}]}, {"constraints:params<=": -0.5})
    expected = study.get_trials(deepcopy=False)
    got = study_trials(study)
    assert len(got) == len(expected) == 31
    assert [_fields(t) for t in got] == [_fields(t) for t in expected]
    assert got[-1].constraints == {"params<=": -0.5} and got[-1].user_attrs["odd"] == [1, {"a": None}]
    complete = study_trials(study, (optuna.trial.TrialState.COMPLETE,), from_number=10)
    assert [t.number for t in complete] == [t.number for t in expected[10:] if t.state.name == "COMPLETE"]


def test_a_review_reads_the_study_file_as_optuna_does_and_cannot_change_it(tmp_path):
    out, _ = synthetic_run(tmp_path, trials=12)
    study = load_existing(default_storage(out))
    running = study.ask()  # the driver still holds the file open, with a trial in flight
    write_attrs(study, running, {"config_key": "x"})
    reviewed = load_existing(StudyFile(out / "study.db"))
    assert (reviewed.study_name, reviewed.directions, reviewed.user_attrs, reviewed.metric_names) == \
           (study.study_name, study.directions, study.user_attrs, study.metric_names)
    assert [_fields(t) for t in study_trials(reviewed)] == [_fields(t) for t in study.get_trials(deepcopy=False)]
    assert [t.number for t in reviewed.get_trials(states=(optuna.trial.TrialState.RUNNING,))] == [running.number]
    assert _fields(reviewed._storage.get_trial(running._trial_id)) == _fields(study.trials[-1])
    with pytest.raises(PermissionError, match="read-only"):
        reviewed.set_user_attr("note", 1)
    with pytest.raises(PermissionError, match="read-only"):
        reviewed.ask()
    assert "note" not in study.user_attrs and len(study.trials) == 13


def test_attributes_written_at_once_overwrite_and_survive_infinities(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(storage=storage, directions=["minimize"])
    trial = study.ask()
    write_attrs(study, trial, {"a": 1, "b": "two"})
    write_attrs(study, trial, {"a": 3, "c": math.pi})  # an upsert: a is replaced, b kept
    study.tell(trial, [float("inf")])
    assert study_trials(study)[0].user_attrs == {"a": 3, "b": "two", "c": math.pi}
    assert study_trials(study)[0].values == [float("inf")] == study.get_trials()[0].values
