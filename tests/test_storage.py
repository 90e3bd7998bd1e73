"""The pin of the storage layer against Optuna, on SQLite and on PostgreSQL: every statement of storage/sql.py reads
what Optuna writes and writes what Optuna reads (trials field for field, attributes, heartbeats and stale trials,
claims), the schema version it was written for, the param values as Optuna gives them, the read-only review of a
SQLite file, and the storage URL and faults that never show a password.

Optuna's private `_get_stale_trial_ids` and `_trial_id` are used here, and only here, to pin our SQL to them."""

from __future__ import annotations

import contextlib
import datetime
import math
import sqlite3
import threading
import time

import optuna
import pytest
import sqlalchemy
from optuna.distributions import (CategoricalDistribution, FloatDistribution, IntDistribution, distribution_to_json,
                                  json_to_distribution)
from optuna.trial import TrialState

from configaformer_search.errors import UsageError
from configaformer_search.storage import read_study, reader, sql
from configaformer_search.storage.faults import storage_call, storage_fault
from configaformer_search.storage.records import external_value
from configaformer_search.storage.urls import redacted

DIRECTIONS = ["minimize", "maximize"]
NAMES = ["val_loss", "score"]
ACT = CategoricalDistribution(["gelu", '["silu", "none"]', None, True, False, 3, 2.5])  # how the space records lists
DISTRIBUTIONS = {
    "width": IntDistribution(16, 64, step=16),
    "depth": IntDistribution(1, 32, log=True),
    "lr": FloatDistribution(1e-4, 1e-1, log=True),
    "dropout": FloatDistribution(0.0, 0.5, step=0.25),
    "wd": FloatDistribution(0.0, 1.0),
    "act": ACT,
}
ATTRS = {"config_key": "k0", "nested": [1, {"a": None, "b": [True, 2.5]}], "text": 'quote " comma , ] bracket ü',
         "big": 2**53 + 1, "inf": float("inf"), "empty": {}, "zero": 0.0}


@pytest.fixture(autouse=True)
def _quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)]  # a server start: the slow tier


def database(request, tmp_path_factory, hint: str):
    """A new empty database of the backend `request.param` names: its URL, and a function that drops it."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp(hint) / 'study.db'}", lambda: None
    server = request.getfixturevalue("postgres_server")
    name = server.create_database(hint)
    return server.url(name), lambda: server.drop_database(name)


@pytest.fixture(scope="module", params=BACKENDS)
def url(request, tmp_path_factory):
    """A database shared by the tests that write (each in a study of its own): a SQLite file, or a PostgreSQL
    database (creating Optuna's tables takes seconds)."""
    url, drop = database(request, tmp_path_factory, "shared")
    yield url
    drop()


@pytest.fixture(scope="module", params=BACKENDS)
def populated(request, tmp_path_factory):
    """The URL of a database that `populate` filled, shared by the tests that only read it."""
    url, drop = database(request, tmp_path_factory, "populated")
    populate(url)
    yield url
    drop()


_STORAGES: dict[str, optuna.storages.RDBStorage] = {}


def optuna_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's own storage of a database, for its reads: one per URL (opening one checks the schema), each
    load_study over it reading afresh."""
    if url not in _STORAGES:
        _STORAGES[url] = optuna.storages.RDBStorage(url)
    return _STORAGES[url]


def load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=optuna_storage(url))


class Database:
    """Our own connection to the study's database (not Optuna's), as sql.py's callers make it."""

    def __init__(self, url: str) -> None:
        arguments = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
        self.engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool, **arguments)
        self.dialect = self.engine.dialect.name

    def query(self, text: str, arguments: dict) -> list:
        with self.engine.connect() as connection:
            return connection.execute(sqlalchemy.text(text), arguments).fetchall()

    @contextlib.contextmanager
    def transaction(self):
        with self.engine.begin() as connection:
            yield lambda text, arguments: connection.execute(sqlalchemy.text(text), arguments)


