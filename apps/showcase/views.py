"""Mirrored views: `sync_<kind>` and `async_<kind>` give identical answers in their own way.

Parsing, payloads and errors live in params.py, payloads.py and clients.py; a twin here only
does what differs: how it waits, calls, queries or streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar, cast

from asgiref.sync import iscoroutinefunction
from channels.layers import get_channel_layer
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.middleware.csrf import get_token
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt

from apps.dualserve.middleware import interface_of
from apps.showcase import clients, live, params, payloads
from apps.showcase.clients import UpstreamFailure
from apps.showcase.consumers import LIVE_QUEUE_EVENTS, release_channel
from apps.showcase.models import Item
from apps.showcase.params import ParamError

View = TypeVar("View", bound=Callable[..., Any])


def endpoint(*methods: str) -> Callable[[View], View]:
    """Allow only `methods` (405 JSON otherwise) and answer refused input with a JSON error."""

    def decorate(view: View) -> View:
        if iscoroutinefunction(view):

            @functools.wraps(view)
            async def async_wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
                if request.method not in methods:
                    return payloads.method_not_allowed(str(request.method), methods)
                try:
                    return await view(request, *args, **kwargs)
                except (ParamError, UpstreamFailure) as exc:
                    return payloads.error_response(exc.status, exc.message)

            return cast(View, async_wrapper)

        @functools.wraps(view)
        def sync_wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            if request.method not in methods:
                return payloads.method_not_allowed(str(request.method), methods)
            try:
                return view(request, *args, **kwargs)
            except (ParamError, UpstreamFailure) as exc:
                return payloads.error_response(exc.status, exc.message)

        return cast(View, sync_wrapper)

    return decorate


@endpoint("GET", "HEAD")
def index(request: HttpRequest) -> HttpResponse:
    """List the endpoints, with example links, and name the interface serving this page."""
    context = {"interface": interface_of(request), "endpoints": payloads.ENDPOINTS}
    return render(request, "showcase/index.html", context)


# --- hello, json ------------------------------------------------------------------------------


@endpoint("GET")
def sync_hello(request: HttpRequest) -> HttpResponse:
    """Answer plain text."""
    return payloads.hello_response()


@endpoint("GET")
async def async_hello(request: HttpRequest) -> HttpResponse:
    """Answer plain text."""
    return payloads.hello_response()


@endpoint("GET")
def sync_json(request: HttpRequest) -> JsonResponse:
    """Answer a small JSON document."""
    return JsonResponse(payloads.json_payload())


@endpoint("GET")
async def async_json(request: HttpRequest) -> JsonResponse:
    """Answer a small JSON document."""
    return JsonResponse(payloads.json_payload())


# --- sleep ------------------------------------------------------------------------------------


@endpoint("GET")
def sync_sleep(request: HttpRequest) -> JsonResponse:
    """Block the thread for ?ms=N: the worker (or thread) serves nobody else meanwhile."""
    ms = params.sleep_ms(request.GET)
    time.sleep(ms / 1000)
    return JsonResponse(payloads.slept_payload(ms))


@endpoint("GET")
async def async_sleep(request: HttpRequest) -> JsonResponse:
    """Wait ?ms=N on the event loop: the worker serves other requests meanwhile."""
    ms = params.sleep_ms(request.GET)
    await asyncio.sleep(ms / 1000)
    return JsonResponse(payloads.slept_payload(ms))


# --- upstream ---------------------------------------------------------------------------------


@endpoint("GET")
def sync_upstream(request: HttpRequest) -> JsonResponse:
    """Call the upstream with ?ms=N through the process's httpx.Client (502/504 on failure)."""
    ms = params.upstream_ms(request.GET)
    return JsonResponse(payloads.upstream_payload(ms, clients.fetch_upstream(ms)))


@endpoint("GET")
async def async_upstream(request: HttpRequest) -> JsonResponse:
    """Call the upstream with ?ms=N through the loop's httpx.AsyncClient (502/504 on failure)."""
    ms = params.upstream_ms(request.GET)
    return JsonResponse(payloads.upstream_payload(ms, await clients.afetch_upstream(ms)))


