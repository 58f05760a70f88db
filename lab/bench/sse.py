"""Long-lived connections: N Server-Sent Event clients at once, and how late their events are.

An asyncio client on raw sockets (throughput is not its job: one event per client per
interval). Each client asks for `events` events `interval_ms` apart; the view sends the first
at once, then one per interval. Event k (1-based) is due `(k - 1) * interval_ms` after the
first event arrived: its lateness is how far the server fell behind its own schedule while
holding every other stream. How long the first event took (connect, queue, Django) is
measured apart, as the time to first event. A client that never connects misses all its
events, and a missed event counts as late. Clients start spread over a ramp (a burst of
1,000 new streams at one instant measures a reconnect storm, not holding them); everything
is bounded by one deadline. The client runs on uvloop and reports its own CPU use, so a
client too busy to read on time is visible.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import uvloop

# Late by more than this, an event fails target 4 ("no more than 100 ms late").
ON_TIME_MS = 100.0
READ_BYTES = 65536
HEAD_LIMIT = 16384


@dataclass
class ClientResult:
    """What one client saw."""

    status: int = 0
    first_event_ms: float = 0.0
    lateness_ms: list[float] = field(default_factory=list)
    # Each event against the previous one: the delay added per event, without the drift.
    gap_lateness_ms: list[float] = field(default_factory=list)
    error: str = ""

    @property
    def connected(self) -> bool:
        """Return whether the stream started: a 200 and at least one event."""
        return self.status == 200 and bool(self.lateness_ms)


@dataclass
class SseResult:
    """What all clients of one run saw, with the figures of the report."""

    clients: int
    events: int
    interval_ms: int
    connected: int
    completed: int
    events_expected: int
    events_received: int
    on_time: int
    lateness_ms: dict[str, float]
    gap_lateness_ms: dict[str, float]
    first_event_ms: dict[str, float]
    statuses: dict[str, int]
    errors: dict[str, int]
    wall_s: float
    # The client's own CPU use: near 100% of its core, the client may be what is late.
    client_cpu_percent: float = 0.0
    ramp_s: float = 0.0

    @property
    def on_time_ratio(self) -> float:
        """Return the share of expected events that arrived no more than ON_TIME_MS late."""
        return self.on_time / self.events_expected if self.events_expected else 0.0

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict, the on-time ratio included."""
        data = dict(vars(self))
        data["on_time_ratio"] = self.on_time_ratio
        return data


