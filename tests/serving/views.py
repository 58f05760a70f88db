"""Mirrored test views for the serving tests (mounted by tests.serving.urls).

`sync_<kind>` and `async_<kind>` give identical answers; what they answer is built once, below.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

READ_CHUNK_BYTES = 64 * 1024


def hello_response() -> HttpResponse:
    return HttpResponse("Hello, world!\n", content_type="text/plain; charset=utf-8")


def sync_hello(request: HttpRequest) -> HttpResponse:
    return hello_response()


async def async_hello(request: HttpRequest) -> HttpResponse:
    return hello_response()


def sleep_ms(request: HttpRequest) -> int:
    """Return ?ms=N, 0 to 10,000 (a bad value is the test's bug: it raises)."""
    ms = int(request.GET.get("ms", "0"))
    if not 0 <= ms <= 10_000:
        raise ValueError(f"ms={ms} is out of range")
    return ms


def sync_sleep(request: HttpRequest) -> JsonResponse:
    """Hold the worker's thread ?ms=N: the request the shutdown tests keep in flight."""
    ms = sleep_ms(request)
    time.sleep(ms / 1000)
    return JsonResponse({"slept_ms": ms})


async def async_sleep(request: HttpRequest) -> JsonResponse:
    """Wait ?ms=N on the event loop."""
    ms = sleep_ms(request)
    await asyncio.sleep(ms / 1000)
    return JsonResponse({"slept_ms": ms})


JSON_PAYLOAD = {"message": "Hello, world!", "numbers": [1, 2, 3, 5, 8, 13]}


def sync_json(request: HttpRequest) -> JsonResponse:
    return JsonResponse(JSON_PAYLOAD)


async def async_json(request: HttpRequest) -> JsonResponse:
    return JsonResponse(JSON_PAYLOAD)


# --- stream: ?events=N Server-Sent Events, one every ?interval=ms -----------------------------


def stream_query(request: HttpRequest) -> tuple[int, float]:
    """Return (events, interval in seconds) from the query."""
    return int(request.GET.get("events", "3")), int(request.GET.get("interval", "0")) / 1000


def sse_event(number: int, events: int) -> bytes:
    """Return Server-Sent Event `number` (1-based) of `events`, framed."""
    data = json.dumps({"event": number, "of": events}, separators=(",", ":"))
    return f"id: {number}\ndata: {data}\n\n".encode()


def sse_response(content: Iterator[bytes] | AsyncIterator[bytes]) -> StreamingHttpResponse:
    """Wrap the events in a response nginx passes on unbuffered."""
    response = StreamingHttpResponse(content, content_type="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    return response


def sync_stream(request: HttpRequest) -> StreamingHttpResponse:
    events, interval = stream_query(request)

    def generate() -> Iterator[bytes]:
        for number in range(1, events + 1):
            if number > 1:
                time.sleep(interval)
            yield sse_event(number, events)

    return sse_response(generate())


async def async_stream(request: HttpRequest) -> StreamingHttpResponse:
    events, interval = stream_query(request)

    async def generate() -> AsyncIterator[bytes]:
        for number in range(1, events + 1):
            if number > 1:
                await asyncio.sleep(interval)
            yield sse_event(number, events)

    return sse_response(generate())


# --- upload: the body's size and sha256 ---------------------------------------------------------


def digest_body(read: Callable[[int], bytes]) -> dict[str, Any]:
    """Read a body in chunks through `read`; return its size and sha256."""
    sha256 = hashlib.sha256()
    size = 0
    while chunk := read(READ_CHUNK_BYTES):
        size += len(chunk)
        sha256.update(chunk)
    return {"size": size, "sha256": sha256.hexdigest()}


@csrf_exempt
def sync_upload(request: HttpRequest) -> JsonResponse:
    return JsonResponse(digest_body(request.read))


@csrf_exempt
async def async_upload(request: HttpRequest) -> JsonResponse:
    return JsonResponse(digest_body(request.read))


# --- form: the posted fields, parsed by Django (400 above DATA_UPLOAD_MAX_MEMORY_SIZE) ----------


@csrf_exempt
def sync_form(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"fields": sorted(request.POST)})


@csrf_exempt
async def async_form(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"fields": sorted(request.POST)})


# --- client: the address and scheme Django sees -------------------------------------------------


def client_payload(request: HttpRequest) -> dict[str, str]:
    return {
        "address": request.META["REMOTE_ADDR"],
        "scheme": request.scheme,
        "host": request.get_host(),
    }


def sync_client(request: HttpRequest) -> JsonResponse:
    return JsonResponse(client_payload(request))


async def async_client(request: HttpRequest) -> JsonResponse:
    return JsonResponse(client_payload(request))
