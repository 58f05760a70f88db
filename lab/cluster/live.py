"""Live streams through the balancer: WebSocket and SSE clients on the client host, events
published through the balancer's WSGI entry, every delivery counted and timed.

::

    figures = fanout(cluster, clients=100, events=20)        # every client gets every event?
    figures = streams_during_kill(cluster, clients=20, ...)   # cut, reconnected, missed

The app hosts share one Redis (REDIS_URL): an event published by a WSGI worker on one host
reaches the clients held by the ASGI servers of every host, through the channel layer's
pub/sub. Each event's text carries the wall-clock time its POST was sent (hosts and client
share this machine's clock), so a client's delivery latency is the whole path: the POST through
nginx to a WSGI worker, Redis, an ASGI worker, nginx, the client.

The clients reconnect as a browser's would: SSE after the stream's `retry:` (3 s from the view),
with Last-Event-ID when the stream sent `id:` lines (the view sends none: its events carry
their id in the JSON, so a reconnected stream cannot ask for what it missed); WebSocket with a
backoff (0.1 s doubling to 2 s, jittered). Delivery is at most once: an event published while a
client is between two connections is lost to it; the layer keeps no history.

One asyncio loop on a thread moved into the client host's namespace holds every client and the
publisher; every wait is bounded by a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lab.bench.sse import HEAD_LIMIT, READ_BYTES, ChunkedDecoder, percentile
from lab.cluster import netns
from lab.cluster.cluster import BALANCER_PORT, REDIS_PORT, Cluster

TRANSPORTS = ("websocket", "sse")
# The showcase's live feed: the paths of its two transports and of its publish
# view, and the Redis channel its group lives on (channels_redis's pub/sub layer names a group
# "<prefix>__group__<name>"; the prefix is "asgi"). Without the showcase there is nothing to
# subscribe to, and `missing_reason` says so.
PATHS: dict[str, str] = {}
PUBLISH_PATH = ""
GROUP_CHANNEL = ""
# showcase:begin
PATHS = {"websocket": "/ws/live/", "sse": "/async/live/"}
PUBLISH_PATH = "/sync/publish/"
GROUP_CHANNEL = "asgi__group__live"
# showcase:end
# Every event of a run starts with this, then the run's id, the event's number and the time
# its POST was sent: "cluster-live <run> <number> <unix time>".
TAG = "cluster-live"
CONNECT_TIMEOUT_S = 10.0
# Handshakes in flight at once: the point is holding streams, not a reconnect storm.
CONNECTING_AT_ONCE = 25
# Every client connected (or failed) within this, or the run goes on with those that did.
CONNECT_ALL_S = 60.0
# Time for the last subscriptions to reach Redis before the first event.
SETTLE_S = 1.0
# After the last publish: until every client got every event, or none arrived for DRAIN_QUIET_S.
DRAIN_QUIET_S = 3.0
DRAIN_MAX_S = 15.0
# The reconnect delay of an SSE client until a stream says `retry:` (browsers pick ~3 s).
SSE_DEFAULT_RETRY_S = 3.0
WEBSOCKET_BACKOFF_FIRST_S = 0.1
WEBSOCKET_BACKOFF_MAX_S = 2.0
HTTP_TIMEOUT_S = 10.0


def missing_reason() -> str | None:
    """Return why the live scenarios cannot run here, or None when they can."""
    if not PATHS:
        return (
            "skipped: this project has no showcase, whose live feed (WebSocket and SSE) and "
            "publish view the live-stream scenarios subscribe and publish to"
        )
    return None


@dataclass
class Client:
    """What one client saw; times are offsets in seconds from the run's origin."""

    transport: str
    number: int
    # The app host (address) of each connection, in order.
    hosts: list[str] = field(default_factory=list)
    connected_at: list[float] = field(default_factory=list)
    dropped_at: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    # Event number -> latency in ms (the first delivery; a duplicate is counted apart).
    latency_ms: dict[int, float] = field(default_factory=dict)
    duplicates: int = 0
    # Wall-clock time of the last event received.
    last_arrival: float = 0.0
    # An SSE answer other than 200: a browser's EventSource gives up for good.
    gave_up: bool = False

    @property
    def host(self) -> str:
        """Return the app host of the current (or last) connection."""
        return self.hosts[-1] if self.hosts else ""

    def subscribed(self, host: str, at: float) -> None:
        self.hosts.append(host)
        self.connected_at.append(at)

    def receive(self, data: bytes | str, run: str, arrived: float) -> None:
        """Record one event of run `run` that arrived at wall-clock time `arrived` (anything
        else on the feed is ignored)."""
        try:
            text = json.loads(data).get("text", "")
            tag, run_id, number, sent = text.split(" ")
            if tag != TAG or run_id != run:
                return
            key, latency = int(number), (arrived - float(sent)) * 1000
        except (ValueError, AttributeError):
            return
        if key in self.latency_ms:
            self.duplicates += 1
        else:
            self.latency_ms[key] = latency
        self.last_arrival = arrived


