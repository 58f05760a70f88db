# showcase: this file goes with the showcase (it drives the showcase's endpoints).
"""Slow clients on raw sockets, and a canary that times normal requests meanwhile.

Three bounded tools for the limit tests (tests/reliability/test_limits.py):

- slowloris(): N sockets that send a request line and then trickle one header line at a time,
  never ending the head, and record when (and how) the server closes each one;
- slow_body(): one request whose head is complete and whose body arrives in pieces with
  gaps between them, and what the server answers;
- canary(): sequential GETs on fresh connections while `keep_going()` is true, with latency
  percentiles and failures.

Run an attack in a thread and the canary in the caller, e.g.::

    with ThreadPoolExecutor(1) as pool:
        attack = pool.submit(slowloris, "127.0.0.1", port, count=300, duration=6.0)
        samples = canary(url, keep_going=lambda: not attack.done(), max_duration=10.0)
    result = attack.result()

Every loop is bounded both in iterations and in time; every socket is closed on the way out.
Standard library only, so a measurement never depends on an HTTP client's pooling.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import math
import selectors
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

# How a slow socket ended.
CLOSED_BY_PEER = "closed"  # recv() returned b"": the server closed it (FIN)
RESET_BY_PEER = "reset"  # ECONNRESET / EPIPE: the server reset it
STILL_OPEN = "open"  # alive when the attack's duration ran out (then closed by us)
NOT_CONNECTED = "refused"  # the connection itself failed

# Bounds: no single read buffers more than this from one slow socket.
MAX_KEPT_BYTES = 4096
RECV_SIZE = 4096


@dataclass
class SlowSocket:
    """One slow socket's fate: how it ended, when (s after connecting), what it received."""

    outcome: str = STILL_OPEN
    ended_after: float | None = None
    received: bytes = b""
    bytes_sent: int = 0


@dataclass
class SlowlorisResult:
    """What happened to every socket of a slowloris run."""

    sockets: list[SlowSocket]
    duration: float
    connect_time: float

    def count(self, outcome: str) -> int:
        """Return how many sockets ended with `outcome`."""
        return sum(1 for entry in self.sockets if entry.outcome == outcome)

    @property
    def ended_by_server(self) -> list[SlowSocket]:
        """Return the sockets the server closed or reset."""
        return [s for s in self.sockets if s.outcome in (CLOSED_BY_PEER, RESET_BY_PEER)]

    def close_times(self) -> list[float]:
        """Return, sorted, the seconds after connecting at which the server ended a socket."""
        return sorted(s.ended_after for s in self.ended_by_server if s.ended_after is not None)


@dataclass
class Latency:
    """Canary samples: latencies of the successful requests (s), and every failure."""

    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        """Return how many requests the canary made."""
        return len(self.latencies) + len(self.failures)

    def percentile(self, fraction: float) -> float:
        """Return the nearest-rank percentile of the latencies (`fraction` in 0..1); NaN if none."""
        if not self.latencies:
            return math.nan
        ordered = sorted(self.latencies)
        rank = max(1, math.ceil(fraction * len(ordered)))
        return ordered[rank - 1]

    def summary(self) -> dict[str, float]:
        """Return requests, failures and p50/p90/p99/max latency in milliseconds."""
        return {
            "requests": float(self.requests),
            "failures": float(len(self.failures)),
            "p50_ms": self.percentile(0.50) * 1000,
            "p90_ms": self.percentile(0.90) * 1000,
            "p99_ms": self.percentile(0.99) * 1000,
            "max_ms": (max(self.latencies) if self.latencies else math.nan) * 1000,
        }

    def describe(self) -> str:
        """Return the summary as one line, for messages and reports."""
        s = self.summary()
        return (
            f"{int(s['requests'])} requests, {int(s['failures'])} failed, "
            f"p50 {s['p50_ms']:.1f} ms, p90 {s['p90_ms']:.1f} ms, "
            f"p99 {s['p99_ms']:.1f} ms, max {s['max_ms']:.1f} ms"
        )


def _connect_all(
    host: str, port: int, count: int, deadline: float
) -> tuple[list[socket.socket | None], list[SlowSocket]]:
    """Open `count` blocking-connected sockets (non-blocking after); None where it failed."""
    opened: list[socket.socket | None] = []
    fates: list[SlowSocket] = []
    for _ in range(count):
        fate = SlowSocket()
        fates.append(fate)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            fate.outcome = NOT_CONNECTED
            opened.append(None)
            continue
        try:
            sock = socket.create_connection((host, port), timeout=min(remaining, 5.0))
        except OSError as exc:
            fate.outcome = NOT_CONNECTED
            fate.received = str(exc).encode()[:MAX_KEPT_BYTES]
            opened.append(None)
            continue
        sock.setblocking(False)
        opened.append(sock)
    return opened, fates


