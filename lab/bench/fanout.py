"""Fan-out: events published once, delivered to N WebSocket and N SSE clients at once.

The server holds the clients; the harness publishes straight into the channel layer (Redis
pub/sub, the layer project/settings.py picks with REDIS_URL) as a view or a task would, each
event stamped with the wall-clock time it was sent, and every client records how long each
event took to reach it. One asyncio process (uvloop) holds every client and the publisher:
WebSockets through the `websockets` client (no pings of its own, permessage-deflate offered
as browsers do), SSE on raw sockets as lab.bench.sse. The rate steps up (10, 50, 100, 200
events/s by default) and stops after the first step the clients no longer keep up with, so a
saturated server is measured once, not buried under a backlog. Everything is bounded: the
connections by a deadline, each step by its length plus a drain.

The client reports its own CPU use per step: near 100% of its core, the client may be what is
late, and the report says so beside the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import uvloop

from lab.bench.sse import HEAD_LIMIT, READ_BYTES, ChunkedDecoder, percentile

TRANSPORTS = ("websocket", "sse")
# What the fan-out subscribes to: the showcase's live feed, both transports on one group.
PATHS: dict[str, str] = {}
GROUP = ""
EVENT_TYPE = ""
# showcase:begin
PATHS = {"websocket": "/ws/live/", "sse": "/async/live/"}
GROUP = "live"  # apps/showcase/live.py LIVE_GROUP
EVENT_TYPE = "live.event"  # apps/showcase/live.py LIVE_EVENT
# showcase:end
DEFAULT_RATES = (10, 50, 100, 200)
# An event later than this misses the target (p99 <= 100 ms at 2,000 clients, 10 events/s).
ON_TIME_MS = 100.0
# A step keeps up when this share of its deliveries arrived, and its p99 was on time.
KEEP_UP_SHARE = 0.99
# Handshakes in flight at once: a burst of 2,000 measures a reconnect storm, not holding them.
CONNECTING_AT_ONCE = 50
CONNECT_TIMEOUT_S = 60.0
# After a step: wait for the stragglers, until every delivery arrived or nothing has for
# DRAIN_QUIET_S (bounded). A saturated server on a shared CPU can pause for a second or more.
DRAIN_QUIET_S = 3.0
DRAIN_MAX_S = 15.0
# Clients per transport connected and closed before the resting memory is read: the first
# connections import and build what every later one shares (the WebSocket stack, the Redis
# connection), which is not a cost per connection.
WARMUP_CLIENTS = 10
# Time for the last subscriptions to reach Redis before the first event.
SETTLE_S = 1.0
CLOSE_TIMEOUT_S = 2.0


@dataclass
class Transport:
    """What the clients of one transport saw: connections, and latency per step."""

    name: str
    clients: int
    connected: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[int, list[float]] = field(default_factory=dict)
    last_arrival: float = 0.0
    last_by_step: dict[int, float] = field(default_factory=dict)

    def received(self, event: dict[str, Any], arrived: float) -> None:
        """Record one event's delivery (events of no step, the harness's own, are ignored)."""
        step = event.get("step")
        if isinstance(step, int) and isinstance(event.get("at"), float):
            self.latency_ms.setdefault(step, []).append((arrived - event["at"]) * 1000)
            self.last_arrival = self.last_by_step[step] = arrived

    def failed(self, reason: str) -> None:
        """Count a client that could not connect or lost its connection."""
        self.errors[reason] = self.errors.get(reason, 0) + 1


@dataclass
class Step:
    """One rate: what was published, and what each transport received of it."""

    rate: int
    published: int
    publish_s: float
    client_cpu_percent: float
    transports: dict[str, dict[str, Any]]
    server_cpu_s: float = 0.0

    @property
    def keeps_up(self) -> bool:
        """Return whether every transport got its deliveries, on time at the 99th percentile."""
        return all(
            figures["delivered_share"] >= KEEP_UP_SHARE and figures["p99_ms"] <= ON_TIME_MS
            for figures in self.transports.values()
        )

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        delivered = sum(figures["received"] for figures in self.transports.values())
        return {
            "rate": self.rate,
            "published": self.published,
            "publish_s": self.publish_s,
            "achieved_rate": self.published / self.publish_s if self.publish_s else 0.0,
            "client_cpu_percent": self.client_cpu_percent,
            "server_cpu_s": self.server_cpu_s,
            "server_cpu_us_per_delivery": 1e6 * self.server_cpu_s / delivered if delivered else 0.0,
            "keeps_up": self.keeps_up,
            "transports": self.transports,
        }


def step_figures(transport: Transport, step: int, published: int, started: float) -> dict[str, Any]:
    """Return one transport's figures for one step (every connected client expects every event).

    Deliveries per second: over the time from the step's first publish to its last delivery,
    the rate the server delivered at, whether it kept up or worked through a backlog.
    """
    latencies = transport.latency_ms.get(step, [])
    expected = published * transport.connected
    delivering_s = transport.last_by_step.get(step, started) - started
    return {
        "expected": expected,
        "received": len(latencies),
        "delivered_share": len(latencies) / expected if expected else 0.0,
        "events_per_s": len(latencies) / delivering_s if delivering_s > 0 else 0.0,
        "on_time_share": sum(ms <= ON_TIME_MS for ms in latencies) / expected if expected else 0.0,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies, default=0.0),
    }


async def websocket_client(
    url: str, origin: str, transport: Transport, connected: asyncio.Event
) -> None:
    """Hold one WebSocket until cancelled, recording every event it receives."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import WebSocketException
    from websockets.typing import Origin

    try:
        async with connect(
            url,
            origin=Origin(origin),
            proxy=None,
            ping_interval=None,
            open_timeout=CONNECT_TIMEOUT_S,
            close_timeout=CLOSE_TIMEOUT_S,
            max_queue=None,
        ) as socket:
            transport.connected += 1
            connected.set()
            async for message in socket:
                transport.received(json.loads(message), time.time())
    except (OSError, WebSocketException, TimeoutError, ValueError) as exc:
        transport.failed(type(exc).__name__)
    finally:
        connected.set()


