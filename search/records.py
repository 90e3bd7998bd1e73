"""A study's trials read straight from its relational tables, for the review commands and the driver's rereads.

Optuna builds each FrozenTrial through its ORM, one object per row of every table, which costs seconds for a few
thousand trials. Here each table is read once with plain SQL and the same FrozenTrials are assembled from the rows;
a storage that is not relational (in memory) goes through Optuna as before.
"""

from __future__ import annotations

import datetime
import functools
import json
from collections import defaultdict
from typing import Any, Iterable, Optional

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
    wanted = None if states is None else {s.name for s in states}
    if not isinstance(backend, optuna.storages.RDBStorage):
        trials = study.get_trials(deepcopy=False)[from_number:]
        return [t for t in trials if wanted is None or t.state.name in wanted]
    import sqlalchemy

    where = "study_id = :study AND number >= :first" + (f" AND state IN ({', '.join(repr(n) for n in sorted(wanted))})"
                                                          if wanted is not None else "")
    scope = f"trial_id IN (SELECT trial_id FROM trials WHERE {where})"
    arguments = {"study": study._study_id, "first": from_number}
    with backend.engine.connect() as connection:
        def rows(sql: str) -> list:
            return connection.execute(sqlalchemy.text(sql), arguments).fetchall()

        trials = rows(f"SELECT trial_id, number, state, datetime_start, datetime_complete FROM trials WHERE {where} ORDER BY number")
        values, params, user, system = (defaultdict(list) for _ in range(4))
        for trial_id, objective, value, kind in rows(f"SELECT trial_id, objective, value, value_type FROM trial_values WHERE {scope}"):
            values[trial_id].append((objective, _INFINITIES.get(kind, value)))
        for trial_id, name, value, text in rows(f"SELECT trial_id, param_name, param_value, distribution_json FROM trial_params "
                                                 f"WHERE {scope} ORDER BY param_id"):
            params[trial_id].append((name, value, text))
        for table, into in (("trial_user_attributes", user), ("trial_system_attributes", system)):
            for trial_id, key, text in rows(f"SELECT trial_id, key, value_json FROM {table} WHERE {scope}"):
                into[trial_id].append((key, text))
    out = []
    for trial_id, number, state, start, complete in trials:
        distributions = {name: _distribution(text) for name, _, text in params[trial_id]}
        out.append(FrozenTrial(
            number=number, state=TrialState[state], value=None,
            values=[v for _, v in sorted(values[trial_id])] or None,
            datetime_start=_time(start), datetime_complete=_time(complete),
            params={name: distributions[name].to_external_repr(value) for name, value, _ in params[trial_id]},
            distributions=distributions,
            user_attrs={key: json.loads(text) for key, text in user[trial_id]},
            system_attrs={key: json.loads(text) for key, text in system[trial_id]},
            intermediate_values={}, trial_id=trial_id))
    return out
