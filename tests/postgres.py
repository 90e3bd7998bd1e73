"""A throwaway PostgreSQL server for the tests: `postgres_server` (one per session) and `postgres_url` (a fresh
empty database per test).

The server is a local cluster in a temporary folder, listening on a free 127.0.0.1 port only (no Unix socket), with
durability switched off for speed (its data is discarded at the end). initdb refuses to run as root, so
as root (CI) the cluster belongs to the `postgres` user and its commands run through `runuser`.

Connections from 127.0.0.1 are trusted, except for roles made with `create_role`, which must give their password
(scram-sha-256): they are members of the group that pg_hba.conf's password line names.

Where no server can be started (no binaries, no `postgres` user, no psycopg, initdb or the server failing), the tests
that use it skip and say why; with the environment variable CI set, that is an error instead, so that CI cannot pass
by skipping them.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from concurrent.futures import Future
from itertools import count
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

import pytest

if TYPE_CHECKING:
    import psycopg.sql

PASSWORD_GROUP = "needs_password"
"""The group of roles that pg_hba.conf makes give a password; every other role is trusted."""

_HBA = f"""\
host all +{PASSWORD_GROUP} 127.0.0.1/32 scram-sha-256
host all all 127.0.0.1/32 trust
"""

# TCP on 127.0.0.1 only.
_SETTINGS = """
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = ''
"""
# A throwaway cluster for tests needs no durability, whose cost every commit would pay (a benchmark keeps it).
_NOT_DURABLE = """
fsync = off
synchronous_commit = off
full_page_writes = off
"""


class Unavailable(RuntimeError):
    """No server can be started here; the message says why."""


def find_bin_dir() -> Path:
    """The folder holding initdb and pg_ctl: the PATH's, else the newest of Debian's /usr/lib/postgresql/*/bin."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
                      if p.parent.parent.name.isdigit() else 0)
    if not versions:
        raise Unavailable("PostgreSQL's server programs (initdb, pg_ctl) are not installed "
                          "(Debian: apt-get install postgresql)")
    return versions[-1].parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PostgresServer:
    """A PostgreSQL cluster in a temporary folder on 127.0.0.1:`port`, whose superuser `postgres` needs no password.

    `stop()` and `start()` take it away and bring it back on the same port with the same data (`outage` does both,
    in the background, for a test that wants it gone for a while mid-search); `remove()` stops it for good and
    deletes its folder."""

    host = "127.0.0.1"

    def __init__(self, root: Path, port: int, bin_dir: Path, run_as: Optional[str], durable: bool = False) -> None:
        self.root = root
        self.port = port
        self.bin_dir = bin_dir
        self.run_as = run_as
        self.durable = durable
        self._databases = count(1)

    @classmethod
    def launch(cls, durable: bool = False) -> PostgresServer:
        """A new cluster, initialised and started (raises Unavailable, saying why, when that cannot be done); with
        `durable`, commits are flushed to disk as on a real server (tests do without)."""
        try:
            import psycopg  # noqa: F401  the fixtures talk to the server through it, as the tests do
        except ImportError:
            raise Unavailable("psycopg is not installed (pip install -e '.[dev]')") from None
        bin_dir = find_bin_dir()
        run_as = None
        if os.geteuid() == 0:  # initdb and the server refuse to run as root
            run_as = "postgres"
            if shutil.which("runuser") is None:
                raise Unavailable("running as root without runuser, so initdb cannot run as another user")
            try:
                import pwd

                owner = pwd.getpwnam(run_as)
            except KeyError:
                raise Unavailable(f"running as root and there is no {run_as!r} user to run initdb as") from None
        root = Path(tempfile.mkdtemp(prefix="pg-"))
        if run_as:
            os.chown(root, owner.pw_uid, owner.pw_gid)
        server = cls(root, free_port(), bin_dir, run_as, durable)
        try:
            server._init()
            server.start()
            server.execute(f"CREATE ROLE {PASSWORD_GROUP} NOLOGIN")
        except BaseException:
            server.remove()
            raise
        return server

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str = "postgres", user: str = "postgres", password: Optional[str] = None) -> str:
        """An SQLAlchemy URL for psycopg 3, with the user and password escaped as URLs need."""
        from sqlalchemy.engine import URL

        return URL.create("postgresql+psycopg", username=user, password=password, host=self.host, port=self.port,
                          database=database).render_as_string(hide_password=False)

    @property
    def running(self) -> bool:
        return self._pg_ctl("status", check=False).returncode == 0

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._pg_ctl("start", "-l", str(self.log_file))

    def stop(self) -> None:
        """Stop the server, cutting its clients off (fast shutdown): the next call of an open storage meets a dropped
        connection, and new connections are refused until `start()`."""
        self._pg_ctl("stop", "-m", "fast")

    def outage(self, seconds: float) -> Future[None]:
        """Stop the server now and start it again `seconds` later in a background thread; the future's `result()`
        waits until it is back (and raises what went wrong in bringing it back)."""
        self.stop()
        back: Future[None] = Future()

        def restart() -> None:
            time.sleep(seconds)
            try:
                self.start()
                back.set_result(None)
            except BaseException as err:
                back.set_exception(err)

        threading.Thread(target=restart, name="postgres-outage", daemon=True).start()
        return back

    def remove(self) -> None:
        """Stop the server at once (its data is not kept) and delete its folder."""
        if (self.data_dir / "postmaster.pid").exists():
            self._pg_ctl("stop", "-m", "immediate", check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def execute(self, statement: str | psycopg.sql.Composable, database: str = "postgres") -> None:
        """Run one statement as the superuser, outside a transaction (as CREATE DATABASE needs)."""
        import psycopg

        with psycopg.connect(host=self.host, port=self.port, user="postgres", dbname=database, autocommit=True,
                             connect_timeout=10) as conn:
            conn.execute(statement)

    def create_database(self, hint: str = "test", owner: str = "postgres") -> str:
        """Create an empty database named after `hint` (a test's name, say) and a number not used before, and return
        its name. Its owner may create tables in its public schema, which PostgreSQL 15 forbids other roles."""
        from psycopg import sql

        name = f"{re.sub(r'[^a-z0-9]+', '_', hint.lower()).strip('_')[:50]}_{next(self._databases)}"
        self.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(owner)))
        return name

    def drop_database(self, name: str) -> None:
        """Drop a database, closing the connections still open to it."""
        from psycopg import sql

        self.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def create_role(self, name: str, password: str) -> None:
        """A login role that must give `password` (checked with scram-sha-256) to connect over TCP."""
        from psycopg import sql

        self.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
            sql.Identifier(name), sql.Literal(password), sql.Identifier(PASSWORD_GROUP)))

    def _init(self) -> None:
        self._run("initdb", "-D", str(self.data_dir), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale",
                  "--no-sync")
        (self.data_dir / "pg_hba.conf").write_text(_HBA)  # rewritten in place: the file keeps its owner
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write(_SETTINGS.format(port=self.port) + ("" if self.durable else _NOT_DURABLE))

    def _pg_ctl(self, action: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run("pg_ctl", action, "-D", str(self.data_dir), "-w", "-t", "30", *args, check=check)

    def _run(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / program), *args]
        if self.run_as:
            command = ["runuser", "-u", self.run_as, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, cwd=self.root)
        if check and done.returncode != 0:
            log = self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() else ""
            raise Unavailable(f"{' '.join(command)} failed (exit {done.returncode}): "
                              f"{(done.stderr or done.stdout).strip()}\n{log}".rstrip())
        return done


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session, removed at its end; the tests that use it skip where none can be
    started, unless CI is set, where that is an error."""
    try:
        server = PostgresServer.launch()
    except Unavailable as err:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs a PostgreSQL server for these tests, and none could be started: {err}",
                        pytrace=False)
        pytest.skip(f"no PostgreSQL server for this test: {err}")
    yield server
    server.remove()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a new empty database on the session's server (`postgresql+psycopg://postgres@127.0.0.1:PORT/DB`,
    no password needed), dropped after the test. A test that stopped the server and did not start it again gets it
    started again here, so that the next test does not inherit the outage."""
    name = postgres_server.create_database(request.node.name)
    yield postgres_server.url(name)
    if not postgres_server.running:
        postgres_server.start()
    postgres_server.drop_database(name)