async def sse_client(
    host: str, port: int, path: str, transport: Transport, connected: asyncio.Event
) -> None:
    """Hold one SSE stream until cancelled; subscribed once its first block (retry:) arrived."""
    writer: asyncio.StreamWriter | None = None
    try:
        reader, opened = await asyncio.wait_for(
            asyncio.open_connection(host, port), CONNECT_TIMEOUT_S
        )
        writer = opened
        opened.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode("latin-1")
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CONNECT_TIMEOUT_S)
        if len(head) > HEAD_LIMIT:
            raise ValueError("response head too large")
        status = int(head.split(b" ", 2)[1])
        if status != 200:
            transport.failed(f"HTTP {status}")
            return
        decoder = ChunkedDecoder() if b"chunked" in head.lower() else None
        pending = b""
        subscribed = False
        while True:
            data = await reader.read(READ_BYTES)
            if not data:
                transport.failed("closed")
                return
            arrived = time.time()
            pending += decoder.feed(data) if decoder else data
            *blocks, pending = pending.split(b"\n\n")
            if blocks and not subscribed:
                subscribed = True
                transport.connected += 1
                connected.set()
            for block in blocks:
                for line in block.split(b"\n"):
                    if line.startswith(b"data:"):
                        transport.received(json.loads(line[5:]), arrived)
    except (OSError, ValueError, IndexError, TimeoutError, asyncio.IncompleteReadError) as exc:
        transport.failed(type(exc).__name__)
    finally:
        connected.set()
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def connect_all(
    start: Callable[[asyncio.Event], Awaitable[None]], count: int, tasks: list[asyncio.Task[None]]
) -> None:
    """Start `count` clients, CONNECTING_AT_ONCE handshakes at a time (bounded by a deadline)."""
    gate = asyncio.Semaphore(CONNECTING_AT_ONCE)

    async def one() -> None:
        done = asyncio.Event()
        async with gate:
            tasks.append(asyncio.ensure_future(start(done)))
            await done.wait()

    await asyncio.wait_for(asyncio.gather(*(one() for _ in range(count))), CONNECT_TIMEOUT_S)


async def drain(transports: Sequence[Transport], published: dict[int, int]) -> None:
    """Wait until every client got every event of the steps `published` ({step: events}), or
    no event has arrived for DRAIN_QUIET_S; at most DRAIN_MAX_S."""
    deadline = time.time() + DRAIN_MAX_S
    while time.time() < deadline:
        complete = all(
            len(t.latency_ms.get(step, [])) >= count * t.connected
            for t in transports
            for step, count in published.items()
        )
        last = max((t.last_arrival for t in transports), default=0.0)
        if complete or time.time() - last >= DRAIN_QUIET_S:
            return
        await asyncio.sleep(0.1)


async def publish_step(layer: Any, index: int, rate: int, seconds: float) -> tuple[int, float]:
    """Publish `rate` events a second for `seconds`, each on its own schedule; return the count
    and how long publishing took (longer than `seconds`: the publisher fell behind)."""
    loop = asyncio.get_running_loop()
    count = max(1, round(rate * seconds))
    started = loop.time()
    run = uuid.uuid4().hex[:8]
    for number in range(count):
        delay = started + number / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        event = {
            "id": f"{run}-{number}",
            "kind": "bench",
            "text": f"fan-out step {index} event {number}",
            "source": "lab.bench",
            "step": index,
            "at": time.time(),
        }
        await layer.group_send(GROUP, {"type": EVENT_TYPE, "event": event})
    # Through the last event's own interval: on schedule, count / rate exactly.
    return count, loop.time() - started + 1 / rate


Snapshot = Callable[[], dict[str, Any]]
# The server's CPU seconds so far (every process of its tree).
CpuClock = Callable[[], float]


