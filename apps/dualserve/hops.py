"""Measure the thread hops of a request under ASGI, and name who made each one.

apps.dualserve.checks estimates a middleware's hops from its class; a middleware with an async path
of its own (django-debug-toolbar runs its SHOW_TOOLBAR_CALLBACK through `sync_to_async` on
every request) is invisible to that. Here a request runs in-process through the project's
ASGI handler with every `SyncToAsync.__call__` (and `AsyncToSync.__call__`) recorded; each
call is put down to the middleware, the view or the handler that made it, found from the
called function and the caller frames. `manage.py hops URL` prints the result; in DEBUG the
system check `dualserve.W003` reports the middlewares the static check missed.

Development tooling: it patches asgiref's classes while it measures, so it must never run in
a request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import sys
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import FrameType
from typing import Any
from unittest import mock

from asgiref.sync import AsyncToSync, SyncToAsync
from django.conf import settings
from django.core import signals
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.base import BaseHandler
from django.core.handlers.exception import response_for_exception
from django.dispatch import Signal
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.urls import ResolverMatch
from django.utils.log import log_response
from django.utils.module_loading import import_string

from apps.dualserve.asgi import PooledThreadASGIHandler, only_thread_local_receivers
from apps.dualserve.native import REPLACEMENTS

MIDDLEWARE = "middleware"
VIEW = "view"
HANDLER = "handler"
OTHER = "other"

HOOKS = frozenset(
    {"process_request", "process_response", "process_view", "process_template_response"}
)
RESPONSE_CLOSE = "response.close()"
SYNC_VIEW = "the view itself"
TOOLBAR = "debug_toolbar.middleware.DebugToolbarMiddleware"
TOOLBAR_CALLBACK_FIX = (
    "Make DEBUG_TOOLBAR_CONFIG['SHOW_TOOLBAR_CALLBACK'] an async function (async def "
    "show_toolbar(request): ...): the toolbar then awaits it on the event loop."
)
TOOLBAR_PANELS_NOTE = (
    "While the toolbar is shown its panels hop too (SQLPanel instruments the connections "
    "in a thread): the price of debugging, gone when it is hidden."
)
# The handler's frame that resolves and calls the view (and its view middleware).
VIEW_CODE = vars(BaseHandler)["_get_response_async"].__code__
TIMEOUT = 30  # seconds for one request; a view that takes longer is not worth measuring


@dataclass(frozen=True)
class Hop:
    """One thread hop: who made it, and the callable that crossed threads."""

    kind: str  # MIDDLEWARE, VIEW, HANDLER or OTHER
    who: str  # a MIDDLEWARE entry, a view's dotted path, or the handler's class name
    what: str  # the function that ran in the other thread (or on the loop, for async_to_sync)
    adapter: str = "sync_to_async"


@dataclass
class Culprit:
    """The hops of one middleware, view or handler, with why they happen and the fix."""

    kind: str
    who: str
    hops: float  # sync_to_async calls per request
    why: str
    fix: str


@dataclass
class Measurement:
    """The hops of `requests` requests to `url` (after a warm-up request)."""

    url: str
    method: str
    status: int
    handler: type[BaseHandler]
    requests: int
    hops: list[Hop] = field(default_factory=list)

    @property
    def per_request(self) -> float:
        """Return the sync_to_async calls per request."""
        return sum(1 for hop in self.hops if hop.adapter == "sync_to_async") / self.requests


# --- Attribution --------------------------------------------------------------------------------


def qualified_name(obj: Any) -> str:
    """Return `module.qualname` of a function, class or instance's class."""
    if not hasattr(obj, "__qualname__"):
        obj = type(obj)
    return f"{getattr(obj, '__module__', '?')}.{obj.__qualname__}"


def view_name(callback: Any) -> str:
    """Return the dotted path of a view function or class-based view."""
    return qualified_name(getattr(callback, "view_class", None) or inspect.unwrap(callback))


def closure_signal(func: Any) -> Signal | None:
    """Return the Signal whose `asend` built `func` (Django's `sync_send`), if it did."""
    for cell in getattr(func, "__closure__", None) or ():
        with contextlib.suppress(ValueError):  # an empty cell
            if isinstance(cell.cell_contents, Signal):
                return cell.cell_contents
    return None


def signal_name(signal: Signal) -> str:
    """Return a request signal's name."""
    for name in ("request_started", "request_finished"):
        if signal is getattr(signals, name):
            return name
    return "a signal"


