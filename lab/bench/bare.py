"""Bare applications without Django: the ceiling each server reaches on this machine.

`gunicorn -c deploy/gunicorn/<mode>.py lab.bench.bare:wsgi_app` (or `asgi_app`) runs them
on the very server configs the project ships, so the gap between a bare app and Django's
`/sync|async/hello/` is what Django costs, and a bare app that is slow flags the harness.
A path ending in `/json/` answers the showcase's small JSON document, serialised per request
as Django's JsonResponse does; every other path, /healthz included, answers the greeting.
The ASGI app answers lifespan too, because the shipped configs run lifespan "on".

The answers are byte for byte the showcase's hello and JSON pages (its payloads module, which
this module must not import: it stays Django-free); lab/bench/frameworks/ answers the same ones.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

# Django-free (apps/dualserve/lifespan.py): this app stays the benchmark's no-framework ceiling.
from apps.dualserve.lifespan import acknowledge_lifespan

BODY = b"Hello, world!\n"
TEXT_TYPE = "text/plain; charset=utf-8"
JSON_TYPE = "application/json"
JSON_PAYLOAD: dict[str, Any] = {
    "message": "Hello, world!",
    "project": "dualserve",
    "interfaces": ["wsgi", "asgi"],
    "numbers": [1, 2, 3, 5, 8, 13],
}
JSON_SUFFIX = "/json/"
HEADERS = [(b"content-type", TEXT_TYPE.encode()), (b"content-length", b"%d" % len(BODY))]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
StartResponse = Callable[..., Any]


def json_body() -> bytes:
    """Return the JSON document encoded as Django's JsonResponse does (json.dumps' defaults)."""
    return json.dumps(JSON_PAYLOAD).encode()


def answer(path: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Return the headers and body for `path`: the JSON document or the greeting."""
    if not path.endswith(JSON_SUFFIX):
        return HEADERS, BODY
    body = json_body()
    return [(b"content-type", JSON_TYPE.encode()), (b"content-length", b"%d" % len(body))], body


def wsgi_app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """Answer 200 and the JSON document or the greeting, whatever the request."""
    headers, body = answer(environ.get("PATH_INFO", "/"))
    start_response("200 OK", [(name.decode(), value.decode()) for name, value in headers])
    return [body]


async def asgi_app(
    scope: Scope,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    """Answer 200 and the JSON document or the greeting to every HTTP request; ack lifespan."""
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
    headers, body = answer(scope["path"])
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
