"""The PostgreSQL fixtures (tests/postgres.py) with Optuna's RDBStorage on them: a fresh database per test, storages
sharing one, a server that goes away and comes back, roles that must give a password, and Optuna's heartbeat."""

from __future__ import annotations

import time

import optuna
import pytest
import sqlalchemy

from postgres import PostgresServer

pytestmark = pytest.mark.slow  # each starts or uses the throwaway server


@pytest.fixture(autouse=True)
def _quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_a_study_in_the_fresh_database(postgres_url: str) -> None:
    storage = optuna.storages.RDBStorage(postgres_url)
    assert storage.get_all_studies() == []
    study = optuna.create_study(study_name="s", storage=storage)
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=3)
    again = optuna.load_study(study_name="s", storage=optuna.storages.RDBStorage(postgres_url))
    assert [t.params for t in again.trials] == [t.params for t in study.trials]


def test_two_storages_on_one_database_see_each_others_trials(postgres_url: str) -> None:
    first = optuna.create_study(study_name="s", storage=optuna.storages.RDBStorage(postgres_url))
    second = optuna.load_study(study_name="s", storage=optuna.storages.RDBStorage(postgres_url))
    first.tell(first.ask(), 1.0)
    second.tell(second.ask(), 2.0)
    assert [t.value for t in first.trials] == [t.value for t in second.trials] == [1.0, 2.0]


def test_the_server_stopped_and_started_again(postgres_server: PostgresServer, postgres_url: str) -> None:
    """Refused while down; the data is there once back, and a storage whose pool pings its connections before use
    carries on over the gap (without the ping, its first call after the restart fails on a dead connection)."""
    storage = optuna.storages.RDBStorage(postgres_url, engine_kwargs={"pool_pre_ping": True})
    study = optuna.create_study(study_name="s", storage=storage)
    study.tell(study.ask(), 1.0)
    back = postgres_server.outage(2.0)  # long enough that a loaded machine still meets it down
    assert not postgres_server.running
    with pytest.raises(sqlalchemy.exc.OperationalError, match="Connection refused"):
        optuna.storages.RDBStorage(postgres_url)
    back.result(timeout=30)
    assert postgres_server.running
    study.tell(study.ask(), 2.0)
    assert [t.value for t in optuna.load_study(study_name="s", storage=postgres_url).trials] == [1.0, 2.0]


def test_a_role_that_must_give_its_password(postgres_server: PostgresServer) -> None:
    password = "p@ss:w/rd %"
    postgres_server.create_role("searcher", password)
    database = postgres_server.create_database("password", owner="searcher")
    url = postgres_server.url(database, user="searcher", password=password)
    assert "p%40ss%3Aw%2Frd" in url
    study = optuna.create_study(storage=optuna.storages.RDBStorage(url))
    study.tell(study.ask(), 1.0)
    for wrong in (postgres_server.url(database, user="searcher", password="secret"),
                  postgres_server.url(database, user="searcher")):
        with pytest.raises(sqlalchemy.exc.OperationalError, match="password authentication failed|no password"):
            optuna.storages.RDBStorage(wrong)


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_stale_trials_failed_by_their_heartbeat(postgres_url: str) -> None:
    """A trial whose heartbeat is older than the grace period is failed; one with a fresh heartbeat is left running
    (both times are the server's clock)."""
    storage = optuna.storages.RDBStorage(postgres_url, heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(storage=storage)
    stale, live = study.ask(), study.ask()
    storage.record_heartbeat(stale._trial_id)
    optuna.storages.fail_stale_trials(study)
    assert storage.get_trial(stale._trial_id).state == optuna.trial.TrialState.RUNNING
    time.sleep(2.5)
    storage.record_heartbeat(live._trial_id)
    optuna.storages.fail_stale_trials(study)
    assert storage.get_trial(stale._trial_id).state == optuna.trial.TrialState.FAIL
    assert storage.get_trial(live._trial_id).state == optuna.trial.TrialState.RUNNING
