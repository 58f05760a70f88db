"""A tiny asyncio HTTP/1.1 server that answers `GET /?ms=N` after N milliseconds.

It stands in for a slow API behind the showcase's upstream views: `python -m
apps.showcase.upstream --host 127.0.0.1 --port 8003`. Standard library only, so it starts with
no Django settings and costs the benchmark little besides the wait itself: a wait is a timer
on the event loop, so thousands of concurrent waits cost neither threads nor tasks. Tests start
it in a background thread with `start_in_thread()`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import resource
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import parse_qs, urlsplit

logger = logging.getLogger("apps.showcase.upstream")

MAX_MS = 60_000
# A request head larger than this is refused (431); real clients send a few hundred bytes.
MAX_HEAD_BYTES = 8192
# An idle keep-alive connection is closed after this long. Longer than httpx's default
# keepalive expiry (5 s), so the client, not the server, retires idle connections and never
# reuses one the server is closing.
IDLE_TIMEOUT = 75.0
# How long a refused client may still send (dropped) before the connection closes.
LINGER_SECONDS = 2.0
# Room for thousands of connections arriving at once (the kernel caps it at somaxconn).
BACKLOG = 4096

REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
}


class BadRequest(Exception):
    """The request cannot be answered; `status` and the message say why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Request:
    """The parts of a request head this server looks at."""

    method: str
    target: str
    version: str
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def keep_alive(self) -> bool:
        """Return whether the client wants the connection kept open (HTTP/1.1 rules)."""
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection


def parse_head(head: bytes) -> Request:
    """Parse a request line and headers, ending with the blank line; raise BadRequest."""
    try:
        text = head.decode("latin-1")
        request_line, *header_lines = text.split("\r\n")
        method, target, version = request_line.split(" ")
    except ValueError:
        raise BadRequest(400, "malformed request line") from None
    if version not in {"HTTP/1.0", "HTTP/1.1"}:
        raise BadRequest(400, f"unsupported protocol {version!r}")
    request = Request(method, target, version)
    for line in header_lines:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(400, "malformed header line")
        request.headers[name.lower()] = value.strip()
    return request


def wait_ms(request: Request) -> int:
    """Return the validated `ms` of a `GET /?ms=N` request; raise BadRequest otherwise."""
    if request.method != "GET":
        raise BadRequest(405, f"method {request.method} not allowed: use GET")
    if "transfer-encoding" in request.headers or request.headers.get("content-length", "0") != "0":
        # A body would have to be read and discarded to keep the connection usable; a GET
        # here never needs one, so refuse it and close.
        raise BadRequest(400, "this server takes no request body")
    url = urlsplit(request.target)
    if url.path != "/":
        raise BadRequest(404, f"no such path {url.path!r}: use /?ms=N")
    values = parse_qs(url.query, keep_blank_values=True).get("ms", ["0"])
    raw = values[-1]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 6:
        raise BadRequest(400, f"ms must be an integer from 0 to {MAX_MS}, got {raw!r}")
    ms = int(raw)
    if ms > MAX_MS:
        raise BadRequest(400, f"ms must be an integer from 0 to {MAX_MS}, got {raw!r}")
    return ms


