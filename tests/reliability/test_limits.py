# showcase: this file goes with the showcase (it drives the showcase's endpoints).
"""Limits and slow clients, through real nginx in front of real servers (issue 5).

Both stacks ("wsgi_gthread" + "asgi_uvicorn", "wsgi_sync" + "asgi_gunicorn") run behind nginx
with short client timeouts and a small body limit, so every case ends within seconds:

- a body over client_max_body_size gets nginx's 413 (Content-Length and chunked), and never
  reaches the app;
- a form with more fields than DATA_UPLOAD_MAX_NUMBER_FIELDS gets Django's 400, in both
  interfaces, logged as one line without a traceback;
- hundreds of slowloris sockets and a slow body are closed by nginx's client_header_timeout and
  client_body_timeout, never reach the app, while a canary's requests keep answering 200;
- directly against the app servers (no nginx), for the record: what 20 slowloris sockets do.

Latency figures are printed (run with -s) and never asserted: speed targets are benchmarks.
"""

from __future__ import annotations

import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from django.conf import settings

from lab.stack import Stack, start_stack
from tests.reliability.slowclients import (
    CLOSED_BY_PEER,
    NOT_CONNECTED,
    RESET_BY_PEER,
    STILL_OPEN,
    Latency,
    SlowBodyResult,
    canary,
    slow_body,
    slowloris,
)
from tests.support import require_nginx

pytestmark = [pytest.mark.serving, pytest.mark.slow]

T = TypeVar("T")

# Every serving mode runs behind nginx in one of the two stacks (as in tests/deploy/test_nginx.py).
MODE_PAIRS = [("wsgi_gthread", "asgi_uvicorn"), ("wsgi_sync", "asgi_gunicorn")]
HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0
MAX_BODY = 16 * 1024
NGINX_LIMITS = {
    "NGINX_CLIENT_HEADER_TIMEOUT": f"{HEADER_TIMEOUT:g}s",
    "NGINX_CLIENT_BODY_TIMEOUT": f"{BODY_TIMEOUT:g}s",
    "NGINX_CLIENT_MAX_BODY_SIZE": f"{MAX_BODY // 1024}k",
}
# DEBUG off, as in production: Django's 400 is its short error page, not the debug page.
SERVER_ENV: dict[str, str | None] = {"DJANGO_DEBUG": "false"}

# Well below nginx's worker_connections (1024 per worker, deploy/nginx.py) and `ulimit -n`.
SLOWLORIS_SOCKETS = 300
TRICKLE_INTERVAL = 0.5
# How long past its timeout nginx may take to close every slow socket before the test calls it
# a failure: a bound on a wait on a loaded machine, not a speed target.
CLOSE_GRACE = 8.0
DIRECT_SOCKETS = 20
DIRECT_SECONDS = 4.0
SLOW_POSTS = 100
SLOW_POST_SECONDS = 3.0
# The canary's per-request timeout directly on a WSGI server, which may stall: short enough that
# a stall shows as failures within the window (only measured). The ASGI servers' canary, whose
# failures are asserted, gets the same generous timeout as the canary through nginx.
DIRECT_CANARY_TIMEOUT = {"wsgi": 1.0, "asgi": 5.0}
# nginx writes its access log through a buffer flushed every second (deploy/nginx.py).
LOG_WAIT = 10.0
# Each entry, and a path that entry sends to the server behind it.
CANARY_PATHS = {"hybrid": "/sync/hello/", "wsgi": "/sync/hello/", "asgi": "/async/hello/"}
FORM = "application/x-www-form-urlencoded"


