"""apps/dualserve/errors.py: a lost database is a 503 with Retry-After, other errors a 500."""

from __future__ import annotations

from collections.abc import Callable

from django.db import IntegrityError, InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse
from django.test import SimpleTestCase, override_settings
from django.urls import path

from apps.dualserve.errors import RETRY_AFTER_S
from project.urls import handler500 as project_handler500


class PoolTimeoutLike(Exception):
    """Stands for a driver's error that Django re-raises as OperationalError from it."""


def raising(error: Exception) -> tuple[Callable[..., HttpResponse], Callable[..., object]]:
    """Return a sync and an async view that raise `error`."""

    def sync_view(request: HttpRequest) -> HttpResponse:
        raise error

    async def async_view(request: HttpRequest) -> HttpResponse:
        raise error

    return sync_view, async_view


def wrapped() -> OperationalError:
    try:
        raise OperationalError("couldn't get a connection after 30.00 sec") from PoolTimeoutLike()
    except OperationalError as error:
        return error


ERRORS = {
    "refused": OperationalError('connection to server at "db" failed: Connection refused'),
    "closed": InterfaceError("connection already closed"),
    "pool": wrapped(),
    "integrity": IntegrityError("duplicate key value violates unique constraint"),
    "bug": ZeroDivisionError("division by zero"),
}

urlpatterns = [
    path(f"{side}/{name}/", view)
    for name, error in ERRORS.items()
    for side, view in zip(("sync", "async"), raising(error), strict=True)
]
handler500 = project_handler500


@override_settings(ROOT_URLCONF=__name__, DEBUG=False)
class ServerErrorTests(SimpleTestCase):
    def setUp(self) -> None:
        self.client.raise_request_exception = False
        self.async_client.raise_request_exception = False

    def test_project_urls_name_the_handler(self) -> None:
        self.assertEqual(project_handler500, "apps.dualserve.errors.server_error")

    def test_an_unreachable_database_is_a_503_with_retry_after_in_both_interfaces(self) -> None:
        for name in ("refused", "closed", "pool"):
            with self.subTest(name=name), self.assertLogs("django.request", "ERROR"):
                response = self.client.get(f"/sync/{name}/")
                self.assertEqual(response.status_code, 503)
                self.assertEqual(response["Retry-After"], str(RETRY_AFTER_S))
                self.assertNotIn(b"Traceback", response.content)
                self.assertNotIn(b"Connection refused", response.content)

    async def test_an_unreachable_database_under_asgi_too(self) -> None:
        for name in ("refused", "closed", "pool"):
            with self.subTest(name=name), self.assertLogs("django.request", "ERROR"):
                response = await self.async_client.get(f"/async/{name}/")
                self.assertEqual(response.status_code, 503)
                self.assertEqual(response["Retry-After"], str(RETRY_AFTER_S))

    def test_every_other_error_stays_a_500(self) -> None:
        for name in ("integrity", "bug"):
            for side in ("sync", "async"):
                with self.subTest(name=name, side=side), self.assertLogs("django.request"):
                    response = self.client.get(f"/{side}/{name}/")
                    self.assertEqual(response.status_code, 500)
                    self.assertNotIn("Retry-After", response)
