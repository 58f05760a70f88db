"""Project middlewares: request context (ID, timing, interface) and the health probes."""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator

from django.db.migrations.recorder import MigrationRecorder
from django.test import Client, SimpleTestCase, TestCase, override_settings

from apps.dualserve import middleware
from apps.dualserve.logging import RequestIDFilter

SERVER_TIMING_RE = re.compile(r"app;dur=\d+\.\d{2}")


class RecordingHandler(logging.Handler):
    """Keep records after the request ID filter has run, as the console handler does."""

    def __init__(self) -> None:
        super().__init__()
        self.addFilter(RequestIDFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def recorded(logger_name: str) -> Iterator[list[logging.LogRecord]]:
    """Collect the records of `logger_name` while the block runs, after the request ID filter."""
    handler = RecordingHandler()
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)


@override_settings(ROOT_URLCONF="tests.dualserve.urls")
class RequestContextTests(SimpleTestCase):
    def test_generates_a_request_id(self) -> None:
        first = self.client.get("/sync/ok/")
        second = self.client.get("/sync/ok/")
        self.assertRegex(first.headers["X-Request-ID"], r"^[0-9a-f]{32}$")
        self.assertNotEqual(first.headers["X-Request-ID"], second.headers["X-Request-ID"])

    async def test_async_generates_a_request_id(self) -> None:
        response = await self.async_client.get("/async/ok/")
        self.assertRegex(response.headers["X-Request-ID"], r"^[0-9a-f]{32}$")

    def test_echoes_a_well_formed_incoming_id(self) -> None:
        for value in ("5f1d6b7e9c2a4b3d8e0f1a2b3c4d5e6f", "req-42.a:b_c", "0"):
            with self.subTest(value=value):
                response = self.client.get("/sync/ok/", headers={"X-Request-ID": value})
                self.assertEqual(response.headers["X-Request-ID"], value)

    async def test_async_echoes_a_well_formed_incoming_id(self) -> None:
        response = await self.async_client.get("/async/ok/", headers={"X-Request-ID": "abc-123"})
        self.assertEqual(response.headers["X-Request-ID"], "abc-123")

    def test_replaces_a_malformed_incoming_id(self) -> None:
        for value in ("two words", "x" * 129, "-leading-dash", "semi;colon", "<script>"):
            with self.subTest(value=value):
                response = self.client.get("/sync/ok/", headers={"X-Request-ID": value})
                self.assertNotEqual(response.headers["X-Request-ID"], value)
                self.assertRegex(response.headers["X-Request-ID"], r"^[0-9a-f]{32}$")

    def test_server_timing_and_interface_under_wsgi(self) -> None:
        response = self.client.get("/sync/ok/")
        self.assertRegex(response.headers["Server-Timing"], SERVER_TIMING_RE)
        self.assertEqual(response.headers["X-Interface"], "wsgi")

    async def test_server_timing_and_interface_under_asgi(self) -> None:
        response = await self.async_client.get("/async/ok/")
        self.assertRegex(response.headers["Server-Timing"], SERVER_TIMING_RE)
        self.assertEqual(response.headers["X-Interface"], "asgi")

    def test_log_records_carry_the_request_id(self) -> None:
        self._assert_logged_with_id(
            lambda: self.client.get("/sync/log/", headers={"X-Request-ID": "sync-1"}), "sync-1"
        )

    def test_async_log_records_carry_the_request_id(self) -> None:
        from asgiref.sync import async_to_sync

        def request() -> object:
            return async_to_sync(self.async_client.get)(
                "/async/log/", headers={"X-Request-ID": "async-1"}
            )

        self._assert_logged_with_id(request, "async-1")

    def test_a_4xx_logged_by_django_carries_the_request_id(self) -> None:
        self._assert_refusal_logged_with_id(
            lambda: self.client.get("/nowhere/", headers={"X-Request-ID": "sync-404"}), "sync-404"
        )

    def test_async_4xx_logged_by_django_carries_the_request_id(self) -> None:
        from asgiref.sync import async_to_sync

        def request() -> object:
            return async_to_sync(self.async_client.get)(
                "/nowhere/", headers={"X-Request-ID": "async-404"}
            )

        self._assert_refusal_logged_with_id(request, "async-404")

    def test_a_client_cannot_set_the_logged_id_past_the_middleware(self) -> None:
        # An ID the middleware refuses (a newline: a forged log line) is replaced everywhere.
        with recorded("django.request") as records:
            response = self.client.get("/nowhere/", headers={"X-Request-ID": "x\nforged"})
        (record,) = records
        self.assertEqual(record.request_id, response.headers["X-Request-ID"])  # type: ignore[attr-defined]
        self.assertNotIn("forged", record.request_id)  # type: ignore[attr-defined]

    def _assert_refusal_logged_with_id(self, send: object, request_id: str) -> None:
        with recorded("django.request") as records:
            response = send()  # type: ignore[operator]
        self.assertEqual(response.status_code, 404)
        self.assertEqual([r.request_id for r in records], [request_id])  # type: ignore[attr-defined]

    def _assert_logged_with_id(self, send: object, request_id: str) -> None:
        with recorded("tests.dualserve") as records:
            response = send()  # type: ignore[operator]
        self.assertEqual(json.loads(response.content), {"request_id": request_id})
        self.assertEqual([r.request_id for r in records], [request_id])  # type: ignore[attr-defined]
        # Outside a request the filter still works (the contextvar's default).
        self.assertEqual(middleware.request_id_var.get(), "-")


class HealthCheckTests(TestCase):
    def setUp(self) -> None:
        middleware._migrations_complete.clear()
        self.addCleanup(middleware._migrations_complete.clear)

    def test_liveness_never_touches_the_database(self) -> None:
        with self.assertNumQueries(0):
            response = self.client.get("/healthz")
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response.json(), {"status": "ok"})
        self.assertEqual(response.headers["Cache-Control"], "no-store")

    async def test_async_liveness(self) -> None:
        response = await self.async_client.get("/healthz")
        self.assertEqual(response.status_code, 200)

    def test_readiness_when_migrated(self) -> None:
        response = self.client.get("/readyz")
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response.json(), {"status": "ok"})

    async def test_async_readiness_when_migrated(self) -> None:
        response = await self.async_client.get("/readyz")
        self.assertEqual(response.status_code, 200)

    def test_readiness_fails_with_an_unapplied_migration(self) -> None:
        MigrationRecorder.Migration.objects.filter(app="sessions").delete()
        response = self.client.get("/readyz")
        self.assertEqual(response.status_code, 503)
        self.assertEqual(response.json()["reason"], "unapplied migrations")

    def test_probes_answer_any_host(self) -> None:
        # kubelet sends the pod IP; it is not in ALLOWED_HOSTS.
        for path in ("/healthz", "/readyz"):
            with self.subTest(path=path):
                response = self.client.get(path, headers={"Host": "10.1.2.3:8000"})
                self.assertEqual(response.status_code, 200)
        self.assertEqual(self.client.get("/", headers={"Host": "10.1.2.3:8000"}).status_code, 400)

    @override_settings(SECURE_SSL_REDIRECT=True)
    def test_probes_are_not_redirected_to_https(self) -> None:
        client = Client()
        self.assertEqual(client.get("/healthz").status_code, 200)
        self.assertEqual(client.get("/readyz").status_code, 200)
        self.assertEqual(client.get("/").status_code, 301)