# --- Fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture(scope="module", params=MODE_PAIRS, ids=["+".join(pair) for pair in MODE_PAIRS])
def stack(
    request: pytest.FixtureRequest, var_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """Return a running stack with nginx's short client timeouts and small body limit."""
    require_nginx()
    wsgi_mode, asgi_mode = request.param
    directory = tmp_path_factory.mktemp(f"limits-{wsgi_mode}")
    with start_stack(
        wsgi_mode,
        asgi_mode,
        var_dir,
        directory,
        server_env=SERVER_ENV,
        nginx_env=NGINX_LIMITS,
    ) as running:
        yield running


def new_token() -> str:
    """Return a unique marker to put in a request's query string and find in the logs."""
    return uuid.uuid4().hex


def nginx_log(stack: Stack) -> str:
    """Return nginx's access log so far."""
    path = stack.config.parent / "access.log"
    return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""


def nginx_lines(stack: Stack, token: str, count: int) -> list[str]:
    """Wait (bounded) until nginx has logged `count` lines with `token`; return those lines."""
    deadline = time.monotonic() + LOG_WAIT
    lines: list[str] = []
    for _ in range(int(LOG_WAIT / 0.1) + 1):
        lines = [line for line in nginx_log(stack).splitlines() if token in line]
        if len(lines) >= count or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    return lines


def app_output(stack: Stack) -> str:
    """Return both app servers' output (access logs, errors) so far."""
    return stack.wsgi.output() + stack.asgi.output()


def assert_never_reached_the_app(stack: Stack, token: str, lines: list[str], status: int) -> None:
    """Assert nginx answered `status` itself for every line, and no app server logged `token`."""
    assert lines, f"nginx logged no request with {token}"
    for line in lines:
        assert f'" {status} ' in line, line
        # nginx's $upstream_addr is "-" when it opened no upstream connection for the request.
        assert " up=- " in line, f"nginx passed the request upstream: {line}"
    assert token not in app_output(stack)


def assert_serving(stack: Stack, entry: str) -> None:
    """Assert `entry` still answers a normal request with 200 on a fresh connection."""
    response = httpx.get(stack.url(entry, CANARY_PATHS[entry]), timeout=10)
    assert response.status_code == 200, response.text[:300]


def with_canary(
    attack: Callable[[threading.Event], T], url: str, *, max_duration: float, timeout: float = 5.0
) -> tuple[T, Latency]:
    """Run `attack(ready)` in a thread; run the canary on `url` from `ready` until it ends."""
    ready = threading.Event()
    with ThreadPoolExecutor(1, thread_name_prefix="slow-attack") as pool:
        future: Future[T] = pool.submit(attack, ready)
        ready.wait(timeout=30)
        samples = canary(
            url, keep_going=lambda: not future.done(), max_duration=max_duration, timeout=timeout
        )
        result = future.result(timeout=max_duration + 30)
    return result, samples


def report(stack: Stack, what: str, figures: str) -> None:
    """Print a measured figure for the record (visible with pytest -s)."""
    print(f"\n[limits] {stack.wsgi_mode}+{stack.asgi_mode} {what}: {figures}")


# --- Bodies over client_max_body_size: 413 from nginx -------------------------------------------


def chunks_of(data: bytes, size: int) -> Iterator[bytes]:
    """Yield `data` in pieces of `size` bytes (httpx sends an iterator chunked)."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("entry", ["hybrid", "wsgi", "asgi"])
def test_body_over_client_max_body_size_gets_413_from_nginx(
    stack: Stack, entry: str, framing: str
) -> None:
    token = new_token()
    body = b"pad=" + b"a" * MAX_BODY
    content: bytes | Iterator[bytes] = (
        body if framing == "content-length" else chunks_of(body, 4096)
    )
    path = "/sync/db/" if entry == "wsgi" else "/async/db/"
    response = httpx.post(
        stack.url(entry, f"{path}?limit={token}"),
        content=content,
        headers={"Content-Type": FORM},
        timeout=10,
    )
    assert response.status_code == 413
    # nginx's own error page; the app's responses always carry X-Interface.
    assert response.headers.get("server") == "nginx"
    assert "x-interface" not in response.headers
    assert "<center>nginx</center>" in response.text
    assert_never_reached_the_app(stack, token, nginx_lines(stack, token, 1), 413)
    assert_serving(stack, entry)


@pytest.mark.parametrize("entry", ["wsgi", "asgi"])
def test_body_of_exactly_client_max_body_size_reaches_the_app(stack: Stack, entry: str) -> None:
    token = new_token()
    prefix = b"name=at-the-limit&pad="
    body = prefix + b"a" * (MAX_BODY - len(prefix))
    response = httpx.post(
        stack.url(entry, f"/sync/db/?limit={token}"),
        content=body,
        headers={"Content-Type": FORM},
        timeout=10,
    )
    assert response.status_code == 201, response.text[:300]
    assert response.headers["x-interface"] == entry
    # The access line is written after the response is sent: wait for it (bounded).
    assert stack.server(entry).wait_for_output(token, timeout=LOG_WAIT)


# --- Too many form fields: 400 from Django --------------------------------------------------------


def form_with_fields(count: int) -> bytes:
    """Return a urlencoded form of `count` fields (a valid item name among them)."""
    return "&".join(["name=fields", *(f"f{index}=1" for index in range(count - 1))]).encode()


def post_too_many_fields(stack: Stack, entry: str, path: str) -> tuple[httpx.Response, str]:
    """POST one field more than DATA_UPLOAD_MAX_NUMBER_FIELDS; return the answer and its token."""
    limit = settings.DATA_UPLOAD_MAX_NUMBER_FIELDS
    assert isinstance(limit, int)
    body = form_with_fields(limit + 1)
    assert len(body) < MAX_BODY, "the form must pass nginx's body limit to reach Django"
    token = new_token()
    response = httpx.post(
        stack.url(entry, f"{path}?fields={token}"),
        content=body,
        headers={"Content-Type": FORM},
        timeout=10,
    )
    return response, token


def access_line_pattern(path: str, token: str, status: int) -> str:
    """Return a regex for the app server's access line of that request."""
    return rf'"POST {re.escape(path)}\?fields={token} HTTP/1.\d" {status} '


@pytest.mark.parametrize("path", ["/sync/db/", "/async/db/"])
@pytest.mark.parametrize("entry", ["wsgi", "asgi"])
def test_too_many_form_fields_get_400_from_django(stack: Stack, entry: str, path: str) -> None:
    server = stack.server(entry)
    response, token = post_too_many_fields(stack, entry, path)
    assert response.status_code == 400, response.text[:300]
    assert response.headers["x-interface"] == entry
    # Django's 400 page with DEBUG off; nginx's pages say "nginx" instead.
    assert "<title>Bad Request (400)</title>" in response.text
    access = nginx_lines(stack, token, 1)
    assert access, "nginx logged no such request"
    assert " up=- " not in access[0], "nginx answered instead of Django"
    assert server.wait_for_output(access_line_pattern(path, token, 400), timeout=LOG_WAIT)
    assert "Internal Server Error" not in server.output()
    assert_serving(stack, entry)


@pytest.mark.parametrize(("entry", "path"), [("wsgi", "/sync/db/"), ("asgi", "/async/db/")])
def test_too_many_form_fields_leave_no_traceback_in_the_log(
    stack: Stack, entry: str, path: str
) -> None:
    server = stack.server(entry)
    before = len(server.output())
    response, token = post_too_many_fields(stack, entry, path)
    assert response.status_code == 400
    assert server.wait_for_output(access_line_pattern(path, token, 400), timeout=LOG_WAIT)
    output = server.output()[before:]
    # The security log line stays (an operator wants to see the attempt); its traceback goes.
    assert "TooManyFieldsSent" in output
    assert "Traceback" not in output, output[-3000:]


@pytest.mark.parametrize("entry", ["wsgi", "asgi"])
def test_form_at_the_field_limit_is_accepted(stack: Stack, entry: str) -> None:
    limit = settings.DATA_UPLOAD_MAX_NUMBER_FIELDS
    assert isinstance(limit, int)
    response = httpx.post(
        stack.url(entry, "/async/db/"),
        content=form_with_fields(limit),
        headers={"Content-Type": FORM},
        timeout=10,
    )
    assert response.status_code == 201, response.text[:300]
    assert response.headers["x-interface"] == entry


# --- Slowloris and slow bodies through nginx ------------------------------------------------------


@pytest.mark.parametrize("entry", ["hybrid", "wsgi", "asgi"])
def test_slowloris_sockets_are_closed_by_nginx_while_a_canary_succeeds(
    stack: Stack, entry: str
) -> None:
    token = new_token()
    result, samples = with_canary(
        lambda ready: slowloris(
            "127.0.0.1",
            stack.ports[entry],
            count=SLOWLORIS_SOCKETS,
            duration=HEADER_TIMEOUT + CLOSE_GRACE,
            interval=TRICKLE_INTERVAL,
            path=f"{CANARY_PATHS[entry]}?slowloris={token}",
            connected=ready,
        ),
        stack.url(entry, CANARY_PATHS[entry]),
        max_duration=HEADER_TIMEOUT + CLOSE_GRACE,
    )
    closes = result.close_times()
    report(
        stack,
        f"{SLOWLORIS_SOCKETS} slowloris sockets on entry {entry}",
        f"closed by nginx after {closes[0]:.2f}-{closes[-1]:.2f} s "
        f"({result.count(CLOSED_BY_PEER)} FIN, {result.count(RESET_BY_PEER)} RST); "
        f"canary meanwhile: {samples.describe()}"
        if closes
        else "none closed",
    )
    assert result.count(NOT_CONNECTED) == 0
    # Every socket ended by nginx (not by us at the end of the wait), though each kept trickling:
    # client_header_timeout bounds the whole head, not the gap between two reads.
    assert result.count(STILL_OPEN) == 0, f"{result.count(STILL_OPEN)} still open"
    assert len(result.ended_by_server) == SLOWLORIS_SOCKETS
    assert samples.requests > 0, "the canary never ran while the sockets were open"
    assert samples.failures == [], samples.failures[:5]
    # nginx logs each as a 408 it answered itself (it closes without sending it).
    lines = nginx_lines(stack, token, SLOWLORIS_SOCKETS)
    assert len(lines) == SLOWLORIS_SOCKETS
    assert_never_reached_the_app(stack, token, lines, status=408)
    assert_serving(stack, entry)


@pytest.mark.parametrize(("entry", "path"), [("wsgi", "/sync/db/"), ("asgi", "/async/db/")])
def test_slow_body_is_closed_by_nginx_while_a_canary_succeeds(
    stack: Stack, entry: str, path: str
) -> None:
    token = new_token()
    # One byte, then silence longer than client_body_timeout (it counts between two reads).
    gap = BODY_TIMEOUT + 1.5

    def attack(ready: threading.Event) -> SlowBodyResult:
        ready.set()  # the head goes out at once: the canary can start with it
        return slow_body(
            "127.0.0.1",
            stack.ports[entry],
            path=f"{path}?slowbody={token}",
            content_length=100,
            pieces=3,
            gap=gap,
            max_wait=BODY_TIMEOUT + CLOSE_GRACE,
        )

    result, samples = with_canary(
        attack, stack.url(entry, CANARY_PATHS[entry]), max_duration=BODY_TIMEOUT + CLOSE_GRACE
    )
    report(
        stack,
        f"slow body on entry {entry}",
        f"{result.outcome} by nginx after {result.ended_after or math.nan:.2f} s, answer "
        f"{result.status_line or 'none'}; canary meanwhile: {samples.describe()}",
    )
    # nginx closes on client_body_timeout (it may send a 408 first); the rest never comes.
    assert result.outcome in (CLOSED_BY_PEER, RESET_BY_PEER), result
    assert result.status_line in ("", "HTTP/1.1 408 Request Time-out"), result.status_line
    assert samples.requests > 0
    assert samples.failures == [], samples.failures[:5]
    assert_never_reached_the_app(stack, token, nginx_lines(stack, token, 1), status=408)
    assert_serving(stack, entry)


def test_slow_posts_within_the_body_timeout_wait_in_nginx_not_in_the_app(stack: Stack) -> None:
    """A body trickled faster than client_body_timeout is held by nginx for as long as it lasts
    (the timeout counts between two reads), but it holds an nginx connection, not a worker."""
    token = new_token()
    result, samples = with_canary(
        lambda ready: slowloris(
            "127.0.0.1",
            stack.ports["hybrid"],
            count=SLOW_POSTS,
            duration=SLOW_POST_SECONDS,
            interval=TRICKLE_INTERVAL,
            path=f"/sync/upload/?slowpost={token}",
            connected=ready,
            body_length=MAX_BODY,
        ),
        stack.url("hybrid", "/sync/hello/"),
        max_duration=SLOW_POST_SECONDS + CLOSE_GRACE,
    )
    report(
        stack,
        f"{SLOW_POSTS} slow POSTs, a byte every {TRICKLE_INTERVAL:g} s for {SLOW_POST_SECONDS:g} s",
        f"{result.count(STILL_OPEN)} still open at the end; canary meanwhile: {samples.describe()}",
    )
    assert result.count(NOT_CONNECTED) == 0
    assert samples.requests > 0
    assert samples.failures == [], samples.failures[:5]
    # nginx buffers a request body whole before it opens an upstream connection.
    assert token not in app_output(stack)
    assert_serving(stack, "hybrid")


# --- Directly against the app servers (no nginx), for the record ----------------------------------
# Last in the module: a stalled server recovers once the sockets close, but nothing else should
# run against it meanwhile.


@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
def test_slowloris_directly_against_the_server(stack: Stack, interface: str) -> None:
    server = stack.server(interface)
    path = CANARY_PATHS[interface]
    before = len(server.output())
    result, samples = with_canary(
        lambda ready: slowloris(
            "127.0.0.1",
            server.port,
            count=DIRECT_SOCKETS,
            duration=DIRECT_SECONDS,
            interval=TRICKLE_INTERVAL,
            path=path,
            connected=ready,
        ),
        server.base_url + path,
        max_duration=DIRECT_SECONDS + 5,
        timeout=DIRECT_CANARY_TIMEOUT[interface],
    )
    report(
        stack,
        f"{DIRECT_SOCKETS} slowloris sockets directly on {server.mode} for {DIRECT_SECONDS:g} s",
        f"{result.count(STILL_OPEN)} still open at the end, "
        f"{len(result.ended_by_server)} closed by the server; canary meanwhile "
        f"(timeout {DIRECT_CANARY_TIMEOUT[interface]:g} s): {samples.describe()}",
    )
    assert result.count(NOT_CONNECTED) == 0
    assert samples.requests > 0
    if interface == "asgi":
        # One coroutine per connection: slow sockets cost the event loop nothing while idle.
        assert samples.failures == [], samples.failures[:5]
    # Once the slow sockets are gone, every mode serves again without a restart.
    response = httpx.get(server.base_url + path, timeout=10)
    assert response.status_code == 200
    assert "Traceback" not in server.output()[before:]