# --- db ---------------------------------------------------------------------------------------


def any_item_id() -> int:
    """Return the id of one of the seeded items, spreading reads over them."""
    return random.randint(1, Item.SEED_ROWS)  # noqa: S311  (load spreading, not security)


def missing_item(pk: int) -> JsonResponse:
    """Return the 404 for an item id that does not exist."""
    return payloads.error_response(404, f"no item with id {pk}")


def posted_item(request: HttpRequest) -> tuple[str, int]:
    """Return (name, value) from a POST's form or JSON body, refusing a body cut short."""
    # Reading request.body first bounds it by DATA_UPLOAD_MAX_MEMORY_SIZE (400 above it);
    # request.POST then parses the copy in memory.
    params.complete_body(request.META, len(request.body))
    if params.is_json(request.META):
        return params.new_item_json(request.body)
    return params.new_item(request.POST)


# The POST endpoints (db write, upload) are csrf_exempt: benchmark clients (wrk, hey) send no
# CSRF token, and these endpoints touch no session, user or cookie a forged request could abuse.
@csrf_exempt
@endpoint("GET", "POST")
def sync_db(request: HttpRequest) -> JsonResponse:
    """GET: read one item (?id=N, else any) and the count; POST: create one (sync ORM)."""
    if request.method == "POST":
        name, value = posted_item(request)
        item = Item.objects.create(name=name, value=value)
        return JsonResponse({"item": payloads.item_payload(item)}, status=201)
    pk = params.item_id(request.GET) or any_item_id()
    try:
        item = Item.objects.get(pk=pk)
    except Item.DoesNotExist:
        return missing_item(pk)
    return JsonResponse({"item": payloads.item_payload(item), "count": Item.objects.count()})


@csrf_exempt
@endpoint("GET", "POST")
async def async_db(request: HttpRequest) -> JsonResponse:
    """GET: read one item (?id=N, else any) and the count; POST: create one (async ORM)."""
    if request.method == "POST":
        # Under ASGI the body is already in memory (or a spooled file): no I/O waits here.
        name, value = posted_item(request)
        item = await Item.objects.acreate(name=name, value=value)
        return JsonResponse({"item": payloads.item_payload(item)}, status=201)
    pk = params.item_id(request.GET) or any_item_id()
    try:
        item = await Item.objects.aget(pk=pk)
    except Item.DoesNotExist:
        return missing_item(pk)
    return JsonResponse({"item": payloads.item_payload(item), "count": await Item.objects.acount()})


# --- cpu --------------------------------------------------------------------------------------


@endpoint("GET")
def sync_cpu(request: HttpRequest) -> JsonResponse:
    """Run ?n=N rounds of pure-Python arithmetic."""
    return JsonResponse(payloads.cpu_payload(params.cpu_n(request.GET)))


@endpoint("GET")
async def async_cpu(request: HttpRequest) -> JsonResponse:
    """Run ?n=N rounds of pure-Python arithmetic inline, on the event loop, on purpose.

    Async gains nothing here: the work holds the GIL, so no other request of the worker runs
    until it ends, and handing it to a thread would only add a hop; only more processes help.
    """
    return JsonResponse(payloads.cpu_payload(params.cpu_n(request.GET)))


# --- stream -----------------------------------------------------------------------------------


# Both twins keep to a schedule set when the stream starts (event k due k x interval after
# the first) instead of sleeping `interval` after each send: a delay (a slow client, a busy
# loop, a garbage collection) then delays one event, and the next ones catch up, rather
# than adding up along the stream.


def sync_events(events: int, interval_ms: int) -> Iterator[bytes]:
    """Yield the events on their schedule, sleeping the thread in between."""
    start = time.monotonic()
    for number in range(1, events + 1):
        if number > 1:
            time.sleep(max(0.0, start + (number - 1) * interval_ms / 1000 - time.monotonic()))
        yield payloads.sse_event(number, events)


