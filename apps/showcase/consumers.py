"""WebSocket consumers of the showcase: an echo, a live feed of published events, a private echo.

Routed by apps/showcase/routing.py, behind the origin check and the session of
apps.dualserve.websocket; served under ASGI only.

Each bounds what one client can make its worker do (docs/reliability.md, "WebSockets: hostile
clients"): a message over ECHO_MAX_MESSAGE_BYTES closes with 1009, a client over its message
budget with 1008, and a live client too slow to read the feed is dropped with 1008 instead of
having the feed pile up in the worker's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer

from apps.showcase.live import LIVE_GROUP

# The largest message the consumers take, in bytes (UTF-8 for text). The servers' limit is 1 MiB
# (deploy/gunicorn/common.py's websocket_max_message_size): a server holds a whole message in
# memory before the consumer sees it; this lower limit bounds what an echo sends back.
ECHO_MAX_MESSAGE_BYTES = 64 * 1024
# What a client may send, as a budget that refills: the echo is for a page's own messages (a
# person typing, a cursor or a game state at up to a few dozen updates a second), so 50 a second
# with a burst of 100, and 512 KiB a second with a burst of 1 MiB (16 of the largest messages).
# A client over it is a bug or a flood: each message costs the worker a dispatch and a send.
ECHO_MESSAGES_PER_SECOND = 50.0
ECHO_MESSAGE_BURST = 100
ECHO_BYTES_PER_SECOND = 512 * 1024.0
ECHO_BYTES_BURST = 1024 * 1024
# The live feed is one-way: a page has nothing to send it but an occasional keep-alive.
LIVE_MESSAGES_PER_SECOND = 1.0
LIVE_MESSAGE_BURST = 10
# Events waiting for one live client, WebSocket or SSE (views.live_events): a client whose
# socket buffers are full and this many events behind is dropped. 100 absorbs a burst beyond
# what the kernel already buffers (a tab in the background, a pause) and bounds the worker's
# memory per client at 100 events (TEXT_MAX_CHARS: 4 KiB each at most). It is also the
# capacity Channels' own layers give a channel.
LIVE_QUEUE_EVENTS = 100
# How long dropping a live client waits to send its close frame: a client that reads nothing
# never makes room for it (uvicorn waits for room to send), so it is then only disconnected.
LIVE_CLOSE_SECONDS = 1.0

# RFC 6455, 7.4.1: "a message that violates its policy", "a message that is too big".
CLOSE_POLICY_VIOLATION = 1008
CLOSE_MESSAGE_TOO_BIG = 1009
# The private range (4000-4999), as HTTP's 401: a browser sees a refused handshake only as a
# failure (1006, no status), so the private echo accepts, then closes with this code.
CLOSE_LOGIN_REQUIRED = 4401

TOO_BIG_REASON = f"message over {ECHO_MAX_MESSAGE_BYTES} bytes"
TOO_MANY_REASON = "too many messages"
TOO_SLOW_REASON = "too slow to read the feed"
LOGIN_REASON = "log in first"


async def release_channel(layer: Any, channel: str) -> None:
    """Unsubscribe `channel` from the channel layer now, whoever still has it open.

    The pub/sub layer (channels_redis/pubsub.py) forgets a channel and unsubscribes it only
    when a receive() on it is cancelled: Channels cancels its pending receives when a consumer
    stops, but a consumer stopped from a channel-layer handler has none pending (the receive
    that brought the message is done), and its subscription would outlive it. A message left
    in the channel is taken and dropped first (at most what arrived before it left its groups).
    """
    while True:
        receiving = asyncio.ensure_future(layer.receive(channel))
        await asyncio.sleep(0)  # it starts, and waits unless a message is there
        if not receiving.done():
            receiving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await receiving
            return


class Budget:
    """A token bucket: `rate` units a second, up to `burst` saved; spend() says if one fits."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.checked = time.monotonic()

    def spend(self, amount: float) -> bool:
        """Take `amount` from the budget; return False, taking nothing, if it is not there."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.checked) * self.rate)
        self.checked = now
        if amount > self.tokens:
            return False
        self.tokens -= amount
        return True


class GuardedConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]  # untyped base (no py.typed)
    """A consumer that closes on an oversized message (1009) or a client over budget (1008).

    Subclasses set the budget's figures; receive() sees only messages within both limits.
    """

    messages_per_second = ECHO_MESSAGES_PER_SECOND
    message_burst = ECHO_MESSAGE_BURST
    bytes_per_second = ECHO_BYTES_PER_SECOND
    bytes_burst = ECHO_BYTES_BURST

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.closing = False
        self.messages = Budget(self.messages_per_second, self.message_burst)
        self.bytes = Budget(self.bytes_per_second, self.bytes_burst)

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Call the message's handler, without Channels' close_old_connections around it.

        These consumers use no database connection (the user is loaded before, by the auth
        middleware), and that check is a hop to a thread for every message: what a flood
        would multiply.
        """
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def websocket_receive(self, message: dict[str, Any]) -> None:
        if self.closing:
            return  # sent before our close frame reached the client
        text = message.get("text")
        size = len(text.encode()) if text is not None else len(message.get("bytes") or b"")
        if size > ECHO_MAX_MESSAGE_BYTES:
            await self.close(code=CLOSE_MESSAGE_TOO_BIG, reason=TOO_BIG_REASON)
        elif not (self.messages.spend(1) and self.bytes.spend(size)):
            await self.close(code=CLOSE_POLICY_VIOLATION, reason=TOO_MANY_REASON)
        else:
            await super().websocket_receive(message)

    async def close(self, code: int | None = None, reason: str | None = None) -> None:
        self.closing = True
        await super().close(code=code, reason=reason)


