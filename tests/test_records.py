"""The study's trials read with plain SQL are Optuna's own, field for field; a trial's attributes written in one
transaction read back as Optuna writes them."""

import math

import optuna
from helpers import synthetic_run

from configaformer_search.records import study_trials
from configaformer_search.study import default_storage, load_existing, write_attrs


def test_trials_read_from_the_tables_equal_optunas(tmp_path):
    out, _ = synthetic_run(tmp_path, trials=30)
    study = load_existing(default_storage(out))
    trial = study.ask()  # one still running, with an attribute in flight and a constraint
    write_attrs(study, trial, {"config_key": "x", "claimed": True, "odd": [1, {"a": None}]}, {"constraints:params<=": -0.5})
    expected = study.get_trials(deepcopy=False)
    got = study_trials(study)
    assert len(got) == len(expected) == 31
    for mine, theirs in zip(got, expected):
        assert (mine.number, mine.state, mine.values, mine.params, mine.distributions, mine.user_attrs,
                mine.system_attrs, mine.datetime_start, mine.datetime_complete, mine._trial_id) == \
               (theirs.number, theirs.state, theirs.values, theirs.params, theirs.distributions, theirs.user_attrs,
                theirs.system_attrs, theirs.datetime_start, theirs.datetime_complete, theirs._trial_id)
    assert got[-1].constraints == {"params<=": -0.5} and got[-1].user_attrs["odd"] == [1, {"a": None}]
    complete = study_trials(study, (optuna.trial.TrialState.COMPLETE,), from_number=10)
    assert [t.number for t in complete] == [t.number for t in expected[10:] if t.state.name == "COMPLETE"]


def test_attributes_written_at_once_overwrite_and_survive_infinities(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(storage=storage, directions=["minimize"])
    trial = study.ask()
    write_attrs(study, trial, {"a": 1, "b": "two"})
    write_attrs(study, trial, {"a": 3, "c": math.pi})  # an upsert: a is replaced, b kept
    study.tell(trial, [float("inf")])
    assert study_trials(study)[0].user_attrs == {"a": 3, "b": "two", "c": math.pi}
    assert study_trials(study)[0].values == [float("inf")] == study.get_trials()[0].values