def upstream_of(value: str | None) -> str:
    """Return the address of the app host in an X-Upstream header (the last one tried)."""
    return (value or "").split(",")[-1].strip().rpartition(":")[0]


def header_value(head: bytes, name: str) -> str:
    """Return the value of header `name` in a raw response head ("" when absent)."""
    prefix = name.lower().encode() + b":"
    for line in head.split(b"\r\n")[1:]:
        if line.lower().startswith(prefix):
            return line[len(prefix) :].strip().decode("latin-1")
    return ""


class Feed:
    """The clients and the publisher of one run, on one event loop in the client's namespace."""

    def __init__(self, address: str, port: int) -> None:
        self.address = address
        self.port = port
        self.run = uuid.uuid4().hex[:8]
        self.origin = time.time()
        self.clients: list[Client] = []
        self.tasks: list[asyncio.Task[None]] = []
        # Event number -> (status of its POST, WSGI host that answered, sent offset).
        self.published: dict[int, tuple[int, str, float]] = {}
        # How long each POST took to be answered, ms: a late event was often late leaving.
        self.publish_ms: list[float] = []
        self.csrf = ""

    def now(self) -> float:
        return time.time() - self.origin

    # --- Clients ----------------------------------------------------------------------------

    async def websocket(self, client: Client, reconnect: bool, ready: asyncio.Event) -> None:
        """Hold a WebSocket on the live feed; reconnect with a jittered backoff if asked."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import WebSocketException
        from websockets.typing import Origin

        url = f"ws://{self.address}:{self.port}{PATHS['websocket']}"
        delay = WEBSOCKET_BACKOFF_FIRST_S
        while True:
            held = False
            try:
                async with connect(
                    url,
                    # The app refuses a handshake whose Origin is not one of ALLOWED_HOSTS.
                    origin=Origin(f"http://{self.address}"),
                    proxy=None,
                    ping_interval=None,
                    open_timeout=CONNECT_TIMEOUT_S,
                    close_timeout=1,
                    max_queue=None,
                ) as socket:
                    # The consumer joined the group before it accepted: subscribed now.
                    headers = socket.response.headers if socket.response else {}
                    client.subscribed(upstream_of(headers.get("X-Upstream")), self.now())
                    held, delay = True, WEBSOCKET_BACKOFF_FIRST_S
                    ready.set()
                    async for message in socket:
                        client.receive(message, self.run, time.time())
                client.errors["closed"] += 1
            except (OSError, WebSocketException, TimeoutError) as exc:
                client.errors[type(exc).__name__] += 1
            finally:
                ready.set()
            if held:
                client.dropped_at.append(self.now())
            if not reconnect:
                return
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311  (jitter)
            delay = min(2 * delay, WEBSOCKET_BACKOFF_MAX_S)

    async def sse(self, client: Client, reconnect: bool, ready: asyncio.Event) -> None:
        """Hold an SSE stream on the live feed; reconnect as an EventSource does if asked:
        after `retry:`, sending Last-Event-ID when the stream gave ids, and never after an
        answer other than 200."""
        retry_s = SSE_DEFAULT_RETRY_S
        last_id = ""
        while True:
            held = False
            writer: asyncio.StreamWriter | None = None
            try:
                reader, opened = await asyncio.wait_for(
                    asyncio.open_connection(self.address, self.port), CONNECT_TIMEOUT_S
                )
                writer = opened
                resume = f"Last-Event-ID: {last_id}\r\n" if last_id else ""
                opened.write(
                    f"GET {PATHS['sse']} HTTP/1.1\r\nHost: {self.address}\r\n"
                    f"Accept: text/event-stream\r\n{resume}\r\n".encode("latin-1")
                )
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CONNECT_TIMEOUT_S)
                if len(head) > HEAD_LIMIT:
                    raise ValueError("response head too large")
                status = int(head.split(b" ", 2)[1])
                if status != 200:
                    client.errors[f"HTTP {status}"] += 1
                    client.gave_up = True
                    return
                host = upstream_of(header_value(head, "X-Upstream"))
                decoder = ChunkedDecoder() if b"chunked" in head.lower() else None
                pending = b""
                while data := await reader.read(READ_BYTES):
                    arrived = time.time()
                    pending += decoder.feed(data) if decoder else data
                    *blocks, pending = pending.split(b"\n\n")
                    if blocks and not held:
                        # The view joined the group before its first block (retry:) left.
                        held = True
                        client.subscribed(host, arrived - self.origin)
                        ready.set()
                    for block in blocks:
                        for line in block.split(b"\n"):
                            field_name, _, value = line.partition(b":")
                            value = value.removeprefix(b" ")
                            if field_name == b"data":
                                client.receive(value, self.run, arrived)
                            elif field_name == b"id":
                                last_id = value.decode("utf-8", errors="replace")
                            elif field_name == b"retry" and value.isdigit():
                                retry_s = int(value) / 1000
                client.errors["closed"] += 1
            except (OSError, ValueError, IndexError, TimeoutError) as exc:
                client.errors[type(exc).__name__] += 1
            finally:
                ready.set()
                if writer is not None:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
            if held:
                client.dropped_at.append(self.now())
            if not reconnect:
                return
            await asyncio.sleep(retry_s)

    async def connect(self, clients: int, reconnect: bool) -> float:
        """Start `clients` of each transport, CONNECTING_AT_ONCE at a time; return once each
        subscribed or failed (bounded by CONNECT_ALL_S). Return how long it took."""
        gate = asyncio.Semaphore(CONNECTING_AT_ONCE)
        started = time.monotonic()
        runners: dict[str, Callable[[Client, bool, asyncio.Event], Awaitable[None]]] = {
            "websocket": self.websocket,
            "sse": self.sse,
        }

        async def one(client: Client) -> None:
            ready = asyncio.Event()
            async with gate:
                run = runners[client.transport](client, reconnect, ready)
                self.tasks.append(asyncio.ensure_future(run))
                await ready.wait()

        new = [Client(name, number) for name in TRANSPORTS for number in range(clients)]
        self.clients += new
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(one(c) for c in new)), CONNECT_ALL_S)
        return time.monotonic() - started

    async def close(self) -> None:
        """Cancel every client (bounded)."""
        for task in self.tasks:
            task.cancel()
        await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), 30)

    # --- HTTP and Redis ---------------------------------------------------------------------

    async def http(
        self, method: str, path: str, headers: dict[str, str], body: bytes = b""
    ) -> tuple[int, bytes]:
        """Send one request on a connection of its own; return (status, head)."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.address, self.port), HTTP_TIMEOUT_S
        )
        try:
            lines = [f"{method} {path} HTTP/1.1", f"Host: {self.address}", "Connection: close"]
            lines += [f"{name}: {value}" for name, value in headers.items()]
            if body:
                lines.append(f"Content-Length: {len(body)}")
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            answer = await asyncio.wait_for(reader.read(), HTTP_TIMEOUT_S)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        head = answer.partition(b"\r\n\r\n")[0]
        return int(head.split(b" ", 2)[1]), head

    async def fetch_csrf(self) -> None:
        """GET the publish view once: it sets the csrftoken cookie the POST must echo."""
        _, head = await self.http("GET", PUBLISH_PATH, {})
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"set-cookie: csrftoken="):
                self.csrf = line.split(b"=", 1)[1].split(b";")[0].decode("latin-1")
        if not self.csrf:
            raise RuntimeError(f"GET {PUBLISH_PATH} set no csrftoken cookie:\n{head!r}")

    async def publish(self, number: int) -> None:
        """POST event `number` through the balancer (WSGI on some app host); record its answer."""
        sent = self.now()
        text = f"{TAG} {self.run} {number} {time.time():.6f}"
        try:
            status, head = await self.http(
                "POST",
                PUBLISH_PATH,
                {
                    "Content-Type": "application/json",
                    "Cookie": f"csrftoken={self.csrf}",
                    "X-CSRFToken": self.csrf,
                },
                json.dumps({"text": text}).encode(),
            )
            host = upstream_of(header_value(head, "X-Upstream"))
        except (OSError, ValueError, IndexError, TimeoutError):
            status, host = 0, ""
        self.published[number] = (status, host, sent)
        self.publish_ms.append((self.now() - sent) * 1000)

    async def publish_every(self, interval_s: float, until: float, first: int = 0) -> None:
        """Publish one event every `interval_s` (each on its own schedule) until offset `until`."""
        number, start = first, self.now()
        while (due := start + (number - first) * interval_s) < until:
            await asyncio.sleep(max(0.0, due - self.now()))
            await self.publish(number)
            number += 1

    def acknowledged(self) -> list[int]:
        """Return the numbers of the events whose POST was answered 202."""
        return sorted(n for n, (status, _, _) in self.published.items() if status == 202)

    async def drain(self, clients: Sequence[Client]) -> None:
        """Wait until `clients` got every acknowledged event, or none arrived for a while."""
        expected = set(self.acknowledged())
        started = time.time()
        deadline = time.monotonic() + DRAIN_MAX_S
        while time.monotonic() < deadline:
            if all(expected <= c.latency_ms.keys() for c in clients):
                return
            last = max([started, *(c.last_arrival for c in clients)])
            if time.time() - last >= DRAIN_QUIET_S:
                return
            await asyncio.sleep(0.1)

    async def subscriptions(self, redis_address: str) -> int:
        """Return Redis's count of subscriptions to the live group's channel: one per ASGI
        worker process holding at least one client (the layer shares one per process)."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(redis_address, REDIS_PORT), HTTP_TIMEOUT_S
        )
        try:
            words = ["PUBSUB", "NUMSUB", GROUP_CHANNEL]
            command = f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
            writer.write(command.encode())
            answer = b""
            while not answer.endswith(b"\r\n") or b":" not in answer:
                answer += await asyncio.wait_for(reader.read(512), HTTP_TIMEOUT_S)
            return int(answer.rpartition(b":")[2])
        finally:
            writer.close()


def in_client_host(cluster: Cluster, body: Callable[[Feed], Awaitable[dict[str, Any]]]) -> Any:
    """Run `body(feed)` on a fresh event loop on a thread inside the client host's namespace."""

    async def main() -> dict[str, Any]:
        feed = Feed(cluster.balancer_address, BALANCER_PORT)
        try:
            return await body(feed)
        finally:
            await feed.close()

    return netns.run_in_namespace(cluster.namespace("client"), lambda: asyncio.run(main()))


