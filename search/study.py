"""The Optuna study: storage, samplers, recording trial results, resume bookkeeping, the trials table.

The study is the one source of truth: what it holds as finished is never run again, a RUNNING row left by a
killed search is marked FAIL (interrupted) and its work is owed again.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import threading
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from .errors import SpaceError
from .metrics import NOTE_METRICS, label
from .records import study_trials
from .space import SearchSpace

STUDY_FILE = "study.db"
STOPPED = "stopped"  # the status of a trial that a multi-fidelity scheduler stopped at a rung
INTERRUPTED = "interrupted"
WORKER_DIED = "worker_died"
WITHDRAWN = "withdrawn"  # asked when another driver had just taken the last of the budget
REFUSED = ("rejected", "constraint", "leaks_future")  # refused before training: they cost no budget
NOT_COUNTED = (INTERRUPTED, WORKER_DIED, WITHDRAWN, *REFUSED)  # failures that measured nothing: owed again, or never owed
MAX_REPEATS = 100  # suggestions in a row that repeat measured or running configs before a space counts as exhausted
MAX_REFUSALS = 100  # candidates in a row refused before training before a search stops and says why
HEARTBEAT_S = 5  # how often a driver records that its running trials are alive
GRACE_S = 30  # a RUNNING trial whose heartbeat is older than this was left by a dead driver
# User attributes that hold structures rather than scalars (kept as JSON-able values, left out of tables).
STRUCTURED_ATTRS = ("model_config", "train", "timings", "constraints", "rungs", "seed_results")


def objective_names(study: optuna.Study) -> list[str]:
    """The study's objective names, read once per Study object: Optuna reads them from the storage at each access."""
    names = study.__dict__.get("_objective_names")
    if names is None:
        names = study.__dict__["_objective_names"] = list(study.metric_names or [])
    return names


def default_storage(out_dir: Path) -> str:
    return f"sqlite:///{(out_dir / STUDY_FILE).resolve()}"