def _send(sock: socket.socket, fate: SlowSocket, data: bytes, started: float) -> bool:
    """Send `data` without blocking; record a reset; return whether the socket is still usable."""
    try:
        fate.bytes_sent += sock.send(data)
    except BlockingIOError:
        return True  # the server does not read: the trickle simply waits
    except OSError as exc:
        if exc.errno in (errno.ECONNRESET, errno.EPIPE):
            fate.outcome = RESET_BY_PEER
            fate.ended_after = time.monotonic() - started
            return False
        raise
    return True


def _drain(sock: socket.socket, fate: SlowSocket, started: float) -> bool:
    """Read what the server sent; return whether the socket is still open."""
    for _ in range(16):  # a bounded number of reads per wake-up
        try:
            chunk = sock.recv(RECV_SIZE)
        except BlockingIOError:
            return True
        except ConnectionResetError:
            fate.outcome = RESET_BY_PEER
            fate.ended_after = time.monotonic() - started
            return False
        if not chunk:
            fate.outcome = CLOSED_BY_PEER
            fate.ended_after = time.monotonic() - started
            return False
        fate.received = (fate.received + chunk)[:MAX_KEPT_BYTES]
    return True


def slowloris(
    host: str,
    port: int,
    *,
    count: int,
    duration: float,
    interval: float = 0.5,
    path: str = "/",
    host_header: str = "127.0.0.1",
    connect_timeout: float = 10.0,
    connected: threading.Event | None = None,
    body_length: int = 0,
) -> SlowlorisResult:
    """Open `count` sockets that trickle a request head for at most `duration` s; return fates.

    Each socket sends `GET path HTTP/1.1` and a Host line at once, then one more header line
    every `interval` s, never the blank line that ends the head. With `body_length` > 0 each
    sends instead a complete `POST` head announcing that many body bytes, then one body byte
    every `interval` s (a slow POST), never completing the body. A socket the server closes
    (or resets) is recorded with the time since the attack's sockets were all connected; the
    rest are closed by us when `duration` runs out, or earlier once the server ended them all.
    `connected` is set once every socket has sent its first bytes (so a canary can start then).
    """
    if count < 1 or duration <= 0 or interval <= 0:
        raise ValueError("count, duration and interval must be positive")
    connect_started = time.monotonic()
    socks, fates = _connect_all(host, port, count, connect_started + connect_timeout)
    started = time.monotonic()
    deadline = started + duration
    if body_length > 0:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host_header}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {body_length}\r\n\r\n"
        ).encode()
    else:
        head = f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\n".encode()
    selector = selectors.DefaultSelector()
    live: dict[int, int] = {}  # fileno -> index
    try:
        for index, sock in enumerate(socks):
            if sock is None:
                continue
            if _send(sock, fates[index], head, started):
                selector.register(sock, selectors.EVENT_READ, index)
                live[sock.fileno()] = index
        if connected is not None:
            connected.set()
        next_trickle = started + interval
        line = 0
        # At most one wake-up per event or per trickle tick: bounded by the two counts below.
        max_wakeups = count * 4 + int(duration / interval) * 2 + 16
        for _ in range(max_wakeups):
            now = time.monotonic()
            if now >= deadline or not live:
                break
            timeout = max(0.0, min(next_trickle, deadline) - now)
            for key, _events in selector.select(timeout):
                index = key.data
                sock = socks[index]
                assert sock is not None
                if not _drain(sock, fates[index], started):
                    selector.unregister(sock)
                    live.pop(sock.fileno(), None)
            if time.monotonic() >= next_trickle:
                line += 1
                if body_length > 0:
                    trickle = b"a" if line < body_length else b""
                else:
                    trickle = f"X-Trickle-{line}: {line}\r\n".encode()
                for index in list(live.values()):
                    sock = socks[index]
                    assert sock is not None
                    if not _send(sock, fates[index], trickle, started):
                        selector.unregister(sock)
                        live.pop(sock.fileno(), None)
                next_trickle += interval
    finally:
        selector.close()
        for sock in socks:
            if sock is not None:
                sock.close()
    return SlowlorisResult(
        sockets=fates, duration=time.monotonic() - started, connect_time=started - connect_started
    )


