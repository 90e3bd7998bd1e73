"""Plain SQL over Optuna's relational schema, for what Optuna's public API does too slowly or not atomically.

Optuna's ORM builds one object per row of every table: a study of a few thousand trials takes seconds to read, its
stale-trial check loads every running trial, and each attribute or heartbeat is a transaction of its own. Here each
table is read once per query, a trial's attributes are written in one statement, heartbeats in one, and the claims
that keep several drivers apart are single inserts that succeed for exactly one of them. The SQL runs on SQLite and
PostgreSQL alike (`:name` parameters, INSERT ... ON CONFLICT), through SQLAlchemy or, for a read-only review of a
SQLite file, Python's sqlite3.

This depends on Optuna's table layout, not on its Python internals: SCHEMA_VERSION names the layout it was written
for, and tests/test_storage.py pins every statement against Optuna's own reads and writes.
"""

from __future__ import annotations

import datetime
import json
from collections import defaultdict
from typing import Any, Callable, Iterable, Optional, Sequence

from .records import StoredTrial, external_value

SCHEMA_VERSION = "v3.2.0.a"  # Optuna's Alembic revision of the tables below (optuna 4.x and 5.x)
Query = Callable[[str, dict[str, Any]], list]  # runs SQL with :named arguments, returns the rows
_INFINITIES = {"INF_POS": float("inf"), "INF_NEG": float("-inf")}
METRIC_NAMES_KEY = "study:metric_names"  # where Optuna keeps set_metric_names' list among the study's system attrs


def _time(value: Any) -> Optional[datetime.datetime]:
    if value is None or isinstance(value, datetime.datetime):
        return value
    return datetime.datetime.fromisoformat(value)


def read_trials(query: Query, study_id: int, states: Optional[Iterable[str]] = None, first: int = 0,
                numbers: Optional[Sequence[int]] = None, user_attrs: bool = True) -> list[StoredTrial]:
    """The trials of a study numbered from `first` on (or those in `numbers`; in `states`, if given), by number, with
    one query per table (the user attributes' table skipped if not `user_attrs`)."""
    if states is not None and not list(states) or numbers is not None and not list(numbers):
        return []
    where = "study_id = :study AND number >= :first"
    if numbers is not None:
        where += f" AND number IN ({', '.join(str(int(n)) for n in numbers)})"
    if states is not None:
        where += f" AND state IN ({', '.join(repr(str(s)) for s in sorted(states))})"
    scope = f"trial_id IN (SELECT trial_id FROM trials WHERE {where})"
    arguments = {"study": study_id, "first": first}

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
    for table, into in (("trial_user_attributes", user), ("trial_system_attributes", system))[0 if user_attrs else 1:]:
        attrs = rows(f"SELECT trial_id, key, value_json FROM {table} WHERE {scope}")
        decoded = json.loads("[" + ",".join(text for _, _, text in attrs) + "]")  # one parse, not one per value
        for (trial_id, key, _), value in zip(attrs, decoded):
            into[trial_id][key] = value
    return [StoredTrial(number=number, trial_id=trial_id, state=state,
                        values=tuple(v for _, v in sorted(values[trial_id])) or None,
                        params={name: external_value(text, value) for name, value, text in params[trial_id]},
                        user_attrs=user[trial_id], system_attrs=system[trial_id],
                        distributions={name: text for name, _, text in params[trial_id]},
                        datetime_start=_time(start), datetime_complete=_time(complete))
            for trial_id, number, state, start, complete in trials]


def trial_states(query: Query, study_id: int, first: int = 0) -> list[tuple[int, str]]:
    """(number, state) of the trials numbered from `first` on: a cheap look at what ended since."""
    return [(n, s) for n, s in query("SELECT number, state FROM trials WHERE study_id = :study AND number >= :first "
                                     "ORDER BY number", {"study": study_id, "first": first})]


def study_row(query: Query, name: Optional[str] = None) -> tuple[int, str]:
    """(study_id, study_name) of the study named `name`, or of the only study; KeyError/ValueError otherwise."""
    rows = query("SELECT study_id, study_name FROM studies ORDER BY study_id", {})
    if name is not None:
        rows = [row for row in rows if row[1] == name]
        if not rows:
            raise KeyError(f"no study named {name!r}")
    if len(rows) != 1:
        raise ValueError(f"expected one study, found {len(rows)}")
    return tuple(rows[0])


def study_directions(query: Query, study_id: int) -> tuple[str, ...]:
    rows = query("SELECT direction FROM study_directions WHERE study_id = :study ORDER BY objective", {"study": study_id})
    return tuple(str(direction).lower() for (direction,) in rows)


def study_attrs(query: Query, study_id: int, table: str = "study_user_attributes") -> dict[str, Any]:
    return {key: json.loads(text) for key, text in
            query(f"SELECT key, value_json FROM {table} WHERE study_id = :study", {"study": study_id})}


def trial_id(query: Query, study_id: int, number: int) -> int:
    rows = query("SELECT trial_id FROM trials WHERE study_id = :study AND number = :number", {"study": study_id, "number": number})
    if not rows:
        raise KeyError(f"no trial {number} in study {study_id}")
    return rows[0][0]