def populate(url: str) -> optuna.Study:
    """A study with a trial in every state, every kind of param, values with infinities, user and system attributes
    and constraints, trials asked and told and trials added whole; and a second study beside it."""
    storage = optuna.storages.RDBStorage(url)
    study = optuna.create_study(study_name="pinned", storage=storage, directions=DIRECTIONS,
                                sampler=optuna.samplers.RandomSampler(seed=0))
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        study.set_metric_names(NAMES)
    study.set_user_attr("space", {"name": "tiny", "rungs": [1, 2]})
    study.set_user_attr("seed", 3)

    def asked():
        return study.ask(fixed_distributions=DISTRIBUTIONS)

    for values in ([1.5, 2.0], [math.inf, -math.inf], [-math.inf, math.inf], [0.25, 1e300]):
        trial = asked()
        trial.set_user_attr("status", "ok")
        trial.set_constraint("params<=", -0.5)
        trial.set_constraint("latency_ms<=", 0.0)
        study.tell(trial, values)
    for i, choice in enumerate(ACT.choices):  # every choice once, in trials added whole (Optuna's other way in)
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.COMPLETE, values=[float(i), 1.0], params={"act": choice, "width": 16 * (1 + i % 4), "lr": 1e-3},
            distributions={k: DISTRIBUTIONS[k] for k in ("act", "width", "lr")}, user_attrs={"status": "ok", "added": i},
            system_attrs={"custom": {"a": [i, None]}, "constraints:params<=": -1.0 + i / 4}))
    pruned = asked()
    pruned.set_user_attr("status", "stopped")
    study.tell(pruned, state=TrialState.PRUNED)
    failed = asked()
    for key, value in ATTRS.items():
        failed.set_user_attr(key, value)
    failed.set_constraint("params<=", 0.75)
    study.tell(failed, state=TrialState.FAIL)
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.COMPLETE, values=[3.0, 4.0], params={"width": 48, "lr": 0.01, "act": True},
        distributions={k: DISTRIBUTIONS[k] for k in ("width", "lr", "act")}, user_attrs={"status": "ok", "added": 1},
        system_attrs={"custom": {"a": [1, None]}}))
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, params={}, distributions={}))
    running = asked()
    running.set_user_attr("config_key", "in flight")
    running.set_constraint("params<=", 1.0)
    storage.set_trial_system_attr(running._trial_id, "custom", [1, "two", None])
    study.enqueue_trial({"width": 32}, user_attrs={"resumes": 3})  # WAITING
    other = optuna.create_study(study_name="other", storage=storage)
    other.tell(other.ask({"x": FloatDistribution(0, 1)}), 0.5)
    return study


def typed(params: dict) -> list:
    """Params with their types: 1 == 1.0 == True, but a param drawn as an int is not one drawn as a bool."""
    return sorted((name, type(value).__name__, repr(value)) for name, value in params.items())


def fields(trial) -> tuple:
    """A StoredTrial's or an Optuna FrozenTrial's fields, in one form."""
    if isinstance(trial, optuna.trial.FrozenTrial):
        return (trial.number, trial._trial_id, trial.state.name, None if trial.values is None else tuple(trial.values),
                typed(trial.params), trial.distributions, trial.user_attrs, trial.system_attrs, trial.constraints,
                trial.datetime_start, trial.datetime_complete, trial.duration)
    return (trial.number, trial.trial_id, trial.state, trial.values, typed(trial.params),
            {name: json_to_distribution(text) for name, text in trial.distributions.items()}, trial.user_attrs,
            trial.system_attrs, trial.constraints, trial.datetime_start, trial.datetime_complete, trial.duration)


