"""Django's own middlewares, made native under ASGI: no thread hop per request.

Django's middlewares are "async-capable" through `MiddlewareMixin.__acall__`, which runs every
`process_request`/`process_response` in its own `sync_to_async` (and the handler wraps a sync
`process_view` in one more): startproject's list costs 13 thread hops per async request (Django
ticket #37177). Most of those hooks only read headers and set cookies: pure CPU work that is
safe, and far cheaper, on the event loop. Each class here subclasses Django's and keeps its
hooks, so the behaviour (and Django's own test suite) stays the same; only the async path
changes:

- hooks that never do I/O run inline on the event loop;
- hooks that may do I/O use Django's async API (the session is saved with `asave()`), or hop
  to a thread only on the requests that need it (messages stored in the session, CSRF tokens
  kept in the session).

Replace these one for one in MIDDLEWARE (apps.dualserve.checks names the replacement for each
Django middleware it finds).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, TypeVar

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.apps import apps
from django.conf import settings
from django.contrib.auth import middleware as auth_middleware
from django.contrib.messages import middleware as messages_middleware
from django.contrib.sessions import middleware as sessions_middleware
from django.contrib.sessions.backends.base import SessionBase, UpdateError
from django.contrib.sessions.exceptions import SessionInterrupted
from django.contrib.sites import middleware as sites_middleware
from django.contrib.sites.requests import RequestSite
from django.contrib.sites.shortcuts import get_current_site
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.middleware import clickjacking, common, csrf, gzip, http, locale, security
from django.utils.cache import patch_vary_headers
from django.utils.deprecation import MiddlewareMixin
from django.utils.http import http_date

if TYPE_CHECKING:
    from collections.abc import Callable

    from django.contrib.auth.base_user import AbstractBaseUser
    from django.contrib.auth.models import AnonymousUser
    from django.contrib.sites.models import Site

    # The mixin only ever sits in front of a MiddlewareMixin subclass.
    _Base = MiddlewareMixin
else:
    _Base = object

_SESSION_INTERRUPTED = (
    "The request's session was deleted before the request completed. The user may have "
    "logged out in a concurrent request, for example."
)

ResponseT = TypeVar("ResponseT", bound=HttpResponseBase)


async def _resolved(value: HttpResponseBase | None) -> HttpResponseBase | None:
    """Return `value` from a coroutine: a hook's result for a caller that awaits it."""
    return value


class NativeHooksMixin(_Base):
    """Run a `MiddlewareMixin` subclass's sync hooks inline in async mode.

    Only for hooks that do no I/O. In async mode `process_view` is shadowed per instance by a
    function marked as a coroutine function, because `BaseHandler.load_middleware` wraps a sync
    one in `sync_to_async`; the class's sync method stays what Django's own tests call.
    """

    def __init__(self, get_response: Callable[..., Any]) -> None:
        super().__init__(get_response)
        sync_process_view = getattr(self, "process_view", None)
        if (
            iscoroutinefunction(get_response)
            and sync_process_view is not None
            and self.hooks_are_native()
        ):

            def process_view(
                request: HttpRequest,
                view_func: Callable[..., Any],
                view_args: tuple[Any, ...],
                view_kwargs: dict[str, Any],
            ) -> Any:
                result = sync_process_view(request, view_func, view_args, view_kwargs)
                # Django's make_middleware_decorator (csrf_protect, ...) builds the middleware
                # around the view it protects and calls process_view without awaiting it.
                if view_func is get_response:
                    return result
                return _resolved(result)

            # Marked so load_middleware does not wrap it in sync_to_async. An instance
            # attribute, so only this async-mode instance changes.
            setattr(self, "process_view", markcoroutinefunction(process_view))  # noqa: B010

    def hooks_are_native(self) -> bool:
        """Return whether the hooks may run on the event loop (no I/O under these settings)."""
        return True

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        if not self.hooks_are_native():
            response: HttpResponseBase = await super().__acall__(request)
            return response
        early: HttpResponseBase | None = None
        if hasattr(self, "process_request"):
            early = self.process_request(request)
        response = early or await self.get_response(request)  # type: ignore[misc]
        if hasattr(self, "process_response"):
            response = self.process_response(request, response)
        return response


class SecurityMiddleware(NativeHooksMixin, security.SecurityMiddleware):
    """`django.middleware.security.SecurityMiddleware`, native under ASGI."""


class CommonMiddleware(NativeHooksMixin, common.CommonMiddleware):
    """`django.middleware.common.CommonMiddleware`, native under ASGI."""


class XFrameOptionsMiddleware(NativeHooksMixin, clickjacking.XFrameOptionsMiddleware):
    """`django.middleware.clickjacking.XFrameOptionsMiddleware`, native under ASGI."""


class AuthenticationMiddleware(NativeHooksMixin, auth_middleware.AuthenticationMiddleware):
    """`django.contrib.auth.middleware.AuthenticationMiddleware`, native under ASGI.

    It only installs the lazy `request.user` and `request.auser`; async views should await
    `request.auser()`, as with Django's class.
    """


