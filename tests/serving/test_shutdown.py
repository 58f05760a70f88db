"""Stopping a serving mode: what happens to the requests in flight, and how fast the master exits.

SIGTERM lands under load: LOAD_THREADS clients each send GET /<side>/sleep/?ms=SLEEP_MS on a
fresh connection, one after another. A request is "in flight" when its connection was open
before the signal and it had not ended (tests/reliability/load.py, Outcome.in_flight_at).
Measured with 2 workers (figures: lines starting "FAULT" with `pytest -s`):
- wsgi_gthread, asgi_uvicorn, asgi_gunicorn: every request in flight completes, then the master
  exits. Connections made after the signal are refused, or reset if they landed in the listen
  backlog in the instant before the master closed it: never an HTTP error.
- wsgi_sync: the requests inside the workers (one each) complete; those still waiting in the
  listen backlog are reset (ECONNRESET) when the master closes the socket: they never reached
  Django. A sync worker accepts one connection at a time, so the backlog is where a burst
  waits. Mitigation: gthread or an async mode, or take the server out of the proxy's rotation
  before SIGTERM (or reload with SIGHUP, which keeps the socket open).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from deploy.gunicorn import common
from lab.servers import MODES, Server, interface_of_mode, start_mode
from tests.reliability.load import BackgroundLoad, Outcome
from tests.serving.conftest import Env

pytestmark = [pytest.mark.serving, pytest.mark.slow]

SETTINGS = "tests.serving.settings"
WORKERS = 2
LOAD_THREADS = 20
SLEEP_MS = 200
# How long past graceful_timeout the master may take to reap its workers and exit.
EXIT_MARGIN = 5.0
# Every connection error the load can see once the listener is gone.
CONNECTION_ERRORS = ("ConnectionRefusedError(111)", "ConnectionResetError(104)")


def terminate_under_load(
    mode: str, env: Env, workdir: Path
) -> tuple[list[Outcome], list[Outcome], bool, int, Server]:
    """SIGTERM `mode` under load; return (in flight at the signal, after it), exit, status."""
    side = "sync" if interface_of_mode(mode) == "wsgi" else "async"
    # The test views' /<side>/sleep/ (tests.serving.settings): with or without the showcase.
    env = {**env, "WEB_CONCURRENCY": str(WORKERS), "DJANGO_SETTINGS_MODULE": SETTINGS}
    server = start_mode(mode, env=env, workdir=workdir)
    try:
        # /healthz answers once ONE worker serves: wait for all, or a sync worker still
        # booting would take no request and the count of served ones would vary.
        assert server.wait_workers_ready(), server.tail()
        with BackgroundLoad(
            server.port,
            f"/{side}/sleep/?ms={SLEEP_MS}",
            concurrency=LOAD_THREADS,
            max_seconds=common.graceful_timeout + EXIT_MARGIN,
        ) as load:
            time.sleep(1)
            signalled = time.monotonic()
            server.send_signal(signal.SIGTERM)
            exited = server.wait_exit(common.graceful_timeout + EXIT_MARGIN)
    finally:
        status = server.stop()
    outcomes = load.result.outcomes
    in_flight = [o for o in outcomes if o.in_flight_at(signalled)]
    after = [o for o in outcomes if o.started > signalled]
    print(  # the figures of the reliability report, with `pytest -s`
        f"FAULT sigterm {mode}: {len(in_flight)} in flight, "
        f"{sum(o.ok for o in in_flight)} completed, errors "
        f"{sorted({str(o.error) for o in in_flight if not o.ok})}; after the signal "
        f"{len(after)} sent: {dict(load.result.errors())}"
    )
    return in_flight, after, exited, status, server


@pytest.mark.parametrize("mode", [mode for mode in MODES if mode != "wsgi_sync"])
def test_sigterm_under_load_completes_every_request_in_flight(
    mode: str, serving_env: Env, tmp_path: Path
) -> None:
    in_flight, after, exited, status, server = terminate_under_load(mode, serving_env, tmp_path)
    # The load was real: most of the clients were waiting on an answer.
    assert len(in_flight) >= LOAD_THREADS // 2, len(in_flight)
    assert [o for o in in_flight if not o.ok] == [], server.tail()
    # After the signal: a 200 (accepted before the listener closed) or a connection error.
    assert all(o.ok or o.error in CONNECTION_ERRORS for o in after), after
    assert exited, f"master still running {common.graceful_timeout + EXIT_MARGIN} s after SIGTERM"
    assert status == 0, server.tail()
    assert "SIGKILL" not in server.output()


def test_sigterm_under_load_on_sync_workers_resets_the_backlog(
    serving_env: Env, tmp_path: Path
) -> None:
    in_flight, _after, exited, status, server = terminate_under_load(
        "wsgi_sync", serving_env, tmp_path
    )
    served = [o for o in in_flight if o.ok]
    lost = [o for o in in_flight if not o.ok]
    # The requests inside a sync worker (one each) complete.
    assert 1 <= len(served) <= 2 * WORKERS, in_flight
    # The rest never left the listen backlog: a connection error, never an HTTP error answer.
    assert len(lost) >= LOAD_THREADS // 2, in_flight
    assert all(o.status is None and o.error in CONNECTION_ERRORS for o in lost), lost
    assert exited, server.tail()
    assert status == 0, server.tail()


@pytest.mark.parametrize("mode", MODES)
def test_sigint_to_the_master_alone_stops_every_mode(
    mode: str, serving_env: Env, tmp_path: Path
) -> None:
    # SIGINT to the master's PID (a process manager, `kill -INT`), not to the terminal's group:
    # the master sends SIGQUIT to its workers, which the stock UvicornWorker ignores and on
    # which the stock gthread worker can deadlock (deploy/workers.py; that race is
    # intermittent, so this test cannot always catch a regression of the gthread fix).
    env: Env = {**serving_env, "GUNICORN_CMD_ARGS": "--graceful-timeout 5"}
    server = start_mode(mode, env=env, workdir=tmp_path)
    try:
        server.send_signal(signal.SIGINT)
        exited = server.wait_exit(5 + EXIT_MARGIN)
    finally:
        status = server.stop()
    assert exited, server.tail()
    assert "SIGKILL" not in server.output(), server.tail()
    assert status == 0, server.tail()


@pytest.mark.parametrize("mode", MODES)
def test_sigterm_while_a_worker_still_boots_stops_every_mode(
    mode: str, serving_env: Env, tmp_path: Path
) -> None:
    # The server answers once ONE worker is up: with two, the other is usually still
    # importing Django when SIGTERM lands. A uvloop `-k asgi` worker lost that signal and
    # was only SIGKILLed at graceful_timeout (deploy/gunicorn/asgi_gunicorn.py).
    env: Env = {
        **serving_env,
        "WEB_CONCURRENCY": str(WORKERS),
        "GUNICORN_CMD_ARGS": "--graceful-timeout 60",
    }
    server = start_mode(mode, env=env, workdir=tmp_path)
    try:
        server.send_signal(signal.SIGTERM)
        exited = server.wait_exit(30)
    finally:
        status = server.stop()
    # 30 s: a booting worker finishes importing Django first; a lost signal waits out 60 s.
    assert exited, f"still running 30 s after SIGTERM:\n{server.tail()}"
    assert status == 0, server.tail()
