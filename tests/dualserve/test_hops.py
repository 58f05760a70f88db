"""Measured thread hops: `manage.py hops URL`, the DEBUG check, and who is named for each hop."""

from __future__ import annotations

import io
import re
from typing import Any

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.conf import settings
from django.core import checks
from django.core.handlers.asgi import ASGIHandler
from django.core.management import CommandError, call_command
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.test import SimpleTestCase, override_settings
from django.utils.deprecation import MiddlewareMixin
from django.utils.module_loading import import_string

from apps.dualserve.asgi import PooledThreadASGIHandler
from apps.dualserve.checks import check_measured_hops, check_middleware
from apps.dualserve.hops import (
    HANDLER,
    MIDDLEWARE,
    SYNC_VIEW,
    TOOLBAR,
    VIEW,
    culprits,
    measure,
    middleware_fix,
    view_why_and_fix,
)
from apps.dualserve.middleware import BothModesMiddleware
from tests.dualserve.test_native import STARTPROJECT_MIDDLEWARE

CALLBACK_MIDDLEWARE = "tests.dualserve.test_hops.ShowCallbackMiddleware"
# Django's middlewares people add beyond startproject's (issue 14).
COMMONLY_ADDED = [
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.gzip.GZipMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.sites.middleware.CurrentSiteMiddleware",
    "django.middleware.http.ConditionalGetMiddleware",
]
# What LoginRequiredMiddleware needs in front of it.
AUTH = ["apps.dualserve.native.SessionMiddleware", "apps.dualserve.native.AuthenticationMiddleware"]


def show_never(request: HttpRequest) -> bool:
    return False


async def ashow_never(request: HttpRequest) -> bool:
    return False


class ShowCallbackMiddleware(BothModesMiddleware):
    """Ask a callback from settings on every request, as django-debug-toolbar does.

    A sync callback runs in sync_to_async on the async path (SHOW_CALLBACK, a dotted path).
    """

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        import_string(settings.SHOW_CALLBACK)(request)
        return self.get_response(request)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        callback = import_string(settings.SHOW_CALLBACK)
        if not iscoroutinefunction(callback):
            callback = sync_to_async(callback)
        await callback(request)
        response: HttpResponseBase = await self.get_response(request)
        return response


class ShownToInternalIPsMiddleware(BothModesMiddleware):
    """Hop only for INTERNAL_IPS or with an X-Debug header, as a shown debug toolbar does."""

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        return self.get_response(request)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        if request.META["REMOTE_ADDR"] in settings.INTERNAL_IPS or "HTTP_X_DEBUG" in request.META:
            await sync_to_async(len)(request.path)
        response: HttpResponseBase = await self.get_response(request)
        return response


class HookedMiddleware(MiddlewareMixin):
    """A project's own middleware, async-capable only through MiddlewareMixin."""

    def process_request(self, request: HttpRequest) -> None:
        request.hooked = True  # type: ignore[attr-defined]


def pooled(middleware: list[str]) -> PooledThreadASGIHandler:
    """Return the template's handler built with `middleware`."""
    with override_settings(MIDDLEWARE=middleware):
        return PooledThreadASGIHandler()


def named_hops(middleware: list[str]) -> int:
    """Return the sum of the hops the static check's messages name for `middleware`."""
    return sum(
        int(re.search(r"costs (\d+) thread hop", message.msg).group(1))  # type: ignore[union-attr]
        for message in check_middleware(middleware, PooledThreadASGIHandler)
    )


