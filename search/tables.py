"""The trials and the front of a review as pandas tables, for the console, the CSV files and the export."""

from __future__ import annotations

import datetime
from typing import Any

from .metrics import KEY_COLUMNS, SD_SUFFIX
from .review import STRUCTURED_ATTRS, TRIAL_NOTES, Review


def trials_frame(review: Review) -> Any:
    """Every trial, one row each: state, objectives, TRIAL_NOTES, measured metrics, params, duration. An objective
    appears once: its told value, or for a failed trial whatever it measured."""
    rows, retrained = [], review.retrain_columns()
    for row in review.trials:
        trial = review.stored(row.number)
        told = dict(zip(review.names, trial.values or [None] * len(review.names)))
        attrs = {k: v for k, v in trial.user_attrs.items() if k not in STRUCTURED_ATTRS and k != "status"}
        if row.reason and trial.state == "FAIL":
            attrs.setdefault("reason", row.reason)  # failed by a stopped heartbeat: its driver died
        duration = trial.duration
        attrs.update(retrained.get(trial.number, {}))
        rows.append({"number": trial.number, "state": trial.state,
                     **{name: attrs.get(name) if told[name] is None else told[name] for name in review.names},
                     **{k: v for k, v in attrs.items() if k not in told},
                     **{f"param:{k}": v for k, v in trial.params.items()},
                     "duration": round(duration.total_seconds(), 2) if duration else None})
    if not rows:
        return _frame([])
    frame = _frame(rows)
    leading = ["state", *review.names, *(c for c in TRIAL_NOTES if c in frame)]
    params = [c for c in frame if c.startswith("param:")]
    metrics = sorted(c for c in frame if c not in leading and c not in params and c != "duration")
    frame = frame[leading + metrics + params + ["duration"]]
    for column in ("started_at", "ended_at"):  # the worker's wall clock, shown as local time
        if column in frame:
            frame[column] = _local_times(frame[column])
    return frame

def front_frame(review: Review) -> Any:
    """The front as a table: objectives (with their seed sd where seeds were confirmed), key measurements, whether
    a lead is within noise, what retrain measured, params."""
    rows, retrained = [], review.retrain_columns()
    for row in review.front:
        trial = review.stored(row.number)
        entry = {"number": trial.number, **dict(zip(review.names, trial.values))}
        entry.update({name + SD_SUFFIX: trial.user_attrs[name + SD_SUFFIX] for name in review.names
                      if name + SD_SUFFIX in trial.user_attrs})
        entry.update({k: trial.user_attrs[k] for k in ("seeds", *KEY_COLUMNS) if k in trial.user_attrs})
        if row.noise:
            entry["noise"] = row.noise
        entry.update(retrained.get(trial.number, {}))
        entry.update({f"param:{k}": v for k, v in trial.params.items()})
        rows.append(entry)
    return _frame(rows)


def _frame(rows: list[dict[str, Any]]) -> Any:
    """Trial rows (dicts with a 'number') as a frame indexed by number. A column of whole numbers stays whole
    where some trials lack it (a conditional param, reused_from) instead of turning float."""
    import pandas as pd

    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows).set_index("number")
    for column in frame:
        present = [row[column] for row in rows if row.get(column) is not None]
        if present and frame[column].dtype == float and all(type(v) is int for v in present):
            frame[column] = frame[column].astype("Int64")
    return frame


def _local_times(column: Any) -> Any:
    """Recorded times (ISO 8601; epoch seconds in studies of earlier versions) as naive local times."""
    import pandas as pd

    numeric = pd.to_numeric(column, errors="coerce")
    times = pd.to_datetime(column.where(numeric.isna()), utc=True, format="ISO8601")
    times = times.fillna(pd.to_datetime(numeric, unit="s", utc=True))
    zone = datetime.datetime.now().astimezone().tzinfo
    return times.dt.tz_convert(zone).dt.tz_localize(None).dt.round("ms")


def retrained_columns(frame: Any) -> list[str]:
    """The columns of what retrain measured (val_loss@16x), beside the search's objectives."""
    return [c for c in frame if "@" in c and not c.endswith("_sd")]
