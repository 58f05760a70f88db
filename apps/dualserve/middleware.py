"""Project middlewares, native in both modes (sync_capable and async_capable).

Each keeps its request/response logic in plain functions that the sync `__call__` and the
async `__acall__` both call, so the two interfaces cannot drift apart.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Awaitable, Callable
from contextvars import Token
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest, JsonResponse
from django.http.response import HttpResponseBase

from apps.dualserve.logging import REQUEST_ID_META_KEY, request_id_var

GetResponse = Callable[[HttpRequest], HttpResponseBase | Awaitable[HttpResponseBase]]

REQUEST_ID_HEADER = "X-Request-ID"
INTERFACE_HEADER = "X-Interface"
# What nginx's $request_id (32 hex digits), UUIDs and most tracing IDs look like; anything
# else (too long, spaces, control bytes) is replaced rather than echoed into logs and headers.
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


class BothModesMiddleware:
    """Base for a middleware that is native in both modes; subclasses define both calls."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)  # type: ignore[type-var]


# --- Request ID, Server-Timing and interface ----------------------------------------------------


def interface_of(request: HttpRequest) -> str:
    """Return "asgi" or "wsgi": the interface that is serving `request`."""
    return "asgi" if isinstance(request, ASGIRequest) else "wsgi"


def accepted_request_id(value: str | None) -> str:
    """Return the incoming request ID when well-formed, else a new random one."""
    if value and REQUEST_ID_RE.fullmatch(value):
        return value
    return uuid.uuid4().hex


def begin_request(request: HttpRequest) -> tuple[str, Token[str], float]:
    """Choose the request ID and expose it to views (request header) and logs (context)."""
    request_id = accepted_request_id(request.META.get("HTTP_X_REQUEST_ID"))
    request.META["HTTP_X_REQUEST_ID"] = request_id
    request.META[REQUEST_ID_META_KEY] = request_id
    return request_id, request_id_var.set(request_id), time.perf_counter()


def finish_response(
    request: HttpRequest, response: HttpResponseBase, request_id: str, started: float
) -> HttpResponseBase:
    """Add the request ID, the app's time and the interface to the response headers."""
    elapsed_ms = (time.perf_counter() - started) * 1000
    response.headers[REQUEST_ID_HEADER] = request_id
    response.headers["Server-Timing"] = f"app;dur={elapsed_ms:.2f}"
    response.headers[INTERFACE_HEADER] = interface_of(request)
    return response


class RequestContextMiddleware(BothModesMiddleware):
    """Give every request an ID (X-Request-ID), time it (Server-Timing), name the interface.

    Server-Timing covers the app up to the response object: for a streaming response that is
    the time to the first byte, not the stream's length.
    """

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        request_id, token, started = begin_request(request)
        try:
            response = self.get_response(request)
        finally:
            request_id_var.reset(token)
        assert isinstance(response, HttpResponseBase)
        return finish_response(request, response, request_id, started)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        request_id, token, started = begin_request(request)
        try:
            response = await self.get_response(request)  # type: ignore[misc]
        finally:
            request_id_var.reset(token)
        return finish_response(request, response, request_id, started)


# --- Health probes ----------------------------------------------------------------------------

LIVENESS_PATH = "/healthz"
READINESS_PATH = "/readyz"

# Migrations are not un-applied under a running server: once seen complete, skip the
# migration-graph load (it reads every migration file) on later probes.
_migrations_complete: set[str] = set()


def readiness(alias: str = DEFAULT_DB_ALIAS) -> tuple[int, dict[str, str]]:
    """Return (status code, body) for the readiness probe: database reachable, migrated."""
    connection = connections[alias]
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        if alias not in _migrations_complete:
            executor = MigrationExecutor(connection)
            if executor.migration_plan(executor.loader.graph.leaf_nodes()):
                return 503, {"status": "unavailable", "reason": "unapplied migrations"}
            _migrations_complete.add(alias)
    except Exception as exc:  # any driver error means "not ready", never a 500
        return 503, {"status": "unavailable", "reason": f"database: {type(exc).__name__}"}
    return 200, {"status": "ok"}


def probe_response(status: int, body: dict[str, str]) -> JsonResponse:
    """Return a probe answer that no cache keeps."""
    response = JsonResponse(body, status=status)
    response.headers["Cache-Control"] = "no-store"
    return response


class HealthCheckMiddleware(BothModesMiddleware):
    """Answer /healthz (process alive) and /readyz (database reachable and migrated).

    Placed first in MIDDLEWARE so a probe never reaches host validation (kubelet probes send
    the pod IP as Host) or the HTTPS redirect (probes speak plain HTTP).
    """

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        if request.path_info == LIVENESS_PATH:
            return probe_response(200, {"status": "ok"})
        if request.path_info == READINESS_PATH:
            return probe_response(*readiness())
        return self.get_response(request)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        if request.path_info == LIVENESS_PATH:
            return probe_response(200, {"status": "ok"})
        if request.path_info == READINESS_PATH:
            # The database driver is sync: one hop, on probes only.
            return probe_response(*await sync_to_async(readiness)())
        response: HttpResponseBase = await self.get_response(request)  # type: ignore[misc]
        return response
