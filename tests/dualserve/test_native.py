"""The native middleware stack: thread hops under ASGI, and Django's behaviour kept."""

from __future__ import annotations

import gzip
import json
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.wsgi import WSGIHandler
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.test import AsyncClient, SimpleTestCase, TestCase, override_settings
from django.utils.cache import patch_vary_headers
from django.utils.module_loading import import_string

from apps.dualserve.checks import asgi_hops
from apps.dualserve.hops import culprits, measure
from apps.dualserve.middleware import BothModesMiddleware
from tests.support import asgi_request, count_thread_hops

# What `django-admin startproject` ships in 5.2.
STARTPROJECT_MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]


# The template's native classes, in the shipped order: what NativeBehaviourTests test, pinned
# so that a project's own middleware (django-cors-headers, a toolbar) cannot change the result.
NATIVE_MIDDLEWARE = [
    "apps.dualserve.native.XFrameOptionsMiddleware",
    "apps.dualserve.native.SecurityMiddleware",
    "apps.dualserve.native.SessionMiddleware",
    "apps.dualserve.native.CommonMiddleware",
    "apps.dualserve.native.CsrfViewMiddleware",
    "apps.dualserve.native.AuthenticationMiddleware",
    "apps.dualserve.native.MessageMiddleware",
]


class VaryOnOriginMiddleware(BothModesMiddleware):
    """Add `Vary: Origin` to every response, as django-cors-headers does: a user's middleware."""

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        return vary_on_origin(self.get_response(request))

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        return vary_on_origin(await self.get_response(request))


def vary_on_origin(response: HttpResponseBase) -> HttpResponseBase:
    """Return `response` with Origin added to its Vary header."""
    patch_vary_headers(response, ["Origin"])
    return response


def asgi_handler(middleware: list[str]) -> ASGIHandler:
    """Return a Django ASGI handler built with `middleware`."""
    with override_settings(MIDDLEWARE=middleware):
        return ASGIHandler()


def vary_of(response: HttpResponseBase) -> list[str]:
    """Return the header names a response's Vary lists."""
    return [name.strip() for name in response.headers.get("Vary", "").split(",") if name.strip()]


def who_hops(url: str) -> str:
    """Return who makes the hops of a request to `url`, and the fixes (manage.py hops)."""
    return "\n".join(
        f"{row.who}: {row.hops:g} ({row.why}; fix: {row.fix})" for row in culprits(measure(url))
    )


async def hops_of_one_request(application: object, path: str = "/async/ok/") -> int:
    """Return the sync_to_async calls one request makes, after a warm-up request."""
    status, _, _ = await asgi_request(application, path)
    assert status == 200
    with count_thread_hops() as counts:
        status, _, _ = await asgi_request(application, path)
    assert status == 200
    return counts["sync_to_async"]


@override_settings(ROOT_URLCONF="tests.dualserve.urls")
class ThreadHopTests(SimpleTestCase):
    async def test_shipped_stack_costs_no_more_hops_than_empty_middleware(self) -> None:
        # On Django's own handler, so the middleware's share is measured alone.
        floor = await hops_of_one_request(asgi_handler([]))
        shipped = await hops_of_one_request(asgi_handler(settings.MIDDLEWARE))
        # The floor is Django's handler's: the request_started receivers and response.close().
        self.assertGreater(floor, 0)
        self.assertEqual(shipped, floor)

    async def test_the_project_application_makes_no_hop_at_all(self) -> None:
        # The pooled handler defers the floor's two hops (tests/dualserve/test_asgi.py). A project
        # middleware that hops fails this test: the message names it and the fix.
        from project.asgi import application

        hops = await hops_of_one_request(application)
        named = await sync_to_async(who_hops)("/async/ok/") if hops else ""
        self.assertEqual(hops, 0, named)

    async def test_shipped_stack_really_runs_on_that_request(self) -> None:
        from project.asgi import application

        _, headers, _ = await asgi_request(application, "/async/ok/")
        self.assertEqual(headers["x-interface"], "asgi")
        self.assertEqual(headers["x-frame-options"], "DENY")
        self.assertEqual(headers["x-content-type-options"], "nosniff")

    async def test_startproject_stack_costs_exactly_the_hops_the_check_names(self) -> None:
        floor = await hops_of_one_request(asgi_handler([]))
        stock = await hops_of_one_request(asgi_handler(STARTPROJECT_MIDDLEWARE))
        named = sum(asgi_hops(import_string(path)) or 0 for path in STARTPROJECT_MIDDLEWARE)
        self.assertGreater(named, 0)
        self.assertEqual(stock - floor, named)

    async def test_csrf_in_sessions_keeps_djangos_hops(self) -> None:
        with override_settings(CSRF_USE_SESSIONS=True):
            csrf = import_string("apps.dualserve.native.CsrfViewMiddleware")
            self.assertEqual(asgi_hops(csrf), 3)

    def test_wsgi_stack_makes_no_thread_hops(self) -> None:
        self.client.get("/sync/ok/")
        with count_thread_hops() as counts:
            response = self.client.get("/sync/ok/")
        self.assertEqual(response.headers["X-Interface"], "wsgi")
        self.assertEqual(counts["async_to_sync"], 0)
        self.assertEqual(counts["sync_to_async"], 0)


