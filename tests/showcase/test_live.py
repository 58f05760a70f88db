# showcase: this file goes with the showcase
"""The live feed's views and helpers in process: publishing, its checks, the SSE stream.

Through Django's test clients on the in-memory channel layer (no REDIS_URL), and the stream's
start on a private Redis; tests/serving/test_bus.py runs them on real servers and Redis.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, cast

import redis
from channels.layers import get_channel_layer
from django.test import AsyncClient, Client, SimpleTestCase, override_settings

from apps.showcase import live
from apps.showcase.params import ParamError
from apps.showcase.views import live_events
from tests.showcase.helpers import body_of


def live_members() -> set[str]:
    """Return the channel names in the live group of the in-memory layer."""
    return set(get_channel_layer().groups.get(live.LIVE_GROUP, {}))


class MessageTests(SimpleTestCase):
    def test_a_message_event_carries_an_id_the_text_its_source_and_time(self) -> None:
        event = live.message_event("hello", "a test")
        self.assertEqual(len(event["id"]), 32)
        self.assertEqual(
            {key: event[key] for key in ("kind", "text", "source")},
            {"kind": "message", "text": "hello", "source": "a test"},
        )
        self.assertIsInstance(event["at"], float)
        self.assertNotEqual(live.message_event("hello", "a test")["id"], event["id"])

    def test_text_is_refused_unless_a_non_blank_string_within_the_limit(self) -> None:
        self.assertEqual(live.message_text("x" * live.TEXT_MAX_CHARS), "x" * live.TEXT_MAX_CHARS)
        for text in ("", "  \n", "x" * (live.TEXT_MAX_CHARS + 1), 7, None, ["a"]):
            with self.subTest(text=repr(text)[:20]), self.assertRaises(ParamError):
                live.message_text(text)

    def test_the_in_memory_layer_reaches_no_other_process(self) -> None:
        self.assertFalse(live.reaches_other_processes())
        redis_layer = {"default": {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer"}}
        with override_settings(CHANNEL_LAYERS=redis_layer):
            self.assertTrue(live.reaches_other_processes())


class PublishTests(SimpleTestCase):
    def csrf_client(self, path: str) -> tuple[Client, dict[str, str]]:
        """Return a client that enforces CSRF, with the cookie the GET hands out, and the
        header that carries the token."""
        client = Client(enforce_csrf_checks=True)
        answer = client.get(path)
        self.assertEqual(answer.status_code, 200)
        self.assertIn("X-CSRFToken", json.loads(body_of(answer))["csrf"].replace("x-", "X-"))
        return client, {"X-CSRFToken": client.cookies["csrftoken"].value}

    def test_sync_publish_answers_202_with_the_event_and_sends_it_to_the_group(self) -> None:
        client, headers = self.csrf_client("/sync/publish/")
        received = self.published_to_a_member(
            lambda: client.post(
                "/sync/publish/", {"text": "hi"}, content_type="application/json", headers=headers
            )
        )
        answer, message = received
        self.assertEqual(answer.status_code, 202)
        event = json.loads(body_of(answer))["event"]
        self.assertEqual(json.loads(body_of(answer))["id"], event["id"])
        self.assertEqual((event["text"], event["source"]), ("hi", "sync view (wsgi)"))
        self.assertEqual(message, {"type": live.LIVE_EVENT, "event": event})

    def published_to_a_member(self, post: Any) -> tuple[Any, dict[str, Any]]:
        """Run `post` (a sync call) with a channel in the live group; return its answer and
        what the channel received."""
        from asgiref.sync import async_to_sync, sync_to_async

        async def run() -> tuple[Any, dict[str, Any]]:
            layer = get_channel_layer()
            channel = await layer.new_channel()
            await layer.group_add(live.LIVE_GROUP, channel)
            try:
                answer = await sync_to_async(post)()
                return answer, await layer.receive(channel)
            finally:
                await layer.group_discard(live.LIVE_GROUP, channel)

        return async_to_sync(run)()

    async def test_async_publish_answers_202_with_the_event_and_sends_it_to_the_group(
        self,
    ) -> None:
        client = AsyncClient(enforce_csrf_checks=True)
        self.assertEqual((await client.get("/async/publish/")).status_code, 200)
        headers = {"X-CSRFToken": client.cookies["csrftoken"].value}
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add(live.LIVE_GROUP, channel)
        try:
            answer = await client.post(
                "/async/publish/", {"text": "hi"}, content_type="application/json", headers=headers
            )
            self.assertEqual(answer.status_code, 202)
            event = json.loads(body_of(answer))["event"]
            self.assertEqual(event["source"], "async view (asgi)")
            self.assertEqual(
                await layer.receive(channel), {"type": live.LIVE_EVENT, "event": event}
            )
        finally:
            await layer.group_discard(live.LIVE_GROUP, channel)

    def test_a_post_without_the_csrf_token_is_refused(self) -> None:
        for path in ("/sync/publish/", "/async/publish/"):
            with self.subTest(path=path):
                client, _ = self.csrf_client(path)
                answer = client.post(path, {"text": "hi"}, content_type="application/json")
                self.assertEqual(answer.status_code, 403)

    def test_bad_input_is_refused_with_a_message_saying_why(self) -> None:
        client = Client()
        cases = [
            (b"{", "application/json", 400, "JSON body is malformed"),
            (b"[]", "application/json", 400, "must be an object"),
            (b"{}", "application/json", 400, "no text"),
            (b'{"text": 5}', "application/json", 400, "text must be a string"),
            (b'{"text": " "}', "application/json", 400, "not blank"),
            (b"text=hi", "application/x-www-form-urlencoded", 415, "application/json"),
            (
                json.dumps({"text": "x" * (live.PUBLISH_MAX_BODY_BYTES)}).encode(),
                "application/json",
                413,
                "over the limit",
            ),
        ]
        for path in ("/sync/publish/", "/async/publish/"):
            for body, content_type, status, fragment in cases:
                with self.subTest(path=path, body=body[:20], status=status):
                    answer = client.post(path, body, content_type=content_type)
                    self.assertEqual(answer.status_code, status, body_of(answer))
                    self.assertIn(fragment, json.loads(body_of(answer))["error"])
            with self.subTest(path=path, method="PUT"):
                self.assertEqual(client.put(path).status_code, 405)


@override_settings(SHOWCASE_LIVE_HEARTBEAT_SECONDS=0.05)
class LiveStreamTests(SimpleTestCase):
    async def test_the_stream_sends_retry_then_events_and_heartbeats_then_leaves_the_group(
        self,
    ) -> None:
        before = live_members()
        answer = await AsyncClient().get("/async/live/")
        self.assertEqual(answer.status_code, 200)
        self.assertEqual(answer["Content-Type"], "text/event-stream")
        self.assertEqual(answer["X-Accel-Buffering"], "no")
        self.assertEqual(answer["Cache-Control"], "no-cache")
        chunks = cast(AsyncIterator[bytes], answer.streaming_content)  # type: ignore[attr-defined]
        self.assertEqual(await anext(chunks), b"retry: 3000\n\n")
        # Subscribed before the first bytes: one member more in the group.
        (joined,) = live_members() - before
        event = {"kind": "test", "n": [1, 2.5, None, True], "text": "é"}
        await live.apublish(event)
        data = json.dumps(event, separators=(",", ":"))
        self.assertEqual(await anext(chunks), f"data: {data}\n\n".encode())
        self.assertEqual(await anext(chunks), b": heartbeat\n\n")
        # What a client that goes away causes: Django's handler cancels the task that sends
        # the response, while the stream waits for the next event.
        waiting = asyncio.ensure_future(anext(chunks))
        await asyncio.sleep(0.01)
        waiting.cancel()
        with self.assertRaises(asyncio.CancelledError):
            await waiting
        self.assertNotIn(joined, live_members())

    def test_under_wsgi_the_stream_is_refused(self) -> None:
        answer = Client().get("/async/live/")
        self.assertEqual(answer.status_code, 503)
        self.assertIn("ASGI only", json.loads(body_of(answer))["error"])


# How many loop turns a stream's start on Redis takes is about 10 (connect, SUBSCRIBE twice):
# cancelling after each of 0 to 40 turns lands at every step of it, and after it.
START_TURNS = 40


def test_a_stream_cancelled_at_any_step_of_its_start_leaves_no_subscription(
    redis_url: str,
) -> None:
    """A client may go while its stream is still joining the group: the response head leaves
    first. Cancelled half-way through new_channel() or group_add(), a stream once left its
    channel subscribed in Redis, and a cancellation lost inside redis-py (Python 3.11's
    asyncio.wait_for) let it go on as if its client were there."""
    layers = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [redis_url]},
        }
    }

    client = redis.Redis.from_url(redis_url, socket_timeout=5)

    async def start_and_cancel() -> tuple[list[str], list[bytes]]:
        outcomes = []
        for turns in range(START_TURNS + 1):
            stream = live_events(20.0)
            first = asyncio.ensure_future(anext(stream))
            for _ in range(turns):
                await asyncio.sleep(0)
            first.cancel()
            try:
                await first
            except asyncio.CancelledError:
                outcomes.append("cancelled")
            else:
                outcomes.append("started")  # the cancellation came after its first chunk
                await stream.aclose()  # what the handler does with a response that ends
        # Read while the loop, and so the layer's Redis connection, is still there: its
        # subscriptions end with it. Unsubscribing is sent, not waited for: bounded wait.
        for _ in range(100):
            if not (left := client.pubsub_channels("asgi*")):
                break
            await asyncio.sleep(0.02)
        return outcomes, left

    try:
        with override_settings(CHANNEL_LAYERS=layers):
            outcomes, left = asyncio.run(start_and_cancel())
    finally:
        client.close()
    # Both kinds happened: cancelled during the start, and after it.
    assert {"cancelled", "started"} <= set(outcomes), outcomes
    assert left == []
