"""How many database connections a server holds, during a burst and after it.

The servers run tests.db.settings (the project's settings plus /test/hold/, a sync view that
queries the database and then holds the request), so a known number of requests hold their
connections at once. Connections are counted from outside the server: PostgreSQL's
pg_stat_activity, or the SQLite file's descriptors in the server's processes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from lab.servers import ASGI_MODES, Server, start_mode
from tests.db.conftest import Database, Env

pytestmark = [pytest.mark.serving, pytest.mark.slow]

# Long enough for every request of a burst to be holding its connection at one sampling.
HOLD_MS = 1500
BURST_TIMEOUT_S = 60.0
SETTLE_TIMEOUT_S = 10.0
WSGI_THREADS = 4


def burst(server: Server, database: Database, requests: int) -> tuple[list[int], int]:
    """Send `requests` concurrent /test/hold/ requests; return their statuses and the most
    connections the server held at once meanwhile."""
    url = f"{server.base_url}/test/hold/?ms={HOLD_MS}"
    most = 0
    with (
        httpx.Client(timeout=BURST_TIMEOUT_S, trust_env=False) as client,
        ThreadPoolExecutor(requests) as pool,
    ):
        futures = [pool.submit(client.get, url) for _ in range(requests)]
        deadline = time.monotonic() + BURST_TIMEOUT_S
        while not all(future.done() for future in futures) and time.monotonic() < deadline:
            most = max(most, database.open_connections(server.pid))
            time.sleep(0.05)
        statuses = [future.result(timeout=BURST_TIMEOUT_S).status_code for future in futures]
    return statuses, most


def settled(count: Callable[[], int], expected: int) -> int:
    """Return `count()` once it equals `expected`, or its last value after SETTLE_TIMEOUT_S.

    A connection is closed when the response is, which is after the client has it.
    """
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    value = count()
    while value != expected and time.monotonic() < deadline:
        time.sleep(0.1)
        value = count()
    return value


def server_env(database: Database, **extra: str) -> Env:
    """Return the environment of a one-worker server on `database` with /test/hold/."""
    return {
        **database.env,
        "DJANGO_SETTINGS_MODULE": "tests.db.settings",
        "WEB_CONCURRENCY": "1",
        "GUNICORN_THREADS": str(WSGI_THREADS),
        **extra,
    }


@pytest.mark.parametrize(
    ("conn_max_age", "kept"), [("0", 0), ("60", WSGI_THREADS)], ids=["closed", "persistent"]
)
def test_wsgi_threads_keep_connections_only_when_persistent(
    conn_max_age: str, kept: int, database: Database
) -> None:
    database.migrate()
    env = server_env(database, DJANGO_DB_POOL="false", DJANGO_CONN_MAX_AGE=conn_max_age)
    with start_mode("wsgi_gthread", env=env, workdir=database.var_dir.parent / "srv") as server:
        statuses, most = burst(server, database, WSGI_THREADS)
        after = settled(lambda: database.open_connections(server.pid), kept)
    assert statuses == [200] * WSGI_THREADS
    # One connection per thread while the requests hold them.
    assert most == WSGI_THREADS
    assert after == kept


@pytest.mark.parametrize("mode", ASGI_MODES)
def test_asgi_threads_retired_from_the_pool_close_their_connections(
    mode: str, database: Database
) -> None:
    database.migrate()
    # SQLite keeps a closed connection's file descriptor open while another connection of the
    # process holds a lock on the file (POSIX locks belong to the process): with threads kept
    # idle, their locks would keep the retired ones' descriptors counted. So none kept there.
    idle = 0 if database.backend == "sqlite" else 2
    env = server_env(
        database,
        DJANGO_DB_POOL="false",
        DJANGO_CONN_MAX_AGE="60",
        DJANGO_ASGI_IDLE_THREADS=str(idle),
    )
    with start_mode(mode, env=env, workdir=database.var_dir.parent / "srv") as server:
        statuses, most = burst(server, database, 6)
        after = settled(lambda: database.open_connections(server.pid), idle)
    assert statuses == [200] * 6
    # A thread per request during the burst, each with its connection...
    assert most == 6
    # ...and the threads kept idle keep theirs; the others closed them before they ended.
    assert after == idle


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("mode", "env", "max_size"),
    [
        ("wsgi_gthread", {}, WSGI_THREADS),
        ("wsgi_gthread", {"DJANGO_DB_POOL_MAX_SIZE": "2"}, 2),
        ("asgi_uvicorn", {}, 8),
        ("asgi_gunicorn", {"DJANGO_DB_POOL_MAX_SIZE": "2"}, 2),
    ],
    ids=["gthread-threads", "gthread-max-2", "uvicorn-default", "asgi-max-2"],
)
def test_pool_caps_and_keeps_connections(
    mode: str, env: dict[str, str], max_size: int, postgres_database: Database
) -> None:
    database = postgres_database
    database.migrate()
    with start_mode(
        mode, env=server_env(database, **env), workdir=database.var_dir.parent / "srv"
    ) as server:
        # More requests than the pool has connections: the others wait for one.
        statuses, most = burst(server, database, 10)
        time.sleep(0.5)
        after = database.open_connections(server.pid)
        log = server.tail()
    assert statuses == [200] * 10
    assert most == max_size, log
    # Returned to the pool, not closed: the next requests reuse them.
    assert after == max_size, log
