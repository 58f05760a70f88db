"""ASGI glue around Django's handler: the lifespan protocol, and reused request threads.

Django's `ASGIHandler` wraps every request in a fresh `ThreadSensitiveContext`. Its first
thread-sensitive `sync_to_async` (the request_started receivers, then `response.close()`)
therefore starts a NEW one-thread executor, and the context's exit joins that thread: every
request pays for creating and joining a thread even when it never touches the database
(FIELD_NOTES, "Django under ASGI"). `PooledThreadASGIHandler` hands each request a one-thread
executor from a small pool instead (asgiref 3.13's `ThreadSensitiveContext(executor=...)`):

- still one thread per request, so all sync code of a request runs on one thread as Django
  requires (database connections are per thread);
- the request signals still run there, so `close_old_connections` still closes or
  health-checks that thread's connections at request start and end;
- disconnects are handled by Django's own `handle()`, unchanged.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from typing import Any

import django
from asgiref.sync import ThreadSensitiveContext
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
# Loose on purpose: Django's handler annotates scope as dict and messages as Mapping.
ASGIApp = Callable[..., Awaitable[None]]


class ExecutorPool:
    """One-thread executors kept between requests, most recently used first.

    Only the idle ones are kept (at most `max_idle`); a burst beyond that gets new executors
    that are shut down when their request ends. list.append and list.pop are atomic under
    the GIL, so no lock is needed even if several event loops share the pool.
    """

    def __init__(self, max_idle: int) -> None:
        self.max_idle = max_idle
        self._idle: list[ThreadPoolExecutor] = []
        self._numbers = itertools.count(1)

    def acquire(self) -> ThreadPoolExecutor:
        """Return an idle executor, or a new one (its thread starts on first use)."""
        try:
            return self._idle.pop()
        except IndexError:
            # A distinct name per thread, so logs and debuggers can tell them apart.
            name = f"django-request-{next(self._numbers)}"
            return ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    def release(self, executor: ThreadPoolExecutor) -> None:
        """Keep `executor` for a later request, or shut it down when enough are idle."""
        if len(self._idle) < self.max_idle:
            self._idle.append(executor)
        else:
            # wait=False: the loop must not block; the thread ends after its current call.
            executor.shutdown(wait=False)

    def __len__(self) -> int:
        return len(self._idle)


class PooledThreadASGIHandler(ASGIHandler):
    """Django's ASGI handler, with each request's thread-sensitive executor taken from a pool."""

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
        executor = self.executors.acquire()
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            self.executors.release(executor)


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


def get_asgi_application() -> LifespanApp:
    """Set Django up and return the project's ASGI application (what project.asgi serves)."""
    django.setup(set_prefix=False)
    if settings.STACK_PROFILE == "stock":  # the benchmark's baseline (project/settings.py)
        return LifespanApp(ASGIHandler())
    return LifespanApp(PooledThreadASGIHandler())
