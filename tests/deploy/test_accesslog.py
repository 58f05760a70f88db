"""deploy.accesslog: gunicorn's access lines, queued by the request, written by a thread."""

from __future__ import annotations

import datetime
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest
from gunicorn.config import Config
from gunicorn.glogging import Logger

from deploy.accesslog import QueuedAccessLogger, is_gunicorns
from deploy.gunicorn import common
from deploy.workers import RequestInfo, ResponseInfo
from lab.servers import MODES, interface_of_mode, start_mode

# gunicorn's %(t)s, the one atom that differs between two loggers given the same request.
TIME_ATOM = re.compile(r"\[\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}\]")
# The project's format (common.access_log_format) with the request ID as the last field.
LINE = re.compile(
    r'127\.0\.0\.1 - - \[[^]]+\] "GET (?P<path>\S+) HTTP/1\.1" 200 \d+ "-" "[^"]*" '
    r"\d+ms (?P<request_id>\S+)"
)


def config(path: Path) -> Config:
    """Return a gunicorn Config with the project's access log format, logging to `path`."""
    cfg = Config()
    cfg.set("accesslog", str(path))
    cfg.set("access_log_format", common.access_log_format)
    return cfg


def close_handlers(log: Logger) -> None:
    """Close the handlers `log` set up (its writer, if any, is stopped first)."""
    if isinstance(log, QueuedAccessLogger):
        log.close()
    for handler in [*log.error_log.handlers, *log.access_log.handlers]:
        handler.close()


@pytest.fixture
def make_logger() -> Iterator[Callable[[type[Logger], Path], Any]]:
    """Return a factory of loggers whose writers stop and handlers close after the test."""
    made: list[Logger] = []

    def make(cls: type[Logger], path: Path) -> Any:
        log = cls(config(path))
        made.append(log)
        return log

    yield make
    for log in made:
        close_handlers(log)


def gunicorns_handler(log: Logger) -> logging.Handler:
    """Return the access log's handler gunicorn made (pytest may add capture handlers)."""
    (handler,) = [h for h in log.access_log.handlers if is_gunicorns(h)]
    return handler


def request(number: int) -> tuple[ResponseInfo, RequestInfo, datetime.timedelta]:
    """Return what the ASGI middleware hands the logger for request `number`."""
    response = ResponseInfo()
    response.status, response.sent = 200, 5
    response.raw_headers = [(b"content-type", b"text/plain"), (b"x-request-id", b"r-%d" % number)]
    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "path": f"/items/{number}/",
        "query_string": b"",
        "headers": [(b"user-agent", b"probe/1.0"), (b"x-request-id", b"r-%d" % number)],
        "client": ("127.0.0.1", 50000),
    }
    return response, RequestInfo(scope), datetime.timedelta(milliseconds=number % 7)


def log_request(log: Logger, number: int) -> None:
    """Log request `number` as the middleware does."""
    response, info, elapsed = request(number)
    log.access(response, info, info, elapsed)


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_lines_are_gunicorns_own_in_the_order_logged(tmp_path: Path, make_logger: Any) -> None:
    count = 500
    # One after the other: gunicorn's loggers share the process-wide "gunicorn.access".
    stock = make_logger(Logger, tmp_path / "stock.log")
    for number in range(count):
        log_request(stock, number)
    close_handlers(stock)
    queued = make_logger(QueuedAccessLogger, tmp_path / "queued.log")
    for number in range(count):
        log_request(queued, number)
    queued.close()

    written = lines_of(tmp_path / "queued.log")
    assert len(written) == count
    # Line for line what gunicorn's Logger writes, but for the time of day.
    assert [TIME_ATOM.sub("[t]", line) for line in written] == [
        TIME_ATOM.sub("[t]", line) for line in lines_of(tmp_path / "stock.log")
    ]
    assert [line.rsplit(" ", 1)[1] for line in written] == [f"r-{n}" for n in range(count)]


@pytest.mark.parametrize(("logger_class", "waits"), [(QueuedAccessLogger, False), (Logger, True)])
def test_a_request_does_not_wait_for_the_write(
    tmp_path: Path, make_logger: Any, logger_class: type[Logger], waits: bool
) -> None:
    # Logger (gunicorn's) is the control: its access() writes, so a stalled output stalls it.
    log = make_logger(logger_class, tmp_path / "access.log")
    handler = gunicorns_handler(log)
    with handler.lock:  # the output stalls (a full pipe, a slow disk)
        request_thread = threading.Thread(target=log_request, args=(log, 1))
        request_thread.start()
        request_thread.join(1)
        assert request_thread.is_alive() is waits
        assert lines_of(tmp_path / "access.log") == []
    request_thread.join(5)
    if isinstance(log, QueuedAccessLogger):
        log.close()
    assert len(lines_of(tmp_path / "access.log")) == 1


