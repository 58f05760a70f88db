"""Fixtures for the database tests: each test gets a fresh database of its own, per backend.

Every test that takes `database` runs twice: on SQLite (a file in the test's own directory)
and on PostgreSQL (a database created on the server at DUALSERVE_TEST_POSTGRES_URL and dropped
after the test). Without a server there the PostgreSQL half skips with the commands to start
one, and fails under CI=true (.ci/run starts one).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import sql

from lab import manage
from lab.servers import INHERITED_SETTINGS

Env = dict[str, str | None]

POSTGRES_URL_VARIABLE = "DUALSERVE_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgres://dualserve:dualserve@127.0.0.1:5432/dualserve"
POSTGRES_HOW_TO = (
    "no PostgreSQL answers at {url} ({error}). To run the PostgreSQL tests: "
    "`sudo .ci/run` sets one up (Debian's postgresql package, a role with CREATEDB), or by hand: "
    "apt-get install postgresql; pg_ctlcluster 15 main start; "
    "sudo -u postgres psql -c \"CREATE ROLE dualserve LOGIN CREATEDB PASSWORD 'dualserve'\" "
    '-c "CREATE DATABASE dualserve OWNER dualserve"; '
    f"or point {POSTGRES_URL_VARIABLE} at a role that may create databases."
)
BACKENDS = ("sqlite", "postgresql")


def postgres_url() -> str:
    """Return the URL of the PostgreSQL server the tests use (its role needs CREATEDB)."""
    return os.environ.get(POSTGRES_URL_VARIABLE, "").strip() or DEFAULT_POSTGRES_URL


def with_database(url: str, name: str) -> str:
    """Return the postgres:// `url` pointing at database `name` instead of its own."""
    return urlsplit(url)._replace(path=f"/{name}").geturl()


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """Return the test server's URL once a connection works; skip (fail under CI) otherwise."""
    url = postgres_url()
    try:
        psycopg.connect(url, connect_timeout=5).close()
    except psycopg.Error as exc:
        message = POSTGRES_HOW_TO.format(url=url, error=str(exc).strip().splitlines()[0])
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(f"CI=true and {message}")
        pytest.skip(message)
    return url


class Database:
    """A fresh database for one test: the server environment that selects it, and its users."""

    def __init__(self, backend: str, directory: Path, admin_url: str | None) -> None:
        self.backend = backend
        self.var_dir = directory
        self.admin_url = admin_url
        self.name = f"dualserve_test_{uuid.uuid4().hex[:12]}"
        self.env: Env = dict.fromkeys(INHERITED_SETTINGS)
        self.env["DJANGO_VAR_DIR"] = str(directory)
        self.url = None if admin_url is None else with_database(admin_url, self.name)
        self.env["DATABASE_URL"] = self.url

    @property
    def sqlite_path(self) -> Path:
        """Return the SQLite file the servers open (settings: $DJANGO_VAR_DIR/db.sqlite3)."""
        return self.var_dir / "db.sqlite3"

    def create(self) -> None:
        """Create the PostgreSQL database (SQLite creates its file on first use)."""
        if self.admin_url is not None:
            with psycopg.connect(self.admin_url, autocommit=True) as admin:
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))

    def drop(self) -> None:
        """Drop the PostgreSQL database, even with connections left open (PostgreSQL 13+)."""
        if self.admin_url is not None:
            with psycopg.connect(self.admin_url, autocommit=True) as admin:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(self.name)
                    )
                )

    def refuse_connections(self, refuse: bool) -> None:
        """PostgreSQL: end every session on the database and refuse new ones, or allow them."""
        assert self.admin_url is not None, "PostgreSQL only"
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                    sql.Identifier(self.name), sql.Literal(not refuse)
                )
            )
            if refuse:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    [self.name],
                )

    def manage(self, *args: str, env: Env | None = None) -> subprocess.CompletedProcess[str]:
        """Run manage.py on this database; return the finished process."""
        return manage.run(args, {**self.env, **(env or {})}, timeout=180)

    def migrate(self) -> None:
        """Apply every migration (with the showcase, its data migration seeds 100 items)."""
        manage.run_checked(["migrate", "--noinput", "--verbosity", "0"], self.env, timeout=180)

    def query(self, statement: str) -> list[tuple[object, ...]]:
        """Return the rows of `statement`, read straight from the database, not via Django."""
        if self.url is not None:
            with psycopg.connect(self.url, autocommit=True) as connection:
                return list(connection.execute(statement).fetchall())
        with contextlib.closing(sqlite3.connect(self.sqlite_path)) as connection:
            return connection.execute(statement).fetchall()

    def open_connections(self, server_pid: int) -> int:
        """Return how many connections to this database the server's processes hold now.

        PostgreSQL: the server's sessions on the database (pg_stat_activity). SQLite: the
        descriptors of the database file open in the server's processes (a connection keeps
        the file open until it is closed, and SQLite defers that close while another
        connection of the process holds a lock on the file).
        """
        if self.admin_url is not None:
            with psycopg.connect(self.admin_url, autocommit=True) as admin:
                # Client sessions only: autovacuum also visits a freshly migrated database.
                row = admin.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = %s AND backend_type = 'client backend'",
                    [self.name],
                ).fetchone()
            assert row is not None
            return int(row[0])
        target = str(self.sqlite_path)
        count = 0
        for pid in process_tree(server_pid):
            fd_dir = Path(f"/proc/{pid}/fd")
            try:
                links = [os.readlink(fd) for fd in fd_dir.iterdir()]
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue  # the process ended meanwhile
            count += links.count(target)
        return count


def process_tree(pid: int) -> list[int]:
    """Return `pid` and its descendants (Linux /proc)."""
    found = [pid]
    for parent in found:
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        found.extend(int(child) for child in children)
    return found


def fresh_database(backend: str, directory: Path, admin_url: str | None) -> Iterator[Database]:
    """Yield a new, empty database; drop it afterwards."""
    db = Database(backend, directory, admin_url)
    db.var_dir.mkdir()
    db.create()
    try:
        yield db
    finally:
        db.drop()


@pytest.fixture(params=[BACKENDS[0], pytest.param(BACKENDS[1], marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """Return a fresh, empty database of this test's own, on SQLite and on PostgreSQL."""
    admin_url = None
    if request.param == "postgresql":
        admin_url = request.getfixturevalue("postgres_admin_url")
    yield from fresh_database(request.param, tmp_path / "var", admin_url)


@pytest.fixture
def postgres_database(postgres_admin_url: str, tmp_path: Path) -> Iterator[Database]:
    """Return a fresh, empty PostgreSQL database of this test's own."""
    yield from fresh_database("postgresql", tmp_path / "var", postgres_admin_url)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say how many database tests passed on each backend, so a CI log shows which ran."""
    passed = [
        report
        for report in terminalreporter.stats.get("passed", [])
        if report.when == "call" and report.nodeid.startswith("tests/db/")
    ]
    if passed:
        # Every PostgreSQL test carries the `postgres` marker (the fixture's param marks too).
        on_postgresql = sum("postgres" in report.keywords for report in passed)
        server = urlsplit(postgres_url())
        terminalreporter.write_line(
            f"database tests passed: {len(passed) - on_postgresql} on SQLite, {on_postgresql} "
            f"on the PostgreSQL server at {server.hostname}:{server.port}"
        )