class Attributor:
    """Put each hop down to one of `middleware` (dotted paths), a view or the handler."""

    def __init__(self, middleware: Sequence[str]) -> None:
        self.classes: dict[type, str] = {}
        for path in middleware:
            with contextlib.suppress(ImportError):
                self.classes.setdefault(import_string(path), path)

    def middleware_of(self, obj: object) -> str | None:
        """Return the MIDDLEWARE entry `obj` is an instance of, if any."""
        return self.classes.get(type(obj))

    def attribute(self, func: Any, frame: FrameType | None, adapter: str) -> Hop:
        """Return the hop of calling `func` through `adapter` from `frame`."""
        while isinstance(func, functools.partial):
            func = func.func
        owner = getattr(func, "__self__", func)
        name = getattr(func, "__name__", type(func).__name__)
        what = getattr(func, "__qualname__", qualified_name(func))
        middleware = self.middleware_of(owner)
        if middleware is not None:
            # A hook run by MiddlewareMixin or adapted by the handler, or the whole
            # middleware when it is sync-only.
            return Hop(MIDDLEWARE, middleware, name if owner is not func else "__call__", adapter)
        if isinstance(owner, HttpResponseBase) and name == "close":
            return Hop(HANDLER, "", RESPONSE_CLOSE, adapter)
        signal = closure_signal(func)
        if signal is not None:
            return Hop(HANDLER, "", f"{signal_name(signal)} receivers", adapter)
        if func in (response_for_exception, log_response):
            return Hop(HANDLER, "", name, adapter)
        while frame is not None:
            middleware = self.middleware_of(frame.f_locals.get("self"))
            if middleware is not None:
                return Hop(MIDDLEWARE, middleware, what, adapter)
            if frame.f_code is VIEW_CODE:
                callback = frame.f_locals.get("callback")
                if callback is not None and inspect.unwrap(func) is inspect.unwrap(callback):
                    what = SYNC_VIEW
                return Hop(VIEW, view_name(callback), what, adapter)
            if isinstance(frame.f_locals.get("self"), BaseHandler):
                return Hop(HANDLER, "", what, adapter)
            frame = frame.f_back
        return Hop(OTHER, qualified_name(func), what, adapter)


@contextlib.contextmanager
def recording(attributor: Attributor) -> Iterator[list[Hop]]:
    """Record every sync_to_async and async_to_sync call made inside the block."""
    hops: list[Hop] = []
    original_s2a = SyncToAsync.__call__
    original_a2s = AsyncToSync.__call__

    async def s2a(self: SyncToAsync[Any, Any], *args: Any, **kwargs: Any) -> Any:
        hops.append(attributor.attribute(self.func, sys._getframe(1), "sync_to_async"))
        return await original_s2a(self, *args, **kwargs)

    def a2s(self: AsyncToSync[Any, Any], *args: Any, **kwargs: Any) -> Any:
        hops.append(attributor.attribute(self.awaitable, sys._getframe(1), "async_to_sync"))
        return original_a2s(self, *args, **kwargs)

    with (
        mock.patch.object(SyncToAsync, "__call__", s2a),
        mock.patch.object(AsyncToSync, "__call__", a2s),
    ):
        yield hops


# --- Requests -----------------------------------------------------------------------------------


def project_handler_class() -> type[ASGIHandler]:
    """Return the class of the handler the project's ASGI application serves with."""
    application = import_string(getattr(settings, "ASGI_APPLICATION", "project.asgi.application"))
    handler_class = type(getattr(application, "app", application))  # under the LifespanApp
    return handler_class if issubclass(handler_class, ASGIHandler) else PooledThreadASGIHandler


def project_handler() -> ASGIHandler:
    """Return a new instance of the project's ASGI handler, built with today's MIDDLEWARE."""
    return project_handler_class()()


def first_hop_brings_close(handler_class: type[BaseHandler]) -> bool:
    """Return whether a request's first hop also costs the handler's response-close hop.

    PooledThreadASGIHandler closes the response on the loop unless the request used its
    thread, while only Django's own receivers listen to the request signals; Django's handler
    always closes it in a thread (a fixed cost, not one a middleware brings).
    """
    return issubclass(handler_class, PooledThreadASGIHandler) and all(
        only_thread_local_receivers(signal, handler_class)
        for signal in (signals.request_started, signals.request_finished)
    )


def default_host() -> str:
    """Return a Host header ALLOWED_HOSTS accepts."""
    hosts = [host for host in settings.ALLOWED_HOSTS if host != "*"]
    if not hosts or "localhost" in hosts:
        return "localhost"
    return hosts[0].lstrip(".")


