"""For the end-to-end tests: a search run as a command, and what its study holds while it runs, read as the review
reads it (read_study: no Optuna, read-only) and, for the budget's places, straight from the study's SQLite file."""

from __future__ import annotations

import datetime
import json
import sqlite3
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import pytest

from configaformer_search.driver.state import PLACE
from configaformer_search.storage import StoredTrial, StudyView, file_of, read_study


def cli(*args: str) -> list[str]:
    """The command line of configaformer-search in a process of its own."""
    return [sys.executable, "-m", "configaformer_search.cli", *args]


def wait_for(condition: Callable[[], bool], timeout: float = 120, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def study_or_none(url: str) -> Optional[StudyView]:
    """The study at `url`, or None while it is not made yet."""
    try:
        return read_study(url)
    except Exception:  # no file, no tables or no study yet: the search is creating it
        return None


def trials_of(url: str) -> list[StoredTrial]:
    study = study_or_none(url)
    return study.trials if study else []


def measured(study: StudyView) -> list[StoredTrial]:
    """The trials that took a place of the --trials budget and ended (what --trials counts)."""
    return [t for t in study.trials if t.finished and t.outcome.counts]


def places(url: str) -> dict[int, Optional[int]]:
    """The places of the budget held now: {trial number: the rung it waits at, or None while it trains}."""
    file = file_of(url)
    assert file is not None, "places are read from a SQLite study"
    try:
        connection = sqlite3.connect(f"file:{file}?mode=ro", uri=True, timeout=30)
        try:
            rows = connection.execute("SELECT value_json FROM study_system_attributes WHERE key LIKE ?",
                                      (PLACE + "%",)).fetchall()
        finally:
            connection.close()
    except sqlite3.Error:  # not made yet
        return {}
    return {value["trial"]: value.get("waiting") for value in (json.loads(text) for (text,) in rows)}


def in_training(url: str, for_s: float = 0.5) -> list[StoredTrial]:
    """RUNNING trials that hold a place of the budget and are not waiting at a rung, started over `for_s` ago: trials
    in training (not a suggestion asked ahead, nor a repeat asked and told at once)."""
    held = places(url)
    now = datetime.datetime.now()
    return [t for t in trials_of(url) if t.state == "RUNNING" and t.number in held and held[t.number] is None
            and t.datetime_start is not None and now - t.datetime_start > datetime.timedelta(seconds=for_s)]


def ray_trial_workers() -> list[int]:
    """Processes of Ray Tune's function trainables ('ray::ImplicitFunc.train')."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if b"ImplicitFunc" in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found
