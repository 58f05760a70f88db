"""project.asgi: the lifespan protocol answered, HTTP handed to Django."""

from __future__ import annotations

import asyncio
import json
import logging

from asgiref.testing import ApplicationCommunicator
from django.core.signals import request_finished, request_started
from django.test import SimpleTestCase, override_settings
from uvicorn.config import Config
from uvicorn.lifespan.on import LifespanOn

from apps.core.asgi import PooledThreadASGIHandler
from tests.support import asgi_request


class LifespanTests(SimpleTestCase):
    async def test_startup_and_shutdown_complete(self) -> None:
        from project.asgi import application

        communicator = ApplicationCommunicator(
            application, {"type": "lifespan", "asgi": {"version": "3.0"}}
        )
        await communicator.send_input({"type": "lifespan.startup"})
        self.assertEqual(
            await communicator.receive_output(2), {"type": "lifespan.startup.complete"}
        )
        await communicator.send_input({"type": "lifespan.shutdown"})
        self.assertEqual(
            await communicator.receive_output(2), {"type": "lifespan.shutdown.complete"}
        )
        await communicator.wait(2)

    async def test_uvicorn_lifespan_on_starts_quietly(self) -> None:
        # uvicorn's own lifespan driver, as `--lifespan on` runs it.
        config = Config(app="project.asgi:application", lifespan="on")
        config.load()
        lifespan = LifespanOn(config)
        with self.assertNoLogs("uvicorn.error", logging.WARNING):
            await lifespan.startup()
            self.assertFalse(lifespan.startup_failed)
            self.assertFalse(lifespan.should_exit)
            await lifespan.shutdown()
            self.assertFalse(lifespan.shutdown_failed)

    async def test_http_reaches_django(self) -> None:
        from project.asgi import application

        status, headers, _ = await asgi_request(application, "/healthz")
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], "application/json")

    async def test_websocket_is_refused_by_django(self) -> None:
        from project.asgi import application

        communicator = ApplicationCommunicator(application, {"type": "websocket", "path": "/"})
        with self.assertRaisesMessage(ValueError, "Django can only handle ASGI/HTTP"):
            await communicator.wait(2)


async def thread_of(handler: PooledThreadASGIHandler, sleep: float = 0) -> str:
    """Return the thread a sync view ran on for one request through `handler`."""
    query = f"sleep={sleep}".encode()
    status, _, chunks = await asgi_request(handler, "/sync/thread/", query_string=query)
    assert status == 200
    thread: str = json.loads(b"".join(chunks))["thread"]
    return thread


@override_settings(ROOT_URLCONF="tests.core.urls")
class PooledThreadHandlerTests(SimpleTestCase):
    async def test_a_request_reuses_an_idle_thread(self) -> None:
        handler = PooledThreadASGIHandler()
        first = await thread_of(handler)
        second = await thread_of(handler)
        self.assertEqual(first, second)
        self.assertEqual(len(handler.executors), 1)

    async def test_djangos_handler_starts_a_thread_per_request(self) -> None:
        # The cost the pool removes (control for the test above).
        from django.core.handlers.asgi import ASGIHandler

        handler = ASGIHandler()
        threads = {await thread_of(handler) for _ in range(3)}  # type: ignore[arg-type]
        self.assertEqual(len(threads), 3)

    async def test_concurrent_requests_get_their_own_threads(self) -> None:
        handler = PooledThreadASGIHandler()
        threads = await asyncio.gather(*(thread_of(handler, sleep=0.2) for _ in range(4)))
        self.assertEqual(len(set(threads)), 4)

    @override_settings(ASGI_IDLE_THREADS=2)
    async def test_idle_threads_are_bounded(self) -> None:
        handler = PooledThreadASGIHandler()
        await asyncio.gather(*(thread_of(handler, sleep=0.1) for _ in range(5)))
        self.assertEqual(len(handler.executors), 2)

    async def test_request_signals_still_fire(self) -> None:
        # close_old_connections hangs on these: connections are still closed per request.
        handler = PooledThreadASGIHandler()
        seen: list[str] = []

        def started(**kwargs: object) -> None:
            seen.append("started")

        def finished(**kwargs: object) -> None:
            seen.append("finished")

        request_started.connect(started)
        request_finished.connect(finished)
        try:
            await thread_of(handler)
            await thread_of(handler)
        finally:
            request_started.disconnect(started)
            request_finished.disconnect(finished)
        self.assertEqual(seen, ["started", "finished", "started", "finished"])

    async def test_non_http_scopes_are_refused_as_django_does(self) -> None:
        communicator = ApplicationCommunicator(
            PooledThreadASGIHandler(), {"type": "websocket", "path": "/"}
        )
        with self.assertRaisesMessage(ValueError, "Django can only handle ASGI/HTTP"):
            await communicator.wait(2)