def test_trials_read_with_plain_sql_are_optunas_field_for_field(populated):
    url = populated
    expected = load(url, "pinned").trials
    db = Database(url)
    study_id, name = sql.study_row(db.query, "pinned")
    got = sql.read_trials(db.query, study_id)
    assert name == "pinned" and len(got) == len(expected) == 17
    assert {t.state for t in got} == {"COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"}
    for ours, theirs in zip(got, expected):
        assert fields(ours) == fields(theirs), ours.number
    reviewed = read_study(url, "pinned")  # the review's reader: sqlite3 for a file, SQLAlchemy otherwise
    assert [fields(t) for t in reviewed.trials] == [fields(t) for t in expected]
    assert got[1].values == (math.inf, -math.inf) and got[2].values == (-math.inf, math.inf)
    assert {t.params["act"] for t in got[4:11]} == set(ACT.choices) and got[5].params["act"] == '["silu", "none"]'
    assert got[0].constraints == {"params<=": -0.5, "latency_ms<=": 0.0} and got[0].feasible
    assert got[12].constraints == {"params<=": 0.75} and not got[12].feasible  # as Trial.set_constraint stored it
    assert got[12].user_attrs == ATTRS
    assert got[15].system_attrs["custom"] == [1, "two", None] and got[15].finished is False
    assert got[16].state == "WAITING" and got[16].user_attrs == {"resumes": 3} and got[16].params == {}
    assert all(isinstance(t.datetime_start, datetime.datetime) for t in got if t.state != "WAITING")
    assert got[0].duration == expected[0].datetime_complete - expected[0].datetime_start
    assert [fields(t) for t in sql.read_trials(db.query, sql.study_row(db.query, "other")[0])] == \
           [fields(t) for t in load(url, "other").trials]


def test_reading_some_trials_picks_what_optuna_would(populated):
    url = populated
    expected = load(url, "pinned").trials
    db = Database(url)
    study_id, _ = sql.study_row(db.query, "pinned")

    def numbers(**arguments):
        return [t.number for t in sql.read_trials(db.query, study_id, **arguments)]

    for states in (["COMPLETE"], ["RUNNING", "WAITING"], ["FAIL", "PRUNED"], ["WAITING"]):
        assert numbers(states=states) == [t.number for t in expected if t.state.name in states]
    assert numbers(first=10) == list(range(10, 17))
    assert numbers(numbers=[3, 0, 16, 99]) == [0, 3, 16] and numbers(numbers=[]) == []
    assert numbers(states=["COMPLETE"], first=5, numbers=[2, 6, 13, 14]) == [6, 13]
    assert sql.trial_states(db.query, study_id) == [(t.number, t.state.name) for t in expected]
    assert sql.trial_states(db.query, study_id, first=15) == [(15, "RUNNING"), (16, "WAITING")]
    assert [sql.trial_id(db.query, study_id, t.number) for t in expected] == [t._trial_id for t in expected]
    with pytest.raises(KeyError):
        sql.trial_id(db.query, study_id, 17)


def test_no_states_read_no_trials(populated):
    db = Database(populated)
    study_id, _ = sql.study_row(db.query, "pinned")
    assert sql.read_trials(db.query, study_id, states=[]) == []
    assert load(populated, "pinned").get_trials(states=()) == []


def test_the_study_row_directions_attributes_and_metric_names_are_optunas(populated):
    url = populated
    study = load(url, "pinned")
    db = Database(url)
    study_id, name = sql.study_row(db.query, "pinned")
    assert study_id == study._study_id and name == "pinned"
    assert sql.study_directions(db.query, study_id) == ("minimize", "maximize")
    assert sql.study_attrs(db.query, study_id) == study.user_attrs == {"space": {"name": "tiny", "rungs": [1, 2]}, "seed": 3}
    system = sql.study_attrs(db.query, study_id, "study_system_attributes")
    assert system == optuna_system_attrs(url, study_id)
    assert system[sql.METRIC_NAMES_KEY] == NAMES  # where set_metric_names keeps them
    view = read_study(url, "pinned")
    assert (view.name, view.directions, view.metric_names, view.user_attrs) == ("pinned", tuple(DIRECTIONS), tuple(NAMES),
                                                                               study.user_attrs)
    with pytest.raises(KeyError, match="no study named 'nope'"):
        sql.study_row(db.query, "nope")
    with pytest.raises(ValueError, match="expected one study, found 2"):
        sql.study_row(db.query)


def test_the_schema_is_the_one_the_sql_was_written_for(populated):
    assert sql.SCHEMA_VERSION == optuna.storages.RDBStorage(populated).get_current_version()