@override_settings(
    ROOT_URLCONF="tests.dualserve.urls", SHOW_CALLBACK="tests.dualserve.test_hops.show_never"
)
class MeasuredHopsTests(SimpleTestCase):
    def test_the_shipped_stack_makes_none(self) -> None:
        measurement = measure("/async/ok/", count=3)
        self.assertEqual(measurement.status, 200)
        self.assertEqual(measurement.per_request, 0)
        self.assertEqual(culprits(measurement), [])

    def test_a_callback_middleware_is_named_with_its_callback(self) -> None:
        middleware = [*settings.MIDDLEWARE, CALLBACK_MIDDLEWARE]
        measurement = measure("/async/ok/", handler=pooled(middleware), middleware=middleware)
        rows = {row.who: row for row in culprits(measurement)}
        self.assertEqual(rows[CALLBACK_MIDDLEWARE].kind, MIDDLEWARE)
        self.assertEqual(rows[CALLBACK_MIDDLEWARE].hops, 1)
        self.assertIn("show_never", rows[CALLBACK_MIDDLEWARE].why)
        self.assertIn("coroutine function", rows[CALLBACK_MIDDLEWARE].fix)
        # Its hop is the request's first, so the response is closed on the thread too.
        self.assertEqual(rows["PooledThreadASGIHandler"].kind, HANDLER)
        self.assertIn(CALLBACK_MIDDLEWARE, rows["PooledThreadASGIHandler"].why)
        self.assertEqual(measurement.per_request, 2)

    @override_settings(SHOW_CALLBACK="tests.dualserve.test_hops.ashow_never")
    def test_an_async_callback_takes_the_hops_away(self) -> None:
        middleware = [*settings.MIDDLEWARE, CALLBACK_MIDDLEWARE]
        measurement = measure("/async/ok/", handler=pooled(middleware), middleware=middleware)
        self.assertEqual(measurement.per_request, 0)

    def test_a_sync_view_is_named(self) -> None:
        rows = culprits(measure("/sync/ok/"))
        self.assertEqual((rows[0].kind, rows[0].who), (VIEW, "tests.dualserve.views.sync_ok"))
        self.assertIn("async def", rows[0].fix)

    def test_djangos_handler_is_named_for_its_own_hops(self) -> None:
        with override_settings(MIDDLEWARE=[]):
            handler = ASGIHandler()
        (row,) = culprits(measure("/async/ok/", handler=handler, middleware=[]))
        self.assertEqual((row.who, row.hops), ("ASGIHandler", 2))
        self.assertIn("PooledThreadASGIHandler", row.fix)

    def test_the_static_count_is_the_measured_count_on_the_templates_handler(self) -> None:
        # Each first hop brings back the response-close hop (GZip: 1 named, 2 measured).
        stacks = [[*AUTH, path] for path in COMMONLY_ADDED] + [STARTPROJECT_MIDDLEWARE]
        for middleware in stacks:
            with self.subTest(middleware=middleware[-1]):
                measurement = measure(
                    "/async/ok/", handler=pooled(middleware), middleware=middleware
                )
                self.assertGreater(measurement.per_request, 0)
                self.assertEqual(named_hops(middleware), measurement.per_request)

    def test_native_replacements_make_none(self) -> None:
        from apps.dualserve.native import REPLACEMENTS

        middleware = [*AUTH, *(REPLACEMENTS[path] for path in COMMONLY_ADDED)]
        measurement = measure("/async/ok/", handler=pooled(middleware), middleware=middleware)
        self.assertEqual(measurement.status, 302)  # LoginRequiredMiddleware did run
        self.assertEqual(culprits(measurement), [])


@override_settings(SHOW_CALLBACK="tests.dualserve.test_hops.show_never")
class MeasuredCheckTests(SimpleTestCase):
    def test_names_the_callback_middleware_the_static_check_misses(self) -> None:
        middleware = [*settings.MIDDLEWARE, CALLBACK_MIDDLEWARE]
        with override_settings(MIDDLEWARE=middleware):
            self.assertEqual(check_middleware(middleware), [])
            (message,) = check_measured_hops()
        self.assertEqual((message.id, message.obj), ("dualserve.W003", CALLBACK_MIDDLEWARE))
        self.assertIn("show_never in sync_to_async", message.msg)
        self.assertIn("made 2 in all", message.msg)

    @override_settings(SHOW_CALLBACK="tests.dualserve.test_hops.ashow_never")
    def test_silent_once_the_callback_is_async(self) -> None:
        with override_settings(MIDDLEWARE=[*settings.MIDDLEWARE, CALLBACK_MIDDLEWARE]):
            self.assertEqual(check_measured_hops(), [])

    def test_runs_only_in_debug(self) -> None:
        middleware = [*settings.MIDDLEWARE, CALLBACK_MIDDLEWARE]
        for debug, expected in ((False, []), (True, ["dualserve.W003"])):
            with self.subTest(debug=debug), override_settings(MIDDLEWARE=middleware, DEBUG=debug):
                ids = [m.id for m in checks.run_checks(tags=["async"])]
                self.assertEqual([i for i in ids if i == "dualserve.W003"], expected)

    def test_does_not_repeat_what_the_static_check_reports(self) -> None:
        middleware = [*settings.MIDDLEWARE, "tests.dualserve.test_hops.HookedMiddleware"]
        with override_settings(MIDDLEWARE=middleware):
            self.assertEqual(check_measured_hops(), [])


