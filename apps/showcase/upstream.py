"""A tiny asyncio HTTP/1.1 server that answers `GET /?ms=N` after N milliseconds.

It stands in for a slow API behind the showcase's upstream views: `python -m
apps.showcase.upstream --host 127.0.0.1 --port 8003`. Standard library only, so it starts with
no Django settings and costs the benchmark nothing but the wait itself. Each connection is a
task, so thousands of concurrent waits cost memory, not threads. Tests start it in a background
thread with `start_in_thread()`.
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
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

logger = logging.getLogger("apps.showcase.upstream")

MAX_MS = 60_000
# A request head larger than this is refused (431); real clients send a few hundred bytes.
MAX_HEAD_BYTES = 8192
# An idle keep-alive connection is closed after this long. Longer than httpx's default
# keepalive expiry (5 s), so the client, not the server, retires idle connections and never
# reuses one the server is closing.
IDLE_TIMEOUT = 75.0
# How long, and how much, a refused client may still send before the connection closes.
LINGER_SECONDS = 2.0
LINGER_MAX_BYTES = 1024 * 1024
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


async def refuse(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, status: int, message: str
) -> None:
    """Answer an error, then read and drop what the client still sends until it closes.

    Closing a socket with unread input makes the kernel send a reset, which can destroy the
    answer before the client reads it; half-closing first and draining the rest (briefly,
    boundedly) lets the answer arrive, as nginx's lingering close does.
    """
    writer.write(render(status, {"error": message}, keep_alive=False))
    await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(LINGER_SECONDS):
            for _ in range(LINGER_MAX_BYTES // MAX_HEAD_BYTES):
                if not await reader.read(MAX_HEAD_BYTES):
                    break


class UpstreamServer:
    """The server: `await start()`, `await stop()`; `waiting`/`peak_waiting` count waits."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.waiting = 0
        self.peak_waiting = 0
        self.requests = 0
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """Return the base URL, with the bound port once started."""
        return f"http://{self.host}:{self.port}/"

    async def start(self) -> None:
        """Listen on host:port (port 0 picks a free one, readable afterwards)."""
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, limit=MAX_HEAD_BYTES, backlog=BACKLOG
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and close every open connection, waits included."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._connections):
            task.cancel()
        # Python 3.11's Server.wait_closed() does not wait for open connections: do it here.
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while await self._answer_one(reader, writer):
                pass
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the client went away or idled out: nothing to answer
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; return whether the connection stays open."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT)
        except asyncio.LimitOverrunError:
            await refuse(reader, writer, 431, "request head too large")
            return False
        try:
            request = parse_head(head)
            ms = wait_ms(request)
        except BadRequest as exc:
            await refuse(reader, writer, exc.status, str(exc))
            return False
        self.requests += 1
        self.waiting += 1
        self.peak_waiting = max(self.peak_waiting, self.waiting)
        try:
            await asyncio.sleep(ms / 1000)
        finally:
            self.waiting -= 1
        writer.write(render(200, {"service": "upstream", "ms": ms}, request.keep_alive))
        await writer.drain()
        return request.keep_alive


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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    raise_open_files_limit()
    try:
        asyncio.run(serve(args.host, args.port))
    except OSError as exc:
        print(f"upstream: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