async def run_fanout(
    host: str,
    port: int,
    redis_url: str,
    clients: int,
    rates: Sequence[int],
    step_s: float,
    snapshot: Snapshot,
    server_cpu: CpuClock,
    on_step: Callable[[dict[str, Any]], None] = lambda step: None,
) -> dict[str, Any]:
    """Connect the clients (WebSockets, then SSE), step the rate up, return every figure.

    `snapshot()` returns the server's memory (called before, between and after connecting);
    `server_cpu()` its CPU seconds so far (read around each step).
    """
    # Untyped (no py.typed), as channels is; imported here, where the fan-out runs.
    from channels_redis.pubsub import RedisPubSubChannelLayer  # type: ignore[import-untyped]

    transports = {name: Transport(name, clients) for name in TRANSPORTS}
    tasks: list[asyncio.Task[None]] = []
    url = f"ws://{host}:{port}{PATHS['websocket']}"
    origin = f"http://{host}:{port}"
    layer = RedisPubSubChannelLayer(hosts=[redis_url])
    steps: list[dict[str, Any]] = []

    def websocket(into: Transport) -> Callable[[asyncio.Event], Awaitable[None]]:
        return lambda done: websocket_client(url, origin, into, done)

    def stream(into: Transport) -> Callable[[asyncio.Event], Awaitable[None]]:
        return lambda done: sse_client(host, port, PATHS["sse"], into, done)

    try:
        warmup: list[asyncio.Task[None]] = []
        await connect_all(websocket(Transport("warm-up", 0)), WARMUP_CLIENTS, warmup)
        await connect_all(stream(Transport("warm-up", 0)), WARMUP_CLIENTS, warmup)
        for task in warmup:
            task.cancel()
        await asyncio.wait_for(asyncio.gather(*warmup, return_exceptions=True), 30)
        await asyncio.sleep(SETTLE_S)
        memory = {"rest": snapshot()}
        connect_started = time.monotonic()
        await connect_all(websocket(transports["websocket"]), clients, tasks)
        memory["websocket"] = snapshot()
        await connect_all(stream(transports["sse"]), clients, tasks)
        memory["sse"] = snapshot()
        connect_s = time.monotonic() - connect_started
        await asyncio.sleep(SETTLE_S)
        every: dict[int, int] = {}
        made: list[tuple[Step, float]] = []
        for index, rate in enumerate(rates):
            cpu_before, wall_before = time.process_time(), time.monotonic()
            server_before, started = server_cpu(), time.time()
            published, publish_s = await publish_step(layer, index, rate, step_s)
            every[index] = published
            await drain(list(transports.values()), {index: published})
            wall_s = time.monotonic() - wall_before
            step = Step(
                rate,
                published,
                publish_s,
                100.0 * (time.process_time() - cpu_before) / wall_s,
                {
                    name: step_figures(transport, index, published, started)
                    for name, transport in transports.items()
                },
                server_cpu() - server_before,
            )
            made.append((step, started))
            on_step(step.as_dict())
            if not step.keeps_up:
                break
        # The stragglers of a step that fell behind, counted where they belong, and the CPU
        # the server spent delivering them with the last step's.
        server_before = server_cpu()
        await drain(list(transports.values()), every)
        if made:
            made[-1][0].server_cpu_s += server_cpu() - server_before
        for index, (step, started) in enumerate(made):
            step.transports = {
                name: step_figures(transport, index, step.published, started)
                for name, transport in transports.items()
            }
            steps.append(step.as_dict())
        memory["end"] = snapshot()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
        with contextlib.suppress(Exception):
            await layer.flush()
    return {
        "clients": clients,
        "step_s": step_s,
        "rates": list(rates),
        "connect_s": connect_s,
        "connected": {name: t.connected for name, t in transports.items()},
        "errors": {name: t.errors for name, t in transports.items()},
        "memory": memory,
        "steps": steps,
    }


def run(
    host: str,
    port: int,
    redis_url: str,
    clients: int,
    rates: Sequence[int],
    step_s: float,
    snapshot: Snapshot,
    server_cpu: CpuClock,
    on_step: Callable[[dict[str, Any]], None] = lambda step: None,
) -> dict[str, Any]:
    """Run the fan-out on a fresh uvloop event loop (see run_fanout)."""
    return uvloop.run(
        run_fanout(host, port, redis_url, clients, rates, step_s, snapshot, server_cpu, on_step)
    )


def per_connection(memory: dict[str, Any], connected: dict[str, int]) -> dict[str, float]:
    """Return the workers' RSS added per connection of each transport, in bytes."""
    found = {}
    previous = memory["rest"]["workers_rss"]
    for name in TRANSPORTS:
        if name in memory and connected.get(name):
            found[name] = (memory[name]["workers_rss"] - previous) / connected[name]
            previous = memory[name]["workers_rss"]
    return found
