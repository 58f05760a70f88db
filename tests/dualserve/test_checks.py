"""The system checks: thread hops under ASGI, and the deploy checks kept honest."""

from __future__ import annotations

from django.conf import settings
from django.core import checks
from django.core.handlers.asgi import ASGIHandler
from django.test import SimpleTestCase, override_settings

from apps.dualserve.asgi import PooledThreadASGIHandler
from apps.dualserve.checks import check_middleware, security_with_native_middleware
from apps.dualserve.native import REPLACEMENTS
from tests.dualserve.test_hops import COMMONLY_ADDED
from tests.dualserve.test_native import STARTPROJECT_MIDDLEWARE


class MiddlewareHopCheckTests(SimpleTestCase):
    def test_silent_for_the_shipped_settings(self) -> None:
        self.assertEqual(check_middleware(settings.MIDDLEWARE), [])
        ids = {m.id for m in checks.run_checks(tags=["async"])}
        self.assertFalse({i for i in ids if i and i.startswith("dualserve.")}, ids)

    def test_fires_for_every_startproject_middleware(self) -> None:
        messages = check_middleware(STARTPROJECT_MIDDLEWARE)
        self.assertEqual([m.obj for m in messages], STARTPROJECT_MIDDLEWARE)
        for message in messages:
            with self.subTest(middleware=message.obj):
                self.assertEqual(message.id, "dualserve.W002")
                self.assertIn(REPLACEMENTS[str(message.obj)], message.hint or "")
                self.assertRegex(message.msg, r"costs \d+ thread hops? per request")

    def test_csrf_costs_three_hops_on_djangos_handler(self) -> None:
        (message,) = check_middleware(["django.middleware.csrf.CsrfViewMiddleware"], ASGIHandler)
        self.assertIn("costs 3 thread hops", message.msg)

    def test_the_first_hop_also_counts_the_close_hop_it_brings_back(self) -> None:
        gzip, csrf = check_middleware(
            ["django.middleware.gzip.GZipMiddleware", "django.middleware.csrf.CsrfViewMiddleware"],
            PooledThreadASGIHandler,
        )
        self.assertIn("costs 2 thread hops", gzip.msg)
        self.assertIn("brings back response.close()", gzip.msg)
        self.assertIn("costs 3 thread hops", csrf.msg)

    def test_sync_only_middleware_is_named(self) -> None:
        (message,) = check_middleware(["whitenoise.middleware.WhiteNoiseMiddleware"])
        self.assertEqual(message.id, "dualserve.W001")
        self.assertIn("apps.dualserve.static.StaticFilesMiddleware", message.hint or "")

    def test_a_projects_own_middleware_gets_a_generic_hint(self) -> None:
        (message,) = check_middleware(["tests.dualserve.test_hops.HookedMiddleware"])
        self.assertEqual(message.id, "dualserve.W002")
        self.assertIn("Give it an async path", message.hint or "")

    def test_djangos_own_middleware_is_not_told_to_get_an_async_path(self) -> None:
        (message,) = check_middleware(["django.middleware.cache.UpdateCacheMiddleware"])
        self.assertEqual(message.id, "dualserve.W002")
        self.assertIn("NativeHooksMixin", message.hint or "")

    def test_djangos_commonly_added_middlewares_get_their_native_replacement(self) -> None:
        for message in check_middleware(COMMONLY_ADDED):
            with self.subTest(middleware=message.obj):
                self.assertIn(
                    f"apps.dualserve.native.{str(message.obj).rsplit('.', 1)[1]}",
                    message.hint or "",
                )

    def test_registered_check_reads_middleware_setting(self) -> None:
        with override_settings(MIDDLEWARE=STARTPROJECT_MIDDLEWARE):
            ids = [m.id for m in checks.run_checks(tags=["async"])]
        self.assertEqual(ids.count("dualserve.W002"), len(STARTPROJECT_MIDDLEWARE))


class DeployChecksWithNativeMiddlewareTests(SimpleTestCase):
    @override_settings(SECURE_HSTS_SECONDS=0)
    def test_hsts_is_still_checked(self) -> None:
        ids = [m.id for m in security_with_native_middleware(None)]
        self.assertIn("security.W004", ids)

    @override_settings(SESSION_COOKIE_SECURE=False, CSRF_COOKIE_SECURE=False)
    def test_cookie_security_is_still_checked(self) -> None:
        ids = [m.id for m in security_with_native_middleware(None)]
        self.assertIn("security.W016", ids)
        self.assertIn("security.W012", ids)

    def test_missing_security_middleware_is_reported(self) -> None:
        without = [m for m in settings.MIDDLEWARE if not m.endswith(".SecurityMiddleware")]
        with override_settings(MIDDLEWARE=without):
            ids = [m.id for m in security_with_native_middleware(None)]
        self.assertIn("dualserve.W011", ids)

    def test_missing_protections_are_reported_with_djangos_own_paths(self) -> None:
        # The project silences security.W001-W003; with Django's classes listed and the three
        # protections removed, --deploy must still name each one.
        kept = [
            path
            for path in STARTPROJECT_MIDDLEWARE
            if not path.endswith(
                ("SecurityMiddleware", "CsrfViewMiddleware", "XFrameOptionsMiddleware")
            )
        ]
        with override_settings(MIDDLEWARE=kept):
            ids = {m.id for m in checks.run_checks(include_deployment_checks=True)}
        self.assertLessEqual({"dualserve.W011", "dualserve.W012", "dualserve.W013"}, ids)

    def test_silent_with_djangos_own_paths(self) -> None:
        # Django's own run covers them: no second report.
        with override_settings(MIDDLEWARE=STARTPROJECT_MIDDLEWARE, SECURE_HSTS_SECONDS=0):
            self.assertEqual(security_with_native_middleware(None), [])
