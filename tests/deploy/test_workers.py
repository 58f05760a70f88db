"""The project's worker classes: what they pass on, log, and how they quit."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from gunicorn.config import Config
from gunicorn.glogging import Logger
from gunicorn.workers.gthread import ThreadWorker as StockThreadWorker
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from deploy.gunicorn import common
from deploy.workers import (
    CLIENT_FAULTS,
    DrainingHttpToolsProtocol,
    GunicornAccessLog,
    ThreadWorker,
    UvicornWorker,
    filter_client_faults,
)
from lab.hostile.replay import parse_responses
from lab.servers import INHERITED_SETTINGS, MODES, start_mode

Message = dict[str, Any]
# The servers answer tests.serving's views, with or without the showcase.
SERVING_SETTINGS = "tests.serving.settings"


def gunicorn_config(tmp_path: Path, **settings: Any) -> Config:
    """Return a gunicorn Config with the project's access log format, logging to a file."""
    cfg = Config()
    cfg.set("accesslog", str(tmp_path / "access.log"))
    cfg.set("access_log_format", common.access_log_format)
    cfg.set("worker_tmp_dir", str(tmp_path))
    for name, value in settings.items():
        cfg.set(name, value)
    return cfg


@pytest.fixture
def make_logger() -> Iterator[Any]:
    """Return a factory of gunicorn Loggers whose handlers are closed after the test."""
    made: list[Logger] = []

    def make(cfg: Config) -> Logger:
        log = Logger(cfg)
        made.append(log)
        return log

    yield make
    for log in made:
        for handler in [*log.error_log.handlers, *log.access_log.handlers]:
            handler.close()


@pytest.fixture
def uvicorn_loggers() -> Iterator[None]:
    """Restore the uvicorn loggers a UvicornWorker rewires for the rest of the suite."""
    saved = {
        name: (logger.handlers[:], logger.level, logger.propagate)
        for name in ("uvicorn.error", "uvicorn.access")
        for logger in [logging.getLogger(name)]
    }
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers, logger.level, logger.propagate = handlers, level, propagate


def http_scope() -> dict[str, Any]:
    """Return the scope of `POST /items/?page=2` from 127.0.0.1 with a user agent."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/items/",
        "raw_path": b"/items/",
        "query_string": b"page=2",
        "headers": [(b"user-agent", b"probe/1.0"), (b"x-request-id", b"in-123")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8002),
    }


async def answering_app(scope: Any, receive: Any, send: Any) -> None:
    """Answer 201 with the request ID and a body in two chunks."""
    await send(
        {
            "type": "http.response.start",
            "status": 201,
            "headers": [(b"content-type", b"text/plain"), (b"x-request-id", b"in-123")],
        }
    )
    await send({"type": "http.response.body", "body": b"hello ", "more_body": True})
    await send({"type": "http.response.body", "body": b"world"})


async def call(app: Any, scope: dict[str, Any]) -> list[Message]:
    """Call an ASGI app with an empty request body; return what it sent."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def test_access_log_writes_gunicorns_format(tmp_path: Path, make_logger: Any) -> None:
    log = make_logger(gunicorn_config(tmp_path))
    sent = asyncio.run(call(GunicornAccessLog(answering_app, log), http_scope()))
    assert [message["type"] for message in sent] == [
        "http.response.start",
        "http.response.body",
        "http.response.body",
    ]
    line = (tmp_path / "access.log").read_text().strip()
    assert re.fullmatch(
        r'127\.0\.0\.1 - - \[.+\] "POST /items/\?page=2 HTTP/1\.1" 201 11 "-" "probe/1\.0" '
        r"\d+ms in-123",
        line,
    ), line