class CsrfViewMiddleware(NativeHooksMixin, csrf.CsrfViewMiddleware):
    """`django.middleware.csrf.CsrfViewMiddleware`, native under ASGI.

    With CSRF_USE_SESSIONS the token lives in the session, whose sync API does I/O, so the
    class then keeps Django's thread hops.
    """

    def hooks_are_native(self) -> bool:
        return not settings.CSRF_USE_SESSIONS


class MessageMiddleware(NativeHooksMixin, messages_middleware.MessageMiddleware):
    """`django.contrib.messages.middleware.MessageMiddleware`, native under ASGI.

    Creating the storage is lazy and free. Storing messages may write the session (sync I/O
    under FallbackStorage and SessionStorage), so the response hook hops to a thread only on
    requests that read or added messages; on every other request it has nothing to do.
    """

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        self.process_request(request)
        response: HttpResponseBase = await self.get_response(request)  # type: ignore[misc]
        storage = getattr(request, "_messages", None)
        if storage is not None and (storage.used or storage.added_new):
            # django-stubs narrows the hook to HttpResponse; Django passes any response.
            response = await sync_to_async(self.process_response, thread_sensitive=True)(
                request,
                response,  # type: ignore[arg-type]
            )
        return response


class SessionMiddleware(NativeHooksMixin, sessions_middleware.SessionMiddleware):
    """`django.contrib.sessions.middleware.SessionMiddleware`, native under ASGI.

    Creating the session is lazy and free. In async mode the response hook uses the session's
    async API (`aget_expiry_age`, `asave`, Django 5.1+), so a request that does not touch the
    session costs nothing and one that modified it costs only the backend's own I/O.
    """

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        state = session_state(request)
        if state is None:
            return response
        session, must_save = state
        if must_save and response.status_code < 500:
            at_browser_close = session.get_expire_at_browser_close()
            max_age = None if at_browser_close else session.get_expiry_age()
            try:
                session.save()
            except UpdateError:
                raise SessionInterrupted(_SESSION_INTERRUPTED) from None
            set_session_cookie(response, session, max_age)
        return finish_session_response(request, response, session, must_save)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        self.process_request(request)
        response: HttpResponseBase = await self.get_response(request)  # type: ignore[misc]
        state = session_state(request)
        if state is None:
            return response
        session, must_save = state
        if must_save and response.status_code < 500:
            at_browser_close = await session.aget_expire_at_browser_close()
            max_age = None if at_browser_close else await session.aget_expiry_age()
            try:
                await session.asave()
            except UpdateError:
                raise SessionInterrupted(_SESSION_INTERRUPTED) from None
            set_session_cookie(response, session, max_age)
        return finish_session_response(request, response, session, must_save)


class LocaleMiddleware(NativeHooksMixin, locale.LocaleMiddleware):
    """`django.middleware.locale.LocaleMiddleware`, native under ASGI.

    Its hooks read the request's path, cookie and Accept-Language and activate the language:
    translation state is context-local under ASGI, so the request's task sees it as it does
    after Django's hop.
    """


class GZipMiddleware(NativeHooksMixin, gzip.GZipMiddleware):
    """`django.middleware.gzip.GZipMiddleware`, native under ASGI.

    Compression is CPU work on the event loop: microseconds for a page, more for a large
    body. Behind nginx, `gzip on;` there does it with no middleware at all.
    """


class ConditionalGetMiddleware(NativeHooksMixin, http.ConditionalGetMiddleware):
    """`django.middleware.http.ConditionalGetMiddleware`, native under ASGI."""


class LoginRequiredMiddleware(auth_middleware.LoginRequiredMiddleware):
    """`django.contrib.auth.middleware.LoginRequiredMiddleware` (Django 5.1+), native under ASGI.

    In async mode `process_view` awaits `request.auser()`: no hop for an exempt view or a
    request without a session, and only the session backend's own I/O otherwise.
    """

    def __init__(self, get_response: Callable[..., Any]) -> None:
        super().__init__(get_response)
        if iscoroutinefunction(get_response):
            # An instance attribute, as in NativeHooksMixin: load_middleware would wrap the
            # class's sync process_view in sync_to_async.
            setattr(self, "process_view", self.aprocess_view)  # noqa: B010

    async def aprocess_view(
        self,
        request: HttpRequest,
        view_func: Callable[..., Any],
        view_args: tuple[Any, ...],
        view_kwargs: dict[str, Any],
    ) -> HttpResponseBase | None:
        if not getattr(view_func, "login_required", True):
            return None
        user = await request.auser()
        share_user(request, user)
        if user.is_authenticated:
            return None
        return self.handle_no_permission(request, view_func)