def delivery(clients: Sequence[Client], expected: Sequence[int]) -> dict[str, Any]:
    """Return the delivery figures of `clients` for the events `expected` (their numbers)."""
    subscribed = [c for c in clients if c.hosts]
    latencies = [c.latency_ms[n] for c in subscribed for n in expected if n in c.latency_ms]
    owed = len(expected) * len(subscribed)
    return {
        "clients": len(clients),
        "subscribed": len(subscribed),
        "per_host": dict(sorted(Counter(c.hosts[0] for c in subscribed).items())),
        "expected": owed,
        "received": len(latencies),
        "missing": owed - len(latencies),
        "duplicates": sum(c.duplicates for c in subscribed),
        "p50_ms": round(percentile(latencies, 50), 1),
        "p99_ms": round(percentile(latencies, 99), 1),
        "max_ms": round(max(latencies, default=0.0), 1),
        "errors": dict(sum((c.errors for c in clients), Counter())),
    }


def publish_figures(feed: Feed) -> dict[str, Any]:
    """Return what the publisher sent: statuses, and which WSGI hosts took the POSTs."""
    answers = feed.published.values()
    return {
        "published": len(feed.published),
        "statuses": dict(Counter(str(status) for status, _, _ in answers)),
        "wsgi_hosts": dict(sorted(Counter(host for _, host, _ in answers if host).items())),
        "post_p50_ms": round(percentile(feed.publish_ms, 50), 1),
        "post_max_ms": round(max(feed.publish_ms, default=0.0), 1),
    }