# -- writes (through a SQLAlchemy connection in a transaction) --------------------------------------------------

Execute = Callable[[str, Any], Any]  # runs SQL with one dict of arguments or a list of them; returns the result


def write_trial_attrs(execute: Execute, trial_id: int, attrs: dict[str, Any]) -> bool:
    """Set a running trial's user attributes in one statement; False (nothing written) when it has finished."""
    running = execute("SELECT 1 FROM trials WHERE trial_id = :trial AND state = 'RUNNING'", {"trial": trial_id}).fetchall()
    if not running or not attrs:
        return bool(running)
    execute("INSERT INTO trial_user_attributes (trial_id, key, value_json) VALUES (:trial, :key, :value) "
            "ON CONFLICT (trial_id, key) DO UPDATE SET value_json = excluded.value_json",
            [{"trial": trial_id, "key": key, "value": json.dumps(value)} for key, value in attrs.items()])
    return True


def record_heartbeats(execute: Execute, trial_ids: Sequence[int]) -> None:
    """Now, as every listed trial's heartbeat (what Optuna's record_heartbeat writes, for all of them at once)."""
    if trial_ids:
        execute("INSERT INTO trial_heartbeats (trial_id, heartbeat) VALUES (:trial, CURRENT_TIMESTAMP) "
                "ON CONFLICT (trial_id) DO UPDATE SET heartbeat = CURRENT_TIMESTAMP",
                [{"trial": i} for i in trial_ids])


def stale_trial_ids(query: Query, dialect: str, study_id: int, grace_seconds: float,
                    started_before: datetime.datetime) -> list[int]:
    """Running trials whose heartbeat is older than the grace period, by the database's clock (as Optuna's own
    check, in one query instead of one object per running trial); and running trials that never got a heartbeat
    (their driver died between asking and beating) started before `started_before` (the writer's own clock, as
    Optuna records a trial's start)."""
    cutoff = ("datetime('now', :offset)" if dialect == "sqlite"
              else "LOCALTIMESTAMP - (:seconds * INTERVAL '1 second')")
    arguments = {"study": study_id, "offset": f"-{int(grace_seconds)} seconds", "seconds": grace_seconds,
                 "started": started_before}
    beaten = [row[0] for row in query(
        "SELECT t.trial_id FROM trials t JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
        f"WHERE t.study_id = :study AND t.state = 'RUNNING' AND h.heartbeat < {cutoff}", arguments)]
    never = [row[0] for row in query(
        "SELECT t.trial_id FROM trials t LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
        "WHERE t.study_id = :study AND t.state = 'RUNNING' AND h.trial_id IS NULL AND t.datetime_start < :started",
        arguments)]
    return beaten + never


# -- claims: study system attributes that exactly one driver can create ------------------------------------------

def claim(execute: Execute, study_id: int, key: str, value: Any) -> bool:
    """Create the study system attribute `key` holding `value`, if no one has: True for the one caller that did (and
    for that caller again, should it retry after losing the connection to its own commit)."""
    arguments = {"study": study_id, "key": key, "value": _json(value)}
    result = execute("INSERT INTO study_system_attributes (study_id, key, value_json) VALUES (:study, :key, :value) "
                     "ON CONFLICT (study_id, key) DO NOTHING", arguments)
    if result.rowcount == 1:
        return True
    held = execute("SELECT value_json FROM study_system_attributes WHERE study_id = :study AND key = :key", arguments).fetchall()
    return bool(held) and held[0][0] == arguments["value"]


def update_claim(execute: Execute, study_id: int, key: str, before: Any, after: Any) -> bool:
    """Change a claim's value from `before` to `after`; False (nothing changed) if it no longer holds `before`."""
    result = execute("UPDATE study_system_attributes SET value_json = :after WHERE study_id = :study AND key = :key "
                     "AND value_json = :before", {"study": study_id, "key": key, "before": _json(before), "after": _json(after)})
    return result.rowcount == 1


def release(execute: Execute, study_id: int, claims: Sequence[tuple[str, Any]]) -> None:
    """Delete each (key, value) claim that still holds that value (a claim taken again since is left alone)."""
    if claims:
        execute("DELETE FROM study_system_attributes WHERE study_id = :study AND key = :key AND value_json = :value",
                [{"study": study_id, "key": key, "value": _json(value)} for key, value in claims])


def _json(value: Any) -> str:
    """One text per value, whoever writes it, so that a claim can be compared by its text."""
    return json.dumps(value, sort_keys=True)


def claims(query: Query, study_id: int, prefix: str, after: int = 0) -> list[tuple[int, str, Any]]:
    """(row id, key, value) of the study's system attributes whose key starts with `prefix`, created after row
    `after` (row ids only grow: a reader that remembers the last id reads only what is new)."""
    rows = query("SELECT study_system_attribute_id, key, value_json FROM study_system_attributes "
                 "WHERE study_id = :study AND key LIKE :pattern AND study_system_attribute_id > :after "
                 "ORDER BY study_system_attribute_id", {"study": study_id, "pattern": prefix + "%", "after": after})
    return [(row_id, key, json.loads(text)) for row_id, key, text in rows]
