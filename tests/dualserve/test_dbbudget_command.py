"""`manage.py dbbudget`: each mode read as its server starts, the table, and the over-budget exit.

The command reads every mode in a fresh interpreter on this process's environment, so the tests
set the variables the servers read (monkeypatch) and call the command in-process. DATABASE_URL
names a PostgreSQL that is never contacted, except by `--ask-server`, which runs against the
server at DUALSERVE_TEST_POSTGRES_URL (tests/db/conftest.py: skips without one, fails under CI).
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys

import psycopg
import pytest
from django.core.management import CommandError, call_command

from apps.dualserve.budget import DEFAULT_HEADROOM, PROCESS_WIDE_THREADS
from lab import manage
from lab.servers import INHERITED_SETTINGS, REPO_ROOT, merged_environment
from tests.db.conftest import postgres_admin_url  # noqa: F401  (the fixture, shared)

# What the command and the servers read, beyond what every server test clears.
BUDGET_SETTINGS = (
    "SERVE_MODE",
    "WSGI_MODE",
    "ASGI_MODE",
    "DUALSERVE_REPLICAS",
    "DUALSERVE_DB_MAX_CONNECTIONS",
    "DJANGO_INTERFACE",
    "DJANGO_DB_POOL",
    "DJANGO_DB_POOL_MAX_SIZE",
    "DJANGO_DB_POOL_MIN_SIZE",
    "DJANGO_CONN_MAX_AGE",
)
# Parsed, never connected to: the budget needs the engine and the pool, not the server.
UNREACHABLE_POSTGRES = "postgres://budget@127.0.0.1:9/budget"

ROW = re.compile(
    r"^(?P<mode>\w+)\s+(?P<workers>\d+)\s+(?P<per_worker>\d+)\s+.*?(?P<per_replica>\d+)$"
)

# The pool's max_size the settings give one interface's workers, read as test_settings reads them.
PRINT_POOL = """
import json, os
from django.conf import settings
print(json.dumps(settings.DATABASES["default"]["OPTIONS"]["pool"]["max_size"]))
"""


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Clear what a developer's shell may export; point DATABASE_URL at PostgreSQL."""
    for name in (*INHERITED_SETTINGS, *BUDGET_SETTINGS):
        if name != "DJANGO_SETTINGS_MODULE":  # this process's settings: pytest's
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", UNREACHABLE_POSTGRES)
    return monkeypatch


def dbbudget(*args: str) -> tuple[dict[str, dict[str, int]], dict[str, str]]:
    """Run the command; return its rows by mode and its totals by label."""
    out = io.StringIO()
    call_command("dbbudget", *args, stdout=out)
    return parsed(out.getvalue())


def parsed(output: str) -> tuple[dict[str, dict[str, int]], dict[str, str]]:
    """Return the rows (mode -> workers, per_worker, per_replica) and totals of a report."""
    table, _, summary = output.partition("\n\n")
    rows = {}
    for line in table.splitlines()[1:]:
        match = ROW.match(line)
        assert match, line
        figures = match.groupdict()
        mode = figures.pop("mode")
        rows[mode] = {name: int(value) for name, value in figures.items()}
    totals = {}
    for line in summary.splitlines():
        label, _, value = re.split(r"(\s{2,})", line.strip(), maxsplit=1)
        totals[label] = value
    return rows, totals


def settings_pool_max_size(interface: str, **env: str) -> int:
    """Return the pool max_size project.settings gives a worker of `interface` under `env`."""
    done = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup()\n{PRINT_POOL}"],
        cwd=REPO_ROOT,
        env=merged_environment({"DJANGO_INTERFACE": interface, **env}),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return int(json.loads(done.stdout))