def fanout(cluster: Cluster, clients: int, events: int, interval_s: float = 0.25) -> dict[str, Any]:
    """Connect `clients` WebSocket and `clients` SSE clients through the balancer, publish
    `events` events through it, and return delivery and latency per transport."""

    async def body(feed: Feed) -> dict[str, Any]:
        await feed.fetch_csrf()
        connect_s = await feed.connect(clients, reconnect=False)
        await asyncio.sleep(SETTLE_S)
        numsub = await feed.subscriptions(cluster.address("redis"))
        await feed.publish_every(interval_s, feed.now() + events * interval_s)
        await feed.drain(feed.clients)
        expected = feed.acknowledged()
        return {
            "app_hosts": cluster.balanced_hosts,
            "clients_per_transport": clients,
            "events": events,
            "interval_s": interval_s,
            "connect_s": round(connect_s, 2),
            "redis_group_subscriptions": numsub,
            "publish": publish_figures(feed),
            "transports": {
                name: delivery([c for c in feed.clients if c.transport == name], expected)
                for name in TRANSPORTS
            },
        }

    result: dict[str, Any] = in_client_host(cluster, body)
    return result


def reconnection(
    clients: Sequence[Client], fault_at: float, expected: Sequence[int]
) -> dict[str, Any]:
    """Return, for `clients`, how many lost their stream after `fault_at`, how long each took
    to be subscribed again, and how many acknowledged events each missed."""
    cut = [c for c in clients if any(t >= fault_at for t in c.dropped_at)]
    gaps = []
    for client in cut:
        dropped = min(t for t in client.dropped_at if t >= fault_at)
        back = [t for t in client.connected_at if t > dropped]
        if back:
            gaps.append(back[0] - dropped)
    missed = [sum(n not in c.latency_ms for n in expected) for c in clients]
    return {
        "clients": len(clients),
        "cut": len(cut),
        "reconnected": len(gaps),
        "gave_up": sum(c.gave_up for c in clients),
        "reconnect_p50_s": round(percentile(gaps, 50), 2),
        "reconnect_max_s": round(max(gaps, default=0.0), 2),
        "missed_events_by_cut_clients": sum(
            m for c, m in zip(clients, missed, strict=True) if c in cut
        ),
        "missed_events_by_others": sum(
            m for c, m in zip(clients, missed, strict=True) if c not in cut
        ),
        "missed_per_cut_client_max": max(
            (m for c, m in zip(clients, missed, strict=True) if c in cut), default=0
        ),
    }