# The client address of a measured request: a visitor's (a documentation address, RFC 5737),
# not 127.0.0.1, which projects list in INTERNAL_IPS: django-debug-toolbar would show itself
# and its panels' hops would be counted, though no visitor ever pays them.
VISITOR_ADDRESS = "192.0.2.10"


def http_scope(
    url: str,
    method: str,
    host: str,
    headers: Sequence[tuple[str, str]] = (),
    client: str = VISITOR_ADDRESS,
) -> dict[str, Any]:
    """Return the ASGI scope of a request for `url` (a path with an optional query)."""
    parts = urllib.parse.urlsplit(url)
    scheme = "https" if settings.SECURE_SSL_REDIRECT else "http"
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method.upper(),
        "scheme": scheme,
        "path": urllib.parse.unquote(parts.path or "/"),
        "raw_path": (parts.path or "/").encode(),
        "query_string": parts.query.encode(),
        "root_path": "",
        "headers": [
            (b"host", host.encode()),
            *((name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers),
        ],
        "client": (client, 50000),
        "server": ("127.0.0.1", 443 if scheme == "https" else 80),
    }


async def send_request(handler: BaseHandler, scope: dict[str, Any]) -> int:
    """Send one request with an empty body to `handler`; return the response's status."""
    pending = [{"type": "http.request", "body": b"", "more_body": False}]
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop()
        # The client stays: the handler cancels its disconnect listener when it is done.
        return await asyncio.get_running_loop().create_future()  # type: ignore[no-any-return]

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await asyncio.wait_for(handler(scope, receive, send), TIMEOUT)  # type: ignore[operator]
    return statuses[0] if statuses else 0


def probe_view(request: HttpRequest) -> HttpResponse:
    """Answer 200: the view a middleware-only measurement runs in place of the URL's."""
    return HttpResponse()


async def aprobe_view(request: HttpRequest) -> HttpResponse:
    """Answer 200 from the event loop (see `probe_view`)."""
    return probe_view(request)


def without_view(handler: BaseHandler) -> BaseHandler:
    """Return `handler` with every URL resolving to `aprobe_view`: only middleware runs."""

    def resolve_request(
        request: HttpRequest,
    ) -> tuple[Callable[..., Any], tuple[()], dict[str, Any]]:
        request.resolver_match = ResolverMatch(aprobe_view, (), {}, route=request.path)
        return aprobe_view, (), {}

    setattr(handler, "resolve_request", resolve_request)  # noqa: B010  (this instance only)
    return handler


def measure(
    url: str,
    *,
    method: str = "GET",
    count: int = 1,
    handler: BaseHandler | None = None,
    middleware: Sequence[str] | None = None,
    host: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    client: str = VISITOR_ADDRESS,
) -> Measurement:
    """Return the hops of `count` requests to `url`, after a warm-up request.

    `handler` defaults to a new one of the project's class; `middleware` (the paths to put
    hops down to) to MIDDLEWARE. The requests run on a loop of their own in another thread,
    so this works from sync code and from a running event loop alike.
    """
    handler = handler if handler is not None else project_handler()
    attributor = Attributor(settings.MIDDLEWARE if middleware is None else middleware)
    scope = http_scope(url, method, host or default_host(), headers, client)

    async def run() -> tuple[int, list[Hop]]:
        await send_request(handler, dict(scope))  # warm-up: first-use caches, lazy imports
        with recording(attributor) as hops:
            statuses = [await send_request(handler, dict(scope)) for _ in range(count)]
        return statuses[-1], hops

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hops") as executor:
        status, hops = executor.submit(asyncio.run, run()).result()
    return Measurement(url, method.upper(), status, type(handler), count, hops)


# --- Report -------------------------------------------------------------------------------------


def middleware_fix(path: str, whats: Sequence[str]) -> str:
    """Return the fix for a middleware whose hops ran `whats`."""
    if path in REPLACEMENTS:
        return f"Use {REPLACEMENTS[path]}, the template's native replacement."
    if path == TOOLBAR:
        panels = any(".enable_instrumentation" in what for what in whats)
        callback = any(".enable_instrumentation" not in what for what in whats)
        return " ".join([TOOLBAR_CALLBACK_FIX] * callback + [TOOLBAR_PANELS_NOTE] * panels)
    if "__call__" in whats:
        return (
            "Make it async-capable (sync_capable and async_capable, as "
            "apps.dualserve.middleware.BothModesMiddleware)."
        )
    if set(whats) <= HOOKS:
        if path.startswith("django."):
            return (
                "Subclass it with apps.dualserve.native.NativeHooksMixin if its hooks do no I/O, "
                "or remove it."
            )
        return "Give it an async path that calls its hooks directly when they do no I/O."
    others = ", ".join(sorted({w for w in whats if w not in HOOKS}))
    return f"Its async path runs {others} in sync_to_async: make that a coroutine function."