def test_close_waits_for_the_queued_lines(tmp_path: Path, make_logger: Any) -> None:
    log = make_logger(QueuedAccessLogger, tmp_path / "access.log")
    handler = gunicorns_handler(log)
    with ThreadPoolExecutor(1) as pool, handler.lock:
        for number in range(3):
            log_request(log, number)
        closing = pool.submit(log.close)
        time.sleep(0.2)
        assert not closing.done()  # still waiting for the stalled writer
    closing.result(5)
    assert [line.rsplit(" ", 1)[1] for line in lines_of(tmp_path / "access.log")] == [
        "r-0",
        "r-1",
        "r-2",
    ]


def test_the_time_is_when_the_request_ended_not_when_written(
    tmp_path: Path, make_logger: Any
) -> None:
    log = make_logger(QueuedAccessLogger, tmp_path / "access.log")
    ended = time.mktime((2024, 2, 29, 13, 14, 15, 0, 0, -1))
    with mock.patch("deploy.accesslog.time.time", return_value=ended):
        log_request(log, 1)
    log.close()
    (line,) = lines_of(tmp_path / "access.log")
    assert time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(ended)) in line
    assert "[29/Feb/2024:13:14:15 " in line


def test_a_line_that_fails_to_format_is_reported_and_the_rest_written(tmp_path: Path) -> None:
    cfg = config(tmp_path / "access.log")
    cfg.set("errorlog", str(tmp_path / "error.log"))
    log = QueuedAccessLogger(cfg)
    try:
        log_request(log, 1)
        no_method = RequestInfo({"headers": []})
        log.access(ResponseInfo(), no_method, no_method, datetime.timedelta())
        log_request(log, 2)
    finally:
        close_handlers(log)
    assert [line.rsplit(" ", 1)[1] for line in lines_of(tmp_path / "access.log")] == [
        "r-1",
        "r-2",
    ]
    assert "KeyError" in (tmp_path / "error.log").read_text()


@pytest.mark.parametrize("mode", MODES)
def test_a_real_server_logs_every_request_in_order_and_loses_none_on_sigterm(
    mode: str, tmp_path: Path
) -> None:
    side = "sync" if interface_of_mode(mode) == "wsgi" else "async"
    env = {
        "WEB_CONCURRENCY": "1",
        "DJANGO_VAR_DIR": str(tmp_path / "var"),
        # The test views' /<side>/sleep/, through the whole middleware chain (request IDs).
        "DJANGO_SETTINGS_MODULE": "tests.serving.settings",
    }
    ids = [f"{mode}-{number}" for number in range(200)]
    with (
        start_mode(mode, env=env, workdir=tmp_path / "server") as server,
        httpx.Client(base_url=server.base_url, timeout=10) as client,
    ):
        for request_id in ids:
            response = client.get(f"/{side}/sleep/?ms=0", headers={"X-Request-ID": request_id})
            assert response.status_code == 200
        # One more, still being answered when SIGTERM arrives: a graceful stop serves it, and
        # its line is queued just before the worker exits.
        with ThreadPoolExecutor(1) as pool:
            last = pool.submit(
                client.get, f"/{side}/sleep/?ms=1000", headers={"X-Request-ID": f"{mode}-last"}
            )
            time.sleep(0.5)  # the request reaches the worker (its answer takes 1 s)
            assert server.stop() == 0, server.tail()
            assert last.result(10).status_code == 200
    # Complete lines (the format to its last field), in the order served; the start-up's
    # health checks are there too, without a request ID of the test's.
    logged = [found for found in map(LINE.fullmatch, server.output().splitlines()) if found]
    request_ids = [found["request_id"] for found in logged if found["path"] != "/healthz"]
    assert request_ids == [*ids, f"{mode}-last"], server.tail()


@pytest.mark.parametrize("mode", ["asgi_uvicorn", "wsgi_sync"])
def test_gunicorn_access_log_off_leaves_the_record_to_nginx(mode: str, tmp_path: Path) -> None:
    side = "sync" if interface_of_mode(mode) == "wsgi" else "async"
    env = {
        "WEB_CONCURRENCY": "1",
        "DJANGO_VAR_DIR": str(tmp_path / "var"),
        "DJANGO_SETTINGS_MODULE": "tests.serving.settings",
        "GUNICORN_ACCESS_LOG": "off",
    }
    with start_mode(mode, env=env, workdir=tmp_path / "server") as server:
        response = httpx.get(f"{server.base_url}/{side}/sleep/?ms=0", timeout=10)
        assert response.status_code == 200
        assert server.stop() == 0, server.tail()
    assert f"GET /{side}/sleep/" not in server.output()
    assert "dualserve ready" in server.output()  # the error log still runs


def test_the_modes_use_the_queued_logger_and_read_the_access_log_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib

    assert common.logger_class == "deploy.accesslog.QueuedAccessLogger"
    assert common.accesslog == "-"
    for value, expected in [("off", None), ("OFF", None), ("/var/log/app.log", "/var/log/app.log")]:
        monkeypatch.setenv("GUNICORN_ACCESS_LOG", value)
        assert importlib.reload(common).accesslog == expected
    monkeypatch.delenv("GUNICORN_ACCESS_LOG")
    assert importlib.reload(common).accesslog == "-"