async def async_events(events: int, interval_ms: int) -> AsyncIterator[bytes]:
    """Yield the events on their schedule, waiting on the loop in between."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for number in range(1, events + 1):
        if number > 1:
            await asyncio.sleep(max(0.0, start + (number - 1) * interval_ms / 1000 - loop.time()))
        yield payloads.sse_event(number, events)


@endpoint("GET")
def sync_stream(request: HttpRequest) -> StreamingHttpResponse:
    """Send ?events=N Server-Sent Events, one every ?interval=ms, from a sync generator.

    Under WSGI each event leaves when yielded, and the worker (or thread) is held for the
    whole stream. Under ASGI Django cannot iterate a sync generator on the event loop: it
    consumes the WHOLE generator first, warning "StreamingHttpResponse must consume
    synchronous iterators", and only then sends every event at once. A stream that never ends
    never sends anything there. Serve SSE under ASGI from the async twin.
    """
    events, interval = params.stream(request.GET)
    return payloads.sse_response(sync_events(events, interval))


@endpoint("GET")
async def async_stream(request: HttpRequest) -> StreamingHttpResponse:
    """Send ?events=N Server-Sent Events, one every ?interval=ms, from an async generator.

    Under ASGI each event leaves when yielded and a waiting stream costs the worker nothing.
    Under WSGI Django has to consume the async generator whole before sending (the mirror
    warning, "must consume asynchronous iterators"): serve SSE under WSGI from the sync twin.
    """
    events, interval = params.stream(request.GET)
    return payloads.sse_response(async_events(events, interval))


# --- upload -----------------------------------------------------------------------------------


@csrf_exempt
@endpoint("POST")
def sync_upload(request: HttpRequest) -> JsonResponse:
    """Answer the body's size and sha256, read in 64 KiB chunks (413 above the limit).

    Under WSGI a body sent chunked, without Content-Length, reaches Django empty; nginx in
    front re-frames it with a length.
    """
    limit = params.upload_max_bytes()
    params.declared_length(request.META, limit)
    digest = payloads.digest_body(request.read, limit)
    params.complete_body(request.META, digest["size"])
    return JsonResponse(digest)


@csrf_exempt
@endpoint("POST")
async def async_upload(request: HttpRequest) -> JsonResponse:
    """Answer the body's size and sha256, read in 64 KiB chunks (413 above the limit).

    Under ASGI Django has already received the whole body (spooled to a temporary file above
    FILE_UPLOAD_MAX_MEMORY_SIZE) before the view runs, so the limit here refuses the answer,
    not the transfer: nginx's client_max_body_size is what stops a large body early. Reading
    and hashing run on a worker thread: on the loop, hashing a 64 MiB body would stall every
    other request of the worker, and hashlib releases the GIL on large buffers, so the thread
    really runs beside the loop (one of the few CPU jobs where a thread helps).
    """
    limit = params.upload_max_bytes()
    params.declared_length(request.META, limit)
    digest = await asyncio.to_thread(payloads.digest_body, request.read, limit)
    params.complete_body(request.META, digest["size"])
    return JsonResponse(digest)


# --- live: the event bus ----------------------------------------------------------------------

# A comment line on an idle stream at least this often (SHOWCASE_LIVE_HEARTBEAT_SECONDS
# overrides it): nginx closes a proxied stream that sends nothing for proxy_read_timeout (60 s),
# and a heartbeat is also how the server learns that a client has gone.
LIVE_HEARTBEAT_SECONDS = 20.0
# How long a browser's EventSource waits before reconnecting after the stream ends, in ms.
LIVE_RETRY_MS = 3000
LIVE_ASGI_ONLY = (
    "/async/live/ streams under ASGI only: under WSGI Django would consume the endless stream "
    "whole, holding a worker thread forever. Use the hybrid or the ASGI entry."
)
# The last line of a stream whose client was too slow (see live_events).
LIVE_DROPPED = b": dropped: too slow to read the feed\n\n"


def live_heartbeat_seconds() -> float:
    """Return how long a live stream may stay silent before it sends a heartbeat."""
    seconds: float = getattr(settings, "SHOWCASE_LIVE_HEARTBEAT_SECONDS", LIVE_HEARTBEAT_SECONDS)
    return seconds


async def live_events(heartbeat: float) -> AsyncIterator[bytes]:
    """Yield every event published to the live group, framed as SSE, with heartbeats.

    It joins the group through the channel layer as a LiveConsumer does: a channel of its own
    (new_channel), added to LIVE_GROUP, before the first bytes leave, so a client that has
    read them is subscribed. A task (drain_live_events) moves what the channel receives into a
    queue of LIVE_QUEUE_EVENTS as it arrives, whether or not the client reads: the pub/sub
    layer's own queue is unbounded. Each write takes every event queued so far. A client so
    slow that the queue fills is dropped: the stream leaves the group and the layer at once,
    and ends once the client reads again (an EventSource then reconnects), with LIVE_DROPPED
    as its last line. The task's one receive() stays pending across heartbeats: cancelling it
    would make the Redis pub/sub layer unsubscribe, and lose what is published until it
    subscribes again. A client that goes away cancels the stream (Django's ASGI handler
    cancels the response on http.disconnect): the finally clause then leaves (leave_live_group).

    The response head leaves before this runs, so a client may go while the stream is still
    joining: the join runs shielded in a task of its own and ends before the stream leaves.
    Cancelled half-way, it would leave the channel subscribed in Redis under a name nobody
    holds any more.
    """
    layer = get_channel_layer()
    events: asyncio.Queue[LiveItem] = asyncio.Queue(LIVE_QUEUE_EVENTS)
    joining = asyncio.ensure_future(join_live_group(layer, events))
    try:
        channel, draining = await asyncio.shield(joining)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):  # a join that failed has nothing to leave
            await leave_live_group(layer, *(await joining))
        raise
    try:
        yield f"retry: {LIVE_RETRY_MS}\n\n".encode()
        while True:
            try:
                # A heartbeat is due after `heartbeat` seconds of silence: a write restarts it.
                async with asyncio.timeout(heartbeat):
                    items = [await events.get()]
            except TimeoutError:
                yield b": heartbeat\n\n"
                continue
            while not events.empty():
                items.append(events.get_nowait())
            chunk = b""
            for item in items:
                if isinstance(item, BaseException):
                    raise item  # the channel layer failed
                if item is None:
                    yield chunk + LIVE_DROPPED
                    return
                chunk += f"data: {json.dumps(item, separators=(',', ':'))}\n\n".encode()
            yield chunk
    finally:
        await leave_live_group(layer, channel, draining)


async def join_live_group(
    layer: Any, events: asyncio.Queue[LiveItem]
) -> tuple[str, asyncio.Task[None]]:
    """Join the live group on a new channel; return it and the task draining it into `events`.

    The task has started when this returns: it waits in receive(), where cancelling it makes
    the layer unsubscribe the channel. Cancelled before its first step, it never would.
    """
    channel = await layer.new_channel()
    await layer.group_add(live.LIVE_GROUP, channel)
    draining = asyncio.create_task(drain_live_events(layer, channel, events))
    await asyncio.sleep(0)
    return channel, draining


async def leave_live_group(layer: Any, channel: str, draining: asyncio.Task[None]) -> None:
    """Stop draining `channel` (which unsubscribes it) and take it out of the live group."""
    draining.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await draining
    await layer.group_discard(live.LIVE_GROUP, channel)


# What drain_live_events hands the stream: an event, None (dropped), or the layer's failure.
LiveItem = dict[str, Any] | BaseException | None


async def drain_live_events(layer: Any, channel: str, events: asyncio.Queue[LiveItem]) -> None:
    """Move each event `channel` receives into `events`; when it is full, drop the client.

    Dropping leaves the group and the layer (the client may not read for a long time yet),
    empties the queue and puts None (the stream's end) in it. A failure of the layer is
    handed to the stream the same way.
    """
    while True:
        try:
            message = await layer.receive(channel)
        except Exception as exc:
            hand_over(events, exc)
            return
        if message.get("type") != live.LIVE_EVENT:
            continue
        if events.full():
            hand_over(events, None)
            await layer.group_discard(live.LIVE_GROUP, channel)
            await release_channel(layer, channel)
            return
        events.put_nowait(message["event"])
        # A burst already in the layer's queue is received without a pause: let the stream
        # take its turn, or a client reading as fast as it can would find the queue full.
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            # Cancelled with no receive() pending: the layer would keep the channel.
            await release_channel(layer, channel)
            raise


def hand_over(events: asyncio.Queue[LiveItem], last: LiveItem) -> None:
    """Replace what `events` holds with `last`, the only item the stream still gets."""
    while not events.empty():
        events.get_nowait()
    events.put_nowait(last)


@endpoint("GET")
async def async_live(request: HttpRequest) -> HttpResponseBase:
    """Stream every event published to the live group as Server-Sent Events, until the client
    goes: `data: <event JSON>`, a `: heartbeat` comment when idle, `retry:` first.

    The same feed as the WebSocket /ws/live/, from the same channel layer group. There is no
    sync twin: a sync view cannot await the channel layer's receive(), and a sync generator
    that waited on it (through async_to_sync) would hold a WSGI thread for the whole stream.
    Served under WSGI it answers 503 for the same reason (see LIVE_ASGI_ONLY).
    """
    if interface_of(request) != "asgi":
        return payloads.error_response(503, LIVE_ASGI_ONLY)
    return payloads.sse_response(live_events(live_heartbeat_seconds()))


# The publish views keep Django's CSRF protection: the live page posts from the same origin
# with the csrftoken cookie's value in X-CSRFToken, and a GET hands out that cookie (to a
# script or a test) with a description of the POST. Both answer 202 with the event's id:
# delivery to clients is not waited for.


def publish_usage(request: HttpRequest) -> JsonResponse:
    """Describe the POST and set the CSRF cookie it needs."""
    get_token(request)
    return JsonResponse(
        {
            "post": {"text": f"1 to {live.TEXT_MAX_CHARS} characters"},
            "content_type": "application/json",
            "csrf": "send the csrftoken cookie's value in the X-CSRFToken header",
        }
    )


def published_text(request: HttpRequest) -> str:
    """Return the text of a publish request, its size bounded (413) and its JSON checked."""
    params.declared_length(request.META, live.PUBLISH_MAX_BODY_BYTES)
    if not params.is_json(request.META):
        raise params.ParamError('send the body as application/json: {"text": "..."}', 415)
    body = request.body
    if len(body) > live.PUBLISH_MAX_BODY_BYTES:
        raise params.ParamError(
            f"body is over the limit of {live.PUBLISH_MAX_BODY_BYTES} bytes", 413
        )
    params.complete_body(request.META, len(body))
    return live.text_from_body(body)


def published(event: dict[str, Any]) -> JsonResponse:
    """Return the 202 answer for a published event."""
    return JsonResponse({"id": event["id"], "event": event}, status=202)


@endpoint("GET", "POST")
def sync_publish(request: HttpRequest) -> JsonResponse:
    """POST {"text": ...}: publish a message to the live feed through live.publish.

    Under WSGI, publish() runs a short event loop of its own (async_to_sync) for each call.
    """
    if request.method == "GET":
        return publish_usage(request)
    event = live.message_event(published_text(request), f"sync view ({interface_of(request)})")
    live.publish(event)
    return published(event)


@endpoint("GET", "POST")
async def async_publish(request: HttpRequest) -> JsonResponse:
    """POST {"text": ...}: publish a message to the live feed through live.apublish."""
    if request.method == "GET":
        return publish_usage(request)
    event = live.message_event(published_text(request), f"async view ({interface_of(request)})")
    await live.apublish(event)
    return published(event)