def make_sampler(space: SearchSpace, name: str, seed: int, n_trials: int) -> optuna.samplers.BaseSampler:
    """TPE, NSGA-II or random, sized to the trial budget. Constraints reach them through each trial's
    set_constraint (see `record`)."""
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2":
        population = space.search["population_size"] or max(4, min(50, n_trials // 4))  # the default 50 is all random on small budgets
        return optuna.samplers.NSGAIISampler(population_size=population, seed=seed)
    # Few random trials before TPE models the space: on small.yaml (N = 12, 3 seeds) 3 startup trials reached 0.98
    # of random's hypervolume at 2N, 4 reached 0.95 and 8 reached 0.91 (benchmarks/search_efficiency.py).
    startup = space.search["startup_trials"] or max(3, min(10, n_trials // 4))
    return optuna.samplers.TPESampler(n_startup_trials=startup, seed=seed, multivariate=True)


def open_storage(url: str, writer: bool = False) -> optuna.storages.RDBStorage:
    """An RDB storage. A `writer` (a search) gets Optuna's heartbeat, so that stale RUNNING trials can be told from
    live ones, and on SQLite a lock timeout long enough for several drivers on one file and, while it runs,
    write-ahead logging with normal syncing: each user attribute is its own commit, which a rollback journal syncs to
    disk every time (`close_storage` goes back to it, so that a finished study reads from a read-only folder). A
    reader skips the schema checks, which cost a review command most of its start."""
    if not writer:
        return optuna.storages.RDBStorage(url, skip_compatibility_check=True, skip_table_creation=True)
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(3):  # drivers started together race to create the tables: the loser finds them made
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S,
                                                     grace_period=GRACE_S)
            break
        except Exception as err:
            racing = "UNIQUE constraint failed" in str(err) or "already exists" in str(err) or "IntegrityError" in type(err).__name__
            if attempt == 2 or not racing:
                raise
            time.sleep(0.2)
    if url.startswith("sqlite"):
        import sqlalchemy

        sqlalchemy.event.listen(storage.engine, "connect", _sqlite_pragmas)
        storage.engine.dispose()  # connections made before the listener reopen with it
    return storage


def close_storage(storage: optuna.storages.BaseStorage) -> None:
    """A writer's SQLite file back in rollback-journal mode, its log folded in; left as it is while another driver
    still has it open."""
    engine = getattr(storage, "engine", None)
    if engine is None or engine.dialect.name != "sqlite":
        return
    import sqlalchemy

    if sqlalchemy.event.contains(engine, "connect", _sqlite_pragmas):
        sqlalchemy.event.remove(engine, "connect", _sqlite_pragmas)  # later readers of this study leave the mode be
    engine.dispose()  # the pooled connections of other threads: a mode change needs the file to itself
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA journal_mode=DELETE")
    except Exception:  # locked by another driver: it will do this when it is done
        pass
    engine.dispose()


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def open_study(space: SearchSpace, storage: Optional[str | optuna.storages.BaseStorage],
               sampler: Optional[optuna.samplers.BaseSampler] = None) -> optuna.Study:
    """Create or load the study named after the space (storage None: in memory); its objectives must be the space's."""
    storage_name = getattr(storage, "url", storage)
    directions = ["minimize" if d == "min" else "maximize" for d in space.objectives.values()]
    study = optuna.create_study(storage=storage, study_name=space.name, sampler=sampler, directions=directions,
                                load_if_exists=True)
    names = list(space.objectives)
    if study.metric_names is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(names)
        # for optuna-dashboard and the report: what the study optimises, in which units, and the space it searched
        study.set_user_attr("space", str(Path(space.path).resolve()))
        study.set_user_attr("objectives", ", ".join(f"{label(n)} {d}" for n, d in space.objectives.items()))
        study.set_user_attr("space_yaml", Path(space.path).read_text() if Path(space.path).is_file() else "")
    elif study.metric_names != names or [d.name.lower() for d in study.directions] != directions:
        raise SpaceError(f"{space.path}: objectives: the study '{space.name}' in {storage_name} optimises {', '.join(study.metric_names)}; "
                         f"the space asks for {', '.join(names)} (use --fresh or another --out)")
    else:
        _check_distributions(study, space, storage_name)
    return study


def _check_distributions(study: optuna.Study, space: SearchSpace, storage: Optional[str]) -> None:
    """A resumed study's parameters must still be drawn as its trials drew them: Optuna refuses a changed set of
    choices (or a switch between linear and log), so say which parameter changed, before any trial runs."""
    recorded: dict[str, optuna.distributions.BaseDistribution] = {}
    for trial in study_trials(study):
        recorded.update(trial.distributions)
    for name, before in recorded.items():
        param = space.params.get(name.split("[")[0])
        if param is None:
            continue  # no longer searched: its old values stay in the records and constrain nothing
        now = param.distribution()
        try:
            optuna.distributions.check_distribution_compatibility(before, now)
        except ValueError:
            raise SpaceError(f"{space.path}: {param.field()}: the study '{space.name}' in {storage} drew it from "
                             f"{_describe(before)}; the space now gives {_describe(now)} (use --fresh or another --out)") from None


def _describe(distribution: optuna.distributions.BaseDistribution) -> str:
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return f"choices {list(distribution.choices)}"
    kind = "log" if distribution.log else type(distribution).__name__.removesuffix("Distribution").lower()
    step = f" step {distribution.step:g}" if getattr(distribution, "step", None) not in (None, 1) else ""
    return f"{kind} [{distribution.low:g}, {distribution.high:g}]{step}"


def load_existing(storage: str | optuna.storages.BaseStorage) -> optuna.Study:
    """The single study in a run folder's storage (a URL, opened once: each opening costs a schema check)."""
    storage = open_storage(storage) if isinstance(storage, str) else storage
    studies = storage.get_all_studies()
    if len(studies) != 1:
        raise ValueError(f"expected one study in {getattr(storage, 'url', storage)}, found {len(studies)}")
    return optuna.load_study(study_name=studies[0].study_name, storage=storage)


def mark_interrupted(study: optuna.Study, numbers: Optional[set[int]] = None) -> int:
    """Trials left RUNNING (all of them, or those numbered in `numbers`) become FAIL (interrupted): their work is
    owed again. A resumed search calls it for what a killed one left; an interrupted one, for its own trials."""
    stale = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if numbers is None or t.number in numbers]
    for trial in stale:
        study._storage.set_trial_user_attr(trial._trial_id, "reason", INTERRUPTED)
        study.tell(trial.number, state=TrialState.FAIL)
    return len(stale)


def mark_stale(study: optuna.Study) -> int:
    """Trials RUNNING with a stopped heartbeat (their driver died) become FAIL, owed again (Optuna's
    fail_stale_trials); a live driver's trials are left alone. Returns how many were failed. One query when none
    is stale, which is nearly always: a driver looks at every claim."""
    from optuna.storages._heartbeat import is_heartbeat_enabled

    if not is_heartbeat_enabled(study._storage):
        return 0
    stale = study._storage._get_stale_trial_ids(study._study_id)
    if stale:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    return len(stale)


class Heartbeat:
    """Records, every HEARTBEAT_S seconds in a thread of its own, that the trials `alive()` names (trial ids) are
    alive, so that other drivers sharing the study never take them for a dead driver's. Without a heartbeat storage
    (an in-memory study) it does nothing."""

    def __init__(self, study: optuna.Study, alive: Callable[[], list[int]]) -> None:
        from optuna.storages._heartbeat import is_heartbeat_enabled

        self.study, self.alive, self.enabled = study, alive, is_heartbeat_enabled(study._storage)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="configaformer-heartbeat", daemon=True)

    def __enter__(self) -> "Heartbeat":
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            record_heartbeats(self.study, self.alive())


def record_heartbeats(study: optuna.Study, trial_ids: list[int]) -> None:
    """Record that these trials (storage ids) are alive, where the storage keeps heartbeats."""
    from optuna.storages._heartbeat import is_heartbeat_enabled

    if not is_heartbeat_enabled(study._storage):
        return
    for trial_id in trial_ids:
        try:
            study._storage.record_heartbeat(trial_id)
        except Exception:  # the trial finished meanwhile, or the storage is busy: the next beat tries again
            pass


def _ended(study: optuna.Study) -> list[FrozenTrial]:
    return study_trials(study, (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED))


def counts(attrs: Mapping[str, Any]) -> bool:
    """Whether a finished trial (its user attributes, or the metrics it was told) used up budget: it trained, or
    failed in training, on its own; refusals before training, interruptions (a trial failed by its stopped
    heartbeat has no status), lost workers and twins did not."""
    return "status" in attrs and attrs.get("reason") not in NOT_COUNTED and "reused_from" not in attrs


def measured(study: optuna.Study) -> list[FrozenTrial]:
    """Finished trials that trained and measured their config: the ones `--trials` counts."""
    return [t for t in _ended(study) if counts(t.user_attrs)]


@dataclass
class Asked:
    """A new suggestion for the workers to measure."""

    trial: optuna.Trial
    params: dict[str, Any]
    key: str


@dataclass
class Drawn:
    """One suggestion of the sampler, resolved and screened: `refusal` says why the screen refused it, if it did."""

    trial: optuna.Trial
    params: dict[str, Any]
    key: str
    refusal: Optional[Any] = None  # a TrialFailure


@contextlib.contextmanager
def params_in_one_transaction(study: optuna.Study) -> Iterator[None]:
    """The params a trial draws in the block written in one transaction at its end, where the storage is relational:
    Optuna commits each `suggest_*` on its own, a sync of the file per parameter. The trial itself (and so the
    sampler) sees each value as it is drawn; only one thread may draw at a time (the one asking ahead, or the
    searcher itself)."""
    backend = getattr(study._storage, "_backend", study._storage)
    if not isinstance(backend, optuna.storages.RDBStorage):
        yield
        return
    from optuna.storages._rdb.storage import _create_scoped_session

    pending: list[tuple] = []
    backend._set_trial_param = lambda *args: pending.append(args)  # shadows the method on this object only
    try:
        yield
    finally:
        del backend._set_trial_param
    if pending:
        with _create_scoped_session(backend.scoped_session, True) as session:
            for args in pending:
                backend._set_trial_param_without_commit(session, *args)


def draw(study: optuna.Study, space: SearchSpace, vocab_size: int,
         on_asked: Optional[Callable[[optuna.Trial], None]] = None) -> Drawn:
    """Ask the sampler for a suggestion and screen it (config errors, cheap constraints, on the meta device): the
    slow part of asking, which touches nothing but the study, so a thread can do it ahead of time. `on_asked` is
    told the new trial before its params are drawn."""
    from .candidate import resolve, screen  # builds models: kept off the import path of the review commands
    from .errors import TrialFailure

    with warnings.catch_warnings():  # the driver keeps the heartbeats itself (Heartbeat), not optimize()
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        trial = study.ask()
    if on_asked is not None:
        on_asked(trial)
    with params_in_one_transaction(study):
        params = space.sample(trial)
    resolved = resolve(space, params, vocab_size)
    try:
        screen(space, params, vocab_size, quick=True, resolved=resolved)
    except TrialFailure as failure:
        return Drawn(trial, params, resolved[2], failure)
    return Drawn(trial, params, resolved[2])


def settle(study: optuna.Study, drawn: Drawn, settled: dict[str, dict[str, Any]],
           on_free: Callable[[int, Mapping[str, Any]], None], running: Mapping[str, list[optuna.Trial]]) -> str:
    """What a drawn suggestion becomes: 'repeat' (a settled config: told its twin's result at once; or one being
    measured: parked in `running[key]`, to be told that result when it ends, see `tell_parked`), 'refused' (recorded
    failed with the screen's reason), or 'new' (to be measured). The first two use no budget; each is passed to
    `on_free` with the metrics it was told."""
    trial, key = drawn.trial, drawn.key
    if key in settled:
        record(study, trial, settled[key])
        on_free(trial.number, settled[key])
        return "repeat"
    if key in running:
        running[key].append(trial)
        return "repeat"
    if drawn.refusal is not None:
        failure = drawn.refusal
        metrics = {"status": "failed", "reason": failure.kind, "message": failure.message, **failure.metrics}
        record(study, trial, metrics)
        settled[key] = dict(metrics, reused_from=trial.number)
        on_free(trial.number, metrics)
        return "refused"
    return "new"


@dataclass
class Streak:
    """Suggestions in a row that cost nothing: repeats (the space may be exhausted) and refusals by reason (the
    space may hold little that trains), each reset by what ends it."""

    repeats: int = 0
    refusals: Counter = field(default_factory=Counter)

    def count(self, outcome: str, drawn: Drawn) -> Optional[str]:
        """Count an outcome of `settle`; returns why the search should stop, if it should."""
        if outcome == "repeat":
            self.repeats += 1
        elif outcome == "refused":
            self.refusals[drawn.refusal.kind] += 1
        else:
            self.repeats = 0
        if self.repeats >= MAX_REPEATS:
            return "exhausted"
        return "refused" if self.too_many_refusals() else None

    def too_many_refusals(self) -> bool:
        return sum(self.refusals.values()) >= MAX_REFUSALS


def ask_new(study: optuna.Study, space: SearchSpace, vocab_size: int, settled: dict[str, dict[str, Any]],
            on_free: Callable[[int, Mapping[str, Any]], None], running: Mapping[str, list[optuna.Trial]],
            streak: Streak) -> Asked | str:
    """Draw and settle suggestions until one is new; returns it, or why the search should stop ('exhausted' after
    MAX_REPEATS repeats in a row, 'refused' after MAX_REFUSALS refusals since the last measured trial)."""
    while True:
        drawn = draw(study, space, vocab_size)
        outcome = settle(study, drawn, settled, on_free, running)
        stop = streak.count(outcome, drawn)
        if outcome == "new":
            return Asked(drawn.trial, drawn.params, drawn.key)
        if stop is not None:
            return stop


def tell_parked(study: optuna.Study, parked: list[optuna.Trial], number: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Tell the repeats parked while trial `number` measured their config its result (free trials); returns it as
    they reuse it."""
    twin = dict(metrics, reused_from=number)
    for trial in parked:
        record(study, trial, twin)
    return twin


def record(study: optuna.Study, trial: optuna.Trial, metrics: Mapping[str, Any]) -> TrialState:
    """Store a trial's metrics as user attributes and tell the study its objective values (or FAIL).

    A trial stopped at a rung (status 'stopped') is PRUNED, its rung results kept as user attributes: only trials
    that trained the full budget are COMPLETE. A twin that reused a measurement is PRUNED too: Optuna's own front
    (best_trials, the dashboard) then holds each measured config once, and the sampler still sees the twin's params."""
    attrs = {key: str(value) if isinstance(value, float) and not math.isfinite(value) else value  # JSON has no nan
             for key, value in metrics.items()}
    values = [metrics.get(name) for name in objective_names(study)]
    ok = metrics.get("status") == "ok" and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
    if metrics.get("status") == "ok" and not ok:
        attrs.update(status="failed", reason="bad_metric", message=f"objective values {values} are not all finite numbers")
    constraints = {f"{CONSTRAINTS_KEY}:{key}": float(value) for key, value in (metrics.get("constraints") or {}).items()}
    write_attrs(study, trial, attrs, constraints)
    state = TrialState.COMPLETE if ok else TrialState.FAIL
    if (ok and "reused_from" in metrics) or metrics.get("status") == STOPPED:
        state = TrialState.PRUNED
    tell(study, trial, state, [float(v) for v in values] if state == TrialState.COMPLETE else None)
    return state


def tell(study: optuna.Study, trial: optuna.Trial, state: TrialState, values: Optional[list[float]]) -> None:
    """Optuna's tell without reading the trial back: the sampler is shown the trial as this process knows it (its
    params and, through write_attrs, its attributes), where study.tell reads it from the storage twice, the
    costliest part of recording a trial. The values are checked by `record`."""
    study._thread_local.cached_all_trials = None
    try:
        study.sampler.after_trial(study, trial._cached_frozen_trial, state, values)
    finally:
        study._storage.set_trial_state_values(trial._trial_id, state, values)


# Why a trial failed, is infeasible, was stopped at a rung or free, or measured something to take with care.
CONSTRAINTS_KEY = "constraints"  # Optuna's system attribute prefix for a trial's constraint values (set_constraint's)


def write_attrs(study: optuna.Study, trial: optuna.Trial, user: Mapping[str, Any],
                system: Optional[Mapping[str, Any]] = None) -> None:
    """Set a trial's user (and system) attributes in one transaction where the storage is relational: Optuna
    commits each attribute on its own, which a trial of thirty attributes feels as thirty syncs of the file."""
    system = system or {}
    backend = getattr(study._storage, "_backend", study._storage)
    if isinstance(backend, optuna.storages.RDBStorage):
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        with _create_scoped_session(backend.scoped_session, True) as session:
            row = models.TrialModel.find_or_raise_by_id(trial._trial_id, session)
            backend.check_trial_is_updatable(trial._trial_id, row.state)
            for model, attrs in ((models.TrialUserAttributeModel, user), (models.TrialSystemAttributeModel, system)):
                if not attrs:
                    continue
                if backend.engine.name == "sqlite":  # one statement for all: an upsert per row, as Optuna's own
                    from sqlalchemy.dialects.sqlite import insert

                    statement = insert(model)
                    statement = statement.on_conflict_do_update(index_elements=[model.trial_id, model.key],
                                                                set_={"value_json": statement.excluded.value_json})
                    session.execute(statement, [{"trial_id": trial._trial_id, "key": key, "value_json": json.dumps(value)}
                                                for key, value in attrs.items()])
                else:
                    for key, value in attrs.items():
                        backend._set_trial_attr_without_commit(session, model, trial._trial_id, key, value)
    else:
        for key, value in user.items():
            study._storage.set_trial_user_attr(trial._trial_id, key, value)
        for key, value in system.items():
            study._storage.set_trial_system_attr(trial._trial_id, key, value)
    trial._cached_frozen_trial.user_attrs.update(user)
    trial._cached_frozen_trial.system_attrs.update(system)


TRIAL_NOTES = ("reason", "message", "violations", "reused_from", *NOTE_METRICS)


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """Every trial, one row each: state, objectives, TRIAL_NOTES, measured metrics, params, duration. An objective
    appears once: its told value, or for a failed trial whatever it measured."""
    rows, names = [], objective_names(study)
    for trial in study_trials(study):
        told = dict(zip(names, trial.values or [None] * len(names)))
        attrs = {k: v for k, v in trial.user_attrs.items() if k not in STRUCTURED_ATTRS and k != "status"}
        if trial.state == TrialState.FAIL and "status" not in trial.user_attrs:
            attrs.setdefault("reason", INTERRUPTED)  # failed by a stopped heartbeat: its driver died
        rows.append({"number": trial.number, "state": trial.state.name,
                     **{name: attrs.get(name) if told[name] is None else told[name] for name in names},
                     **{k: v for k, v in attrs.items() if k not in told},
                     **{f"param:{k}": v for k, v in trial.params.items()},
                     "duration": round(trial.duration.total_seconds(), 2) if trial.duration else None})
    if not rows:
        return pd.DataFrame()
    frame = rows_frame(rows)
    leading = ["state", *names, *(c for c in TRIAL_NOTES if c in frame)]
    params = [c for c in frame if c.startswith("param:")]
    metrics = sorted(c for c in frame if c not in leading and c not in params and c != "duration")
    frame = frame[leading + metrics + params + ["duration"]]
    for column in ("started_at", "ended_at"):  # the worker's wall clock, shown as local time
        if column in frame:
            frame[column] = _local_times(frame[column])
    return frame


def rows_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Trial rows (dicts with a 'number') as a frame indexed by number. A column of whole numbers stays whole
    where some trials lack it (a conditional param, reused_from) instead of turning float."""
    frame = pd.DataFrame(rows).set_index("number")
    for column in frame:
        present = [row[column] for row in rows if row.get(column) is not None]
        if present and frame[column].dtype == float and all(type(v) is int for v in present):
            frame[column] = frame[column].astype("Int64")
    return frame


def _local_times(column: pd.Series) -> pd.Series:
    """Recorded times (ISO 8601; epoch seconds in studies of earlier versions) as naive local times."""
    numeric = pd.to_numeric(column, errors="coerce")
    times = pd.to_datetime(column.where(numeric.isna()), utc=True, format="ISO8601")
    times = times.fillna(pd.to_datetime(numeric, unit="s", utc=True))
    return times.dt.tz_convert(_local_zone()).dt.tz_localize(None).dt.round("ms")


def _local_zone() -> datetime.tzinfo:
    return datetime.datetime.now().astimezone().tzinfo


def trial_config(trial: FrozenTrial) -> tuple[dict, dict]:
    """The model config and metrics recorded for a trial."""
    model = trial.user_attrs.get("model_config")
    if model is None:
        raise ValueError(f"trial {trial.number} recorded no model config (state {trial.state.name})")
    metrics = {k: v for k, v in trial.user_attrs.items() if k not in STRUCTURED_ATTRS}
    return model, json.loads(json.dumps(metrics))
