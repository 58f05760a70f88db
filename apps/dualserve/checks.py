"""System checks: warn about middleware that will cost thread hops under ASGI.

- dualserve.W001: a middleware that is not async-capable. Under ASGI Django calls it through
  `sync_to_async` and adapts everything below it back with `async_to_sync`, on every request.
- dualserve.W002: a middleware that is async-capable only through `MiddlewareMixin`, whose
  `__acall__` runs each `process_request`/`process_response` in its own `sync_to_async`, or that
  has a sync `process_view` (the handler wraps it in one more). Django ticket #37177.

Each warning names the middleware, the hops it costs per request, and the native replacement
when the template ships one (apps.dualserve.native.REPLACEMENTS). On the template's handler a
request that never hops has its response closed on the loop; the first middleware that hops
also brings back that response-close hop, and its count includes it.

- dualserve.W003 (DEBUG only): a middleware whose own async path hops, which its class does
  not show (django-debug-toolbar runs SHOW_TOOLBAR_CALLBACK in `sync_to_async`). One request
  to "/" is measured through the middleware, in-process, with the view replaced by one that
  answers 200 (apps.dualserve.hops; `manage.py hops URL` measures a URL's view too).

Django's deploy checks find its middlewares by their exact dotted paths, so with the native
subclasses in MIDDLEWARE they would skip HSTS, SSL redirect, secure cookies and the rest in
silence. `security_with_native_middleware` runs those checks again with each native class
named by the Django path it replaces. The project silences Django's "middleware missing"
warnings (security.W001-W003), which the dotted-path test gets wrong here; this check raises
them again as dualserve.W011-W013 when the middleware really is missing.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.core.checks import CheckMessage, Info, Tags, Warning, register
from django.core.checks.security import base as security_base
from django.core.checks.security import csrf as security_csrf
from django.core.checks.security import sessions as security_sessions
from django.core.exceptions import MiddlewareNotUsed
from django.http import HttpRequest, HttpResponse
from django.test.utils import override_settings
from django.utils.deprecation import MiddlewareMixin
from django.utils.module_loading import import_string

from apps.dualserve.hops import (
    MIDDLEWARE,
    culprits,
    first_hop_brings_close,
    measure,
    project_handler,
    project_handler_class,
    without_view,
)
from apps.dualserve.native import REPLACEMENTS

HOOKS = ("process_request", "process_response")


async def _async_get_response(request: HttpRequest) -> HttpResponse:
    return HttpResponse()  # never called: the check only builds the middleware


def asgi_hops(middleware_class: type[Any]) -> int | None:
    """Return the thread hops `middleware_class` adds to one ASGI request (None: unknown).

    The middleware is built the way the ASGI handler builds it (with an async get_response),
    so per-instance choices, such as the native classes exposing an async process_view, count.
    """
    if not getattr(middleware_class, "async_capable", False):
        return None
    try:
        instance = middleware_class(_async_get_response)
    except MiddlewareNotUsed:
        return 0
    # MiddlewareMixin's own __acall__ hops once per hook; so does a native class whose hooks
    # cannot run on the event loop under the current settings.
    hooks_hop = isinstance(instance, MiddlewareMixin) and (
        type(instance).__acall__ is MiddlewareMixin.__acall__
        or not getattr(instance, "hooks_are_native", lambda: True)()
    )
    hops = sum(1 for hook in HOOKS if hooks_hop and hasattr(instance, hook))
    process_view = getattr(instance, "process_view", None)
    if process_view is not None and not iscoroutinefunction(process_view):
        hops += 1
    return hops


def _replacement_hint(path: str) -> str | None:
    replacement = REPLACEMENTS.get(path)
    return f"Use {replacement!r}, the template's native replacement." if replacement else None


def _hooks_hint(path: str) -> str:
    if path.startswith("django."):
        # Django's own classes cannot be given an async path, but subclassed.
        return (
            "Subclass it with apps.dualserve.native.NativeHooksMixin if its hooks do no I/O, "
            "or remove it."
        )
    return "Give it an async path that calls its hooks directly when they do no I/O."


def check_middleware(
    middleware: Sequence[str], handler_class: type[Any] | None = None
) -> list[CheckMessage]:
    """Return one warning per entry of `middleware` that costs thread hops under ASGI.

    `handler_class` (the project's by default) decides whether the first hop of a request
    brings back the handler's response-close hop.
    """
    messages: list[CheckMessage] = []
    brings_close = first_hop_brings_close(handler_class or project_handler_class())
    for path in middleware:
        try:
            middleware_class = import_string(path)
        except ImportError:
            continue  # Django reports unimportable middleware itself at start-up
        hops = asgi_hops(middleware_class)
        close = ""
        if brings_close and (hops is None or hops):
            brings_close = False  # only the first hop of a request brings it back
            close = "; as the request's first hop it also brings back response.close()"
            hops = None if hops is None else hops + 1
        if hops is None:
            messages.append(
                Warning(
                    f"{path} is not async-capable: under ASGI every request hops to a thread "
                    "for it (sync_to_async) and back for the rest of the stack (async_to_sync)"
                    f"{close}.",
                    hint=_replacement_hint(path)
                    or "Make it async-capable (sync_capable and async_capable, see "
                    "apps.dualserve.middleware.BothModesMiddleware).",
                    obj=path,
                    id="dualserve.W001",
                )
            )
        elif hops:
            messages.append(
                Warning(
                    f"{path} costs {hops} thread hop{'s' if hops > 1 else ''} per request under "
                    f"ASGI: its hooks run in sync_to_async{close}.",
                    hint=_replacement_hint(path) or _hooks_hint(path),
                    obj=path,
                    id="dualserve.W002",
                )
            )
    return messages


@register("async")
def middleware_thread_hops(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """Warn about MIDDLEWARE entries that will cost thread hops under ASGI."""
    return check_middleware(settings.MIDDLEWARE)


def check_measured_hops(url: str = "/") -> list[CheckMessage]:
    """Return a warning per MIDDLEWARE entry that hops more on a request than its class shows."""
    try:
        measurement = measure(url, handler=without_view(project_handler()))
    except Exception as exc:  # a middleware that needs the database before `migrate`, ...
        return [
            Info(
                f"Could not measure the thread hops of a request to {url}: {exc!r}.",
                hint="Run `manage.py hops URL` to measure a request and see the error.",
                id="dualserve.I003",
            )
        ]
    messages: list[CheckMessage] = []
    for row in culprits(measurement):
        if row.kind != MIDDLEWARE:
            continue
        expected = asgi_hops(import_string(row.who))
        if expected is None or row.hops <= expected:
            continue  # dualserve.W001/W002 report it already
        messages.append(
            Warning(
                f"{row.who} made {row.hops:g} thread hop{'s' if row.hops != 1 else ''} on a "
                f"request to {url} under ASGI, which its class does not show: it {row.why}. "
                f"The request made {measurement.per_request:g} in all.",
                hint=row.fix,
                obj=row.who,
                id="dualserve.W003",
            )
        )
    return messages


@register("async")
def measured_thread_hops(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """In DEBUG, measure a request through MIDDLEWARE and report the hops the classes hide."""
    if not settings.DEBUG:
        return []  # development tooling: it patches asgiref while it measures
    return check_measured_hops()


# Django's deploy checks that look for a middleware by its dotted path.
MIDDLEWARE_DEPENDENT_CHECKS = (
    security_base.check_security_middleware,
    security_base.check_xframe_options_middleware,
    security_base.check_sts,
    security_base.check_sts_include_subdomains,
    security_base.check_sts_preload,
    security_base.check_content_type_nosniff,
    security_base.check_ssl_redirect,
    security_base.check_xframe_deny,
    security_base.check_referrer_policy,
    security_base.check_cross_origin_opener_policy,
    security_csrf.check_csrf_middleware,
    security_csrf.check_csrf_cookie_secure,
    security_sessions.check_session_cookie_secure,
    security_sessions.check_session_cookie_httponly,
)
# The project silences Django's IDs for these (see the module docstring).
RENUMBERED = {
    "security.W001": "dualserve.W011",
    "security.W002": "dualserve.W012",
    "security.W003": "dualserve.W013",
}
DJANGO_PATH_OF = {
    native: django
    for django, native in REPLACEMENTS.items()
    if native.startswith("apps.dualserve.native.")
}


def _run(middleware: list[str], app_configs: Any) -> list[CheckMessage]:
    with override_settings(MIDDLEWARE=middleware):
        return [m for check in MIDDLEWARE_DEPENDENT_CHECKS for m in check(app_configs)]


@register(Tags.security, deploy=True)
def security_with_native_middleware(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """Run Django's middleware-dependent deploy checks with the native classes recognised."""
    middleware = list(settings.MIDDLEWARE)
    canonical = [DJANGO_PATH_OF.get(path, path) for path in middleware]
    # Django's own run reports what it saw, but the project silences its "missing middleware"
    # IDs: those are always reported here, under ours.
    if canonical == middleware:
        # Django's dotted paths only: Django's run reported everything else already.
        return [renumbered(m) for m in _run(middleware, app_configs) if m.id in RENUMBERED]
    already_reported = {m.id for m in _run(middleware, app_configs)} - set(RENUMBERED)
    return [
        renumbered(message)
        for message in _run(canonical, app_configs)
        if message.id in RENUMBERED or message.id not in already_reported
    ]


def renumbered(message: CheckMessage) -> CheckMessage:
    """Return `message` under the project's ID when Django's is one the project silences.

    A copy: Django's checks return module-level message objects, shared by every run.
    """
    if message.id not in RENUMBERED:
        return message
    renamed = copy.copy(message)
    renamed.id = RENUMBERED[message.id]
    return renamed