@override_settings(
    ROOT_URLCONF="tests.dualserve.urls", SHOW_CALLBACK="tests.dualserve.test_hops.show_never"
)
class HopsCommandTests(SimpleTestCase):
    def call(self, *args: str) -> str:
        out = io.StringIO()
        call_command("hops", *args, stdout=out)
        return out.getvalue()

    def test_reports_no_hop_for_an_async_view(self) -> None:
        output = self.call("/async/ok/", "--fail")
        self.assertIn("GET /async/ok/ -> 200 on PooledThreadASGIHandler: 0 thread hops", output)

    def test_names_the_callback_middleware_until_its_callback_is_async(self) -> None:
        with override_settings(MIDDLEWARE=[*settings.MIDDLEWARE, CALLBACK_MIDDLEWARE]):
            self.assertIn(CALLBACK_MIDDLEWARE, self.call("/async/ok/"))
            with override_settings(SHOW_CALLBACK="tests.dualserve.test_hops.ashow_never"):
                self.assertNotIn(CALLBACK_MIDDLEWARE, self.call("/async/ok/"))

    def test_fail_exits_non_zero_on_a_hop(self) -> None:
        with self.assertRaisesMessage(CommandError, "2 thread hops per request to /sync/ok/"):
            self.call("/sync/ok/", "--fail")


SHOWN_TO_INTERNAL_IPS = "tests.dualserve.test_hops.ShownToInternalIPsMiddleware"


@override_settings(
    ROOT_URLCONF="tests.dualserve.urls",
    INTERNAL_IPS=["127.0.0.1"],
    MIDDLEWARE=[SHOWN_TO_INTERNAL_IPS],
)
class VisitorRequestTests(SimpleTestCase):
    """A measured request comes from a visitor's address, with the headers asked for."""

    def hops(self, **request: Any) -> float:
        handler = pooled([SHOWN_TO_INTERNAL_IPS])
        return measure("/async/ok/", handler=handler, **request).per_request

    def test_a_visitor_pays_no_debug_hop(self) -> None:
        self.assertEqual(self.hops(), 0)

    def test_a_developer_on_loopback_does(self) -> None:
        self.assertEqual(self.hops(client="127.0.0.1"), 2)

    def test_headers_reach_the_middleware(self) -> None:
        self.assertEqual(self.hops(headers=[("X-Debug", "1")]), 2)

    def test_the_command_takes_client_and_headers(self) -> None:
        out = io.StringIO()
        call_command("hops", "/async/ok/", "--header", "X-Debug: 1", stdout=out)
        self.assertIn(SHOWN_TO_INTERNAL_IPS, out.getvalue())
        with self.assertRaisesMessage(CommandError, "write it as 'Name: value'"):
            call_command("hops", "/async/ok/", "--header", "no colon", stdout=io.StringIO())


class ViewAdviceTests(SimpleTestCase):
    """Why a view hops, and a fix that applies to it."""

    def test_an_orm_a_method_is_expected(self) -> None:
        why, fix = view_why_and_fix(["QuerySet.get"])
        self.assertIn("QuerySet.get", why)
        self.assertIn("Expected for database access", fix)
        self.assertIn("the ORM's a-methods", fix)

    def test_a_sync_view_rendering_a_template_response_gets_both_reasons(self) -> None:
        why, fix = view_why_and_fix([SYNC_VIEW, "Response.render"])
        self.assertIn("a sync view", why)
        self.assertIn("TemplateResponse", why)
        self.assertIn("async def", fix)
        self.assertIn("keep the hop", fix)


class ToolbarFixTests(SimpleTestCase):
    """django-debug-toolbar is no dependency: its advice is checked on the names it hops with."""

    def test_a_sync_callback_is_told_to_become_async(self) -> None:
        fix = middleware_fix(TOOLBAR, ["show_toolbar"])
        self.assertIn("SHOW_TOOLBAR_CALLBACK", fix)
        self.assertNotIn("panels", fix)

    def test_panel_hops_of_a_shown_toolbar_are_not_blamed_on_the_callback(self) -> None:
        fix = middleware_fix(TOOLBAR, ["SQLPanel.enable_instrumentation"])
        self.assertNotIn("SHOW_TOOLBAR_CALLBACK", fix)
        self.assertIn("panels", fix)