def streams_during_kill(
    cluster: Cluster,
    clients: int,
    duration_s: float,
    fault_at: float,
    interval_s: float = 0.1,
) -> dict[str, Any]:
    """Hold `clients` reconnecting streams of each transport while events are published every
    `interval_s`; SIGKILL the last app host's servers `fault_at` s into the publishing, and
    return who was cut, how fast each came back, and what each missed. The host is restarted
    afterwards."""
    victim = cluster.layout.app_hosts
    victim_address = cluster.address(f"app{victim}")

    async def body(feed: Feed) -> dict[str, Any]:
        await feed.fetch_csrf()
        await feed.connect(clients, reconnect=True)
        await asyncio.sleep(SETTLE_S)
        on_victim = {
            t: sum(c.host == victim_address for c in feed.clients if c.transport == t)
            for t in TRANSPORTS
        }
        started = feed.now()
        publishing = asyncio.ensure_future(feed.publish_every(interval_s, started + duration_s))
        await asyncio.sleep(fault_at)
        kill_at = feed.now()
        cluster.kill_app_host(victim)
        await asyncio.wait_for(publishing, duration_s + 2 * HTTP_TIMEOUT_S)
        await feed.drain(feed.clients)
        expected = feed.acknowledged()
        return {
            "victim": victim_address,
            "clients_per_transport": clients,
            "on_victim_at_kill": on_victim,
            "duration_s": duration_s,
            "kill_after_s": round(kill_at - started, 2),
            "interval_s": interval_s,
            "publish": publish_figures(feed),
            "transports": {
                name: {
                    **reconnection(
                        [c for c in feed.clients if c.transport == name], kill_at, expected
                    ),
                    "hosts_after": dict(
                        Counter(c.host for c in feed.clients if c.transport == name)
                    ),
                }
                for name in TRANSPORTS
            },
        }

    result: dict[str, Any] = in_client_host(cluster, body)
    cluster.restart_app_host(victim)
    return result
