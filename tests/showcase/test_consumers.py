# showcase: this file goes with the showcase
"""The showcase's consumers, in process: the echo and its size limit, the live feed and its group.

Through project.asgi's `websocket` application, as a server would call it: the origin check,
the session and the routes of apps.dualserve.websocket run too. The channel layer is the
in-memory one (no REDIS_URL); tests/serving/test_websocket.py runs them on Redis and real servers.

Channels' own WebsocketCommunicator cannot be imported without daphne (channels.testing imports
its live-server test case, which needs daphne), so `Socket` below speaks the same ASGI messages.
"""

from __future__ import annotations

import json
from typing import Any

from asgiref.sync import sync_to_async
from asgiref.testing import ApplicationCommunicator
from channels.layers import get_channel_layer
from django.test import SimpleTestCase

from apps.showcase import live
from apps.showcase.consumers import (
    CLOSE_LOGIN_REQUIRED,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_POLICY_VIOLATION,
    ECHO_MAX_MESSAGE_BYTES,
    ECHO_MESSAGE_BURST,
    LOGIN_REASON,
    TOO_BIG_REASON,
    TOO_MANY_REASON,
)
from project.asgi import application

SAME_ORIGIN = [(b"origin", b"http://localhost:8000"), (b"host", b"localhost:8000")]