@override_settings(ROOT_URLCONF="tests.dualserve.urls", DEBUG=True)
class AdaptationLogTests(SimpleTestCase):
    """Django logs "Synchronous handler adapted ..." on django.request when DEBUG is on."""

    def test_shipped_stack_is_never_adapted(self) -> None:
        with self.assertNoLogs("django.request", "DEBUG"):
            ASGIHandler()
            WSGIHandler()

    def test_a_sync_only_middleware_is_reported(self) -> None:
        middleware = [*settings.MIDDLEWARE, "whitenoise.middleware.WhiteNoiseMiddleware"]
        with (
            override_settings(MIDDLEWARE=middleware),
            self.assertLogs("django.request", "DEBUG") as logs,
        ):
            ASGIHandler()
        self.assertTrue(any("adapted" in line for line in logs.output), logs.output)


@override_settings(ROOT_URLCONF="tests.dualserve.urls", MIDDLEWARE=NATIVE_MIDDLEWARE)
class NativeBehaviourTests(TestCase):
    """The protections Django's classes give hold under ASGI with the native classes."""

    async def test_async_session_is_saved_and_read_back(self) -> None:
        first = await self.async_client.get("/async/session/")
        self.assertEqual(json.loads(first.content), {"visits": 1})
        self.assertIn(settings.SESSION_COOKIE_NAME, first.cookies)
        self.assertIn("Cookie", first.headers["Vary"])
        second = await self.async_client.get("/async/session/")
        self.assertEqual(json.loads(second.content), {"visits": 2})

    def test_sync_session_under_wsgi_matches(self) -> None:
        self.client.get("/sync/session/")
        response = self.client.get("/sync/session/")
        self.assertEqual(json.loads(response.content), {"visits": 2})

    async def test_flushed_session_deletes_the_cookie(self) -> None:
        await self.async_client.get("/async/session/")
        response = await self.async_client.get("/async/session/flush/")
        cookie = response.cookies[settings.SESSION_COOKIE_NAME]
        self.assertEqual(cookie.value, "")
        self.assertEqual(cookie["max-age"], 0)

    async def test_untouched_session_sets_no_cookie(self) -> None:
        response = await self.async_client.get("/async/ok/")
        self.assertNotIn(settings.SESSION_COOKIE_NAME, response.cookies)
        self.assertNotIn("Cookie", vary_of(response))

    @override_settings(
        MIDDLEWARE=[*NATIVE_MIDDLEWARE, "tests.dualserve.test_native.VaryOnOriginMiddleware"]
    )
    async def test_untouched_session_sets_no_cookie_beside_a_users_middleware(self) -> None:
        response = await self.async_client.get("/async/ok/")
        self.assertNotIn(settings.SESSION_COOKIE_NAME, response.cookies)
        self.assertEqual(vary_of(response), ["Origin"])

    async def test_csrf_is_enforced_on_async_views(self) -> None:
        client = AsyncClient(enforce_csrf_checks=True)
        rejected = await client.post("/async/post/")
        self.assertEqual(rejected.status_code, 403)
        secret = "a" * 32
        client.cookies[settings.CSRF_COOKIE_NAME] = secret
        accepted = await client.post("/async/post/", headers={"X-CSRFToken": secret})
        self.assertEqual(accepted.status_code, 200)

    @override_settings(MIDDLEWARE=[])
    async def test_decorator_built_from_the_native_csrf_middleware(self) -> None:
        # make_middleware_decorator calls process_view without awaiting it.
        client = AsyncClient(enforce_csrf_checks=True)
        rejected = await client.post("/async/protected/")
        self.assertEqual(rejected.status_code, 403)
        secret = "b" * 32
        client.cookies[settings.CSRF_COOKIE_NAME] = secret
        accepted = await client.post("/async/protected/", headers={"X-CSRFToken": secret})
        self.assertEqual(accepted.status_code, 200)
        self.assertEqual(accepted.content, b"protected")

    async def test_security_headers_on_async_responses(self) -> None:
        response = await self.async_client.get("/async/ok/")
        self.assertEqual(response.headers["X-Content-Type-Options"], "nosniff")
        self.assertEqual(response.headers["Referrer-Policy"], "same-origin")
        self.assertEqual(response.headers["Cross-Origin-Opener-Policy"], "same-origin")
        self.assertEqual(response.headers["X-Frame-Options"], "DENY")

    @override_settings(SECURE_SSL_REDIRECT=True)
    async def test_ssl_redirect_under_asgi(self) -> None:
        response = await self.async_client.get("/async/ok/")
        self.assertEqual(response.status_code, 301)
        self.assertTrue(response.headers["Location"].startswith("https://"))

    async def test_append_slash_under_asgi(self) -> None:
        response = await self.async_client.get("/async/ok")
        self.assertEqual(response.status_code, 301)
        self.assertEqual(response.headers["Location"], "/async/ok/")

    async def test_message_added_in_async_view_is_read_later(self) -> None:
        await self.async_client.get("/async/messages/add/")
        response = await self.async_client.get("/sync/messages/")
        self.assertEqual(json.loads(response.content), {"messages": ["hello from async"]})

    async def test_auser_is_anonymous_without_login(self) -> None:
        response = await self.async_client.get("/async/whoami/")
        self.assertEqual(json.loads(response.content), {"authenticated": False})


