"""ASGI glue around Django's handler: the lifespan protocol, answered here."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
# Loose on purpose: Django's handler annotates scope as dict and messages as Mapping.
ASGIApp = Callable[..., Awaitable[None]]


class LifespanApp:
    """Answer the ASGI `lifespan` scope and hand `http` to the wrapped Django application.

    Django raises on a lifespan scope, which uvicorn logs as "ASGI 'lifespan' protocol appears
    unsupported" (lifespan=auto) or treats as a failed start-up (lifespan=on), and granian logs
    as a warning. There is nothing to start: Django opens connections lazily per request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        await self.app(scope, receive, send)

    @staticmethod
    async def lifespan(receive: Receive, send: Send) -> None:
        """Acknowledge start-up and shut-down, then return."""
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
