"""A storage that fails, in one line: what went wrong and what to do, naming the storage without its password."""

from __future__ import annotations

from typing import Any, Callable, Optional

from ..errors import SpaceError, UsageError
from .urls import file_of, redacted


def storage_call(url: str, call: Callable[[], Any]) -> Any:
    """Run a storage call; a bad, unreachable, damaged, locked, read-only or full storage becomes one line naming
    it and what to do (UsageError)."""
    try:
        return call()
    except (SpaceError, UsageError):
        raise  # the space and the stored study disagree, or the input was bad: not the storage's fault
    except Exception as err:
        fault = storage_fault(url, err)
        if fault is None and isinstance(err, (ValueError, ImportError)):  # a malformed URL, a missing driver
            fault = UsageError(f"--storage {redacted(url)}: {_safe(_first_line(err), url)}")
        if fault is None:
            raise
        raise fault from None


def _is_storage_error(err: BaseException) -> bool:
    module = type(err).__module__
    return module.startswith(("sqlalchemy", "sqlite3", "psycopg", "optuna.exceptions")) or \
        type(err).__name__ == "StorageInternalError"


def storage_fault(url: str, err: BaseException) -> Optional[UsageError]:
    """The one-line error for a storage failure (Optuna's StorageInternalError wraps SQLAlchemy's, a review reads with
    sqlite3), or None when `err` is not one."""
    where = redacted(url)
    while err is not None and not _is_storage_error(err):
        err = err.__cause__ or err.__context__  # Ray Tune may wrap what the driver raised
    if err is None:
        return None
    cause = err.__cause__ or err.__context__ or err
    text = f"{_first_line(err)} {_first_line(cause)}".lower()
    if type(err).__name__ in ("NoSuchModuleError", "ArgumentError"):  # the URL itself is wrong
        return UsageError(f"--storage {where}: {_safe(_first_line(err), url)}")
    if file_of(url) is not None:
        where = str(file_of(url))
    if "malformed" in text or "not a database" in text or "corrupt" in text:
        advice = "the file is damaged: restore it from a backup, or start over with --fresh or another --out"
    elif "readonly" in text or "read-only" in text:
        advice = "the storage is read-only: make it writable, or copy the run folder somewhere writable"
    elif "disk is full" in text or "disk full" in text or "no space" in text:
        advice = "the disk is full: free some space and run the same command again"
    elif "locked" in text:
        advice = "the database stayed locked: another process holds it; try again when it is done"
    else:
        advice = _safe(_first_line(cause), url)
    return UsageError(f"{where}: the study storage failed ({advice})")


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _safe(text: str, url: str) -> str:
    """A message with the URL's password (if any) taken out."""
    from urllib.parse import unquote

    try:
        from sqlalchemy.engine import make_url

        password = make_url(url).password
    except Exception:
        password = None
    for secret in {password, unquote(password) if password else None} - {None, ""}:
        text = text.replace(secret, "***")
    return text
