"""The project's gunicorn worker classes; each fixes what its stock class gets wrong here.

- `ThreadWorker` (wsgi_gthread): gunicorn's gthread worker without its quick-shutdown deadlock,
  draining a refused request's body instead of resetting the connection.
- `UvicornWorker` (asgi_uvicorn): uvicorn_worker's class, passing on the settings it drops,
  and logging a client's bad WebSocket bytes without a traceback (`ClientFaultFilter`).
"""

from __future__ import annotations

import datetime
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, MutableMapping
from functools import cached_property
from typing import Any, ClassVar

from gunicorn.workers import gthread
from gunicorn.workers.base import Worker
from gunicorn.workers.gthread import ThreadWorker as StockThreadWorker
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn_worker import UvicornWorker as StockUvicornWorker

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Logged when the client went away before any response started (nginx's code for it): uvicorn
# sends nothing then, so the 500 it would send for an app that returns without answering is wrong.
CLIENT_CLOSED_REQUEST = 499
# Seconds between uvicorn cancelling what is still running and the master's SIGKILL.
SHUTDOWN_MARGIN = 1
# Most bytes of a body the app did not read that a gthread worker drains to keep the connection:
# nginx's client_max_body_size (deploy/nginx.py), the largest body nginx sends upstream.
UNREAD_BODY_DRAIN_BYTES = 64 * 1024 * 1024


class ThreadWorker(StockThreadWorker):  # type: ignore[misc]  # untyped base (no py.typed)
    """gunicorn's gthread worker, minus a deadlock on SIGINT/SIGQUIT (quick shutdown).

    The stock handler calls ThreadPoolExecutor.shutdown() inside the signal handler. When the
    signal lands while the main thread is in executor.submit(), which holds the same
    non-reentrant lock (likeliest while the pool is still starting threads), the worker
    deadlocks until the master SIGKILLs it at graceful_timeout (CPython #121649). Seen here
    under gunicorn 27 after `kill -INT <master>` right after start-up: intermittent (up to 4
    runs in 30, with load), the worker's main thread stuck in shutdown() inside submit().
    Skipping the call changes nothing else: at exit, concurrent.futures' own atexit hook
    wakes and joins the pool's threads, as shutdown() would have.
    """

    def handle_quit(self, sig: int, frame: object) -> None:
        """Quit at once, as gunicorn's base worker does, without touching the pool's lock."""
        Worker.handle_quit(self, sig, frame)

    def _keepalive_after(self, conn: Any, keepalive: bool) -> bool:
        """Drain up to UNREAD_BODY_DRAIN_BYTES of an unread body, not gunicorn's 64 KiB.

        The app may answer without reading the body (a 400 for a form over
        DATA_UPLOAD_MAX_MEMORY_SIZE, a 403, a 404). gunicorn 27 drains 64 KiB of it, then
        closes with the rest unread, so the kernel resets the connection while nginx is still
        sending the body it buffered: nginx logs "sendfile() failed (32: Broken pipe) while
        sending request to upstream" and the client gets 502 instead of the app's answer
        (3 of 6 tries with a 3 MiB form, found by the hostile corpus). Draining what nginx
        already holds is quick on loopback; gunicorn's own deadline (5 s) still bounds a
        slow client.
        """
        if not keepalive:
            return False
        deadline = time.monotonic() + gthread.DEFAULT_WORKER_DATA_TIMEOUT
        return bool(conn.parser.finish_body(deadline=deadline, max_bytes=UNREAD_BODY_DRAIN_BYTES))


# Seconds a connection accepted before a shutdown gets to deliver its request.
SHUTDOWN_REQUEST_GRACE = 2.0


# What gunicorn's parser answers when a head is over its limits (gunicorn/workers/base.py).
REQUEST_LINE_TOO_LONG = b"HTTP/1.1 414 Request-URI Too Long\r\n"
HEADER_FIELDS_TOO_LARGE = b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
HEAD_OVER_LIMITS = "Request head over the server's limits."
# gunicorn's own bounds for a limit set to 0 or below (gunicorn/http/message.py).
MAX_REQUEST_LINE = 8190
MAX_HEADERS = 32768
DEFAULT_MAX_HEADERFIELD_SIZE = 8190
UNLIMITED_REQUEST_LINE = 1024 * 1024


class HeadOverLimitError(Exception):
    """A request head over one of gunicorn's limits; ends httptools' parse of it."""


class DrainingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with gunicorn's head limits and a draining shutdown.

    Limits: httptools accepts a request line and headers of any size and number, so the
    UvicornWorker would serve what gunicorn's own parser refuses in the other three modes
    (300 header fields: 200 here, 431 there). This protocol counts as gunicorn does and answers
    as gunicorn does: 414 past `limit_request_line`, 431 past `limit_request_fields` or
    `limit_request_field_size` (a field's "name: value" line with its CRLF).
    `UvicornWorker` subclasses it with the values of gunicorn's config.

    Draining: at a graceful shutdown uvicorn closes every connection whose request it has not
    parsed yet (`HttpToolsProtocol.shutdown`: `cycle is None` -> close), including one it
    accepted a moment ago whose request still sits unread in the socket: that client gets a
    reset, not an answer. Measured with SIGHUP under load (8 clients, fresh connections):
    2 requests lost per reload with the stock protocol, 0 with this one. Such a connection now
    gets SHUTDOWN_REQUEST_GRACE s to deliver one request, served with `Connection: close`; an
    idle keep-alive connection is still closed at once (a client retries those).
    """

    draining = False
    # gunicorn's defaults; UvicornWorker sets the configured ones.
    limit_request_line = MAX_REQUEST_LINE
    limit_request_fields = 100
    limit_request_field_size = DEFAULT_MAX_HEADERFIELD_SIZE
    # The answer for the head being parsed, when it went over a limit.
    refusal: bytes | None = None

    def on_message_begin(self) -> None:
        """Start a request: no refusal yet."""
        super().on_message_begin()
        self.refusal = None

    def on_url(self, url: bytes) -> None:
        """Collect the request target, refusing it past limit_request_line."""
        super().on_url(url)
        # The request line as gunicorn measures it: method, target and "HTTP/1.x", no CRLF.
        if len(self.parser.get_method()) + len(self.url) + len(b"  HTTP/1.1") > (
            self.limit_request_line
        ):
            self.refuse(REQUEST_LINE_TOO_LONG, "request line")

    def on_header(self, name: bytes, value: bytes) -> None:
        """Collect a header field, refusing one too many or one too large."""
        if len(self.headers) >= self.limit_request_fields:
            self.refuse(HEADER_FIELDS_TOO_LARGE, "header fields")
        if len(name) + len(value) + len(b": \r\n") > self.limit_request_field_size:
            self.refuse(HEADER_FIELDS_TOO_LARGE, "header field size")
        super().on_header(name, value)

    def refuse(self, status_line: bytes, limit: str) -> None:
        """Stop parsing this head: httptools re-raises it, uvicorn calls send_400_response()."""
        self.refusal = status_line
        raise HeadOverLimitError(limit)

    def send_400_response(self, msg: str) -> None:
        """Answer a head over a limit as gunicorn would (414 or 431); anything else, as uvicorn."""
        if self.refusal is None:
            super().send_400_response(msg)
            return
        body = HEAD_OVER_LIMITS.encode()
        head = [self.refusal]
        # uvicorn's own headers (Server, Date), as on its 400.
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head.append(b"content-type: text/plain; charset=utf-8\r\n")
        head.append(b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body))
        self.transport.write(b"".join(head) + body)
        self.transport.close()

    def shutdown(self) -> None:
        """Close idle keep-alive connections; let a fresh one deliver its request first."""
        if self.cycle is None and not self.transport.is_closing():
            self.draining = True
            self.loop.call_later(SHUTDOWN_REQUEST_GRACE, self.close_if_unused)
            return
        super().shutdown()

    def close_if_unused(self) -> None:
        """Close the connection if no request has begun on it since the shutdown."""
        if self.cycle is None and not self.transport.is_closing():
            self.transport.close()

    def on_headers_complete(self) -> None:
        """Serve the request as usual, and close the connection after it when draining."""
        super().on_headers_complete()
        if self.draining and self.cycle is not None:
            self.cycle.keep_alive = False


# What uvicorn logs with logger.exception() although the client, not the application, is at
# fault: websockets_sansio_impl.py, on a text frame that is not UTF-8 (it closes with 1007, as
# it should). Each such frame would write a traceback into the log: any client could flood it.
CLIENT_FAULTS = frozenset({"Invalid UTF-8 sequence received from client."})


class ClientFaultFilter(logging.Filter):
    """Keep uvicorn's line for a client's fault (CLIENT_FAULTS) but drop its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg in CLIENT_FAULTS:
            record.exc_info = None
            record.exc_text = None
        return True


def filter_client_faults(logger: logging.Logger) -> None:
    """Add a ClientFaultFilter to `logger`, once."""
    if not any(isinstance(existing, ClientFaultFilter) for existing in logger.filters):
        logger.addFilter(ClientFaultFilter())


def gunicorn_limit(value: int, bound: int) -> int:
    """Return a gunicorn head limit as gunicorn applies it: 0 or less means its own bound."""
    return value if 0 < value <= bound else bound


class UvicornWorker(StockUvicornWorker):  # type: ignore[misc]  # untyped base (no py.typed)
    """uvicorn_worker.UvicornWorker with uvloop, httptools and the settings it drops.

    The stock class (uvicorn-worker 0.4) hands uvicorn only keepalive, timeout, max_requests,
    forwarded_allow_ips, backlog and SSL from gunicorn's config. This one also passes on:

    - lifespan "on": project.asgi answers the lifespan scope, so a failed start-up stops the
      worker instead of being logged and ignored ("auto"); WebSockets without permessage-deflate
      (see CONFIG_KWARGS);
    - worker_connections -> limit_concurrency, as gunicorn's gthread and asgi workers honour it;
    - graceful_timeout -> timeout_graceful_shutdown, so what is still running is cancelled
      cleanly just before the master's SIGKILL instead of being killed mid-response;
    - access_log_format: uvicorn writes its own fixed access line; here gunicorn's logger
      writes it, so every serving mode logs the same format (request time, request ID);
    - websocket_max_message_size -> ws_max_size, so both ASGI modes refuse the same messages.

    - limit_request_line, limit_request_fields, limit_request_field_size: uvicorn has no
      such settings (httptools accepts any head); `DrainingHttpToolsProtocol` enforces them
      as gunicorn's parser does, so all four modes refuse the same heads.

    It also fixes a hang: on SIGINT or SIGQUIT the master sends its workers SIGQUIT, which the
    stock class answers by clearing gunicorn's `alive` flag, a flag uvicorn never reads: the
    worker serves on until graceful_timeout, then is SIGKILLed. Measured under gunicorn 27 with
    `kill -INT <master>`: 30 s and "Worker ... was sent SIGKILL!" with the stock class, under
    1 s with this one. (Ctrl-C in a terminal also reaches the workers directly: not affected.)
    """

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        # Explicit, so a missing uvloop or httptools fails the start instead of falling back.
        "loop": "uvloop",
        # httptools, serving the requests already on their way when a shutdown begins.
        "http": DrainingHttpToolsProtocol,
        "lifespan": "on",
        # GunicornAccessLog below writes the line in gunicorn's configured format.
        "access_log": False,
        # No permessage-deflate, as gunicorn's asgi worker (which has none): a broadcast compresses
        # the same small event once per client, and each connection keeps zlib state. Measured
        # with `lab.bench --fanout` (1,000 WebSockets + 1,000 SSE streams, 2 workers, 10 events/s,
        # alternating): 30 KiB of RSS per WebSocket instead of 53-74 KiB, 76-79 us of server CPU
        # per delivery instead of 82-84. A client that offers it gets an uncompressed connection.
        "ws_per_message_deflate": False,
    }
    # Set by gunicorn's Worker.load_wsgi(): here, the ASGI application.
    wsgi: ASGIApp

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Config() only stores these; the server reads them when it runs.
        self.config.limit_concurrency = self.cfg.worker_connections
        self.config.timeout_graceful_shutdown = max(
            self.cfg.graceful_timeout - SHUTDOWN_MARGIN, SHUTDOWN_MARGIN
        )
        # gunicorn's 0 is "no limit", which the websockets library spells None.
        self.config.ws_max_size = self.cfg.websocket_max_message_size or None
        # The head limits of gunicorn's config, as its own parser applies them.
        self.config.http = type(
            "GunicornLimitsHttpToolsProtocol",
            (DrainingHttpToolsProtocol,),
            {
                # 0 is gunicorn's "no limit", which its parser caps at 1 MiB.
                "limit_request_line": (
                    gunicorn_limit(self.cfg.limit_request_line, MAX_REQUEST_LINE)
                    if self.cfg.limit_request_line
                    else UNLIMITED_REQUEST_LINE
                ),
                "limit_request_fields": gunicorn_limit(self.cfg.limit_request_fields, MAX_HEADERS),
                "limit_request_field_size": gunicorn_limit(
                    self.cfg.limit_request_field_size, DEFAULT_MAX_HEADERFIELD_SIZE
                ),
            },
        )

    def handle_exit(self, sig: int, frame: object) -> None:
        """Stop uvicorn on gunicorn's quick-shutdown signal (SIGQUIT), as on SIGTERM."""
        super().handle_exit(sig, frame)
        # uvicorn's Server handles SIGTERM (graceful, bounded by timeout_graceful_shutdown);
        # SIGTERM, not SIGINT: a second SIGINT would make uvicorn drop in-flight requests.
        signal.raise_signal(signal.SIGTERM)

    def load_wsgi(self) -> None:
        """Load the ASGI app, wrapped so gunicorn's logger writes its access lines."""
        super().load_wsgi()
        self.wsgi = GunicornAccessLog(self.wsgi, self.log)
        # After the app's set-up, whose logging configuration could replace the logger's.
        filter_client_faults(logging.getLogger("uvicorn.error"))


def decoded(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """Return ASGI header pairs as the strings gunicorn's access-log atoms expect."""
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers]


class ResponseInfo:
    """What gunicorn's access-log atoms read from a response: status, headers, bytes sent."""

    def __init__(self) -> None:
        # uvicorn answers 500 itself when the app fails or returns before starting a response.
        self.status = 500
        self.raw_headers: Iterable[tuple[bytes, bytes]] = ()
        self.sent = 0
        self.started = False

    @property
    def headers(self) -> list[tuple[str, str]]:
        """Return the response headers, decoded when the access line is made."""
        return decoded(self.raw_headers)


def wsgi_style_environ(scope: Scope) -> dict[str, str]:
    """Return the WSGI-style keys gunicorn's access-log atoms read, built from an HTTP scope."""
    query = scope.get("query_string", b"").decode("latin-1")
    raw_path = scope.get("raw_path") or scope["path"].encode()
    raw_uri = raw_path.decode("latin-1") + (f"?{query}" if query else "")
    client = scope.get("client")
    environ = {
        "REQUEST_METHOD": scope["method"],
        "RAW_URI": raw_uri,
        "PATH_INFO": scope["path"],
        "QUERY_STRING": query,
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "REMOTE_ADDR": client[0] if client else "-",
    }
    for name, value in scope["headers"]:
        key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        environ[key] = value.decode("latin-1")
    return environ


class RequestInfo(Mapping[str, str]):
    """What gunicorn's access-log atoms read from a request: its headers and a WSGI environ.

    Built from the scope only when read: by gunicorn's access() at the end of the request, or
    by deploy.accesslog's thread, off the request's path.
    """

    def __init__(self, scope: Scope) -> None:
        self.scope = scope

    @cached_property
    def headers(self) -> list[tuple[str, str]]:
        """Return the request headers (gunicorn's atoms read `req.headers`)."""
        return decoded(self.scope["headers"])

    @cached_property
    def environ(self) -> dict[str, str]:
        """Return the WSGI-style environ."""
        return wsgi_style_environ(self.scope)

    def __getitem__(self, key: str) -> str:
        return self.environ[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.environ)

    def __len__(self) -> int:
        return len(self.environ)


class GunicornAccessLog:
    """ASGI middleware: log each HTTP request through gunicorn's access logger.

    Per-request state lives in locals: one instance serves every connection of the worker.
    """

    def __init__(self, app: ASGIApp, log: Any) -> None:
        self.app = app
        self.log = log

    def flushing_at_shutdown(self, send: Send) -> Send:
        """Wrap lifespan's `send`: write the queued access lines once the app has shut down.

        uvicorn waits for every request before the lifespan shutdown, so every line is queued
        by then; and after it, uvicorn re-raises the SIGTERM it captured (a group-wide SIGTERM
        reaches the worker itself too), which ends the process before atexit could write them
        (deploy.accesslog).
        """

        async def send_then_flush(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                flush = getattr(self.log, "flush", None)
                if flush is not None:
                    flush()  # at shutdown only: one blocking write is fine
            await send(message)

        return send_then_flush

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self.flushing_at_shutdown(send))
            return
        if scope["type"] != "http" or not getattr(self.log, "access_log_enabled", True):
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        response = ResponseInfo()
        disconnected = False

        async def receive_and_record() -> Message:
            nonlocal disconnected
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected = True
            return message

        async def send_and_record(message: Message) -> None:
            if message["type"] == "http.response.start":
                response.started = True
                response.status = message["status"]
                response.raw_headers = message.get("headers", ())
            elif message["type"] == "http.response.body":
                response.sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive_and_record, send_and_record)
        finally:
            if disconnected and not response.started:
                response.status = CLIENT_CLOSED_REQUEST
            elapsed = datetime.timedelta(seconds=time.monotonic() - started)
            request = RequestInfo(scope)
            self.log.access(response, request, request, elapsed)