def test_access_log_records_a_failing_app_as_500(tmp_path: Path, make_logger: Any) -> None:
    async def failing_app(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    log = make_logger(gunicorn_config(tmp_path))
    with pytest.raises(RuntimeError, match="boom"):
        asyncio.run(call(GunicornAccessLog(failing_app, log), http_scope()))
    assert '"POST /items/?page=2 HTTP/1.1" 500 0 ' in (tmp_path / "access.log").read_text()


def test_access_log_records_a_client_gone_before_any_answer_as_499(
    tmp_path: Path, make_logger: Any
) -> None:
    """uvicorn sends nothing to a client that left: a 500 in the log would be a false alarm."""

    async def abandoned_app(scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "http.disconnect"  # Django's RequestAborted path

    async def disconnected() -> Message:
        return {"type": "http.disconnect"}

    log = make_logger(gunicorn_config(tmp_path))
    app = GunicornAccessLog(abandoned_app, log)
    asyncio.run(app(http_scope(), disconnected, lambda message: asyncio.sleep(0)))
    assert '"POST /items/?page=2 HTTP/1.1" 499 0 ' in (tmp_path / "access.log").read_text()


def test_access_log_ignores_lifespan(tmp_path: Path, make_logger: Any) -> None:
    seen: list[str] = []

    async def lifespan_app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    log = make_logger(gunicorn_config(tmp_path))
    asyncio.run(call(GunicornAccessLog(lifespan_app, log), {"type": "lifespan"}))
    assert seen == ["lifespan"]
    assert (tmp_path / "access.log").read_text() == ""


def test_uvicorn_worker_passes_on_what_the_stock_class_drops(
    tmp_path: Path, uvicorn_loggers: None, make_logger: Any
) -> None:
    cfg = gunicorn_config(
        tmp_path,
        worker_connections=321,
        graceful_timeout=17,
        keepalive=75,
        limit_request_line=4000,
        limit_request_fields=50,
        limit_request_field_size=2000,
        websocket_max_message_size=70_000,
    )
    worker = UvicornWorker(0, os.getpid(), [], None, 30, cfg, make_logger(cfg))
    try:
        config = worker.config
        assert (config.loop, config.lifespan) == ("uvloop", "on")
        # httptools, through the subclass that serves a request on its way at shutdown and
        # applies gunicorn's head limits, here the configured ones.
        assert issubclass(config.http, DrainingHttpToolsProtocol)
        assert issubclass(config.http, HttpToolsProtocol)
        limits = ("limit_request_line", "limit_request_fields", "limit_request_field_size")
        assert [getattr(config.http, name) for name in limits] == [4000, 50, 2000]
        assert config.limit_concurrency == 321
        assert config.timeout_graceful_shutdown == 16
        assert config.timeout_keep_alive == 75
        assert config.ws_max_size == 70_000
        assert config.ws_per_message_deflate is False
        # Its own access line is off: GunicornAccessLog writes the configured one.
        assert config.access_log is False
    finally:
        worker.tmp.close()


def quit_holding_the_pool_lock(worker_class: type[StockThreadWorker], log: Logger) -> bool:
    """Return whether SIGQUIT's handler ends while the pool's lock is held, as in submit()."""
    worker = worker_class(0, os.getpid(), [], None, 30, log.cfg, log)
    worker.tpool = ThreadPoolExecutor(max_workers=1)
    ended = threading.Event()

    def main_thread_in_submit() -> None:
        with worker.tpool._shutdown_lock:  # what submit() holds when the signal lands
            try:
                worker.handle_quit(signal.SIGQUIT, None)
            except SystemExit:
                ended.set()

    # A daemon thread: if the handler deadlocks, the test fails instead of hanging.
    thread = threading.Thread(target=main_thread_in_submit, daemon=True)
    thread.start()
    thread.join(timeout=3)
    worker.tmp.close()
    return ended.is_set()


def test_a_clients_fault_is_logged_without_its_traceback() -> None:
    logger = logging.Logger("uvicorn.error.test")
    filter_client_faults(logger)
    filter_client_faults(logger)  # once only
    assert len(logger.filters) == 1
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    for message in [*CLIENT_FAULTS, "Exception in ASGI application"]:
        try:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
        except UnicodeDecodeError:
            logger.exception(message)
    assert [(r.msg, r.exc_info is None) for r in records] == [
        *[(message, True) for message in CLIENT_FAULTS],
        ("Exception in ASGI application", False),  # the application's own errors keep theirs
    ]


def test_thread_worker_quits_while_the_pool_lock_is_held(tmp_path: Path, make_logger: Any) -> None:
    assert quit_holding_the_pool_lock(ThreadWorker, make_logger(gunicorn_config(tmp_path)))


def test_stock_gthread_worker_deadlocks_there(tmp_path: Path, make_logger: Any) -> None:
    # The negative control: the bug ThreadWorker exists for (CPython #121649). If a gunicorn
    # release fixes it, this fails and ThreadWorker can go.
    assert not quit_holding_the_pool_lock(StockThreadWorker, make_logger(gunicorn_config(tmp_path)))


def refused_post_then_get(port: int) -> list[int]:
    """POST a 3 MiB form the app refuses unread, then GET on the same connection; the statuses.

    Django refuses a form over DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MiB) before reading it.
    """
    form = b"name=" + b"a" * (3 * 1024 * 1024)
    post = (
        b"POST /sync/form/ HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(form), form)
    )
    get = b"GET /sync/hello/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            # The stock worker may close (and so reset) while the body is still being sent.
            sock.sendall(post)
            while not parse_responses(received, closed=False)[0]:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
            sock.sendall(get)
            while chunk := sock.recv(65536):
                received += chunk
        except OSError:
            pass  # reset: the worker closed with the body unread
    return [response.status for response in parse_responses(received, closed=True)[0]]


@pytest.mark.serving
@pytest.mark.parametrize(
    ("worker_class", "statuses"),
    [("deploy.workers.ThreadWorker", [400, 200]), ("gthread", [400])],
)
def test_thread_worker_drains_a_refused_body_and_keeps_the_connection(
    tmp_path: Path, worker_class: str, statuses: list[int]
) -> None:
    """The stock class drains 64 KiB, then resets: behind nginx, a 502 instead of the 400."""
    env = {
        **dict.fromkeys(INHERITED_SETTINGS),
        "DJANGO_SETTINGS_MODULE": SERVING_SETTINGS,
        "DJANGO_VAR_DIR": str(tmp_path / "var"),
        "DJANGO_DEBUG": "false",
        "WEB_CONCURRENCY": "1",
    }
    with start_mode(
        "wsgi_gthread", env=env, extra_args=["-k", worker_class], workdir=tmp_path / "server"
    ) as server:
        assert refused_post_then_get(server.port) == statuses, server.tail()


def head_status(port: int, target: str, fields: list[bytes]) -> int:
    """Send one GET with `fields` after Host; return the status of the answer."""
    request = b"GET %s HTTP/1.1\r\nHost: localhost\r\n%sConnection: close\r\n\r\n" % (
        target.encode(),
        b"".join(field + b"\r\n" for field in fields),
    )
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        while len(received) < 1 << 20 and (chunk := sock.recv(65536)):
            received += chunk
    (response, *_) = parse_responses(received, closed=True)[0]
    return response.status


def heads_at_the_limits() -> dict[str, tuple[str, list[bytes]]]:
    """Return requests at gunicorn's default head limits and one byte or field past them."""
    line = common.limit_request_line
    size = common.limit_request_field_size
    hello = "/sync/hello/?q="
    # "GET <target> HTTP/1.1" is the line gunicorn measures.
    at_line = hello + "a" * (line - len("GET  HTTP/1.1") - len(hello))
    # Host and Connection are two of the fields; "X-Fill: <value>\r\n" is what one weighs.
    at_size = b"X-Fill: " + b"v" * (size - len(b"X-Fill: \r\n"))
    fill = [b"X-Fill-%d: 1" % n for n in range(common.limit_request_fields - 2)]
    return {
        "line at the limit": (at_line, []),
        "line over": (at_line + "a", []),
        "field at the limit": ("/sync/hello/", [at_size]),
        "field over": ("/sync/hello/", [at_size + b"v"]),
        "fields at the limit": ("/sync/hello/", fill),
        "one field over": ("/sync/hello/", [*fill, b"X-Fill-last: 1"]),
    }


@pytest.mark.serving
@pytest.mark.parametrize("mode", MODES)
def test_every_mode_refuses_the_heads_gunicorn_refuses(mode: str, tmp_path: Path) -> None:
    """Under UvicornWorker too: httptools has no limits of its own, deploy.workers adds them."""
    env = {
        **dict.fromkeys(INHERITED_SETTINGS),
        "DJANGO_SETTINGS_MODULE": SERVING_SETTINGS,
        "DJANGO_VAR_DIR": str(tmp_path / "var"),
        "DJANGO_DEBUG": "false",
        "DJANGO_ALLOWED_HOSTS": "localhost",
        "WEB_CONCURRENCY": "1",
    }
    with start_mode(mode, env=env, workdir=tmp_path / "server") as server:
        statuses = {
            name: head_status(server.port, target, fields)
            for name, (target, fields) in heads_at_the_limits().items()
        }
        # The worker that refused them serves the next request.
        after = head_status(server.port, "/sync/hello/", [])
    assert statuses == {
        "line at the limit": 200,
        "line over": 414,
        "field at the limit": 200,
        "field over": 431,
        "fields at the limit": 200,
        "one field over": 431,
    }, server.tail()
    assert after == 200
