"""Riding out a database server that goes away for a while (a managed database's fail-over, a restart for an
upgrade): a call that fails because the server cannot be reached is tried again, with backoff, until the server is
back or the patience runs out. The outage is said once when it starts and once when it ends. A SQLite file is never
waited for: its faults (damaged, full, read-only) do not pass by themselves."""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional, TypeVar

T = TypeVar("T")
UNREACHABLE = ("connection refused", "could not connect", "server closed the connection", "terminating connection",
               "connection is closed", "connection timeout", "timeout expired", "connection reset", "broken pipe",
               "the database system is starting up", "the database system is shutting down", "no route to host",
               "connection to server", "ssl syscall error", "consuming input failed")


def unreachable(err: Optional[BaseException]) -> bool:
    """Whether an error (or one it wraps) says the database server could not be reached."""
    seen = 0
    while err is not None and seen < 10:
        module = type(err).__module__
        if module.startswith(("sqlalchemy", "psycopg", "optuna")) and any(p in str(err).lower() for p in UNREACHABLE):
            return True
        if type(err).__name__ in ("AdminShutdown", "ConnectionTimeout") and module.startswith("psycopg"):
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


class Patience:
    """How long calls wait for an unreachable database server (0: not at all)."""

    def __init__(self, seconds: float = 0.0, say: Callable[[str], None] = lambda text: None, where: str = "") -> None:
        self.seconds, self.say, self.where = seconds, say, where
        self.recovered_at = -float("inf")  # when the server last came back (monotonic seconds)
        self._down_since: Optional[float] = None
        self._lock = threading.Lock()

    def call(self, work: Callable[[], T]) -> T:
        """`work()`, tried again while the server is unreachable, up to the patience."""
        delay = 0.5
        while True:
            try:
                result = work()
            except Exception as err:
                if not self.seconds or not unreachable(err):
                    raise
                with self._lock:
                    now = time.monotonic()
                    if self._down_since is None:
                        self._down_since = now
                        self.say(f"the study storage {self.where} is unreachable ({_first_line(err)}); retrying for up "
                                 f"to {self.seconds:g} s, the trials in training go on")
                    if now - self._down_since > self.seconds:
                        raise
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            if self._down_since is not None:
                with self._lock:
                    if self._down_since is not None:
                        self.say(f"the study storage is back after {time.monotonic() - self._down_since:.0f} s")
                        self._down_since, self.recovered_at = None, time.monotonic()
            return result


def _first_line(err: BaseException) -> str:
    cause = err
    while cause.__cause__ is not None:  # the driver's own message, not Optuna's wrapper
        cause = cause.__cause__
    return (str(cause).strip().splitlines() or [type(cause).__name__])[0]