def test_a_running_trials_attributes_written_at_once_read_back_as_optuna_writes_them(url):
    storage = optuna_storage(url)
    study = optuna.create_study(storage=storage, directions=["minimize"])
    trial = study.ask()
    trial.set_user_attr("kept", "by optuna")
    db = Database(url)
    with db.transaction() as execute:
        assert sql.write_trial_attrs(execute, trial._trial_id, {"a": 1, "b": "two", "kept": ["over", "written"]})
    with db.transaction() as execute:
        assert sql.write_trial_attrs(execute, trial._trial_id, {"a": 3, **ATTRS})  # an upsert: a replaced, b kept
    again = load(url, study.study_name).trials[0]
    assert again.user_attrs == {"kept": ["over", "written"], "a": 3, "b": "two", **ATTRS}
    assert sql.read_trials(db.query, study._study_id)[0].user_attrs == again.user_attrs
    study.tell(trial, [1.0])
    with db.transaction() as execute:
        assert sql.write_trial_attrs(execute, trial._trial_id, {"late": 1, "a": 4}) is False
    after = load(url, study.study_name).trials[0]
    assert "late" not in after.user_attrs and after.user_attrs["a"] == 3  # refused whole, as Optuna refuses
    with pytest.raises(RuntimeError):
        storage.set_trial_user_attr(trial._trial_id, "late", 1)


def test_writing_no_attributes_to_a_running_trial_writes_nothing(url):
    study = optuna.create_study(storage=optuna_storage(url))
    trial = study.ask()
    with Database(url).transaction() as execute:
        assert sql.write_trial_attrs(execute, trial._trial_id, {}) is True
    assert load(url, study.study_name).trials[0].user_attrs == {}


def test_heartbeats_and_stale_trials_agree_with_optunas_own(url):
    grace = 1
    storage = optuna.storages.RDBStorage(url, heartbeat_interval=grace, grace_period=grace)
    study = optuna.create_study(storage=storage)
    other = optuna.create_study(storage=storage)
    by_optuna, by_us, again, unbeaten, done = (study.ask() for _ in range(5))
    theirs = other.ask()
    db = Database(url)
    study_id = study._study_id

    long_ago = datetime.datetime(2000, 1, 1)  # no trial without a heartbeat started before: Optuna's rule alone

    def stale() -> tuple[list[int], list[int]]:
        return sorted(sql.stale_trial_ids(db.query, db.dialect, study_id, grace, long_ago)), \
            sorted(storage._get_stale_trial_ids(study_id))

    started = time.monotonic()
    storage.record_heartbeat(by_optuna._trial_id)
    with db.transaction() as execute:
        sql.record_heartbeats(execute, [by_us._trial_id, again._trial_id, done._trial_id, theirs._trial_id])
        sql.record_heartbeats(execute, [])
    study.tell(done, 1.0)
    fresh = stale()
    if time.monotonic() - started < grace * 0.9:  # read within the grace period: nothing is stale yet
        assert fresh == ([], [])
    time.sleep(max(0.0, started + 2 * grace + 0.3 - time.monotonic()))  # past the grace, at whole-second resolution
    dead = sorted(t._trial_id for t in (by_optuna, by_us, again))
    assert stale() == (dead, dead)  # what either wrote, found by either; the finished and the unbeaten are not
    with db.transaction() as execute:
        sql.record_heartbeats(execute, [by_optuna._trial_id])  # our beat updates Optuna's row
    storage.record_heartbeat(by_us._trial_id)  # Optuna's updates ours
    assert stale() == ([again._trial_id], [again._trial_id])
    assert sorted(storage._get_stale_trial_ids(other._study_id)) == \
           sorted(sql.stale_trial_ids(db.query, db.dialect, other._study_id, grace, long_ago)) == [theirs._trial_id]
    assert unbeaten._trial_id not in stale()[0]
    later = datetime.datetime.now() + datetime.timedelta(days=1)  # a trial that never beat, asked long enough ago
    assert unbeaten._trial_id in sql.stale_trial_ids(db.query, db.dialect, study_id, grace, later)


