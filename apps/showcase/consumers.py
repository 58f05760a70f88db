"""WebSocket consumers of the showcase: an echo, and a live feed of published events.

Routed by apps/showcase/routing.py, behind the origin check and the session of
apps.dualserve.websocket; served under ASGI only.
"""

from __future__ import annotations

import json
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer

from apps.showcase.live import LIVE_GROUP

# The largest message the echo takes, in bytes (UTF-8 for text). The servers' own limits are
# 16 MiB (uvicorn's ws_max_size, gunicorn's websocket_max_message_size): a server holds a whole
# message in memory before the consumer sees it, so this lower limit bounds what an echo sends.
ECHO_MAX_MESSAGE_BYTES = 64 * 1024
# RFC 6455, 7.4.1: "a message that is too big for it to process".
CLOSE_MESSAGE_TOO_BIG = 1009


class EchoConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]  # untyped base (no py.typed)
    """Send every message back as it came, text as text and bytes as bytes.

    A message over ECHO_MAX_MESSAGE_BYTES closes the connection with code 1009.
    """

    # No channel layer: nothing is ever sent to an echo, so it subscribes to nothing (an alias
    # that names no layer gives the consumer none).
    channel_layer_alias = None

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        size = len(text_data.encode()) if text_data is not None else len(bytes_data or b"")
        if size > ECHO_MAX_MESSAGE_BYTES:
            await self.close(code=CLOSE_MESSAGE_TOO_BIG)
            return
        await self.send(text_data=text_data, bytes_data=bytes_data)


class LiveConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]  # untyped base (no py.typed)
    """Forward every event published to the live group (apps/showcase/live.py) as JSON text.

    Channels adds the connection to `groups` before connect() and discards it on disconnect.
    The feed is one-way: what the client sends is ignored.
    """

    groups = [LIVE_GROUP]

    async def live_event(self, message: dict[str, Any]) -> None:
        """Send one published event to the client (message type "live.event")."""
        await self.send(text_data=json.dumps(message["event"]))
