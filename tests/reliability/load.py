"""A small bounded load generator for the fault tests: per-request outcomes, not throughput.

Threads with http.client send GET requests to one loopback address until a fixed count is
sent or a fixed duration has passed, whichever comes first, and record for each request its
status (or the error), when it started, when its connection was open and when it ended::

    with BackgroundLoad(port, "/sync/hello/", concurrency=8, max_seconds=5) as load:
        time.sleep(1)
        server.send_signal(signal.SIGHUP)
    result = load.result
    assert result.failures() == []

wrk is not used here: it reports counts of socket errors, not which request failed and when,
and a fault test must tell a request lost in flight from one refused after shutdown began.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from types import TracebackType

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Outcome:
    """One request: its status or error, and its times (time.monotonic())."""

    started: float
    # When the TCP connection was open (the kernel accepted it): None if connect failed.
    connected: float | None
    ended: float
    status: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Return whether the request got a 2xx answer."""
        return self.status is not None and 200 <= self.status < 300

    def in_flight_at(self, moment: float) -> bool:
        """Return whether the request was in flight at `moment`: connected, not yet ended."""
        return self.connected is not None and self.connected < moment < self.ended


@dataclass
class LoadResult:
    """Every outcome of one load run, in the order the requests ended."""

    outcomes: list[Outcome] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0

    @property
    def sent(self) -> int:
        """Return how many requests were attempted."""
        return len(self.outcomes)

    def statuses(self) -> Counter[int]:
        """Return how many answers came with each HTTP status."""
        return Counter(o.status for o in self.outcomes if o.status is not None)

    def errors(self) -> Counter[str]:
        """Return how many requests ended in each kind of error (no HTTP answer)."""
        return Counter(o.error for o in self.outcomes if o.error is not None)

    def failures(self) -> list[Outcome]:
        """Return the requests without a 2xx answer."""
        return [o for o in self.outcomes if not o.ok]

    def summary(self) -> str:
        """Return a one-line account, for assertion messages and the figures."""
        seconds = max(self.ended - self.started, 1e-9)
        return (
            f"sent={self.sent} ok={self.sent - len(self.failures())} "
            f"statuses={dict(self.statuses())} errors={dict(self.errors())} "
            f"in {seconds:.1f} s ({self.sent / seconds:.0f} req/s)"
        )


def describe(exc: BaseException) -> str:
    """Return an error's kind, stable across runs: the class name and errno when it has one."""
    errno = getattr(exc, "errno", None)
    return f"{type(exc).__name__}({errno})" if errno else type(exc).__name__


class BackgroundLoad:
    """GET `path` on 127.0.0.1:`port` from `concurrency` threads until stopped or bounded.

    Bounds: `max_requests` in all, `max_seconds` of wall time, whichever comes first; `stop()`
    ends it earlier. `keepalive=False` opens a new connection per request (what a request
    "in flight" means is then exact: connected, not yet answered); `keepalive=True` reuses one
    connection per thread and opens a new one after an error or a close by the server.
    """

    def __init__(
        self,
        port: int,
        path: str,
        *,
        concurrency: int,
        max_requests: int = 1_000_000,
        max_seconds: float = 10.0,
        timeout: float = 30.0,
        keepalive: bool = False,
        host_header: str = "localhost",
    ) -> None:
        self.port = port
        self.path = path
        self.concurrency = concurrency
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.timeout = timeout
        self.keepalive = keepalive
        self.host_header = host_header
        self.result = LoadResult()
        self._tickets = itertools.count()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._deadline = 0.0

    def start(self) -> BackgroundLoad:
        """Start the threads; return at once."""
        self.result.started = time.monotonic()
        self._deadline = self.result.started + self.max_seconds
        self._threads = [
            threading.Thread(target=self._run, name=f"load-{index}", daemon=True)
            for index in range(self.concurrency)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> LoadResult:
        """Stop sending, wait for the requests in flight to end, and return the result."""
        self._stop.set()
        for thread in self._threads:
            # Each thread ends after its current request, which its own timeout bounds.
            thread.join(timeout=self.timeout + 5)
        self.result.ended = time.monotonic()
        return self.result

    def wait(self) -> LoadResult:
        """Wait until the count or the duration is reached, then return the result."""
        for thread in self._threads:
            thread.join(timeout=self.max_seconds + self.timeout + 5)
        return self.stop()

    def __enter__(self) -> BackgroundLoad:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _more(self) -> bool:
        """Return whether another request may start, and take its ticket."""
        if self._stop.is_set() or time.monotonic() >= self._deadline:
            return False
        return next(self._tickets) < self.max_requests

    def _record(self, outcome: Outcome) -> None:
        with self._lock:
            self.result.outcomes.append(outcome)

    def _run(self) -> None:
        connection: http.client.HTTPConnection | None = None
        try:
            while self._more():
                if connection is None:
                    connection = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout)
                connection, outcome = self._one(connection)
                self._record(outcome)
        finally:
            if connection is not None:
                connection.close()

    def _one(
        self, connection: http.client.HTTPConnection
    ) -> tuple[http.client.HTTPConnection | None, Outcome]:
        """Send one request on `connection`; return the connection to reuse (or None)."""
        started = time.monotonic()
        connected: float | None = started if connection.sock is not None else None
        headers = {"Host": self.host_header}
        if not self.keepalive:
            headers["Connection"] = "close"
        try:
            if connection.sock is None:
                connection.connect()
                connected = time.monotonic()
            connection.request("GET", self.path, headers=headers)
            response = connection.getresponse()
            response.read()
            status = response.status
            reusable = self.keepalive and not response.will_close
        except (OSError, http.client.HTTPException) as exc:  # the outcome under test
            with contextlib.suppress(OSError):
                connection.close()
            return None, Outcome(started, connected, time.monotonic(), error=describe(exc))
        if not reusable:
            connection.close()
        return (connection if reusable else None), Outcome(
            started, connected, time.monotonic(), status=status
        )