def render(status: int, payload: dict[str, object], keep_alive: bool) -> bytes:
    """Return a complete HTTP/1.1 response carrying `payload` as JSON."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    head = (
        f"HTTP/1.1 {status} {REASONS[status]}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n"
    )
    if status == 405:
        head += "Allow: GET\r\n"
    return (head + "\r\n").encode("latin-1") + body


class UpstreamServer:
    """The server: `await start()`, `await stop()`; `waiting`/`peak_waiting` count waits."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.waiting = 0
        self.peak_waiting = 0
        self.requests = 0
        self.connections: set[Connection] = set()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        """Return the base URL, with the bound port once started."""
        return f"http://{self.host}:{self.port}/"

    async def start(self) -> None:
        """Listen on host:port (port 0 picks a free one, readable afterwards)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Connection(self), self.host, self.port, backlog=BACKLOG
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and close every open connection, waits included."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        # Python 3.11's Server.close() leaves open connections alone: close them here.
        closing = [connection.closed for connection in self.connections]
        for connection in list(self.connections):
            connection.abort()
        await asyncio.gather(*closing)


class Connection(asyncio.Protocol):
    """One client connection: its requests answered in order, one wait at a time.

    A protocol with a timer per wait, rather than a task per connection: at thousands of
    concurrent waits the server must cost far less than the services it stands in for.
    """

    def __init__(self, server: UpstreamServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        # The pending wait while busy, else the idle (or lingering-close) deadline.
        self.timer: asyncio.TimerHandle | None = None
        self.busy = False
        self.refusing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports do not subclass asyncio's.
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections.add(self)
        self.set_timer(IDLE_TIMEOUT, self.transport.close)

    def data_received(self, data: bytes) -> None:
        if self.refusing:
            return  # drained and dropped: see refuse()
        self.buffer += data
        if not self.busy:
            self.next_request()
        elif len(self.buffer) > MAX_HEAD_BYTES:
            # A client pipelining faster than the waits end: stop reading until they do.
            self.transport.pause_reading()  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        return False  # the transport closes: a half-closed client gets no answer

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.busy:
            self.busy = False
            self.server.waiting -= 1
        self.server.connections.discard(self)
        if not self.closed.done():
            self.closed.set_result(None)

    def abort(self) -> None:
        """Close the connection at once, a wait in progress included."""
        if self.transport is not None:
            self.transport.abort()

    def set_timer(self, delay: float, callback: Callable[[], object]) -> None:
        """Replace the connection's timer."""
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_later(delay, callback)

    def next_request(self) -> None:
        """Start the wait of the next complete request in the buffer, if there is one."""
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 and len(self.buffer) <= MAX_HEAD_BYTES:
            return
        if end < 0 or end + 4 > MAX_HEAD_BYTES:
            self.refuse(431, "request head too large")
            return
        head = bytes(self.buffer[: end + 4])
        del self.buffer[: end + 4]
        try:
            request = parse_head(head)
            ms = wait_ms(request)
        except BadRequest as exc:
            self.refuse(exc.status, str(exc))
            return
        self.busy = True
        self.server.requests += 1
        self.server.waiting += 1
        self.server.peak_waiting = max(self.server.peak_waiting, self.server.waiting)
        self.set_timer(ms / 1000, lambda: self.answer(ms, request.keep_alive))

    def answer(self, ms: int, keep_alive: bool) -> None:
        """End a wait: send the answer, then go on with the next request or close."""
        assert self.transport is not None
        self.busy = False
        self.server.waiting -= 1
        self.transport.write(render(200, {"service": "upstream", "ms": ms}, keep_alive))
        if not keep_alive:
            self.transport.close()
            return
        self.set_timer(IDLE_TIMEOUT, self.transport.close)
        self.transport.resume_reading()
        if self.buffer:
            self.next_request()

    def refuse(self, status: int, message: str) -> None:
        """Answer an error, then drop what the client still sends until it closes.

        Closing a socket with unread input makes the kernel send a reset, which can destroy
        the answer before the client reads it; half-closing first and draining the rest for
        a moment lets the answer arrive, as nginx's lingering close does.
        """
        assert self.transport is not None
        self.refusing = True
        self.buffer.clear()
        self.transport.write(render(status, {"error": message}, keep_alive=False))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.transport.resume_reading()
        self.set_timer(LINGER_SECONDS, self.transport.close)


class RunningUpstream:
    """An UpstreamServer on its own event loop in a daemon thread; `stop()` ends both."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = UpstreamServer(host, port)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="showcase-upstream", daemon=True)

    @property
    def url(self) -> str:
        """Return the server's base URL, e.g. http://127.0.0.1:40123/."""
        return self.server.url

    def start(self, timeout: float = 10.0) -> RunningUpstream:
        """Start the thread and return once the server listens."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"upstream server did not start within {timeout} s")
        if self._error is not None:
            self._thread.join(timeout)
            raise RuntimeError(f"upstream server failed to start: {self._error}")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Close the server and its connections, then end the loop and the thread."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.server.start())
        except BaseException as exc:  # handed to start() in the calling thread
            self._error = exc
            self._ready.set()
            self._loop.close()
            return
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(self.server.stop())
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    def __enter__(self) -> RunningUpstream:
        if not self._ready.is_set():
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_in_thread(host: str = "127.0.0.1", port: int = 0) -> RunningUpstream:
    """Start an upstream server in a background thread (port 0: a free one); return it."""
    return RunningUpstream(host, port).start()


def raise_open_files_limit() -> None:
    """Raise the soft open-files limit to the hard one: each waiting client holds a socket."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """Return the event loop factory for --loop (None: asyncio's default loop)."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise SystemExit("upstream: --loop uvloop needs uvloop installed") from None
        return None
    # Measured here, 4,000 clients waiting 1 s each: uvloop answered in 1.03 s, asyncio's
    # loop in 1.4 s on average: the loop itself becomes the bottleneck.
    return uvloop.new_event_loop


async def serve(host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT, then close every connection and return."""
    server = UpstreamServer(host, port)
    await server.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    # Printed, not only logged: a parent that asked for port 0 reads the port from this line.
    print(f"upstream listening on {server.url}", flush=True)
    logger.info("upstream event loop: %s", type(loop).__module__)
    await stopping.wait()
    await server.stop()
    logger.info("upstream stopped after %d requests", server.requests)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(
        prog="python -m apps.showcase.upstream",
        description="Answer GET /?ms=N after N milliseconds (a stand-in slow API).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8003, help="port to bind, 0 for any (8003)")
    parser.add_argument(
        "--loop",
        choices=["auto", "asyncio", "uvloop"],
        default="auto",
        help="event loop: uvloop when installed (auto), or the standard library's",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    raise_open_files_limit()
    try:
        with asyncio.Runner(loop_factory=loop_factory(args.loop)) as runner:
            runner.run(serve(args.host, args.port))
    except OSError as exc:
        print(f"upstream: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
