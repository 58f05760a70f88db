"""The HTTP clients of the upstream views: one sync client per process, a few async per loop.

A client keeps a pool of keep-alive connections, so it is built once and reused: a new client
per request would pay a TCP handshake every time. The sync client is shared by every thread of
the process (httpx documents Client as shareable between threads). An AsyncClient belongs to
the event loop it first ran in: uvicorn has one loop per worker, but Django's test client and
`async_to_sync` (an async view under WSGI: one new loop per request) make new ones, so each
running loop has its own async clients, closed as that loop ends. Clients are built on first
use, after gunicorn forked, so workers never share sockets.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import threading
import weakref
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import httpx
from django.conf import settings

# The sync client serves one worker's threads: a few dozen concurrent requests at most.
SYNC_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=100)

# httpcore's pool re-checks every connection for every queued request each time a request
# starts or ends (encode/httpx#3215, open). Counted here, calls to AsyncHTTPConnection.is_idle
# per request through one AsyncClient: 5 with 1 request in flight, 88 with 10, about 17,000
# with 100; with 1,000 the pool stalled into connect timeouts. So a loop spreads its requests
# over several small clients ("shards"), opening another only while every open one has
# SHARD_TARGET requests in flight: with 16 shards, 100 in flight cost 154 checks a request.
SHARD_TARGET = 8
MAX_SHARDS = 64
SHARD_LIMITS = httpx.Limits(max_connections=64, max_keepalive_connections=64)

_sync_client: httpx.Client | None = None
_sync_lock = threading.Lock()


class UpstreamFailure(Exception):
    """The upstream did not give a usable answer; `status` is what the view answers."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def timeout() -> httpx.Timeout:
    """Return the upstream timeout, read at each call so settings overrides apply."""
    return httpx.Timeout(settings.SHOWCASE_UPSTREAM_TIMEOUT)


@functools.cache
def tls_context() -> ssl.SSLContext:
    """Return the process's TLS context, shared by every client."""
    return httpx.create_ssl_context()


def client_options(limits: httpx.Limits) -> dict[str, Any]:
    """Return the options both clients are built with."""
    return {
        "limits": limits,
        "timeout": timeout(),
        # Loading the CA bundle costs ~45 ms per client: an async view under WSGI builds a
        # client per request (one loop each), so the context is built once and shared.
        "verify": tls_context(),
        # The upstream is a neighbour service, never reached through the HTTP(S)_PROXY a
        # developer machine may export.
        "trust_env": False,
    }


def sync_client() -> httpx.Client:
    """Return the process's sync client, creating it on first use."""
    global _sync_client
    if _sync_client is None:
        with _sync_lock:
            if _sync_client is None:
                _sync_client = httpx.Client(**client_options(SYNC_LIMITS))
    return _sync_client


@dataclass(eq=False)
class Shard:
    """One of a loop's async clients and the requests it has in flight."""

    client: httpx.AsyncClient
    in_flight: int = 0


class LoopClients:
    """The async clients of one event loop, closed when that loop ends."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.shards: list[Shard] = []
        self.closer = loop.create_task(self.close_with_loop())

    def pick(self) -> Shard:
        """Return the least busy shard, opening a new one while all are at SHARD_TARGET."""
        shard = min(self.shards, key=attrgetter("in_flight"), default=None)
        if shard is None or (shard.in_flight >= SHARD_TARGET and len(self.shards) < MAX_SHARDS):
            shard = Shard(httpx.AsyncClient(**client_options(SHARD_LIMITS)))
            self.shards.append(shard)
        return shard

    async def get(self, url: str, **options: Any) -> httpx.Response:
        """Send a GET through the least busy shard."""
        shard = self.pick()
        shard.in_flight += 1
        try:
            return await shard.client.get(url, **options)
        finally:
            shard.in_flight -= 1

    async def aclose(self) -> None:
        """Close every shard now and forget this loop's clients."""
        if _loop_clients.get(self.loop) is self:
            del _loop_clients[self.loop]
        if self.closer is not asyncio.current_task():
            # A closer that never ran dies on cancel without reaching its finally: close here.
            self.closer.cancel()
        for shard in self.shards:
            await shard.client.aclose()

    async def close_with_loop(self) -> None:
        """Wait until cancelled, then close the shards while the loop still runs.

        `asyncio.run` (used by uvicorn, asgiref's `async_to_sync` and so Django's test
        runner) cancels every remaining task before it closes the loop: this task's
        cancellation is the last moment the clients' connections can be closed cleanly.
        """
        try:
            await self.loop.create_future()
        finally:
            await self.aclose()


_loop_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopClients] = (
    weakref.WeakKeyDictionary()
)


def loop_clients() -> LoopClients:
    """Return the running loop's async clients, created on first use in that loop."""
    loop = asyncio.get_running_loop()
    clients = _loop_clients.get(loop)
    if clients is None:
        clients = _loop_clients[loop] = LoopClients(loop)
    return clients


def close_sync_client() -> None:
    """Close the sync client's connections; the next call builds a new client."""
    global _sync_client
    with _sync_lock:
        client, _sync_client = _sync_client, None
    if client is not None:
        client.close()


async def aclose_loop_clients() -> None:
    """Close the running loop's async clients now; the next call builds new ones."""
    clients = _loop_clients.get(asyncio.get_running_loop())
    if clients is not None:
        await clients.aclose()


def upstream_request(ms: int) -> tuple[str, dict[str, Any]]:
    """Return the URL and per-request options of a call asking the upstream to wait `ms`."""
    return settings.SHOWCASE_UPSTREAM_URL, {"params": {"ms": ms}, "timeout": timeout()}


def interpret(response: httpx.Response) -> Any:
    """Return the upstream's JSON answer, or raise UpstreamFailure (502) for anything else."""
    if response.status_code != 200:
        raise UpstreamFailure(502, f"upstream answered {response.status_code}")
    try:
        return response.json()
    except ValueError:
        raise UpstreamFailure(502, "upstream answered something that is not JSON") from None


def failure(exc: Exception) -> UpstreamFailure:
    """Return the UpstreamFailure for an httpx exception (a timeout is a 504)."""
    if isinstance(exc, httpx.PoolTimeout):
        # No connection came free in time: this worker is saturated, the upstream may be fine.
        return UpstreamFailure(503, "no upstream connection free in time")
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamFailure(
            504, f"upstream timed out after {settings.SHOWCASE_UPSTREAM_TIMEOUT} s"
        )
    return UpstreamFailure(502, f"upstream unreachable: {type(exc).__name__}")


def fetch_upstream(ms: int) -> Any:
    """Ask the upstream to wait `ms` and return its JSON answer (sync client)."""
    url, options = upstream_request(ms)
    try:
        response = sync_client().get(url, **options)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise failure(exc) from exc
    return interpret(response)


async def afetch_upstream(ms: int) -> Any:
    """Ask the upstream to wait `ms` and return its JSON answer (the loop's async clients)."""
    url, options = upstream_request(ms)
    try:
        response = await loop_clients().get(url, **options)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise failure(exc) from exc
    return interpret(response)
