"""A search driver's handle on its study: open or create it, ask for trials, record outcomes, keep heartbeats, fail
the trials of dead drivers, and the claims that keep several drivers on one study apart.

Optuna's public API does the asking and telling (the sampler learns through `study.tell`); the rest goes through
plain SQL (sql.py), which Optuna's public API would do one row, one object or one transaction at a time.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import math
import threading
import time
import warnings
from typing import Any, Callable, Mapping, Optional, Sequence

import optuna

from ..errors import SpaceError
from ..outcome import Outcome, failed, outcome_of
from . import sql
from .patience import Patience
from .records import StoredTrial
from .sampling import DirectStorage, SamplerStorage
from .urls import redacted

optuna.logging.set_verbosity(optuna.logging.WARNING)  # Optuna logs every study it creates: users see our output only
HEARTBEAT_S = 5  # how often a driver records that its running trials are alive (more often under a short grace)
GRACE_S = 30  # by default, a running trial whose heartbeat is older than this was left by a dead driver


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """An RDB storage for a search. On SQLite: a lock timeout long enough for several drivers on one file and, while
    it runs, write-ahead logging with normal syncing (`close` goes back to a rollback journal, so that a finished
    study reads from a read-only folder). Connections are checked before use, so that a database server that
    restarted is reconnected to rather than failing the first call."""
    engine: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine["connect_args"] = {"timeout": 60}
    for attempt in range(3):  # drivers started together race to create the tables: the loser finds them made
        try:
            storage = optuna.storages.RDBStorage(url, engine_kwargs=engine)
            break
        except Exception as err:
            racing = "UNIQUE constraint failed" in str(err) or "already exists" in str(err) or "IntegrityError" in type(err).__name__
            if attempt == 2 or not racing:
                raise
            time.sleep(0.2)
    if storage.engine.dialect.name == "sqlite":
        import sqlalchemy

        sqlalchemy.event.listen(storage.engine, "connect", _sqlite_pragmas)
        storage.engine.dispose()  # connections made before the listener reopen with it
    return storage


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def close_storage(storage: optuna.storages.RDBStorage) -> None:
    """A SQLite file back in rollback-journal mode, its log folded in; left as it is while another driver still has
    it open."""
    engine = storage.engine
    if engine.dialect.name == "sqlite":
        import sqlalchemy

        if sqlalchemy.event.contains(engine, "connect", _sqlite_pragmas):
            sqlalchemy.event.remove(engine, "connect", _sqlite_pragmas)
        engine.dispose()  # the pooled connections of other threads: a mode change needs the file to itself
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql("PRAGMA journal_mode=DELETE")
        except Exception:  # locked by another driver: it will do this when it is done
            pass
    engine.dispose()


class StudyStore:
    """One study in one storage, as a search driver uses it."""

    def __init__(self, storage: optuna.storages.RDBStorage, study: optuna.Study) -> None:
        self.storage, self.study = storage, study
        self.url = redacted(storage.url)
        self.dialect = storage.engine.dialect.name
        self.study_id = storage.get_study_id_from_name(study.study_name)
        self.name = study.study_name
        self.metric_names = list(study.metric_names or [])
        self.directions = [d.name.lower() for d in study.directions]
        self.patience = Patience()  # how long calls wait for an unreachable server (a search sets its own)
        self.grace_s: float = GRACE_S  # how long a running trial's heartbeat may be silent before it is taken for dead
        self._handles = optuna.Study(study_name=self.name, storage=DirectStorage(storage),
                                     sampler=optuna.samplers.RandomSampler())  # handles on trials asked elsewhere
        self._view: Optional[SamplerStorage] = None  # what the sampler reads, once one is set (use_sampler)

    @classmethod
    def open(cls, storage: optuna.storages.RDBStorage, name: str, objectives: Mapping[str, str],
             sampler: Optional[optuna.samplers.BaseSampler] = None,
             distributions: Optional[Mapping[str, Any]] = None, attrs: Optional[Mapping[str, Any]] = None) -> StudyStore:
        """Create or load the study `name`; its objectives ({metric: 'min' or 'max'}) must be the ones it was created
        with, and its recorded params must still be drawn from `distributions` ({name: Optuna distribution; a
        per-layer param 'x[3]' is looked up as 'x'}). `attrs` are set on a study created now."""
        directions = ["minimize" if d == "min" else "maximize" for d in objectives.values()]
        study = optuna.create_study(storage=storage, study_name=name, directions=directions, load_if_exists=True)
        store = cls(storage, study)
        if sampler is not None:
            store.use_sampler(sampler)
        names = list(objectives)
        where = redacted(storage.url)
        if not store.metric_names:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(names)
            store.metric_names = names
            store.set_study_attrs(**(attrs or {}))
        elif store.metric_names != names or store.directions != directions:
            raise SpaceError(f"objectives: the study '{name}' in {where} optimises {', '.join(store.metric_names)}; "
                             f"the space asks for {', '.join(names)} (use --fresh or another --out)")
        else:
            store.check_distributions(distributions or {}, where)
        return store

    @classmethod
    def load(cls, storage: optuna.storages.RDBStorage, name: str) -> StudyStore:
        """The existing study `name`, as it is (a command that adds to a study without searching it)."""
        return cls(storage, optuna.load_study(study_name=name, storage=storage))

    def use_sampler(self, sampler: optuna.samplers.BaseSampler) -> None:
        """Ask this store's trials of `sampler` from now on. It reads the study through a picture brought up to date
        once per ask, reading only what changed (sampling.py)."""
        self._view = SamplerStorage(self.storage, self.study_id, self.states,
                                    lambda numbers: self.trials(numbers=numbers, user_attrs=False))
        self.study = optuna.Study(study_name=self.name, storage=self._view, sampler=sampler)

    def check_distributions(self, distributions: Mapping[str, Any], where: str) -> None:
        """Optuna refuses a param drawn from another set of choices (or another scale) than the study's earlier
        trials: say which parameter changed, before any trial runs."""
        recorded: dict[str, str] = {}
        for trial in self.trials():
            recorded.update(trial.distributions)
        for name, text in recorded.items():
            now = distributions.get(name.split("[")[0])
            if now is None:
                continue  # no longer searched: its old values stay in the records and constrain nothing
            before = optuna.distributions.json_to_distribution(text)
            try:
                optuna.distributions.check_distribution_compatibility(before, now)
            except ValueError:
                raise SpaceError(f"{name.split('[')[0]}: the study '{self.name}' in {where} drew it from "
                                 f"{_describe(before)}; the space now gives {_describe(now)} (use --fresh or another --out)") from None

    # -- reads ---------------------------------------------------------------------------------------------------

    def _query(self, text: str, arguments: dict[str, Any]) -> list:
        import sqlalchemy

        def query() -> list:
            with self.storage.engine.connect() as connection:
                return connection.execute(sqlalchemy.text(text), arguments).fetchall()

        return self.patience.call(query)

    def trials(self, first: int = 0, states: Optional[Sequence[str]] = None,
               numbers: Optional[Sequence[int]] = None, user_attrs: bool = True) -> list[StoredTrial]:
        """The study's trials numbered from `first` on (or those in `numbers`, in `states`), by number; without
        their user attributes (empty) if not `user_attrs`."""
        return sql.read_trials(self._query, self.study_id, states, first, numbers, user_attrs)

    def states(self, first: int = 0) -> list[tuple[int, str]]:
        """(number, state) of each trial numbered from `first` on: a cheap look at what ended."""
        return sql.trial_states(self._query, self.study_id, first)

    def study_attrs(self) -> dict[str, Any]:
        return sql.study_attrs(self._query, self.study_id)

    def claims(self, prefix: str, after: int = 0) -> list[tuple[int, str, Any]]:
        return sql.claims(self._query, self.study_id, prefix, after)

    # -- writes --------------------------------------------------------------------------------------------------

    def _transaction(self, work: Callable[[sql.Execute], Any]) -> Any:
        """`work(execute)` in one transaction (tried whole again while the server is unreachable)."""
        import sqlalchemy

        def transaction() -> Any:
            with self.storage.engine.begin() as connection:
                return work(lambda text, arguments: connection.execute(sqlalchemy.text(text), arguments))

        return self.patience.call(transaction)

    def ask(self) -> tuple[optuna.Trial, int]:
        """A new trial (the sampler's next, or an enqueued one) and its storage id, given a heartbeat at once, so
        that a driver that dies before it settles the trial leaves it to be failed as stale."""
        if self._view is not None:
            self._view.refresh()
        trial = self.patience.call(self.study.ask)
        trial_id = sql.trial_id(self._query, self.study_id, trial.number)
        self.heartbeat([trial_id])
        return trial, trial_id

    def trial(self, trial_id: int) -> optuna.Trial:
        """A handle on a running trial asked elsewhere (another process), to tell it: made without running the
        sampler, which a new handle on a study's trial otherwise does."""
        return self.patience.call(lambda: optuna.Trial(self._handles, trial_id))

    def write(self, trial_id: int, attrs: Mapping[str, Any]) -> bool:
        """A running trial's user attributes, in one transaction; False when it had finished."""
        attrs = {k: _storable(v) for k, v in attrs.items()}
        return self._transaction(lambda execute: sql.write_trial_attrs(execute, trial_id, attrs))

    def record(self, trial: optuna.Trial, trial_id: int, record: Mapping[str, Any]) -> Outcome:
        """Store a trial's record as user attributes, its constraint values, and tell the study its outcome (the
        objective values when it measured the full budget). A record whose objectives are not all finite numbers
        fails as bad_metric (Optuna would take inf as a value)."""
        attrs = dict(record)
        values = [record.get(name) for name in self.metric_names]
        outcome = outcome_of(attrs)
        finite = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
        if outcome.kind.front and not finite:
            attrs = failed("bad_metric", f"objective values {values} are not all finite numbers", **attrs)
            outcome = outcome_of(attrs)
        if not self.write(trial_id, attrs):  # ended already: told before a connection was lost, or failed as stale
            stored = self.trials(numbers=[trial.number])
            return stored[0].outcome if stored else outcome
        state = optuna.trial.TrialState[outcome.state]

        def tell() -> None:
            with warnings.catch_warnings():  # a constraint set before a lost connection is kept as it was
                warnings.simplefilter("ignore")
                for key, value in (record.get("constraints") or {}).items():
                    trial.set_constraint(key, float(value))
            # Straight to the storage: Study.tell would read the whole trial back twice to check what is checked here,
            # and no sampler of ours acts after a trial (constraints travel as the trial's own).
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # told before a connection was lost
                self.storage.set_trial_state_values(
                    trial_id, state, [float(v) for v in values] if state == optuna.trial.TrialState.COMPLETE else None)

        self.patience.call(tell)
        return outcome

    def enqueue(self, params: Mapping[str, Any], attrs: Mapping[str, Any]) -> None:
        """A trial of these params asked before any new one (Optuna's queue), carrying `attrs`."""
        self.patience.call(lambda: self.study.enqueue_trial(dict(params), user_attrs=dict(attrs), skip_if_exists=False))

    def set_study_attrs(self, **attrs: Any) -> None:
        for key, value in attrs.items():
            self.patience.call(lambda: self.study.set_user_attr(key, value))

    def interrupt(self, trials: Sequence[tuple[optuna.Trial, int]]) -> None:
        """Trials this driver stops (Ctrl-C, SIGTERM) before they end: failed as interrupted, owed again."""
        for trial, trial_id in trials:
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                self.record(trial, trial_id, failed("interrupted", "stopped before it ended"))

    def fail_running(self) -> int:
        """Every trial left RUNNING ended: what a search resuming in its own folder does with a killed search's
        trials, which no live driver can hold (failed as interrupted, or told the outcome they had recorded)."""
        running = self.trials(states=("RUNNING",))
        interrupted = [t for t in running if "status" not in t.user_attrs]
        self._end_left([t for t in running if "status" in t.user_attrs], {t.trial_id for t in running})
        self.interrupt([(self.trial(t.trial_id), t.trial_id) for t in interrupted])
        return len(interrupted)

    # -- liveness ------------------------------------------------------------------------------------------------

    def heartbeat(self, trial_ids: Sequence[int]) -> None:
        """Record that these trials are alive (one statement for all)."""
        ids = list(trial_ids)
        self._transaction(lambda execute: sql.record_heartbeats(execute, ids))

    def fail_stale(self) -> list[int]:
        """Running trials whose heartbeat stopped (their driver died) ended, as Optuna's fail_stale_trials does:
        failed (interrupted), or told the outcome they had recorded when their driver died between recording it and
        telling it. Returns their storage ids; one query when none is stale, which is nearly always. Just after the
        server came back from an outage no heartbeat is fresh: the other drivers get a grace period to beat again
        first (the check after the query, which may itself have waited out the outage)."""
        started_before = datetime.datetime.now() - datetime.timedelta(seconds=4 * self.grace_s)  # other machines' clocks
        stale = sql.stale_trial_ids(self._query, self.dialect, self.study_id, self.grace_s, started_before)
        if not stale or time.monotonic() - self.patience.recovered_at < self.grace_s:
            return []
        return self._end_left(self.trials(states=("RUNNING",), numbers=None), set(stale))

    def _end_left(self, running: Sequence[StoredTrial], ids: set[int]) -> list[int]:
        """End trials left running by a driver that is gone: each is told the outcome it recorded, if it recorded
        one, else failed (interrupted, owed again)."""
        ended = []
        for trial in running:
            if trial.trial_id not in ids:
                continue
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
                if "status" in trial.user_attrs:  # recorded, not told: a kill between the two
                    self.record(self.trial(trial.trial_id), trial.trial_id, trial.user_attrs)
                else:
                    self.patience.call(lambda: self.storage.set_trial_state_values(trial.trial_id, optuna.trial.TrialState.FAIL))
                ended.append(trial.trial_id)
        return ended

    # -- claims --------------------------------------------------------------------------------------------------

    def claim(self, key: str, value: Any) -> bool:
        """Take the claim `key` (holding `value`) if no one holds it: True for exactly one of several drivers."""
        return self._transaction(lambda execute: sql.claim(execute, self.study_id, key, value))

    def update_claim(self, key: str, before: Any, after: Any) -> bool:
        """Change a claim's value, if it still holds `before`."""
        return self._transaction(lambda execute: sql.update_claim(execute, self.study_id, key, before, after))

    def release(self, claims: Sequence[tuple[str, Any]]) -> None:
        """Delete these (key, value) claims, each only if it still holds that value."""
        pairs = list(claims)
        self._transaction(lambda execute: sql.release(execute, self.study_id, pairs))

    def close(self) -> None:
        close_storage(self.storage)


def _storable(value: Any) -> Any:
    """JSON has no NaN or infinity: such a float is stored as its text."""
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value


def _describe(distribution: Any) -> str:
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return f"choices {list(distribution.choices)}"
    kind = "log" if distribution.log else type(distribution).__name__.removesuffix("Distribution").lower()
    step = f" step {distribution.step:g}" if getattr(distribution, "step", None) not in (None, 1) else ""
    return f"{kind} [{distribution.low:g}, {distribution.high:g}]{step}"


class Heartbeat:
    """Records, every HEARTBEAT_S seconds (a third of the store's grace, if less) in a thread of its own, that the
    trials `alive()` names (storage ids) are alive, so that other drivers sharing the study never take them for a dead
    driver's."""

    def __init__(self, store: StudyStore, alive: Callable[[], Sequence[int]]) -> None:
        self.store, self.alive = store, alive
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="configaformer-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(min(HEARTBEAT_S, self.store.grace_s / 3)):
            try:
                self.store.heartbeat(self.alive())
            except Exception:  # the storage is away for a moment: the next beat tries again
                logging.getLogger(__name__).warning("a heartbeat could not be recorded", exc_info=True)
