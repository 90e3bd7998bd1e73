"""A study's trials read straight from its relational tables, for the review commands and the driver's rereads.

Optuna builds each FrozenTrial through its ORM, one object per row of every table, which costs seconds for a few
thousand trials. Here each table is read once with plain SQL and the same FrozenTrials are assembled from the rows,
through SQLAlchemy's core for an RDBStorage and through sqlite3 for a study file opened for a review (`StudyFile`,
whose own reads are these); an in-memory storage goes through Optuna as before.
"""

from __future__ import annotations

import datetime
import functools
import json
from collections import defaultdict
from typing import Any, Callable, Iterable, Optional

import optuna
from optuna.distributions import BaseDistribution, json_to_distribution
from optuna.trial import FrozenTrial, TrialState

_INFINITIES = {"INF_POS": float("inf"), "INF_NEG": float("-inf")}


@functools.lru_cache(maxsize=1024)
def _distribution(text: str) -> BaseDistribution:
    return json_to_distribution(text)


def _time(value: Any) -> Optional[datetime.datetime]:
    if value is None or isinstance(value, datetime.datetime):
        return value
    return datetime.datetime.fromisoformat(value)


def study_trials(study: optuna.Study, states: Optional[Iterable[TrialState]] = None, from_number: int = 0) -> list[FrozenTrial]:
    """The study's trials numbered from `from_number` on (in `states`, if given), by number, as FrozenTrials that
    are not to be modified (no copies are made)."""
    backend = getattr(study._storage, "_backend", study._storage)
    if isinstance(backend, optuna.storages.RDBStorage):
        import sqlalchemy

        with backend.engine.connect() as connection:
            return read_trials(lambda sql, arguments: connection.execute(sqlalchemy.text(sql), arguments).fetchall(),
                               study._study_id, states, from_number)
    trials = study.get_trials(deepcopy=False, states=None if states is None else tuple(states))
    return [t for t in trials if t.number >= from_number]


Query = Callable[[str, dict[str, Any]], list]  # runs SQL with :named arguments, returns the rows


def read_trials(query: Query, study_id: int, states: Optional[Iterable[TrialState]] = None, first: int = 0,
                last: Optional[int] = None) -> list[FrozenTrial]:
    """The trials of a study numbered `first` to `last` (in `states`, if given), by number, read from Optuna's
    relational tables with one query per table; `query` runs on any DB-API connection that takes :named arguments."""
    wanted = "" if states is None else f" AND state IN ({', '.join(repr(s.name) for s in sorted(states, key=str))})"
    where = "study_id = :study AND number >= :first" + ("" if last is None else " AND number <= :last") + wanted
    scope = f"trial_id IN (SELECT trial_id FROM trials WHERE {where})"
    arguments = {"study": study_id, "first": first, "last": last}

    def rows(sql: str) -> list:
        return query(sql, arguments)

    trials = rows(f"SELECT trial_id, number, state, datetime_start, datetime_complete FROM trials WHERE {where} ORDER BY number")
    values, params = defaultdict(list), defaultdict(list)
    user, system = defaultdict(dict), defaultdict(dict)
    for trial_id, objective, value, kind in rows(f"SELECT trial_id, objective, value, value_type FROM trial_values WHERE {scope}"):
        values[trial_id].append((objective, _INFINITIES.get(kind, value)))
    for trial_id, name, value, text in rows(f"SELECT trial_id, param_name, param_value, distribution_json FROM trial_params "
                                             f"WHERE {scope} ORDER BY param_id"):
        params[trial_id].append((name, value, text))
    for table, into in (("trial_user_attributes", user), ("trial_system_attributes", system)):
        attrs = rows(f"SELECT trial_id, key, value_json FROM {table} WHERE {scope}")
        decoded = json.loads("[" + ",".join(text for _, _, text in attrs) + "]")  # one parse, not one per value
        for (trial_id, key, _), value in zip(attrs, decoded):
            into[trial_id][key] = value
    out = []
    for trial_id, number, state, start, complete in trials:
        distributions = {name: _distribution(text) for name, _, text in params[trial_id]}
        out.append(FrozenTrial(
            number=number, state=TrialState[state], value=None,
            values=[v for _, v in sorted(values[trial_id])] or None,
            datetime_start=_time(start), datetime_complete=_time(complete),
            params={name: distributions[name].to_external_repr(value) for name, value, _ in params[trial_id]},
            distributions=distributions,
            user_attrs=user[trial_id], system_attrs=system[trial_id],
            intermediate_values={}, trial_id=trial_id))
    return out
