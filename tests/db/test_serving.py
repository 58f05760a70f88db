# showcase: this file goes with the showcase (it drives the showcase's endpoints).
"""The database-facing endpoints on real servers, on SQLite and on PostgreSQL.

Each test runs gunicorn with a serving mode's config on a database of its own (tests/db/
conftest.py), and reads the rows back straight from that database, so a server that ignored
DATABASE_URL fails the test.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import httpx
import pytest

from lab.servers import MODES, interface_of_mode, start_mode
from tests.db.conftest import Database
from tests.serving.conftest import client_for

pytestmark = pytest.mark.serving


@contextlib.contextmanager
def both_interfaces(database: Database) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    """Serve `database` with a WSGI and an ASGI server; yield a client of each."""
    env = {**database.env, "WEB_CONCURRENCY": "1"}
    workdir = database.var_dir.parent
    with (
        start_mode("wsgi_gthread", env=env, workdir=workdir / "wsgi") as wsgi,
        start_mode("asgi_uvicorn", env=env, workdir=workdir / "asgi") as asgi,
        client_for(wsgi) as wsgi_client,
        client_for(asgi) as asgi_client,
    ):
        yield wsgi_client, asgi_client


@pytest.mark.parametrize("mode", MODES)
def test_db_views_read_and_write_in_every_mode(mode: str, database: Database) -> None:
    database.migrate()
    env = {**database.env, "WEB_CONCURRENCY": "1"}
    workdir = database.var_dir.parent / mode
    with start_mode(mode, env=env, workdir=workdir) as server, client_for(server) as client:
        sync_read = client.get("/sync/db/?id=7")
        async_read = client.get("/async/db/?id=7")
        made_by_sync = client.post("/sync/db/", json={"name": f"{mode}-sync", "value": 1})
        made_by_async = client.post("/async/db/", json={"name": f"{mode}-async", "value": 2})
        assert (made_by_sync.status_code, made_by_async.status_code) == (201, 201)
        # Each view reads what the other one wrote.
        sync_id = made_by_sync.json()["item"]["id"]
        async_id = made_by_async.json()["item"]["id"]
        read_across = (
            client.get(f"/async/db/?id={sync_id}").json(),
            client.get(f"/sync/db/?id={async_id}").json(),
        )
    assert sync_read.headers["X-Interface"] == interface_of_mode(mode)
    assert sync_read.json() == async_read.json()
    assert sync_read.json()["item"]["name"] == "item-007"
    assert sync_read.json()["count"] == 100
    assert [answer["item"]["name"] for answer in read_across] == [f"{mode}-sync", f"{mode}-async"]
    assert [answer["count"] for answer in read_across] == [102, 102]
    written = database.query("SELECT name, value FROM showcase_item WHERE id > 100 ORDER BY id")
    assert written == [(f"{mode}-sync", 1), (f"{mode}-async", 2)]


def test_readiness_waits_for_migrations_in_both_interfaces(database: Database) -> None:
    with both_interfaces(database) as (wsgi_client, asgi_client):
        before = [client.get("/readyz") for client in (wsgi_client, asgi_client)]
        database.migrate()
        after = [client.get("/readyz") for client in (wsgi_client, asgi_client)]
    for response in before:
        assert (response.status_code, response.json()) == (
            503,
            {"status": "unavailable", "reason": "unapplied migrations"},
        )
    for response in after:
        assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_migrations_apply_reverse_and_apply_again(database: Database) -> None:
    database.migrate()
    assert database.query("SELECT count(*) FROM showcase_item") == [(100,)]
    reversed_ = database.manage("migrate", "showcase", "zero", "--noinput", "--verbosity", "0")
    assert reversed_.returncode == 0, reversed_.stderr
    tables = (
        "SELECT count(*) FROM sqlite_master WHERE name = 'showcase_item'"
        if database.backend == "sqlite"
        else "SELECT count(*) FROM pg_tables WHERE tablename = 'showcase_item'"
    )
    assert database.query(tables) == [(0,)]
    database.migrate()
    assert database.query("SELECT count(*) FROM showcase_item") == [(100,)]
    check = database.manage("makemigrations", "--check", "--dry-run", "--verbosity", "0")
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.postgres
def test_readiness_reports_a_database_it_cannot_reach_then_recovers(
    postgres_database: Database,
) -> None:
    database = postgres_database
    database.migrate()
    with both_interfaces(database) as (wsgi_client, asgi_client):
        clients = (wsgi_client, asgi_client)
        ready = [client.get("/readyz").status_code for client in clients]
        # The pools hold open connections now: end them, and refuse new ones.
        database.refuse_connections(True)
        unreachable = [client.get("/readyz") for client in clients for _ in range(2)]
        database.refuse_connections(False)
        recovered = [client.get("/readyz").status_code for client in clients]
    assert ready == [200, 200]
    for response in unreachable:
        assert response.status_code == 503
        assert response.json()["reason"].startswith("database: "), response.json()
    assert recovered == [200, 200]
