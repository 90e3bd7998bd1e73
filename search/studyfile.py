"""A SQLite study file opened read-only, for the review commands (front, trials, plot, report, export).

Optuna's RDBStorage brings SQLAlchemy's ORM and Alembic's schema checks, which cost a review command most of its
start. The review only reads, so here the file is opened with Python's own sqlite3 in read-only mode and its tables
are read with the same SQL as the driver's rereads (`records.read_trials`). Any write is refused: a review cannot
change the study it reviews.
"""

from __future__ import annotations

import json
import sqlite3
import urllib.parse
from pathlib import Path
from typing import Any, Container, Optional

from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.study._frozen import FrozenStudy
from optuna.trial import FrozenTrial, TrialState

from .records import read_trials

SQLITE_PREFIX = "sqlite:///"


def file_of(url: str) -> Optional[Path]:
    """The file a sqlite:/// URL names, or None for another kind of storage (or an in-memory database)."""
    if not url.startswith(SQLITE_PREFIX) or url[len(SQLITE_PREFIX):] in ("", ":memory:"):
        return None
    return Path(url[len(SQLITE_PREFIX):].split("?")[0])


class StudyFile(BaseStorage):
    """A read-only Optuna storage over a SQLite study file (schema as Optuna's RDBStorage writes it)."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise ValueError(f"{path}: no such study file")
        self.path = path
        uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
        self._connection = sqlite3.connect(uri, uri=True, timeout=60)

    @property
    def url(self) -> str:
        return SQLITE_PREFIX + str(self.path)

    def query(self, sql: str, arguments: dict[str, Any]) -> list[tuple]:
        return self._connection.execute(sql, arguments).fetchall()

    def _attrs(self, table: str, study_id: int) -> dict[str, Any]:
        return {key: json.loads(text) for key, text in
                self.query(f"SELECT key, value_json FROM {table} WHERE study_id = :study", {"study": study_id})}

    # reading a study

    def get_all_studies(self) -> list[FrozenStudy]:
        return [FrozenStudy(name, None, self.get_study_user_attrs(study_id), self.get_study_system_attrs(study_id),
                            study_id, directions=self.get_study_directions(study_id))
                for study_id, name in self.query("SELECT study_id, study_name FROM studies ORDER BY study_id", {})]

    def get_study_id_from_name(self, study_name: str) -> int:
        rows = self.query("SELECT study_id FROM studies WHERE study_name = :name", {"name": study_name})
        if not rows:
            raise KeyError(f"no study named {study_name!r} in {self.path}")
        return rows[0][0]

    def get_study_name_from_id(self, study_id: int) -> str:
        rows = self.query("SELECT study_name FROM studies WHERE study_id = :study", {"study": study_id})
        if not rows:
            raise KeyError(f"no study {study_id} in {self.path}")
        return rows[0][0]

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        rows = self.query("SELECT direction FROM study_directions WHERE study_id = :study ORDER BY objective",
                          {"study": study_id})
        return [StudyDirection[name] for (name,) in rows]

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._attrs("study_user_attributes", study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._attrs("study_system_attributes", study_id)

    # reading trials

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Optional[Container[TrialState]] = None) -> list[FrozenTrial]:
        """Every trial (in `states`, if given), by number; each read is fresh, so `deepcopy` changes nothing."""
        return read_trials(self.query, study_id, states)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        rows = self.query("SELECT study_id, number FROM trials WHERE trial_id = :trial", {"trial": trial_id})
        if not rows:
            raise KeyError(f"no trial {trial_id} in {self.path}")
        study_id, number = rows[0]
        return read_trials(self.query, study_id, None, number, number)[0]

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        rows = self.query("SELECT trial_id FROM trials WHERE study_id = :study AND number = :number",
                          {"study": study_id, "number": trial_number})
        if not rows:
            raise KeyError(f"no trial {trial_number} in study {study_id} of {self.path}")
        return rows[0][0]

    # writing: refused

    def _refuse(self, *_: Any, **__: Any) -> Any:
        raise PermissionError(f"{self.path}: opened read-only for a review; it cannot be changed")

    create_new_study = delete_study = set_study_user_attr = set_study_system_attr = _refuse
    create_new_trial = set_trial_param = set_trial_state_values = set_trial_intermediate_value = _refuse
    set_trial_user_attr = set_trial_system_attr = _refuse