def test_gthread_holds_a_connection_per_thread(environment: pytest.MonkeyPatch) -> None:
    workers, threads, replicas = 3, 5, 2
    environment.setenv("WEB_CONCURRENCY", str(workers))
    environment.setenv("GUNICORN_THREADS", str(threads))
    rows, totals = dbbudget("--mode", "wsgi_gthread", "--replicas", str(replicas))
    assert rows["wsgi_gthread"] == {
        "workers": workers,
        "per_worker": threads,
        "per_replica": workers * threads,
    }
    # One manage.py job: one thread, the pool's min_size (1 by default) at most.
    assert totals["total at peak"] == str(replicas * workers * threads + 1 + DEFAULT_HEADROOM)


def test_a_sync_worker_holds_one_connection_whatever_its_pool(
    environment: pytest.MonkeyPatch,
) -> None:
    workers = 4
    environment.setenv("WEB_CONCURRENCY", str(workers))
    environment.setenv("DJANGO_DB_POOL_MAX_SIZE", "6")
    rows, _ = dbbudget("--mode", "wsgi_sync")
    assert rows["wsgi_sync"] == {"workers": workers, "per_worker": 1, "per_replica": workers}


def test_gunicorn_cmd_args_count_as_the_server_reads_them(environment: pytest.MonkeyPatch) -> None:
    # --threads 3 turns the sync worker into gthread (gunicorn does that itself).
    environment.setenv("GUNICORN_CMD_ARGS", "--workers 5 --threads 3")
    environment.setenv("DJANGO_DB_POOL", "false")
    rows, _ = dbbudget("--mode", "wsgi_sync")
    assert rows["wsgi_sync"] == {"workers": 5, "per_worker": 3, "per_replica": 5 * 3}


@pytest.mark.parametrize("mode", ["asgi_uvicorn", "asgi_gunicorn"])
def test_asgi_holds_the_pool_settings_give_asgi_workers(
    mode: str, environment: pytest.MonkeyPatch
) -> None:
    # GUNICORN_THREADS sizes the WSGI pool; an ASGI worker's pool must not follow it.
    environment.setenv("GUNICORN_THREADS", "3")
    rows, _ = dbbudget("--mode", mode, "--mode", "wsgi_gthread")
    asgi_max_size = settings_pool_max_size("asgi", DATABASE_URL=UNREACHABLE_POSTGRES)
    assert rows[mode]["per_worker"] == asgi_max_size
    assert rows["wsgi_gthread"]["per_worker"] == 3
    environment.setenv("DJANGO_DB_POOL_MAX_SIZE", "5")
    rows, _ = dbbudget("--mode", mode)
    assert rows[mode]["per_worker"] == 5


def test_asgi_without_the_pool_counts_every_request_in_flight(
    environment: pytest.MonkeyPatch,
) -> None:
    workers, worker_connections = 2, 50
    environment.setenv("DJANGO_DB_POOL", "false")
    environment.setenv("WEB_CONCURRENCY", str(workers))
    environment.setenv("GUNICORN_CMD_ARGS", f"--worker-connections {worker_connections}")
    per_worker = worker_connections + PROCESS_WIDE_THREADS
    total = workers * per_worker + 1 + DEFAULT_HEADROOM
    rows, _ = dbbudget("--mode", "asgi_uvicorn", "--max-connections", str(total), "--reserved", "0")
    assert rows["asgi_uvicorn"]["per_worker"] == per_worker
    with pytest.raises(CommandError, match="DJANGO_DB_POOL=true bounds them"):
        dbbudget("--mode", "asgi_uvicorn", "--max-connections", str(total - 1), "--reserved", "0")


def test_over_budget_is_refused_with_the_figures(environment: pytest.MonkeyPatch) -> None:
    workers, threads, replicas, reserved = 4, 8, 3, 3
    environment.setenv("WEB_CONCURRENCY", str(workers))
    environment.setenv("GUNICORN_THREADS", str(threads))
    total = replicas * workers * threads + 1 + DEFAULT_HEADROOM
    args = ("--mode", "wsgi_gthread", "--replicas", str(replicas), "--reserved", str(reserved))
    _, totals = dbbudget(*args, "--max-connections", str(total + reserved))
    assert totals["verdict"] == "fits, 0 to spare"
    max_connections = total + reserved - 2
    with pytest.raises(CommandError) as refused:
        dbbudget(*args, "--max-connections", str(max_connections))
    assert f"{total} connections at peak exceed the {max_connections - reserved}" in str(
        refused.value
    )
    assert "by 2." in str(refused.value)


