"""Publish an event to every client of the live feed (/ws/live/, /async/live/), sync or async.

    publish({"kind": "order", "id": 7})           # a sync view, a management command, a task
    await apublish({"kind": "order", "id": 7})    # an async view or consumer

The event goes through the channel layer (settings.CHANNEL_LAYERS) to group LIVE_GROUP, so it
reaches the clients of every worker process only when the layer is Redis (REDIS_URL); the
in-memory layer reaches those of the publishing process alone. An event is a JSON-ready dict
(str, int, float, bool, None, lists and dicts of them): the Redis layer sends it as msgpack and
the consumer as JSON. Publishing never waits for clients, and reaches those connected at that
moment: one that connects later, or reconnects, never sees it.

The publishers that come with the showcase (the publish views, `manage.py publish`, the
producer, the ZeroMQ bridge) all send a message built by `message_event`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings

from apps.showcase.params import ParamError, json_object

# The group every LiveConsumer and every /async/live/ stream joins.
LIVE_GROUP = "live"
# The message type Channels dispatches to LiveConsumer.live_event (the dot becomes "_").
LIVE_EVENT = "live.event"
# The longest text a message event carries, in characters.
TEXT_MAX_CHARS = 1000
# The largest body the publish views read, in bytes: the text at 4 bytes a character in UTF-8,
# plus room for the JSON around it. Above it they answer 413.
PUBLISH_MAX_BODY_BYTES = 8 * 1024


async def apublish(event: Mapping[str, Any]) -> None:
    """Send `event` to every client of the live feed."""
    await get_channel_layer().group_send(LIVE_GROUP, {"type": LIVE_EVENT, "event": dict(event)})


def publish(event: Mapping[str, Any]) -> None:
    """Send `event` to every client of the live feed, from sync code.

    Under ASGI (a sync view on its request thread) this runs on the server's event loop; under
    WSGI each call runs a short event loop of its own, with a Redis connection of its own.
    """
    async_to_sync(apublish)(event)


def reaches_other_processes() -> bool:
    """Return whether a publish here reaches clients of other processes (a Redis layer)."""
    backend: str = settings.CHANNEL_LAYERS.get("default", {}).get("BACKEND", "")
    return not backend.endswith("InMemoryChannelLayer")


def message_text(text: object) -> str:
    """Return `text` when a message event can carry it; refuse anything else with ParamError."""
    if not isinstance(text, str):
        raise ParamError(f"text must be a string, got {type(text).__name__}")
    if not text.strip() or len(text) > TEXT_MAX_CHARS:
        raise ParamError(f"text must be 1 to {TEXT_MAX_CHARS} characters, not blank")
    return text


def message_event(text: str, source: str) -> dict[str, Any]:
    """Return a new message event: a random id, the text, who published it and when."""
    return {
        "id": uuid.uuid4().hex,
        "kind": "message",
        "text": message_text(text),
        "source": source,
        "at": round(time.time(), 3),
    }


def text_from_body(body: bytes) -> str:
    """Return the text of a publish request's JSON body, {"text": "..."}; refuse anything else."""
    data = json_object(body)
    if "text" not in data:
        raise ParamError('JSON body must be {"text": "..."}: no text')
    return message_text(data["text"])
