"""Publish an event to every client of the live feed (/ws/live/), from sync or async code.

    publish({"kind": "order", "id": 7})           # a sync view, a management command, a task
    await apublish({"kind": "order", "id": 7})    # an async view or consumer

The event goes through the channel layer (settings.CHANNEL_LAYERS) to group LIVE_GROUP, so it
reaches the clients of every worker process only when the layer is Redis (REDIS_URL); the
in-memory layer reaches those of the publishing process alone. An event is a JSON-ready dict
(str, int, float, bool, None, lists and dicts of them): the Redis layer sends it as msgpack and
the consumer as JSON. Publishing never waits for clients, and reaches those connected at that
moment: one that connects later, or reconnects, never sees it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

# The group every LiveConsumer joins (apps/showcase/consumers.py).
LIVE_GROUP = "live"
# The message type Channels dispatches to LiveConsumer.live_event (the dot becomes "_").
LIVE_EVENT = "live.event"


async def apublish(event: Mapping[str, Any]) -> None:
    """Send `event` to every client of the live feed."""
    await get_channel_layer().group_send(LIVE_GROUP, {"type": LIVE_EVENT, "event": dict(event)})


def publish(event: Mapping[str, Any]) -> None:
    """Send `event` to every client of the live feed, from sync code.

    Under ASGI (a sync view on its request thread) this runs on the server's event loop; under
    WSGI each call runs a short event loop of its own, with a Redis connection of its own.
    """
    async_to_sync(apublish)(event)
