"""A study read once, read-only, for the review commands (front, trials, plot, report, export).

A SQLite study file is opened with Python's own sqlite3 in read-only mode; any other URL (PostgreSQL) through
SQLAlchemy's core in a read-only transaction. Neither brings Optuna's ORM, Alembic or Optuna itself: a review starts
in a fraction of the time, and cannot change the study it reviews.
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from typing import Any, Callable, Optional

from . import sql
from .records import StudyView
from .urls import file_of, redacted


def read_study(url: str, name: Optional[str] = None) -> StudyView:
    """The study at `url` (the only one there, or the one named `name`), with every trial."""
    file = file_of(url)
    if file is not None:
        if not file.is_file():
            raise FileNotFoundError(f"{file}: no such study file")
        connection = sqlite3.connect(f"file:{urllib.parse.quote(str(file.resolve()))}?mode=ro", uri=True, timeout=60)
        try:
            return _read(lambda text, arguments: connection.execute(text, arguments).fetchall(), name, url)
        finally:
            connection.close()
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as connection:
            return _read(lambda text, arguments: connection.execute(sqlalchemy.text(text), arguments).fetchall(), name, url)
    finally:
        engine.dispose()


def _read(query: Callable[[str, dict[str, Any]], list], name: Optional[str], url: str) -> StudyView:
    study_id, study_name = sql.study_row(query, name)
    system = sql.study_attrs(query, study_id, "study_system_attributes")
    return StudyView(study_name, sql.study_directions(query, study_id), tuple(system.get(sql.METRIC_NAMES_KEY) or ()),
                     sql.study_attrs(query, study_id), sql.read_trials(query, study_id), redacted(url))
