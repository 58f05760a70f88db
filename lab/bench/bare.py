"""Bare "hello" applications without Django: the ceiling each server reaches on this machine.

`gunicorn -c deploy/gunicorn/<mode>.py lab.bench.bare:wsgi_app` (or `asgi_app`) runs them
on the very server configs the project ships, so the gap between a bare app and Django's
`/sync|async/hello/` is what Django costs, and a bare app that is slow flags the harness.
Every path answers the same 200, /healthz included; the ASGI app answers lifespan too,
because the shipped configs run lifespan "on".
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

# Django-free (apps/dualserve/lifespan.py): this app stays the benchmark's no-framework ceiling.
from apps.dualserve.lifespan import acknowledge_lifespan

BODY = b"Hello, world!\n"
HEADERS = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"14")]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
StartResponse = Callable[..., Any]


def wsgi_app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """Answer 200 and the greeting, whatever the request."""
    start_response("200 OK", [(name.decode(), value.decode()) for name, value in HEADERS])
    return [BODY]


async def asgi_app(
    scope: Scope,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    """Answer 200 and the greeting to every HTTP request; acknowledge lifespan events."""
    if scope["type"] == "lifespan":
        await acknowledge_lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    # Read the body to its end, as Django does: a server may not reuse a connection whose
    # request body the app left unread.
    message = await receive()
    while message.get("more_body", False):
        message = await receive()
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
