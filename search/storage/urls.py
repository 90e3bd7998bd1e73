"""Storage URLs: where a run folder keeps its study, the file a SQLite URL names, and a URL fit to print."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

STUDY_FILE = "study.db"
SQLITE_PREFIX = "sqlite:///"


def default_storage(out_dir: Path) -> str:
    """The study of a run folder: a SQLite file inside it."""
    return f"{SQLITE_PREFIX}{(Path(out_dir) / STUDY_FILE).resolve()}"


def file_of(url: str) -> Optional[Path]:
    """The file a sqlite:/// URL names, or None for another kind of storage (or an in-memory database)."""
    if not url.startswith(SQLITE_PREFIX) or url[len(SQLITE_PREFIX):] in ("", ":memory:"):
        return None
    return Path(url[len(SQLITE_PREFIX):].split("?")[0])


def redacted(url: str) -> str:
    """The URL with any password replaced by ***, for printing, logging and storing: a SQLite file as its path."""
    file = file_of(url)
    if file is not None:
        return str(file)
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        secret = {k: "***" for k in parsed.query if k.lower() in ("password", "passwd", "pwd")}
        return parsed.update_query_dict(secret).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can read: keep the scheme and host, drop whatever could be a secret
        scheme, _, rest = url.partition("://")
        return f"{scheme}://{rest.rpartition('@')[2]}" if rest else "(unreadable storage URL)"
