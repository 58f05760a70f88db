"""What the showcase views answer, built once for the sync and the async twin."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.http import HttpResponse, JsonResponse, StreamingHttpResponse

from apps.showcase.models import Item
from apps.showcase.params import ParamError

HELLO = "Hello, world!\n"
READ_CHUNK_BYTES = 64 * 1024
EVENT_STREAM = "text/event-stream"


@dataclass(frozen=True)
class Endpoint:
    """One mirrored pair of the index: /sync/<kind>/ and /async/<kind>/."""

    kind: str
    method: str
    example: str
    about: str

    @property
    def path_sync(self) -> str:
        """Return the sync view's example path."""
        return f"/sync/{self.kind}/{self.example}"

    @property
    def path_async(self) -> str:
        """Return the async view's example path."""
        return f"/async/{self.kind}/{self.example}"


ENDPOINTS = (
    Endpoint("hello", "GET", "", "Plain text: the cost of the stack alone."),
    Endpoint("json", "GET", "", "A small JSON document."),
    Endpoint("sleep", "GET", "?ms=100", "Wait N ms: time.sleep against asyncio.sleep."),
    Endpoint(
        "upstream",
        "GET",
        "?ms=100",
        "Call an HTTP API that answers after N ms: httpx.Client against httpx.AsyncClient.",
    ),
    Endpoint("db", "GET", "?id=1", "Read one item (any item without id) and the item count."),
    Endpoint(
        "db", "POST", "", "Create an item from the form fields, or a JSON object, name and value."
    ),
    Endpoint("cpu", "GET", "?n=100000", "Pure-Python work: the GIL gives async nothing here."),
    Endpoint(
        "stream",
        "GET",
        "?events=5&interval=200",
        "Server-Sent Events, one every interval ms: sync against async generator.",
    ),
    Endpoint("upload", "POST", "", "Answer the body's size and sha256."),
)


def error_response(status: int, message: str) -> JsonResponse:
    """Return the showcase's error answer: `{"error": message}` with `status`."""
    return JsonResponse({"error": message}, status=status)


def method_not_allowed(method: str, allowed: tuple[str, ...]) -> JsonResponse:
    """Return a 405 that names the allowed methods, in the body and the Allow header."""
    response = error_response(405, f"method {method} not allowed: use {', '.join(allowed)}")
    response.headers["Allow"] = ", ".join(allowed)
    return response


def hello_response() -> HttpResponse:
    """Return the plain-text greeting."""
    return HttpResponse(HELLO, content_type="text/plain; charset=utf-8")


def json_payload() -> dict[str, Any]:
    """Return the small JSON document."""
    return {
        "message": "Hello, world!",
        "project": "dualserve",
        "interfaces": ["wsgi", "asgi"],
        "numbers": [1, 2, 3, 5, 8, 13],
    }


def slept_payload(ms: int) -> dict[str, int]:
    """Return the answer of the sleep views."""
    return {"slept_ms": ms}


def upstream_payload(ms: int, upstream: Any) -> dict[str, Any]:
    """Return the answer of the upstream views: what the upstream said."""
    return {"ms": ms, "upstream": upstream}


def item_payload(item: Item) -> dict[str, Any]:
    """Return an item as JSON-ready data."""
    return {
        "id": item.pk,
        "name": item.name,
        "value": item.value,
        "created": item.created.isoformat(),
    }


def cpu_work(n: int) -> int:
    """Return a checksum after `n` rounds of pure-Python arithmetic (holds the GIL throughout)."""
    checksum = 0
    for number in range(n):
        checksum = (checksum * 31 + number) % 1_000_003
    return checksum


def cpu_payload(n: int) -> dict[str, int]:
    """Do the cpu views' work and return their answer."""
    return {"n": n, "checksum": cpu_work(n)}


def sse_event(number: int, events: int) -> bytes:
    """Return Server-Sent Event `number` (1-based) of `events`, framed and ready to send."""
    data = json.dumps({"event": number, "of": events}, separators=(",", ":"))
    return f"id: {number}\ndata: {data}\n\n".encode()


def sse_response(content: Any) -> StreamingHttpResponse:
    """Wrap an event iterator (sync or async) in an unbuffered, uncached SSE response."""
    response = StreamingHttpResponse(content, content_type=EVENT_STREAM)
    response.headers["Cache-Control"] = "no-cache"
    # nginx passes the stream through unbuffered when the app says so (proxy_buffering
    # stays on for every other route).
    response.headers["X-Accel-Buffering"] = "no"
    return response


def digest_body(read: Callable[[int], bytes], limit: int) -> dict[str, Any]:
    """Read a body in chunks through `read`; return its size and sha256 (413 above `limit`).

    The count is kept while reading, so a body sent without Content-Length (chunked) is
    bounded as well.
    """
    sha256 = hashlib.sha256()
    size = 0
    while chunk := read(READ_CHUNK_BYTES):
        size += len(chunk)
        if size > limit:
            raise ParamError(f"body is over the limit of {limit} bytes", 413)
        sha256.update(chunk)
    return {"size": size, "sha256": sha256.hexdigest()}