def test_the_environment_gives_replicas_and_the_limit(environment: pytest.MonkeyPatch) -> None:
    replicas, max_connections = 4, 250
    environment.setenv("DUALSERVE_REPLICAS", str(replicas))
    environment.setenv("DUALSERVE_DB_MAX_CONNECTIONS", str(max_connections))
    rows, totals = dbbudget("--mode", "wsgi_sync", "--jobs", "0", "--headroom", "0")
    assert totals["total at peak"] == str(replicas * rows["wsgi_sync"]["per_replica"])
    assert totals["server admits"].startswith(f"{max_connections - 3} (max_connections 250")


def test_default_modes_are_serve_mode_else_the_compose_pair(
    environment: pytest.MonkeyPatch,
) -> None:
    rows, _ = dbbudget()
    assert list(rows) == ["wsgi_gthread", "asgi_uvicorn"]
    environment.setenv("WSGI_MODE", "wsgi_sync")
    environment.setenv("ASGI_MODE", "asgi_gunicorn")
    rows, totals = dbbudget()
    assert list(rows) == ["wsgi_sync", "asgi_gunicorn"]
    assert totals["per replica"] == str(sum(row["per_replica"] for row in rows.values()))
    environment.setenv("SERVE_MODE", "wsgi_sync")
    rows, _ = dbbudget()
    assert list(rows) == ["wsgi_sync"]


def test_an_unknown_mode_is_refused_with_the_modes() -> None:
    with pytest.raises(CommandError, match=r"'common' is not a serving mode; .*wsgi_sync"):
        dbbudget("--mode", "common")


def test_sqlite_is_refused_with_what_to_set(environment: pytest.MonkeyPatch) -> None:
    environment.delenv("DATABASE_URL")
    with pytest.raises(CommandError, match=r"sqlite3\. Set DATABASE_URL=postgres://"):
        dbbudget()


@pytest.mark.postgres
def test_ask_server_reads_the_servers_limit(postgres_admin_url: str) -> None:  # noqa: F811
    with psycopg.connect(postgres_admin_url) as conn:
        settings = dict(
            conn.execute(
                "SELECT name, setting::int FROM pg_settings WHERE name IN ('max_connections',"
                " 'superuser_reserved_connections', 'reserved_connections')"
            ).fetchall()
        )
    max_connections = settings["max_connections"]
    # reserved_connections: PostgreSQL 16+.
    reserved = settings["superuser_reserved_connections"] + settings.get("reserved_connections", 0)
    available = max_connections - reserved
    env = {
        **dict.fromkeys((*INHERITED_SETTINGS, *BUDGET_SETTINGS)),
        "DATABASE_URL": postgres_admin_url,
        "WEB_CONCURRENCY": "1",
    }
    # One sync worker per replica, one connection; one migrate job; no headroom.
    fitting = available - 1

    def ask(replicas: int) -> subprocess.CompletedProcess[str]:
        args = ["dbbudget", "--ask-server", "--mode", "wsgi_sync", "--headroom", "0"]
        return manage.run([*args, "--replicas", str(replicas)], env, timeout=120)

    done = ask(fitting)
    assert done.returncode == 0, done.stderr
    _, totals = parsed(done.stdout)
    assert totals["server admits"].startswith(f"{available} (max_connections {max_connections}")
    assert totals["verdict"] == "fits, 0 to spare"
    done = ask(fitting + 1)
    assert done.returncode == 1, done.stdout
    assert f"exceed the {available} the server admits by 1." in done.stderr