def optuna_system_attrs(url: str, study_id: int) -> dict:
    """A study's system attributes as Optuna reads them (through a storage of its own)."""
    return optuna_storage(url).get_study_system_attrs(study_id)


def claim_in(db: Database, study_id: int, key: str, value) -> bool:
    with db.transaction() as execute:
        return sql.claim(execute, study_id, key, value)


def test_a_claim_is_taken_by_exactly_one_of_two_writers(url):
    study = optuna.create_study(storage=optuna_storage(url))
    writers = [Database(url), Database(url)]
    for round_ in range(4):
        key, start, won = f"cf:config:k{round_}", threading.Barrier(2), {}

        def take(i: int) -> None:
            start.wait()
            won[i] = claim_in(writers[i], study._study_id, key, {"trial": i, "round": round_})

        threads = [threading.Thread(target=take, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert sorted(won.values()) == [False, True], won
        winner = [i for i, took in won.items() if took][0]
        assert optuna_system_attrs(url, study._study_id)[key] == {"trial": winner, "round": round_}
    assert not claim_in(writers[0], study._study_id, "cf:config:k0", "again")  # taken stays taken


def test_release_and_update_touch_only_a_claim_that_still_holds_the_value(url):
    study = optuna.create_study(storage=optuna_storage(url))
    db, study_id = Database(url), study._study_id

    def stored() -> dict:
        return optuna_system_attrs(url, study_id)

    assert claim_in(db, study_id, "cf:place:0", {"trial": 1, "waiting": None})
    assert claim_in(db, study_id, "cf:place:1", {"waiting": 2, "trial": 5})
    with db.transaction() as execute:
        sql.release(execute, study_id, [("cf:place:0", {"trial": 2, "waiting": None})])  # taken again since: kept
        sql.release(execute, study_id, [])
    assert stored()["cf:place:0"] == {"trial": 1, "waiting": None}
    with db.transaction() as execute:
        assert sql.update_claim(execute, study_id, "cf:place:0", {"waiting": None, "trial": 1}, {"trial": 1, "waiting": 0})
        assert not sql.update_claim(execute, study_id, "cf:place:0", {"trial": 1, "waiting": None}, {"trial": 9})
        assert not sql.update_claim(execute, study_id, "cf:place:7", None, 1)  # no such claim
    assert stored()["cf:place:0"] == {"trial": 1, "waiting": 0}
    with db.transaction() as execute:  # several at once, each by its value (key order in a value does not matter)
        sql.release(execute, study_id, [("cf:place:0", {"waiting": 0, "trial": 1}), ("cf:place:1", {"trial": 5, "waiting": 2})])
    assert "cf:place:0" not in stored() and "cf:place:1" not in stored()
    assert claim_in(db, study_id, "cf:place:0", {"trial": 3, "waiting": None})  # free to be taken again


def test_claims_by_prefix_read_only_rows_newer_than_the_last_seen(url):
    storage = optuna_storage(url)
    study, other = optuna.create_study(storage=storage), optuna.create_study(storage=storage)
    db = Database(url)
    for key in ("cf:rung:0:a", "cf:place:0", "cf:rung:1:b"):
        assert claim_in(db, study._study_id, key, {"values": [1.0, 2.0], "penalty": 0.0, "key": key})
    claim_in(db, other._study_id, "cf:rung:0:z", 1)  # another study's
    storage.set_study_system_attr(study._study_id, "cf:rung:0:by-optuna", [3])  # written by Optuna: read all the same
    rows = sql.claims(db.query, study._study_id, "cf:rung:")
    assert [key for _, key, _ in rows] == ["cf:rung:0:a", "cf:rung:1:b", "cf:rung:0:by-optuna"]
    assert rows[0][2] == {"values": [1.0, 2.0], "penalty": 0.0, "key": "cf:rung:0:a"} and rows[2][2] == [3]
    ids = [row_id for row_id, _, _ in rows]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert [key for _, key, _ in sql.claims(db.query, study._study_id, "cf:rung:", after=ids[0])] == ["cf:rung:1:b", "cf:rung:0:by-optuna"]
    assert sql.claims(db.query, study._study_id, "cf:rung:", after=ids[-1]) == []
    claim_in(db, study._study_id, "cf:rung:2:c", 5)
    assert [(key, value) for _, key, value in sql.claims(db.query, study._study_id, "cf:rung:", after=ids[-1])] == [("cf:rung:2:c", 5)]
    assert [key for _, key, _ in sql.claims(db.query, study._study_id, "cf:place:")] == ["cf:place:0"]
    assert sql.claims(db.query, study._study_id, "cf:none:") == []


CATEGORICAL_CHOICES = [[1, 2], None, True, False, "a", 2.5, 3, 0, ["silu", "none"], {"k": [1]}]


@pytest.mark.parametrize("distribution, internals", [
    (IntDistribution(1, 9), [1.0, 4.0, 9.0]),
    (IntDistribution(2, 64, log=True), [2.0, 17.0, 64.0]),
    (IntDistribution(0, 100, step=25), [0.0, 75.0]),
    (FloatDistribution(0.0, 1.0), [0.0, 0.123456789, 1.0]),
    (FloatDistribution(1e-5, 1.0, log=True), [1e-5, 3.3e-3]),
    (FloatDistribution(0.0, 1.0, step=0.25), [0.25, 1.0]),
    (CategoricalDistribution(["gelu", '["silu", "none"]']), [0.0, 1.0]),
    ("categorical lists, None and bools", list(map(float, range(len(CATEGORICAL_CHOICES))))),
    (optuna.distributions.IntUniformDistribution(1, 5), [3.0]),  # the names of older studies
    (optuna.distributions.IntLogUniformDistribution(1, 8), [8.0]),
    (optuna.distributions.UniformDistribution(0, 2), [1.5]),
    (optuna.distributions.LogUniformDistribution(1e-3, 1), [0.01]),
    (optuna.distributions.DiscreteUniformDistribution(0, 1, 0.5), [0.5]),
], ids=lambda v: type(v).__name__ if not isinstance(v, (list, str)) else None)
def test_a_stored_param_is_given_back_as_optuna_gives_it(distribution, internals):
    if isinstance(distribution, str):
        with pytest.warns(UserWarning, match="should be a tuple of None, bool, int, float and str"):
            distribution = CategoricalDistribution(CATEGORICAL_CHOICES)
    text = distribution_to_json(distribution)
    for internal in internals:
        ours, theirs = external_value(text, internal), json_to_distribution(text).to_external_repr(internal)
        assert (type(ours), ours) == (type(theirs), theirs)
    if isinstance(distribution, CategoricalDistribution) and len(internals) > 2:
        assert [external_value(text, i) for i in internals] == CATEGORICAL_CHOICES


def read_only_write(query) -> str:
    """What a write through the review's connection meets."""
    with pytest.raises(sqlite3.OperationalError) as refused:
        query("INSERT INTO study_user_attributes (study_id, key, value_json) VALUES (1, 'note', '1')", {})
    return str(refused.value)


def test_a_review_reads_a_sqlite_file_read_only_and_a_writer_does_not_disturb_it(tmp_path, monkeypatch):
    from configaformer_search.storage import StudyStore, open_storage

    url = f"sqlite:///{tmp_path / 'study.db'}"
    store = StudyStore.open(open_storage(url), "review", {"val_loss": "min"})  # a driver: WAL mode, still open
    for value in (1.0, 2.0):
        trial, trial_id = store.ask()
        store.record(trial, trial_id, {"status": "ok", "val_loss": value})
    refusals = []
    read = reader._read
    monkeypatch.setattr(reader, "_read", lambda query, *rest: refusals.append(read_only_write(query)) or read(query, *rest))

    writer = store.storage.engine.connect()  # a writer in the middle of a transaction, not yet committed
    writer.exec_driver_sql("BEGIN IMMEDIATE")
    writer.exec_driver_sql("UPDATE trial_values SET value = 99 WHERE value = 1.0")
    writer.exec_driver_sql("INSERT INTO study_user_attributes (study_id, key, value_json) VALUES (1, 'uncommitted', '1')")
    try:
        view = read_study(url)
    finally:
        writer.rollback()
        writer.close()
    assert refusals and "readonly" in refusals[0].replace("-", "")
    assert [t.values for t in view.trials] == [(1.0,), (2.0,)] and "uncommitted" not in view.user_attrs

    stop, errors, reads = threading.Event(), [], []

    def write() -> None:  # trials told one after another while the review reads
        try:
            while not stop.is_set():
                trial, trial_id = store.ask()
                store.record(trial, trial_id, {"status": "ok", "val_loss": 3.0})
        except Exception as err:
            errors.append(err)

    thread = threading.Thread(target=write)
    thread.start()
    try:
        for _ in range(8):
            trials = read_study(url).trials
            reads.append(len(trials))
            assert all(t.state != "COMPLETE" or t.values for t in trials)  # never a half-told trial
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not errors and reads == sorted(reads)
    store.close()  # back to a rollback journal
    before = (tmp_path / "study.db").stat()
    view = read_study(url)
    after = (tmp_path / "study.db").stat()
    assert len(view.trials) >= reads[-1] and (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert len(refusals) == 10


# -- URLs and faults that never show a password ----------------------------------------------------------------

SECRET = "p@ss:w/rd%#?&= ü"


def url_with(password: str, host: str = "db.example", **query) -> str:
    return sqlalchemy.engine.URL.create("postgresql+psycopg", username="alice", password=password, host=host,
                                        port=5432, database="study", query=query).render_as_string(hide_password=False)


def test_a_printed_url_hides_its_password():
    written = url_with(SECRET)
    assert "%40" in written  # the special characters as a URL carries them
    shown = redacted(written)
    assert shown == "postgresql+psycopg://alice:***@db.example:5432/study"
    assert redacted(url_with("plain", sslmode="require")) == "postgresql+psycopg://alice:***@db.example:5432/study?sslmode=require"
    assert redacted("mysql+pymysql://root:hunter2@localhost/db") == "mysql+pymysql://root:***@localhost/db"
    assert redacted("postgresql://bob@db.example/study") == "postgresql://bob@db.example/study"  # none to hide
    assert redacted("sqlite:////runs/a/study.db") == "/runs/a/study.db"
    unreadable = redacted("weird :// alice:hunter2@db.example")  # not a URL SQLAlchemy reads: keep the host only
    assert "hunter2" not in unreadable and "db.example" in unreadable


@pytest.mark.slow
def test_a_password_given_in_the_query_is_the_login_password(postgres_server):
    """What the next test hides is a real secret: SQLAlchemy passes ?password= to psycopg, which logs in with it."""
    postgres_server.create_role("pin_carol", "query-S3cret")
    database = postgres_server.create_database("carol", owner="pin_carol")
    given = postgres_server.url(database, user="pin_carol") + "?password=query-S3cret"
    engine = sqlalchemy.create_engine(given, poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT current_user").scalar() == "pin_carol"
    engine.dispose()


def test_a_password_in_the_query_is_hidden_too():
    assert "query-S3cret" not in redacted("postgresql+psycopg://carol@db.example:5432/study?password=query-S3cret")


@pytest.mark.slow
def test_a_refused_login_says_one_line_without_the_password(postgres_server):
    postgres_server.create_role("pin_alice", "right-password")
    database = postgres_server.create_database("alice", owner="pin_alice")
    for wrong in (SECRET, "wrong-S3cret"):
        given = postgres_server.url(database, user="pin_alice", password=wrong)
        encoded = given.split("pin_alice:")[1].rsplit("@", 1)[0]
        with pytest.raises(sqlalchemy.exc.OperationalError) as refused:
            optuna.storages.RDBStorage(given)
        assert "password authentication failed" in str(refused.value)
        fault = storage_fault(given, refused.value)
        assert isinstance(fault, UsageError)
        text = str(fault)
        assert "\n" not in text and "password authentication failed" in text and "pin_alice:***@" in text
        assert wrong not in text and encoded not in text
        with pytest.raises(UsageError) as through:
            storage_call(given, lambda: optuna.storages.RDBStorage(given))
        assert str(through.value) == text and through.value.__cause__ is None
    fine = postgres_server.url(database, user="pin_alice", password="right-password")
    assert storage_call(fine, lambda: optuna.storages.RDBStorage(fine)).get_all_studies() == []


# -- what a sampler reads -----------------------------------------------------------------------------------------


def suggest_all(trial: optuna.Trial) -> dict:
    return {"width": trial.suggest_int("width", 16, 64, step=16), "depth": trial.suggest_int("depth", 1, 32, log=True),
            "lr": trial.suggest_float("lr", 1e-4, 1e-1, log=True), "dropout": trial.suggest_float("dropout", 0.0, 0.5, step=0.25),
            "wd": trial.suggest_float("wd", 0.0, 1.0), "act": trial.suggest_categorical("act", list(ACT.choices))}


def sampler_store(url: str, seed: int):
    from configaformer_search.storage import StudyStore, open_storage

    store = StudyStore.load(open_storage(url), "pinned")
    store.use_sampler(optuna.samplers.TPESampler(seed=seed, n_startup_trials=0, multivariate=True))
    return store


def test_the_samplers_picture_of_a_study_is_optunas_but_for_user_attributes(tmp_path, monkeypatch):
    from configaformer_search.storage import sampling

    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = populate(url)
    store = sampler_store(url, 0)
    picture = sampling.SamplerStorage(store.storage, store.study_id, store.states,
                                      lambda numbers: store.trials(numbers=numbers, user_attrs=False))

    def matches() -> None:
        picture.refresh()
        expected = load(url, "pinned").trials
        got = picture.get_all_trials(store.study_id)
        assert [fields(t)[:6] + fields(t)[7:] for t in got] == [fields(t)[:6] + fields(t)[7:] for t in expected]
        assert all(t.user_attrs == {} for t in got)

    matches()
    late = study.ask()  # asked after the last look: its params are drawn while the picture has it running
    matches()
    suggest_all(late)
    matches()  # a trial this young is read again at each look, until its draw is surely over
    study.tell(late, [1.0, 2.0])
    matches()  # and one that finished since is read again, finished
    monkeypatch.setattr(sampling, "DRAW_S", 0.0)
    running = study.ask()
    matches()
    suggest_all(running)
    picture.refresh()  # read once it was past its draw: its params are not read again
    assert picture.get_all_trials(store.study_id)[running.number].params == {}


def test_tpe_draws_from_the_picture_what_it_draws_from_optunas_own_reads(tmp_path, monkeypatch):
    """The same study twice, the same seeds: TPE through the store suggests what it suggests through Optuna, and
    Optuna never reads the whole study for it (only the queue of waiting trials)."""
    theirs = populate(f"sqlite:///{tmp_path / 'theirs.db'}")
    theirs.sampler = optuna.samplers.TPESampler(seed=3, n_startup_trials=0, multivariate=True)
    populate(f"sqlite:///{tmp_path / 'ours.db'}")
    ours = sampler_store(f"sqlite:///{tmp_path / 'ours.db'}", 3)
    reads = []
    read = optuna.storages.RDBStorage.get_all_trials

    def counted(self, study_id, deepcopy=True, states=None):
        reads.append(None if states is None else tuple(states))
        return read(self, study_id, deepcopy=deepcopy, states=states)

    monkeypatch.setattr(optuna.storages.RDBStorage, "get_all_trials", counted)
    for round in range(6):
        trial, _ = ours.ask()
        drawn = suggest_all(trial)
        reads_by_ours = list(reads)
        expected = theirs.ask()
        assert drawn == suggest_all(expected), round
        values = [float(round), float(-round)]
        ours.study.tell(trial, values)
        theirs.tell(expected, values)
        assert reads_by_ours and set(reads_by_ours) == {(TrialState.WAITING,)}
        reads.clear()
