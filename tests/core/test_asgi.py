"""project.asgi: the lifespan protocol answered, HTTP handed to Django."""

from __future__ import annotations

import logging

from asgiref.testing import ApplicationCommunicator
from django.test import SimpleTestCase
from uvicorn.config import Config
from uvicorn.lifespan.on import LifespanOn

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