def percentile(values: list[float], pct: float) -> float:
    """Return the `pct` percentile of `values` (nearest rank), 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


class ChunkedDecoder:
    """Decode an HTTP/1.1 chunked body incrementally; `feed` returns the payload bytes."""

    def __init__(self) -> None:
        self.buffer = b""
        self.remaining = 0  # bytes of the current chunk still to come
        self.trailing_crlf = False
        self.done = False

    def feed(self, data: bytes) -> bytes:
        """Return the body bytes contained in `data` (framing removed)."""
        self.buffer += data
        out = bytearray()
        while self.buffer and not self.done:
            if self.trailing_crlf:
                if len(self.buffer) < 2:
                    break
                self.buffer = self.buffer[2:]
                self.trailing_crlf = False
            elif self.remaining:
                piece = self.buffer[: self.remaining]
                out += piece
                self.buffer = self.buffer[len(piece) :]
                self.remaining -= len(piece)
                if not self.remaining:
                    self.trailing_crlf = True
            else:
                line, sep, rest = self.buffer.partition(b"\r\n")
                if not sep:
                    break
                size = int(line.split(b";")[0].strip() or b"0", 16)
                self.buffer = rest
                if size == 0:
                    self.done = True
                else:
                    self.remaining = size
        return bytes(out)


async def one_client(
    host: str,
    port: int,
    path: str,
    events: int,
    interval_ms: int,
    deadline: float,
    delay_s: float = 0.0,
) -> ClientResult:
    """Run one SSE client, `delay_s` after the others started, until its last event, an
    error or the deadline (loop time)."""
    result = ClientResult()
    writer: asyncio.StreamWriter | None = None
    # perf_counter, not loop.time(): uvloop's clock ticks in whole milliseconds.
    sent = first = previous = time.perf_counter()
    try:
        async with asyncio.timeout_at(deadline):
            await asyncio.sleep(delay_s)
            reader, writer = await asyncio.open_connection(host, port)
            sent = time.perf_counter()
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                "Accept: text/event-stream\r\n\r\n".encode("latin-1")
            )
            head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > HEAD_LIMIT:
                raise ValueError("response head too large")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            result.status = int(status_line.split(" ", 2)[1])
            if result.status != 200:
                return result
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in header_lines if line)
            }
            decoder = (
                ChunkedDecoder() if "chunked" in headers.get("transfer-encoding", "") else None
            )
            pending = b""
            while len(result.lateness_ms) < events:
                data = await reader.read(READ_BYTES)
                if not data:
                    break
                arrived = time.perf_counter()
                pending += decoder.feed(data) if decoder else data
                *complete, pending = pending.split(b"\n\n")
                for _ in complete:
                    if not result.lateness_ms:
                        first = previous = arrived
                        result.first_event_ms = (arrived - sent) * 1000
                    else:
                        gap_ms = (arrived - previous) * 1000
                        result.gap_lateness_ms.append(max(0.0, gap_ms - interval_ms))
                        previous = arrived
                    due = first + len(result.lateness_ms) * interval_ms / 1000
                    result.lateness_ms.append(max(0.0, (arrived - due) * 1000))
    except TimeoutError:
        result.error = "deadline"
    except (OSError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
        result.error = type(exc).__name__
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    return result


async def run_clients(
    host: str,
    port: int,
    path: str,
    clients: int,
    events: int,
    interval_ms: int,
    grace_s: float,
    ramp_s: float,
) -> SseResult:
    """Run `clients` SSE clients, their starts spread evenly over `ramp_s`; every one ends by
    its start plus the stream's length plus grace."""
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    cpu_before = time.process_time()
    deadline = loop.time() + ramp_s + (events - 1) * interval_ms / 1000 + grace_s
    results = await asyncio.gather(
        *(
            one_client(host, port, path, events, interval_ms, deadline, ramp_s * n / clients)
            for n in range(clients)
        )
    )
    wall_s = time.monotonic() - started
    summary = summarize(list(results), events, interval_ms, wall_s)
    summary.client_cpu_percent = 100.0 * (time.process_time() - cpu_before) / wall_s
    summary.ramp_s = ramp_s
    return summary


def summarize(
    results: list[ClientResult], events: int, interval_ms: int, wall_s: float
) -> SseResult:
    """Return the run's figures from what each client saw."""
    lateness = [late for result in results for late in result.lateness_ms]
    firsts = [result.first_event_ms for result in results if result.connected]
    gaps = [late for result in results for late in result.gap_lateness_ms]
    return SseResult(
        clients=len(results),
        events=events,
        interval_ms=interval_ms,
        connected=sum(result.connected for result in results),
        completed=sum(len(result.lateness_ms) >= events for result in results),
        events_expected=len(results) * events,
        events_received=len(lateness),
        on_time=sum(late <= ON_TIME_MS for late in lateness),
        lateness_ms={
            "p50": percentile(lateness, 50),
            "p99": percentile(lateness, 99),
            "max": max(lateness, default=0.0),
        },
        gap_lateness_ms={
            "p50": percentile(gaps, 50),
            "p99": percentile(gaps, 99),
            "max": max(gaps, default=0.0),
        },
        first_event_ms={
            "p50": percentile(firsts, 50),
            "p99": percentile(firsts, 99),
            "max": max(firsts, default=0.0),
        },
        statuses={str(k): v for k, v in sorted(Counter(r.status for r in results).items())},
        errors=dict(Counter(result.error for result in results if result.error)),
        wall_s=wall_s,
    )


def run(
    host: str,
    port: int,
    path: str,
    clients: int,
    events: int,
    interval_ms: int,
    grace_s: float = 5.0,
    ramp_s: float = 0.0,
) -> SseResult:
    """Run the clients on a fresh uvloop event loop (see run_clients)."""
    return uvloop.run(run_clients(host, port, path, clients, events, interval_ms, grace_s, ramp_s))