class EchoConsumer(GuardedConsumer):
    """Send every message back as it came, text as text and bytes as bytes."""

    # No channel layer: nothing is ever sent to an echo, so it subscribes to nothing (an alias
    # that names no layer gives the consumer none).
    channel_layer_alias = None

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        await self.send(text_data=text_data, bytes_data=bytes_data)


class PrivateConsumer(EchoConsumer):
    """The echo for a logged-in user: it first sends {"user": <username>}.

    An anonymous client is accepted, then closed with CLOSE_LOGIN_REQUIRED, so that a page can
    tell "log in" from a network failure.
    """

    async def connect(self) -> None:
        user = self.scope["user"]
        await self.accept()
        if not user.is_authenticated:
            await self.close(code=CLOSE_LOGIN_REQUIRED, reason=LOGIN_REASON)
            return
        await self.send(text_data=json.dumps({"user": user.get_username()}))


class LiveConsumer(GuardedConsumer):
    """Forward every event published to the live group (apps/showcase/live.py) as JSON text.

    Channels adds the connection to `groups` before connect() and discards it on disconnect.
    The feed is one-way: what the client sends is ignored (within its small budget).

    Events go through a queue of LIVE_QUEUE_EVENTS to a task that sends them. The channel
    layer's own queue for a consumer is unbounded (channels_redis's pub/sub layer), and
    Channels reads it only between two handlers: a send() that waits for a client that does
    not read would leave every later event there. Here a handler only queues, so the layer's
    queue is emptied as events arrive, and a full queue drops the client (drop()).
    """

    groups = [LIVE_GROUP]
    messages_per_second = LIVE_MESSAGES_PER_SECOND
    message_burst = LIVE_MESSAGE_BURST

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outbox: asyncio.Queue[str] = asyncio.Queue(LIVE_QUEUE_EVENTS)
        self.sender: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        await self.accept()
        self.sender = asyncio.create_task(self.send_events())

    async def send_events(self) -> None:
        """Send the queued events, in order, as fast as the client reads them."""
        while True:
            text = await self.outbox.get()
            try:
                await self.send(text_data=text)
            except OSError:
                return  # the client left (ASGI 2.4); websocket_disconnect follows

    async def live_event(self, message: dict[str, Any]) -> None:
        """Queue one published event for the client (message type "live.event")."""
        if self.closing:
            return
        try:
            self.outbox.put_nowait(json.dumps(message["event"]))
        except asyncio.QueueFull:
            await self.drop()

    async def stop_sending(self) -> None:
        """End the sender task and forget what it had left to send."""
        if self.sender is not None:
            self.sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.sender
        while not self.outbox.empty():
            self.outbox.get_nowait()

    async def drop(self) -> None:
        """Drop a client too slow for the feed: leave the group and the layer, close with 1008.

        The close frame waits behind what the client has not read: after LIVE_CLOSE_SECONDS
        the consumer ends without it, and the server closes the connection.
        """
        self.closing = True
        await self.stop_sending()
        for group in self.groups:
            await self.channel_layer.group_discard(group, self.channel_name)
        await release_channel(self.channel_layer, self.channel_name)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LIVE_CLOSE_SECONDS):
                await self.close(code=CLOSE_POLICY_VIOLATION, reason=TOO_SLOW_REASON)
        raise StopConsumer

    async def disconnect(self, code: int) -> None:
        await self.stop_sending()