# Django's middlewares commonly added beyond startproject's, each with what it needs in front.
COMMONLY_ADDED_STACKS = {
    "LocaleMiddleware": [],
    "GZipMiddleware": [],
    "ConditionalGetMiddleware": [],
    "LoginRequiredMiddleware": [
        "apps.dualserve.native.SessionMiddleware",
        "apps.dualserve.native.AuthenticationMiddleware",
    ],
    "CurrentSiteMiddleware": [],
}


@override_settings(
    ROOT_URLCONF="tests.dualserve.urls", LANGUAGES=[("en", "English"), ("fr", "French")]
)
class CommonlyAddedNativeTests(TestCase):
    """Each native class answers an async request exactly as Django's class does."""

    async def answers(self, name: str, path: str, **headers: str) -> list[Any]:
        """Return status, headers and body from Django's class and from the native one."""
        results = []
        for module in (REPLACED_MODULES[name], "apps.dualserve.native"):
            with override_settings(MIDDLEWARE=[*COMMONLY_ADDED_STACKS[name], f"{module}.{name}"]):
                response = await self.async_client.get(path, headers=headers)
            results.append((response.status_code, dict(response.headers), response.content))
        return results

    async def test_locale_activates_the_requested_language(self) -> None:
        django, native = await self.answers(
            "LocaleMiddleware", "/async/page/", accept_language="fr"
        )
        self.assertEqual(native, django)
        self.assertEqual(native[1]["Content-Language"], "fr")
        self.assertTrue(native[2].startswith(b"<p>fr</p>"))

    async def test_gzip_compresses(self) -> None:
        django, native = await self.answers(
            "GZipMiddleware", "/async/page/", accept_encoding="gzip"
        )
        self.assertEqual(native[1]["Content-Encoding"], "gzip")
        self.assertEqual(gzip.decompress(native[2]), gzip.decompress(django[2]))

    async def test_conditional_get_answers_304_to_a_known_etag(self) -> None:
        django, native = await self.answers("ConditionalGetMiddleware", "/async/page/")
        self.assertEqual(native, django)
        etag = native[1]["ETag"]
        django, native = await self.answers(
            "ConditionalGetMiddleware", "/async/page/", if_none_match=etag
        )
        self.assertEqual(native, django)
        self.assertEqual(native[0], 304)

    async def test_login_required_redirects_anonymous_requests(self) -> None:
        django, native = await self.answers("LoginRequiredMiddleware", "/async/ok/")
        self.assertEqual(native, django)
        self.assertEqual(native[0], 302)
        self.assertIn("next=/async/ok/", native[1]["Location"])

    async def test_login_required_lets_exempt_views_through(self) -> None:
        django, native = await self.answers("LoginRequiredMiddleware", "/async/public/")
        self.assertEqual(native, django)
        self.assertEqual(native[0], 200)

    async def test_login_required_lets_a_logged_in_user_through(self) -> None:
        from django.contrib.auth.models import User

        user = await User.objects.acreate(username="ada")
        await self.async_client.aforce_login(user)
        django, native = await self.answers("LoginRequiredMiddleware", "/async/whoami/")
        self.assertEqual(native, django)
        self.assertEqual(native[0], 200)

    async def test_current_site_is_set(self) -> None:
        django, native = await self.answers("CurrentSiteMiddleware", "/async/site/")
        self.assertEqual(native, django)
        self.assertEqual(native[2], b"testserver")


REPLACED_MODULES = {
    "LocaleMiddleware": "django.middleware.locale",
    "GZipMiddleware": "django.middleware.gzip",
    "ConditionalGetMiddleware": "django.middleware.http",
    "LoginRequiredMiddleware": "django.contrib.auth.middleware",
    "CurrentSiteMiddleware": "django.contrib.sites.middleware",
}