def share_user(request: HttpRequest, user: AbstractBaseUser | AnonymousUser) -> None:
    """Let `request.user` return the user `request.auser()` loaded, with no query of its own.

    Django's class evaluates `request.user` in its hop, so an async view may read it after;
    `_cached_user` is where AuthenticationMiddleware's lazy `request.user` looks first.
    """
    if not hasattr(request, "_cached_user"):
        request._cached_user = user  # type: ignore[attr-defined]


class CurrentSiteMiddleware(sites_middleware.CurrentSiteMiddleware):
    """`django.contrib.sites.middleware.CurrentSiteMiddleware`, native under ASGI.

    Django caches each Site after its first query (`SITE_CACHE`); in async mode a cached
    site (or a RequestSite, without the sites framework) is set inline, and only a request
    that would query the database hops to a thread for it.
    """

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        site = cached_site(request)
        if site is None:
            site = await sync_to_async(get_current_site, thread_sensitive=True)(request)
        request.site = site  # type: ignore[assignment]
        response: HttpResponseBase = await self.get_response(request)  # type: ignore[misc]
        return response


def cached_site(request: HttpRequest) -> Site | RequestSite | None:
    """Return what `get_current_site(request)` returns when that takes no query, else None."""
    if not apps.is_installed("django.contrib.sites"):
        return RequestSite(request)
    from django.contrib.sites.models import SITE_CACHE  # only with the sites app installed

    # The keys Site.objects.get_current() caches under: SITE_ID, else the request's host.
    site: Site | None = SITE_CACHE.get(getattr(settings, "SITE_ID", "") or request.get_host())
    return site


def session_state(request: HttpRequest) -> tuple[SessionBase, bool] | None:
    """Return the request's session and whether it must be saved, or None without a session.

    Reading `modified` and `is_empty()` never loads the session.
    """
    try:
        session: SessionBase = request.session
        must_save = (session.modified or settings.SESSION_SAVE_EVERY_REQUEST) and not (
            session.is_empty()
        )
    except AttributeError:
        return None
    return session, must_save


def set_session_cookie(
    response: HttpResponseBase, session: SessionBase, max_age: int | None
) -> None:
    """Refresh the client's session cookie after a save."""
    expires = None if max_age is None else http_date(time.time() + max_age)
    response.set_cookie(
        settings.SESSION_COOKIE_NAME,
        str(session.session_key),
        max_age=max_age,
        expires=expires,
        domain=settings.SESSION_COOKIE_DOMAIN,
        path=settings.SESSION_COOKIE_PATH,
        secure=settings.SESSION_COOKIE_SECURE,
        httponly=settings.SESSION_COOKIE_HTTPONLY,
        samesite=settings.SESSION_COOKIE_SAMESITE,
    )


def finish_session_response(
    request: HttpRequest, response: ResponseT, session: SessionBase, saved: bool
) -> ResponseT:
    """Delete the cookie of an emptied session and vary on Cookie where Django does."""
    if settings.SESSION_COOKIE_NAME in request.COOKIES and session.is_empty():
        response.delete_cookie(
            settings.SESSION_COOKIE_NAME,
            path=settings.SESSION_COOKIE_PATH,
            domain=settings.SESSION_COOKIE_DOMAIN,
            samesite=settings.SESSION_COOKIE_SAMESITE,
        )
        patch_vary_headers(response, ("Cookie",))
    elif session.accessed or (saved and response.status_code < 500):
        patch_vary_headers(response, ("Cookie",))
    return response


#: Django's middleware path -> the native replacement shipped here (used by apps.dualserve.checks).
REPLACEMENTS = {
    "django.middleware.security.SecurityMiddleware": "apps.dualserve.native.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware": (
        "apps.dualserve.native.SessionMiddleware"
    ),
    "django.middleware.common.CommonMiddleware": "apps.dualserve.native.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware": "apps.dualserve.native.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware": (
        "apps.dualserve.native.AuthenticationMiddleware"
    ),
    "django.contrib.messages.middleware.MessageMiddleware": (
        "apps.dualserve.native.MessageMiddleware"
    ),
    "django.middleware.clickjacking.XFrameOptionsMiddleware": (
        "apps.dualserve.native.XFrameOptionsMiddleware"
    ),
    "django.middleware.locale.LocaleMiddleware": "apps.dualserve.native.LocaleMiddleware",
    "django.middleware.gzip.GZipMiddleware": "apps.dualserve.native.GZipMiddleware",
    "django.middleware.http.ConditionalGetMiddleware": (
        "apps.dualserve.native.ConditionalGetMiddleware"
    ),
    "django.contrib.auth.middleware.LoginRequiredMiddleware": (
        "apps.dualserve.native.LoginRequiredMiddleware"
    ),
    "django.contrib.sites.middleware.CurrentSiteMiddleware": (
        "apps.dualserve.native.CurrentSiteMiddleware"
    ),
    "whitenoise.middleware.WhiteNoiseMiddleware": "apps.dualserve.static.StaticFilesMiddleware",
}