def middleware_why(whats: Sequence[str]) -> str:
    """Return why a middleware hops, from what its hops ran."""
    if "__call__" in whats:
        return "not async-capable: the handler runs it in sync_to_async"
    return f"runs {', '.join(dict.fromkeys(whats))} in sync_to_async"


def view_why_and_fix(whats: Sequence[str]) -> tuple[str, str]:
    """Return why a view hops and the fix."""
    why = []
    fix = []
    if SYNC_VIEW in whats:
        why.append("a sync view: the handler runs it in sync_to_async")
        fix.append("make it `async def`, with Django's async APIs (aget, asave, ...)")
    if any(w == "render" or w.endswith(".render") for w in whats):
        why.append(
            "its response is a TemplateResponse (the admin's pages, DRF's Response), rendered "
            "after the view in sync_to_async"
        )
        fix.append(
            "keep the hop (templates are sync), or return a rendered response "
            "(django.shortcuts.render) from an async view"
        )
    others = [w for w in dict.fromkeys(whats) if w != SYNC_VIEW and not w.endswith("render")]
    if others:
        why.append(f"calls {', '.join(others)} in sync_to_async")
        fix.append(
            "expected for database access: each of the ORM's a-methods (aget, acount, ...) is "
            "one hop until Django has an async database driver; for other sync I/O, an async "
            "client (httpx.AsyncClient) avoids it"
        )
    advice = "; ".join(fix)
    return "; ".join(why), advice[:1].upper() + advice[1:] + "."


def handler_why_and_fix(
    hops: Sequence[Hop], first_hop: Hop | None, handler: type[BaseHandler]
) -> tuple[str, str]:
    """Return why the handler hops and the fix."""
    whats = [hop.what for hop in hops]
    if not issubclass(handler, PooledThreadASGIHandler):
        return (
            f"Django's {handler.__name__} sends request_started and closes every response "
            "in sync_to_async",
            "Serve project.asgi's application (apps.dualserve.asgi.PooledThreadASGIHandler).",
        )
    if any(w in ("log_response", "response_for_exception") for w in whats):
        return (
            "an error response: Django logs it (and builds error pages) in sync_to_async",
            "None needed for errors; measure a URL that answers 2xx or 3xx.",
        )
    if any(w.endswith("receivers") for w in whats) or not only_thread_local_receivers(
        signals.request_finished, handler
    ):
        return (
            "a receiver of the request signals other than Django's own is connected",
            "Make the receiver async (an async receiver runs on the loop) or disconnect it.",
        )
    cause = f" (first: {first_hop.who or first_hop.what})" if first_hop else ""
    return (
        f"the request used its thread{cause}, so the response is closed there",
        "Goes away with the other hops of the request.",
    )


def culprits(measurement: Measurement) -> list[Culprit]:
    """Return who hopped on the measured requests, in order of first hop, with the fixes."""
    groups: dict[tuple[str, str], list[Hop]] = {}
    for hop in measurement.hops:
        groups.setdefault((hop.kind, hop.who), []).append(hop)
    first_hop = next((h for h in measurement.hops if h.kind != HANDLER), None)
    rows = []
    for (kind, who), hops in groups.items():
        whats = [hop.what for hop in hops]
        if kind == MIDDLEWARE:
            why, fix = middleware_why(whats), middleware_fix(who, whats)
        elif kind == VIEW:
            why, fix = view_why_and_fix(whats)
        elif kind == HANDLER:
            why, fix = handler_why_and_fix(hops, first_hop, measurement.handler)
            who = measurement.handler.__name__
        else:
            why, fix = f"calls {', '.join(dict.fromkeys(whats))} across threads", "?"
        back = sum(1 for hop in hops if hop.adapter == "async_to_sync")
        if back:
            why += f"; and {back} async_to_sync back to the loop"
        s2a = sum(1 for hop in hops if hop.adapter == "sync_to_async")
        rows.append(Culprit(kind, who, s2a / measurement.requests, why, fix))
    return rows
