"""Trial outcomes (outcome.py): every kind is stored as user attributes and read back as itself, with the budget,
front, owed and settling rules it declares; a repeat that reused a result never counts; unknown kinds are refused."""

import math

import pytest

from configaformer_search import outcome
from configaformer_search.outcome import KINDS, Kind, failed, is_measured, is_stopped, measured, outcome_of, reason, reused, stopped
from configaformer_search.storage import StudyStore, open_storage, read_study

# The declaration pinned: kind -> (Optuna state, counts towards --trials, owed again, settles a repeat).
DECLARED = {
    "measured": ("COMPLETE", True, False, True),
    "stopped": ("PRUNED", True, False, True),
    "predicted": ("COMPLETE", True, False, True),
    "oom": ("FAIL", True, False, True),
    "nan_loss": ("FAIL", True, False, True),
    "diverged": ("FAIL", True, False, True),
    "bad_metric": ("FAIL", True, False, True),
    "error": ("FAIL", True, False, True),
    "export": ("FAIL", True, False, True),
    "worker_died_twice": ("FAIL", True, False, True),
    "rejected": ("FAIL", False, False, True),
    "constraint": ("FAIL", False, False, True),
    "leaks_future": ("FAIL", False, False, True),
    "screened": ("FAIL", False, False, False),
    "interrupted": ("FAIL", False, True, False),
    "worker_died": ("FAIL", False, True, False),
    "withdrawn": ("FAIL", False, False, False),
}
REFUSALS = {"rejected", "constraint", "leaks_future"}


MEASUREMENTS = ("measured", "stopped", "predicted")  # the kinds that are not failures


def record_of(name: str, **metrics) -> dict:
    """The record a trial of this kind stores, made by the constructor its writers use."""
    if name == "measured":
        return measured(**metrics)
    if name == "stopped":
        return stopped("stopped at rung 0", rung=0, **metrics)
    if name == "predicted":
        return outcome.predicted("predicted from rung 0", rung=0, **metrics)
    return failed(name, f"ended as {name}", **metrics)


def test_the_declared_kinds_are_exactly_these():
    assert set(KINDS) == set(DECLARED)
    assert all(kind.name == name for name, kind in KINDS.items())


@pytest.mark.parametrize("name", sorted(DECLARED))
def test_every_kind_round_trips_through_its_attributes_with_its_declared_rules(name):
    state, counts, owed, settles = DECLARED[name]
    record = record_of(name, val_loss=2.5)
    got = outcome_of(record)
    assert got.kind is KINDS[name] and got.reused_from is None
    assert (got.state, got.counts, got.owed, got.settles) == (state, counts, owed, settles)
    assert got.front == (state == "COMPLETE") == got.kind.front
    assert got.kind.refusal == (name in REFUSALS)  # cost nothing, and refused again the same way
    assert record["val_loss"] == 2.5  # the metrics measured before the end are kept beside the outcome
    assert is_measured(record) == (name in MEASUREMENTS) and is_stopped(record) == (name in ("stopped", "predicted"))
    expected_status = {"measured": "ok", "stopped": "stopped", "predicted": "predicted"}.get(name, "failed")
    assert record["status"] == expected_status
    if expected_status == "failed":
        assert record["reason"] == name and record["message"] == f"ended as {name}" and reason(record) == name
    assert outcome_of(reused(record, 7)).kind is KINDS[name]


def test_a_stopped_trial_says_its_rung_and_a_predicted_one_says_it_was_predicted():
    assert reason(record_of("stopped")) == "stopped at rung 0"
    assert reason(record_of("predicted")) == "predicted from rung 0"


def test_a_trial_with_no_status_was_interrupted_by_its_drivers_death():
    assert outcome_of({}).kind is KINDS["interrupted"] and outcome_of({"val_loss": 1.0}).owed


@pytest.mark.parametrize("name", sorted(DECLARED))
def test_a_repeat_that_reused_a_result_never_counts_settles_or_joins_the_front(name):
    got = outcome_of(reused(record_of(name, val_loss=1.0), 3))
    assert got.reused_from == 3 and not got.counts and not got.settles and not got.front
    assert got.owed == DECLARED[name][2]
    assert got.state == ("PRUNED" if DECLARED[name][0] == "COMPLETE" else DECLARED[name][0])  # a reused COMPLETE is PRUNED
    assert reason(reused(record_of(name), 3)) == "same config as #3"


@pytest.mark.parametrize("unknown", ["nope", "measured", "stopped", "predicted", "OOM", ""])
def test_unknown_failure_kinds_are_refused_by_name(unknown):
    with pytest.raises(ValueError, match=f"unknown failure kind {unknown!r}; declared: .*nan_loss") as info:
        failed(unknown, "whatever")
    offered = str(info.value).split("declared: ")[1].split(", ")
    assert sorted(offered) == sorted(n for n in DECLARED if n not in MEASUREMENTS)  # failure kinds only


def test_a_kind_object_is_taken_by_its_name():
    assert failed(KINDS["oom"], "out of memory")["reason"] == "oom"
    stray = Kind("stray", "FAIL", counts=True, owed=False, settles=True, description="declared nowhere")
    with pytest.raises(ValueError, match="unknown failure kind 'stray'"):
        failed(stray, "a Kind that KINDS does not declare")


def test_every_kind_is_stored_and_read_back_from_a_real_study(tmp_path):
    """Through the writer (StudyStore.record, Optuna's tell) and the reader (read_study): the state it is told as,
    its outcome, and its values only where it may be on the front."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    store = StudyStore.open(open_storage(url), "kinds", {"val_loss": "min", "params": "min"})
    written = {}
    for name in sorted(DECLARED):
        trial, trial_id = store.ask()
        written[trial.number] = (name, store.record(trial, trial_id, record_of(name, val_loss=2.0, params=100)))
    trial, trial_id = store.ask()  # a repeat of a measured config, told that trial's result
    first_measured = next(n for n, (name, _) in written.items() if name == "measured")
    written[trial.number] = ("reused", store.record(trial, trial_id, reused(measured(val_loss=2.0, params=100), first_measured)))
    trial, trial_id = store.ask()  # a measured record whose objective is not finite fails as bad_metric
    written[trial.number] = ("inf", store.record(trial, trial_id, measured(val_loss=math.inf, params=100)))
    store.close()

    study = read_study(url)
    for stored in study.trials:
        name, told = written[stored.number]
        assert stored.outcome == told, name
        assert stored.state == told.state
        if name in DECLARED:
            assert stored.outcome.kind is KINDS[name] and stored.state == DECLARED[name][0]
        assert (stored.values is not None) == (stored.state == "COMPLETE")
    by_name = {written[t.number][0]: t for t in study.trials}
    assert by_name["reused"].state == "PRUNED" and by_name["reused"].outcome.reused_from == first_measured
    assert not by_name["reused"].outcome.counts
    assert by_name["inf"].outcome.kind is KINDS["bad_metric"] and by_name["inf"].state == "FAIL"
    counted = [t for t in study.trials if t.finished and t.outcome.counts]
    assert sorted(written[t.number][0] for t in counted) == sorted([*(n for n, rule in DECLARED.items() if rule[1]), "inf"])  # bad_metric counts
    assert outcome.MEASURED is KINDS["measured"] and outcome.WITHDRAWN is KINDS["withdrawn"]