class Socket(ApplicationCommunicator):
    """One WebSocket connection to an ASGI application, driven message by message."""

    def __init__(self, path: str, headers: list[tuple[bytes, bytes]]) -> None:
        scope = {"type": "websocket", "path": path, "query_string": b"", "headers": headers}
        super().__init__(application, scope)

    async def connect(self) -> tuple[bool, int | None]:
        """Open the handshake; return (True, None) if accepted, else (False, the close code)."""
        await self.send_input({"type": "websocket.connect"})
        answer = await self.receive_output(1)
        if answer["type"] == "websocket.close":
            return False, answer.get("code", 1000)
        assert answer["type"] == "websocket.accept", answer
        return True, answer.get("subprotocol")

    async def send_to(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Send one message from the client, text or bytes."""
        if text_data is not None:
            await self.send_input({"type": "websocket.receive", "text": text_data})
        else:
            await self.send_input({"type": "websocket.receive", "bytes": bytes_data})

    async def receive_from(self) -> str | bytes:
        """Return the next message the application sends, text or bytes."""
        message = await self.receive_output(1)
        assert message["type"] == "websocket.send", message
        payload: str | bytes = (
            message["text"] if message.get("text") is not None else message["bytes"]
        )
        return payload

    async def receive_json_from(self) -> Any:
        """Return the next text message, decoded from JSON."""
        text = await self.receive_from()
        assert isinstance(text, str), text
        return json.loads(text)

    async def disconnect(self) -> None:
        """Close from the client's side and let the application finish."""
        await self.send_input({"type": "websocket.disconnect", "code": 1000})
        await self.wait(1)


def communicator(path: str, headers: list[tuple[bytes, bytes]] = SAME_ORIGIN) -> Socket:
    """Return a connection to `path` on project.asgi, as a page on localhost opens it."""
    return Socket(path, headers)


def live_members() -> set[str]:
    """Return the channel names in the live group of the in-memory layer."""
    return set(get_channel_layer().groups.get(live.LIVE_GROUP, {}))


class ConsumerTestCase(SimpleTestCase):
    # Channels closes stale connections around every message it dispatches (channels.db), as
    # Django does around a request: with a connection open in that thread (an earlier test's),
    # that checks it. Nothing here writes.
    databases = frozenset({"default"})


class EchoTests(ConsumerTestCase):
    async def test_text_and_bytes_come_back_as_sent(self) -> None:
        echo = communicator("/ws/echo/")
        self.assertEqual(await echo.connect(), (True, None))
        await echo.send_to(text_data="héllo")
        self.assertEqual(await echo.receive_from(), "héllo")
        await echo.send_to(bytes_data=b"\x00\xffbytes")
        self.assertEqual(await echo.receive_from(), b"\x00\xffbytes")
        await echo.disconnect()

    async def test_a_message_at_the_limit_comes_back(self) -> None:
        echo = communicator("/ws/echo/")
        await echo.connect()
        await echo.send_to(bytes_data=b"x" * ECHO_MAX_MESSAGE_BYTES)
        self.assertEqual(len(await echo.receive_from()), ECHO_MAX_MESSAGE_BYTES)
        await echo.disconnect()

    async def test_an_oversized_message_closes_with_1009(self) -> None:
        for message in (
            {"bytes_data": b"x" * (ECHO_MAX_MESSAGE_BYTES + 1)},
            # Counted in UTF-8 bytes: half as many characters, two bytes each.
            {"text_data": "é" * (ECHO_MAX_MESSAGE_BYTES // 2 + 1)},
        ):
            with self.subTest(kind=next(iter(message))):
                echo = communicator("/ws/echo/")
                await echo.connect()
                await echo.send_to(**message)
                closed = await echo.receive_output(1)
                too_big = {"code": CLOSE_MESSAGE_TOO_BIG, "reason": TOO_BIG_REASON}
                self.assertEqual(closed, {"type": "websocket.close", **too_big})
                await echo.disconnect()

    async def test_a_client_over_its_budget_closes_with_1008(self) -> None:
        echo = communicator("/ws/echo/")
        await echo.connect()
        for n in range(ECHO_MESSAGE_BURST):
            await echo.send_to(text_data=str(n))
            self.assertEqual(await echo.receive_from(), str(n))
        await echo.send_to(text_data="one too many")
        closed = await echo.receive_output(1)
        self.assertEqual(
            closed,
            {"type": "websocket.close", "code": CLOSE_POLICY_VIOLATION, "reason": TOO_MANY_REASON},
        )
        # What was sent before the close reached the client is ignored.
        await echo.send_to(text_data="after the close")
        self.assertTrue(await echo.receive_nothing(0.1))
        await echo.disconnect()


class PrivateTests(ConsumerTestCase):
    async def test_an_anonymous_client_is_closed_with_4401(self) -> None:
        private = communicator("/ws/private/")
        self.assertEqual(await private.connect(), (True, None))
        closed = await private.receive_output(1)
        self.assertEqual(
            closed,
            {"type": "websocket.close", "code": CLOSE_LOGIN_REQUIRED, "reason": LOGIN_REASON},
        )
        await private.disconnect()


class LiveTests(ConsumerTestCase):
    async def test_published_events_reach_the_client_as_json(self) -> None:
        feed = communicator("/ws/live/")
        self.assertEqual(await feed.connect(), (True, None))
        await live.apublish({"from": "async", "n": 1})
        self.assertEqual(await feed.receive_json_from(), {"from": "async", "n": 1})
        # From sync code, as a sync view would (on a thread, as Django runs one under ASGI).
        await sync_to_async(live.publish)({"from": "sync", "n": [2, 3]})
        self.assertEqual(await feed.receive_json_from(), {"from": "sync", "n": [2, 3]})
        await feed.disconnect()

    async def test_every_client_gets_the_event(self) -> None:
        feeds = [communicator("/ws/live/") for _ in range(3)]
        for feed in feeds:
            await feed.connect()
        await live.apublish({"n": 1})
        for feed in feeds:
            self.assertEqual(await feed.receive_json_from(), {"n": 1})
            await feed.disconnect()

    async def test_a_client_joins_on_connect_and_leaves_on_disconnect(self) -> None:
        before = live_members()
        feed = communicator("/ws/live/")
        await feed.connect()
        joined = live_members() - before
        self.assertEqual(len(joined), 1)
        await feed.disconnect()
        self.assertFalse(joined & live_members())

    async def test_what_the_client_sends_is_ignored(self) -> None:
        feed = communicator("/ws/live/")
        await feed.connect()
        await feed.send_to(text_data="not json {")
        self.assertTrue(await feed.receive_nothing(0.1))
        await live.apublish({"still": "open"})
        self.assertEqual(await feed.receive_json_from(), {"still": "open"})
        await feed.disconnect()


class HandshakeTests(ConsumerTestCase):
    """apps.dualserve.websocket in front of the consumers: who may open a socket, and where."""

    async def test_a_foreign_origin_is_refused_before_the_consumer(self) -> None:
        before = live_members()
        for origin in (b"http://evil.example", b"null"):
            with self.subTest(origin=origin):
                feed = communicator("/ws/live/", [(b"origin", origin), (b"host", b"localhost")])
                connected, _ = await feed.connect()
                self.assertFalse(connected)
                await feed.wait(1)
        # Refused before the consumer: it never joined the group.
        self.assertEqual(live_members(), before)

    async def test_a_handshake_without_origin_is_refused(self) -> None:
        echo = communicator("/ws/echo/", [(b"host", b"localhost")])
        connected, _ = await echo.connect()
        self.assertFalse(connected)
        await echo.wait(1)

    async def test_a_path_without_a_route_is_refused_not_raised(self) -> None:
        nowhere = communicator("/ws/nowhere/")
        connected, _ = await nowhere.connect()
        self.assertFalse(connected)
        await nowhere.wait(1)

    async def test_the_consumer_sees_the_session_and_user(self) -> None:
        from apps.showcase.consumers import EchoConsumer

        scopes: list[dict[str, Any]] = []

        async def connect(self: Any) -> None:
            scopes.append(self.scope)
            await self.accept()

        original = EchoConsumer.connect
        EchoConsumer.connect = connect
        try:
            echo = communicator("/ws/echo/")
            self.assertEqual(await echo.connect(), (True, None))
            await echo.disconnect()
        finally:
            EchoConsumer.connect = original
        (scope,) = scopes
        self.assertTrue(scope["user"].is_anonymous)
        self.assertIsNone(scope["session"].session_key)
