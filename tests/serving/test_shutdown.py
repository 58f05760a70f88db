"""Stopping a serving mode: what happens to requests in flight, and how fast the master exits.

Measured with 2 workers and 10 requests of 1 s in flight when SIGTERM arrives:
- wsgi_gthread, asgi_uvicorn, asgi_gunicorn: all 10 complete, then the master exits;
- wsgi_sync: the 2 requests inside the workers complete; the 8 still waiting in the listen
  backlog are reset (ECONNRESET) when the master closes the socket: they never reached Django.
  A sync worker accepts one connection at a time, so the backlog is where a burst waits.
"""

from __future__ import annotations

import http.client
import signal
import threading
import time
from pathlib import Path

import pytest

from deploy.gunicorn import common
from deploy.servers import MODES, Server, interface_of_mode, start_mode
from tests.serving.conftest import Env

pytestmark = [pytest.mark.serving, pytest.mark.slow]

WORKERS = 2
IN_FLIGHT = 10
SLEEP_MS = 1000
# How long past graceful_timeout the master may take to reap its workers and exit.
EXIT_MARGIN = 5.0

Outcome = int | Exception


def send_in_flight(
    server: Server, path: str, count: int
) -> tuple[list[threading.Thread], list[Outcome]]:
    """Start `count` requests in threads; return once every request has been sent."""
    outcomes: list[Outcome] = [RuntimeError("no answer")] * count
    sent = threading.Semaphore(0)

    def fetch(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        try:
            connection.request("GET", path)
            sent.release()
            response = connection.getresponse()
            response.read()
            outcomes[index] = response.status
        except Exception as exc:  # the outcome under test, not an error of the test
            outcomes[index] = exc
            sent.release()
        finally:
            connection.close()

    threads = [threading.Thread(target=fetch, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for _ in range(count):
        assert sent.acquire(timeout=30), "requests were not sent"
    return threads, outcomes


def terminate_with_requests_in_flight(
    mode: str, env: Env, workdir: Path
) -> tuple[list[Outcome], bool, int, Server]:
    """SIGTERM `mode` with IN_FLIGHT slow requests running; return outcomes, exit, status."""
    side = "sync" if interface_of_mode(mode) == "wsgi" else "async"
    server = start_mode(mode, env={**env, "WEB_CONCURRENCY": str(WORKERS)}, workdir=workdir)
    try:
        # /healthz answers once ONE worker serves: wait for all, or a sync worker still
        # booting would take no request and the count of served ones would vary.
        assert server.wait_for_output(r"Worker ready \(pid", count=WORKERS), server.tail()
        threads, outcomes = send_in_flight(server, f"/{side}/sleep/?ms={SLEEP_MS}", IN_FLIGHT)
        # Let the workers accept what they will accept before the signal.
        time.sleep(0.3)
        server.send_signal(signal.SIGTERM)
        exited = server.wait_exit(common.graceful_timeout + EXIT_MARGIN)
        for thread in threads:
            thread.join(timeout=60)
    finally:
        status = server.stop()
    return outcomes, exited, status, server


@pytest.mark.parametrize("mode", [mode for mode in MODES if mode != "wsgi_sync"])
def test_sigterm_completes_every_request_in_flight(
    mode: str, serving_env: Env, tmp_path: Path
) -> None:
    outcomes, exited, status, server = terminate_with_requests_in_flight(
        mode, serving_env, tmp_path
    )
    assert outcomes == [200] * IN_FLIGHT, server.tail()
    assert exited, f"master still running {common.graceful_timeout + EXIT_MARGIN} s after SIGTERM"
    assert status == 0, server.tail()
    assert "SIGKILL" not in server.output()


def test_sigterm_on_sync_workers_resets_the_backlog(serving_env: Env, tmp_path: Path) -> None:
    outcomes, exited, status, server = terminate_with_requests_in_flight(
        "wsgi_sync", serving_env, tmp_path
    )
    served = [outcome for outcome in outcomes if outcome == 200]
    lost = [outcome for outcome in outcomes if outcome != 200]
    # One request per sync worker was inside Django: those complete.
    assert len(served) == WORKERS, outcomes
    # The rest never left the listen backlog: a connection error, never an HTTP error answer.
    assert all(isinstance(outcome, ConnectionError) for outcome in lost), outcomes
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
        exited = server.wait_exit(15)
    finally:
        status = server.stop()
    assert exited, f"still running 15 s after SIGTERM:\n{server.tail()}"
    assert status == 0, server.tail()