@dataclass
class SlowBodyResult:
    """What a slow body got: the server's first response line (if any), how and when it ended."""

    status_line: str
    outcome: str
    ended_after: float | None
    bytes_sent: int
    received: bytes


def slow_body(
    host: str,
    port: int,
    *,
    path: str,
    content_length: int,
    pieces: int,
    gap: float,
    max_wait: float,
    host_header: str = "127.0.0.1",
    content_type: str = "application/x-www-form-urlencoded",
) -> SlowBodyResult:
    """POST a body of `content_length` bytes, `pieces` pieces of one byte, `gap` s apart.

    The head is sent whole; then one body byte every `gap` s. Stop at the first sign of the
    server (an answer, a close or a reset) or after `max_wait` s, whichever comes first; the
    body is never completed unless `pieces` >= `content_length`.
    """
    if pieces < 0 or gap <= 0 or max_wait <= 0 or content_length < 1:
        raise ValueError("pieces >= 0; gap, max_wait and content_length positive")
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host_header}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {content_length}\r\n\r\n"
    ).encode()
    fate = SlowSocket()
    sock = socket.create_connection((host, port), timeout=5.0)
    started = time.monotonic()
    deadline = started + max_wait
    try:
        sock.setblocking(False)
        _send(sock, fate, head, started)
        sent_pieces = 0
        next_piece = started
        selector = selectors.DefaultSelector()
        try:
            selector.register(sock, selectors.EVENT_READ)
            max_wakeups = pieces * 2 + int(max_wait / gap) * 2 + 16
            for _ in range(max_wakeups):
                now = time.monotonic()
                if now >= deadline or fate.outcome != STILL_OPEN:
                    break
                if sent_pieces < pieces and now >= next_piece:
                    if not _send(sock, fate, b"a", started):
                        break
                    sent_pieces += 1
                    next_piece = now + gap
                    continue
                wake = deadline if sent_pieces >= pieces else min(next_piece, deadline)
                if selector.select(max(0.0, wake - now)) and not _drain(sock, fate, started):
                    break
                if fate.received and b"\r\n\r\n" in fate.received:
                    # An answer arrived: wait briefly for the close that should follow it.
                    _wait_close(sock, fate, started, min(deadline, time.monotonic() + 1.0))
                    break
        finally:
            selector.close()
    finally:
        sock.close()
    first_line = fate.received.split(b"\r\n", 1)[0].decode("latin-1") if fate.received else ""
    return SlowBodyResult(
        status_line=first_line,
        outcome=fate.outcome,
        ended_after=fate.ended_after,
        bytes_sent=fate.bytes_sent,
        received=fate.received,
    )


def _wait_close(sock: socket.socket, fate: SlowSocket, started: float, until: float) -> None:
    """Read until the server closes the socket or `until` passes."""
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        for _ in range(64):
            remaining = until - time.monotonic()
            if remaining <= 0:
                return
            if selector.select(remaining) and not _drain(sock, fate, started):
                return


def canary(
    url: str,
    *,
    keep_going: Callable[[], bool],
    max_duration: float,
    max_requests: int = 2000,
    pause: float = 0.02,
    timeout: float = 5.0,
    expect: int = 200,
) -> Latency:
    """GET `url` on a fresh connection, one at a time, while `keep_going()`; return latencies.

    A request is a failure when it raises or answers anything but `expect`. Stops after
    `max_duration` s or `max_requests` requests, whichever comes first; `pause` s between
    requests keep the canary a light, steady client rather than a load generator.
    """
    parts = urllib.parse.urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    samples = Latency()
    deadline = time.monotonic() + max_duration
    for _ in range(max_requests):
        if time.monotonic() >= deadline or not keep_going():
            break
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
        begun = time.perf_counter()
        try:
            connection.request("GET", target)
            response = connection.getresponse()
            response.read()
        except OSError as exc:  # a timeout, refusal or reset is what the canary reports
            samples.failures.append(f"{type(exc).__name__}: {exc}")
        except http.client.HTTPException as exc:
            samples.failures.append(f"{type(exc).__name__}: {exc}")
        else:
            elapsed = time.perf_counter() - begun
            samples.statuses[response.status] = samples.statuses.get(response.status, 0) + 1
            if response.status == expect:
                samples.latencies.append(elapsed)
            else:
                samples.failures.append(f"HTTP {response.status}")
        finally:
            with contextlib.suppress(OSError):
                connection.close()
        time.sleep(pause)
    return samples
