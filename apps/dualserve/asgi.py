"""ASGI glue around Django's handler: the lifespan protocol, and cheap request threads.

Django's `ASGIHandler` costs every request two thread hops even when the request runs no
sync code at all (django/core/handlers/asgi.py with asgiref/sync.py): the `request_started`
receivers and, at the end, `response.close()` (which sends `request_finished`) each go
through a thread-sensitive `sync_to_async`, and the request's fresh `ThreadSensitiveContext`
starts a NEW thread for the first of them and joins it at the end. `PooledThreadASGIHandler`
removes both costs:

- Threads are pooled. Each request gets a one-thread executor from a small pool (asgiref
  3.13's `ThreadSensitiveContext(executor=...)`): still one thread per request, so all sync
  code of a request runs on one thread, as Django requires (connections are per thread).
  A pooled thread keeps its database connections between requests (CONN_MAX_AGE applies as
  under WSGI); a thread retired from the pool closes them first.
- The hops are deferred, not dropped. When the only receivers connected are Django's own
  thread-local housekeeping (`close_old_connections`, `reset_queries`, `reset_urlconf`,
  `close_caches`), the `request_started` receivers run on the request's thread just before
  the first sync job the request sends there (a sync middleware, the ORM, a sync view), and
  the response is closed on that thread only if the request used it. A request that never
  leaves the event loop touched no connection of that thread, so there is nothing to check
  or close there: both calls would have been no-ops. On the loop, `request_finished` is not
  sent for such a request either: its receivers would act on the handler's context and the
  loop thread, which the view (in a task, so in a context of its own) never touched. Any
  other receiver (a project's own, a test's) brings Django's eager hops back, unchanged.
- One task a request, not two. Django runs the view in a task and listens for a disconnect
  in another from the start. Here the listener starts only once the view has to wait: a view
  that answers without waiting could not have been interrupted anyway, since nothing else
  runs on the loop until it is done. Disconnects are handled as Django does: the view is
  cancelled, and `request_finished` is sent.

Measured in-process (lab/profile_handlers.py), an async request through this handler costs
about 1.1x the CPU of a sync request through Django's WSGI handler (1.5x before the last two
changes: the second task and the inline request_finished were most of the difference).

It also streams what Django buffers: a `StreamingHttpResponse` over a SYNC iterator, which
Django's handler consumes whole before sending its first byte, is sent chunk by chunk, each
chunk pulled on the request's thread (`PulledOnRequestThread`). And it ends an ASYNC stream
whose client has gone even when the cancellation was lost on the way, and closes it
(`ended_with_the_response`): Django leaves both to chance.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    MutableMapping,
)
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cached_property
from typing import IO, Any, TypeVar, cast

import django
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.conf import settings
from django.core import signals
from django.core.cache import close_caches
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.base import reset_urlconf
from django.db import close_old_connections, connections, reset_queries
from django.dispatch import Signal
from django.http import HttpRequest, HttpResponseBase, StreamingHttpResponse
from django.urls import set_script_prefix

from apps.dualserve.lifespan import acknowledge_lifespan

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
# Loose on purpose: Django's handler annotates scope as dict and messages as Mapping.
ASGIApp = Callable[..., Awaitable[None]]
T = TypeVar("T")

# Django's own receivers of the request signals. Each acts only on the calling thread's (or
# context's) database connections, query log, urlconf or cache connections, so on a thread
# the request never used they have nothing to do.
THREAD_LOCAL_RECEIVERS = frozenset(
    {close_old_connections, reset_queries, reset_urlconf, close_caches}
)


def only_thread_local_receivers(signal: Signal, sender: type) -> bool:
    """Return whether every receiver `signal` would call for `sender` is Django's housekeeping."""
    # Private, but the one place Django resolves weak references and sender filters.
    sync_receivers, async_receivers = signal._live_receivers(sender)
    return not async_receivers and all(r in THREAD_LOCAL_RECEIVERS for r in sync_receivers)


def only_closes_requests(response: HttpResponseBase) -> bool:
    """Return whether closing `response` closes nothing but requests.

    Django's handler registers `request.close` on every response; it closes the body and the
    uploaded files (their temporary files), which is quick and never touches the database.
    """
    closers = response._resource_closers  # type: ignore[attr-defined]
    return all(isinstance(getattr(closer, "__self__", None), HttpRequest) for closer in closers)


