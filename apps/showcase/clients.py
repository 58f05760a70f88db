"""The HTTP clients of the upstream views: one sync client per process, one async per loop.

A client keeps a pool of keep-alive connections, so it is built once and reused: a new client
per request would pay a TCP handshake every time. The sync client is shared by every thread of
the process (httpx documents Client as shareable between threads). An AsyncClient belongs to
the event loop it first ran in: uvicorn has one loop per worker, but Django's test client and
`async_to_sync` (an async view under WSGI: one new loop per request) make new ones, so there is
one AsyncClient per running loop, closed as that loop ends. Clients are built on first use,
after gunicorn forked, so workers never share sockets.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import threading
import weakref
from typing import Any

import httpx
from django.conf import settings

# The sync client serves one worker's threads (gthread: a few dozen at most); the async
# client serves every concurrent request of a worker, so it gets a far larger pool.
SYNC_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=100)
ASYNC_LIMITS = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)

_sync_client: httpx.Client | None = None
_sync_lock = threading.Lock()
# Each loop's client, with the task that closes it when the loop ends.
_async_clients: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, tuple[httpx.AsyncClient, asyncio.Task[None]]
] = weakref.WeakKeyDictionary()


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


def async_client() -> httpx.AsyncClient:
    """Return the running loop's async client, creating it on first use in that loop."""
    loop = asyncio.get_running_loop()
    entry = _async_clients.get(loop)
    if entry is None:
        client = httpx.AsyncClient(**client_options(ASYNC_LIMITS))
        entry = client, loop.create_task(close_with_loop(loop, client))
        _async_clients[loop] = entry
    return entry[0]


async def close_with_loop(loop: asyncio.AbstractEventLoop, client: httpx.AsyncClient) -> None:
    """Wait until cancelled, then close `client` while its loop still runs.

    `asyncio.run` (used by uvicorn, asgiref's `async_to_sync` and so Django's test runner)
    cancels every remaining task before it closes the loop: this task's cancellation is the
    loop's last moment in which the client's connections can still be closed cleanly.
    """
    try:
        await loop.create_future()
    finally:
        entry = _async_clients.get(loop)
        if entry is not None and entry[0] is client:
            del _async_clients[loop]
        await client.aclose()


def close_sync_client() -> None:
    """Close the sync client's connections; the next call builds a new client."""
    global _sync_client
    with _sync_lock:
        client, _sync_client = _sync_client, None
    if client is not None:
        client.close()


async def aclose_async_client() -> None:
    """Close the running loop's async client now; the next call builds a new one."""
    entry = _async_clients.pop(asyncio.get_running_loop(), None)
    if entry is not None:
        client, closer = entry
        # A closer that never ran yet dies on cancel without reaching its finally: close here.
        closer.cancel()
        await client.aclose()


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
    """Ask the upstream to wait `ms` and return its JSON answer (async client)."""
    url, options = upstream_request(ms)
    try:
        response = await async_client().get(url, **options)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise failure(exc) from exc
    return interpret(response)
