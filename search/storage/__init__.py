"""Every contact with a study's storage: opening or creating it (SQLite or any RDB URL), asking and recording trials,
heartbeats and the trials of dead drivers, claims among drivers, fast reads, and the read-only review. No other
module reaches into Optuna's storage; the SQL over Optuna's tables is in sql.py, pinned by tests/test_storage.py.

The writer's side (store.py) imports Optuna, so it is loaded on first use: a review reads a study without it."""

from typing import Any

from .reader import read_study
from .records import StoredTrial, StudyView
from .urls import STUDY_FILE, default_storage, file_of, redacted

_STORE = ("GRACE_S", "HEARTBEAT_S", "Heartbeat", "StudyStore", "close_storage", "open_storage")


def __getattr__(name: str) -> Any:
    if name in _STORE:
        from . import store

        return getattr(store, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["STUDY_FILE", "StoredTrial", "StudyView", "default_storage", "file_of", "read_study", "redacted", *_STORE]