def close_requests(response: HttpResponseBase) -> None:
    """Close `response` as HttpResponseBase.close() does, but send no request_finished.

    Only for a response `only_closes_requests` accepts and whose class keeps Django's close().
    """
    for closer in response._resource_closers:  # type: ignore[attr-defined]
        with contextlib.suppress(Exception):  # as Django's close(): one failure stops nothing
            closer()
    response._resource_closers.clear()  # type: ignore[attr-defined]
    response.closed = True


def current_task_cancelling() -> bool:
    """Return whether something asked to cancel the running task."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class ReceiverCheck:
    """`only_thread_local_receivers` for one sender, computed again only when receivers change.

    Django resolves a signal's receivers (weak references, sender filters) under a lock on
    every send; twice a request that is a measurable share of a small request's cost. The
    receivers list is compared element by element (identity first), so any connect or
    disconnect is seen. A receiver that dies without a disconnect leaves the list as it is:
    the cached answer then still holds (one receiver fewer can only leave Django's own).
    """

    def __init__(self, sender: type) -> None:
        self.sender = sender
        self._seen: dict[Signal, tuple[list[Any], bool]] = {}

    def __call__(self, signal: Signal) -> bool:
        seen = self._seen.get(signal)
        if seen is not None and seen[0] == signal.receivers:
            return seen[1]
        answer = only_thread_local_receivers(signal, self.sender)
        self._seen[signal] = (list(signal.receivers), answer)
        return answer


def run_after(first: Callable[[], object], then: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call `first()`, then return `then(*args, **kwargs)`: two calls as one executor job."""
    first()
    return then(*args, **kwargs)


class RequestExecutor(ThreadPoolExecutor):
    """A one-thread executor that records whether the current request used it.

    `begin()` arms it for a request, optionally with a deferred start-up call (the
    request_started receivers) that runs on the thread right before the request's first job.
    """

    def __init__(self, name: str) -> None:
        super().__init__(max_workers=1, thread_name_prefix=name)
        self.used = False
        # Whether any request ever ran a job here: then the thread exists and may hold
        # database connections.
        self.started = False
        self._prologue: Callable[[], object] | None = None

    def begin(self, prologue: Callable[[], object] | None = None) -> None:
        """Start a request: not used yet, with `prologue` to run before its first job."""
        self.used = False
        self._prologue = prologue

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        self.used = self.started = True
        prologue, self._prologue = self._prologue, None
        if prologue is None:
            return super().submit(fn, *args, **kwargs)
        # One job, not two: nothing else of this request can run on the thread in between.
        return super().submit(run_after, prologue, fn, *args, **kwargs)


class ExecutorPool:
    """One-thread executors kept between requests, most recently used first.

    Only the idle ones are kept (at most `max_idle`); a burst beyond that gets new executors
    that are shut down when their request ends. list.append and list.pop are atomic under
    the GIL, so no lock is needed even if several event loops share the pool.
    """

    def __init__(self, max_idle: int) -> None:
        self.max_idle = max_idle
        self._idle: list[RequestExecutor] = []
        self._numbers = itertools.count(1)

    def acquire(self) -> RequestExecutor:
        """Return an idle executor, or a new one (its thread starts on first use)."""
        try:
            return self._idle.pop()
        except IndexError:
            # A distinct name per thread, so logs and debuggers can tell them apart.
            return RequestExecutor(f"django-request-{next(self._numbers)}")

    def release(self, executor: RequestExecutor) -> None:
        """Keep `executor` for a later request, or retire it when enough are idle."""
        executor.begin()  # drop an unused deferred prologue: it belonged to that request
        if len(self._idle) < self.max_idle:
            self._idle.append(executor)
            return
        if executor.started:
            # Its thread may hold persistent database connections (CONN_MAX_AGE): close them
            # there, as the thread's last job, rather than strand them when it ends.
            executor.submit(connections.close_all)
        # wait=False: the loop must not block; the thread ends after its queued calls.
        executor.shutdown(wait=False)

    def __len__(self) -> int:
        return len(self._idle)


class PulledOnRequestThread:
    """An async iterator over a sync one, each item pulled by a thread-sensitive hop.

    Inside the request's ThreadSensitiveContext that hop runs on the request's own thread,
    where its sync view ran: a generator that uses the ORM keeps its thread and connection.
    Nothing is read ahead: an item is pulled only when the previous one has been sent
    (`await send()` returned), so a slow client holds the producer back instead of letting
    chunks pile up in memory. It costs one hop per item, where Django's `list()` made one.
    """

    def __init__(self, iterator: Iterator[bytes]) -> None:
        # A default instead of StopIteration, which cannot travel through a Future.
        self._pull = sync_to_async(functools.partial(next, iterator, None), thread_sensitive=True)

    def __aiter__(self) -> PulledOnRequestThread:
        return self

    async def __anext__(self) -> bytes:
        item: bytes | None = await self._pull()
        if item is None:
            raise StopAsyncIteration
        return item


async def ended_with_the_response(source: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
    """Yield what `source` yields until the response ends, then close `source` (`aclose()`).

    Two gaps of Django's handler for an async streaming response, both seen with an endless
    Server-Sent Events view on the Redis channel layer (its stream outlived its client):

    - A client that leaves cancels the response once. If that cancellation lands while the
      iterator awaits something that swallows it, the iterator goes on as if nothing had
      happened, for as long as it likes. Python 3.11's `asyncio.wait_for` swallows it when
      what it waits for completes in the same loop turn (CPython gh-86296, fixed in 3.12), and
      redis-py waits on every command it sends with it. The task still counts the request to
      cancel (`Task.cancelling()`): the next item it yields ends it here.
    - Django closes its own wrapper around an async iterator, not the iterator: one that sits
      at a `yield` when the response ends (cancelled during a send) is left to the garbage
      collector, holding whatever its `finally` would release (a channel layer subscription).
    """
    try:
        async for part in source:
            if current_task_cancelling():
                raise asyncio.CancelledError  # a cancellation lost inside `source`
            yield part
    finally:
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()


class PooledThreadASGIHandler(ASGIHandler):
    """Django's ASGI handler on pooled request threads, with no hop a request does not need."""

    @cached_property
    def executors(self) -> ExecutorPool:
        """Return this handler's pool, made on first use.

        Lazy, so subclasses that skip `ASGIHandler.__init__` (Django's ASGIStaticFilesHandler)
        still get one; the default serves settings that are not this project's (Django's own
        test suite runs against this handler: tests/django_suite).
        """
        return ExecutorPool(getattr(settings, "ASGI_IDLE_THREADS", 64))

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)  # Django's own refusal
            return
        # Not through Django's __call__: it would open a ThreadSensitiveContext of its own.
        await self.handle(scope, receive, send)

    async def handle(self, scope: Any, receive: Any, send: Any) -> None:
        """Serve one HTTP request: read the body, run Django on a pooled thread, clean up."""
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return  # the client left before the body was complete: nothing to answer
        executor = self.executors.acquire()
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.serve_request(scope, receive, send, body_file, executor)
        finally:
            body_file.close()
            self.executors.release(executor)

    @cached_property
    def housekeeping_only(self) -> ReceiverCheck:
        """Return the check of which request signals reach only Django's housekeeping."""
        return ReceiverCheck(self.__class__)

    async def serve_request(
        self, scope: Any, receive: Any, send: Any, body_file: IO[bytes], executor: RequestExecutor
    ) -> None:
        """Send request_started, answer the request unless the client leaves, then close."""
        set_script_prefix(get_script_prefix(scope))
        sender = self.__class__
        if self.housekeeping_only(signals.request_started):
            executor.begin(functools.partial(signals.request_started.send, sender, scope=scope))
        else:
            executor.begin()
            await signals.request_started.asend(sender=sender, scope=scope)
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            assert error_response is not None  # create_request returns one or the other
            await self.send_response(error_response, send)
            await self.close_response(error_response, executor)
            return
        loop = asyncio.get_running_loop()
        # Its own task, as in Django: what the view sets in its context ends with it.
        answer = loop.create_task(self.answer(request, send))
        listener: asyncio.Task[None] | None = None

        def listen() -> None:
            # Runs after the answer's first step: an answer that never waits needs no
            # listener, since nothing else could run before it ended anyway.
            nonlocal listener
            if not answer.done():
                listener = loop.create_task(self.listen_for_disconnect(receive))
                # Whatever ends the listener (a disconnect, an invalid message) ends the view.
                listener.add_done_callback(lambda _: answer.cancel())

        pending_listen = loop.call_soon(listen)
        try:
            response: HttpResponseBase | None = await answer
        except asyncio.CancelledError:
            if current_task_cancelling():
                raise  # this request itself is cancelled (and so was the answer)
            response = None  # the client left: the listener cancelled the answer
        finally:
            pending_listen.cancel()
            if listener is not None:
                # None outlives the ThreadSensitiveContext (asgiref refuses calls from tasks
                # that do); waiting is only for requests that waited anyway.
                listener.cancel()
                await asyncio.wait([listener])
        if listener is not None and not listener.cancelled():
            error = listener.exception()
            if error is not None and not isinstance(error, RequestAborted):
                raise error  # an invalid ASGI message
        if response is not None:
            await self.close_response(response, executor)
        elif executor.used or not self.housekeeping_only(signals.request_finished):
            await signals.request_finished.asend(sender=sender)
        # Else the receivers would act on this context's and the loop thread's connections,
        # urlconf and caches, which the request (its thread unused, its view in a task of its
        # own) never touched: sending request_finished here would do nothing.

    async def answer(self, request: Any, send: Any) -> HttpResponseBase:
        """Run the view and send its response; return the response to close."""
        response = await self.run_get_response(request)
        # The client left while the response was being sent: close it all the same.
        with contextlib.suppress(asyncio.CancelledError):
            await self.send_response(response, send)
        return response

    async def send_response(self, response: Any, send: Any) -> None:
        """Send `response` as Django does, a sync iterator's chunks as they are produced.

        Django's handler serves a sync iterator by `list()`-ing it whole first (warning
        "StreamingHttpResponse must consume synchronous iterators"): a stream arrives all at
        once, an endless one never, a large export sits in memory. Here the iterator becomes
        an async one whose every chunk is pulled on the request's thread, so the rest is
        Django's own path: headers, chunking, `more_body`, the final message. A client that
        leaves cancels the wait for a pull; the pull itself ends on the thread, and
        close_response's call, queued there behind it, closes the iterator. An async iterator
        goes through `ended_with_the_response`.
        """
        if not isinstance(response, StreamingHttpResponse):
            await super().send_response(response, send)
        elif not response.is_async:
            # The documented way to wrap a response's content; an object without close()
            # registers no closer, so response.close() still closes the original iterator.
            content = cast(Iterator[bytes], response.streaming_content)  # not is_async
            response.streaming_content = PulledOnRequestThread(content)
            await super().send_response(response, send)
        else:
            # The iterator the view gave, not streaming_content (a new wrapper on every read,
            # whose closing would not reach it). Private, but set by Django since 4.2.
            stream = ended_with_the_response(response._iterator)  # type: ignore[attr-defined]
            response.streaming_content = stream
            try:
                await super().send_response(response, send)
            finally:
                await stream.aclose()

    async def close_response(self, response: HttpResponseBase, executor: RequestExecutor) -> None:
        """Close `response` (which sends request_finished), on the request's thread if needed.

        On the loop, without request_finished, only when nothing could need the thread or the
        signal: the request never used its thread, the response holds nothing to close but the
        request (a file, or a sync iterator whose `finally` may use the ORM, would need the
        thread) with Django's own close(), and request_finished reaches only Django's
        housekeeping, which would find nothing to do (see serve_request).
        """
        if (
            executor.used
            or type(response).close is not HttpResponseBase.close
            or not only_closes_requests(response)
            or not self.housekeeping_only(signals.request_finished)
        ):
            await sync_to_async(response.close)()
        else:
            close_requests(response)


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
            await acknowledge_lifespan(receive, send)
            return
        await self.app(scope, receive, send)


def get_asgi_application() -> LifespanApp:
    """Set Django up and return the project's ASGI application (what project.asgi serves)."""
    django.setup(set_prefix=False)
    if settings.STACK_PROFILE == "stock":  # the benchmark's baseline (project/settings.py)
        return LifespanApp(ASGIHandler())
    return LifespanApp(PooledThreadASGIHandler())
