"""Small purpose-named views for the middleware tests (mounted by tests.dualserve.urls)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator

from django.contrib import messages
from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.utils.decorators import decorator_from_middleware

from apps.dualserve.logging import request_id_var
from apps.dualserve.native import CsrfViewMiddleware

logger = logging.getLogger("tests.dualserve")
csrf_protect_native = decorator_from_middleware(CsrfViewMiddleware)


async def async_ok(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok", content_type="text/plain")


def sync_ok(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok", content_type="text/plain")


async def async_session_write(request: HttpRequest) -> HttpResponse:
    await request.session.aset("visits", await request.session.aget("visits", 0) + 1)
    return JsonResponse({"visits": await request.session.aget("visits")})


def sync_session_write(request: HttpRequest) -> HttpResponse:
    request.session["visits"] = request.session.get("visits", 0) + 1
    return JsonResponse({"visits": request.session["visits"]})


async def async_session_flush(request: HttpRequest) -> HttpResponse:
    await request.session.aflush()
    return HttpResponse("flushed")


async def async_post(request: HttpRequest) -> HttpResponse:
    return HttpResponse("posted")


async def async_add_message(request: HttpRequest) -> HttpResponse:
    messages.info(request, "hello from async")
    return HttpResponse("added")


def sync_read_messages(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"messages": [str(m) for m in messages.get_messages(request)]})


async def async_whoami(request: HttpRequest) -> HttpResponse:
    user = await request.auser()
    return JsonResponse({"authenticated": user.is_authenticated})


def sync_log(request: HttpRequest) -> HttpResponse:
    logger.warning("inside the view")
    return JsonResponse({"request_id": request_id_var.get()})


async def async_log(request: HttpRequest) -> HttpResponse:
    logger.warning("inside the view")
    return JsonResponse({"request_id": request_id_var.get()})


def sync_thread(request: HttpRequest) -> HttpResponse:
    """Name the thread a sync view runs on (under ASGI: the request's executor thread)."""
    time.sleep(float(request.GET.get("sleep", "0")))
    return JsonResponse({"thread": threading.current_thread().name})


@csrf_protect_native
async def async_protected(request: HttpRequest) -> HttpResponse:
    """An async view behind a decorator built from the native CSRF middleware."""
    return HttpResponse("protected")


async def async_count(request: HttpRequest) -> HttpResponse:
    """Count the users with the async ORM; name the thread the query ran on."""
    from asgiref.sync import sync_to_async
    from django.contrib.auth.models import User

    count = await User.objects.acount()
    thread = await sync_to_async(lambda: threading.current_thread().name)()
    return JsonResponse({"count": count, "thread": thread})


# What async_wait saw, for the disconnect test: "cancelled" once the handler cancels it.
WAIT_EVENTS: list[str] = []


async def async_wait(request: HttpRequest) -> HttpResponse:
    """Wait (up to 30 s) for the client to leave; record that the handler cancelled the view."""
    import asyncio

    WAIT_EVENTS.append("started")
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        WAIT_EVENTS.append("cancelled")
        raise
    return HttpResponse("the client stayed")


async def async_closing(request: HttpRequest) -> StreamingHttpResponse:
    """Stream content that has a close() of its own, naming the thread it runs on.

    Django registers such a close() on the response; with an async iterator nothing else
    of the request needs the request's thread.
    """

    class Content:
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b"content"

        def close(self) -> None:
            CLOSED_ON.append(threading.current_thread().name)

    return StreamingHttpResponse(Content())


CLOSED_ON: list[str] = []


# --- async iterators under ASGI (tests/dualserve/test_asgi.py: AsyncStreamTests) ---------------

# What async_stubborn_stream's iterator did, in order.
ASYNC_STREAM_LOG: list[str] = []


async def stubborn_events() -> AsyncIterator[bytes]:
    """Yield a chunk, then swallow the cancellation of the next wait, as Python 3.11's
    asyncio.wait_for does when what it waits for completes in the same loop turn, and go on."""
    import asyncio

    try:
        yield b"first"
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            ASYNC_STREAM_LOG.append("cancellation swallowed")
        yield b"second"
        await asyncio.sleep(30)
        ASYNC_STREAM_LOG.append("went on")
    finally:
        ASYNC_STREAM_LOG.append("closed")


async def async_stubborn_stream(request: HttpRequest) -> StreamingHttpResponse:
    return StreamingHttpResponse(stubborn_events())


async def async_page(request: HttpRequest) -> HttpResponse:
    """Answer a page long enough for GZipMiddleware to compress, in the active language."""
    from django.utils.translation import get_language

    return HttpResponse(f"<p>{get_language()}</p>" + "<p>hello</p>" * 100)


@login_not_required
async def async_public(request: HttpRequest) -> HttpResponse:
    return HttpResponse("public")


async def async_site(request: HttpRequest) -> HttpResponse:
    return HttpResponse(request.site.domain)  # type: ignore[attr-defined]


# --- sync iterators under ASGI (tests/dualserve/test_asgi.py, tests/serving/test_streaming.py) --

# What the sync streams below did, in order, each with the thread it happened on.
STREAM_LOG: list[tuple[str, str]] = []
# Set by a test once it has received the first chunk of sync_gated_stream.
STREAM_GATE = threading.Event()


def logged(event: str) -> None:
    """Record `event` in STREAM_LOG with the current thread's name."""
    STREAM_LOG.append((event, threading.current_thread().name))


def sync_gated_stream(request: HttpRequest) -> StreamingHttpResponse:
    """Stream two chunks from a sync generator; the second only once STREAM_GATE is set.

    A handler that consumes the generator before sending waits (up to 10 s) for a gate that
    only the first chunk's arrival opens.
    """
    logged("view")

    def chunks() -> Iterator[bytes]:
        try:
            logged("first")
            yield b"first"
            logged("gate open" if STREAM_GATE.wait(10) else "gate timed out")
            yield b"second"
        finally:
            logged("closed")

    return StreamingHttpResponse(chunks(), content_type="text/plain")


def sync_counted_stream(request: HttpRequest) -> StreamingHttpResponse:
    """Stream ?chunks=N small chunks, logging each pull, one every ?ms= milliseconds.

    Callers keep N x ms to seconds: a handler that buffers waits for all of it.
    """
    count = int(request.GET.get("chunks", "5"))
    pause = int(request.GET.get("ms", "0")) / 1000

    def chunks() -> Iterator[bytes]:
        try:
            for number in range(1, count + 1):
                if number > 1 and pause:
                    time.sleep(pause)
                logged(f"pull {number}")
                yield b"chunk %d\n" % number
        finally:
            logged("closed")

    return StreamingHttpResponse(chunks(), content_type="text/plain")


LARGE_CHUNK = 64 * 1024


def sync_large(request: HttpRequest) -> StreamingHttpResponse:
    """Stream ?mib=N MiB from a sync generator, each 64 KiB chunk a new object.

    Distinct objects, so a handler that buffers the stream really holds all of it.
    """
    chunks = int(request.GET.get("mib", "1")) * 1024 * 1024 // LARGE_CHUNK

    def generate() -> Iterator[bytes]:
        for number in range(chunks):
            yield (b"%015d\n" % number) * (LARGE_CHUNK // 16)

    response = StreamingHttpResponse(generate(), content_type="application/octet-stream")
    response["Content-Length"] = str(chunks * LARGE_CHUNK)
    return response
