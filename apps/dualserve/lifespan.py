"""The ASGI lifespan protocol for applications with nothing to start or stop.

Dependency-free on purpose: project.asgi's LifespanApp uses it, and so does lab/bench/bare.py,
the benchmark's "no framework" ceiling, which must not import Django to answer lifespan.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


async def acknowledge_lifespan(receive: Receive, send: Send) -> None:
    """Answer `lifespan.startup` and `lifespan.shutdown` as complete; return after shut-down."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
