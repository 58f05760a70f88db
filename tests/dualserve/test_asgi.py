"""project.asgi: the lifespan protocol answered, HTTP handed to Django."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import warnings
from typing import Any, ClassVar
from unittest import mock

from asgiref.testing import ApplicationCommunicator
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.test import SimpleTestCase, TransactionTestCase, override_settings
from uvicorn.config import Config
from uvicorn.lifespan.on import LifespanOn

from apps.dualserve.asgi import (
    ExecutorPool,
    PooledThreadASGIHandler,
    ReceiverCheck,
    RequestExecutor,
    only_thread_local_receivers,
)
from tests.dualserve import views
from tests.support import asgi_request, count_thread_hops, http_scope


class LifespanTests(SimpleTestCase):
    async def test_startup_and_shutdown_complete(self) -> None:
        from project.asgi import application

        communicator = ApplicationCommunicator(
            application, {"type": "lifespan", "asgi": {"version": "3.0"}}
        )
        await communicator.send_input({"type": "lifespan.startup"})
        self.assertEqual(
            await communicator.receive_output(2), {"type": "lifespan.startup.complete"}
        )
        await communicator.send_input({"type": "lifespan.shutdown"})
        self.assertEqual(
            await communicator.receive_output(2), {"type": "lifespan.shutdown.complete"}
        )
        await communicator.wait(2)

    async def test_uvicorn_lifespan_on_starts_quietly(self) -> None:
        # uvicorn's own lifespan driver, as `--lifespan on` runs it.
        config = Config(app="project.asgi:application", lifespan="on")
        config.load()
        lifespan = LifespanOn(config)
        with self.assertNoLogs("uvicorn.error", logging.WARNING):
            await lifespan.startup()
            self.assertFalse(lifespan.startup_failed)
            self.assertFalse(lifespan.should_exit)
            await lifespan.shutdown()
            self.assertFalse(lifespan.shutdown_failed)

    async def test_http_reaches_django(self) -> None:
        from project.asgi import application

        status, headers, _ = await asgi_request(application, "/healthz")
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], "application/json")


class WebSocketRoutingTests(TransactionTestCase):
    # Channels wraps each consumer call in close_old_connections, run on the test's thread
    # (where earlier tests opened the test database's connection): a SimpleTestCase refuses it.
    databases: ClassVar[set[str]] = {"default"}

    async def test_a_websocket_without_a_route_is_closed_not_crashed(self) -> None:
        """project.asgi routes websocket scopes to Channels: an unknown path is refused cleanly."""
        from project.asgi import application

        scope = {
            "type": "websocket",
            "path": "/ws/nowhere/",
            "headers": [(b"host", b"localhost"), (b"origin", b"http://localhost")],
        }
        communicator = ApplicationCommunicator(application, scope)
        await communicator.send_input({"type": "websocket.connect"})
        self.assertEqual(await communicator.receive_output(2), {"type": "websocket.close"})
        await communicator.wait(2)


async def thread_of(handler: PooledThreadASGIHandler, sleep: float = 0) -> str:
    """Return the thread a sync view ran on for one request through `handler`."""
    query = f"sleep={sleep}".encode()
    status, _, chunks = await asgi_request(handler, "/sync/thread/", query_string=query)
    assert status == 200
    thread: str = json.loads(b"".join(chunks))["thread"]
    return thread


@override_settings(ROOT_URLCONF="tests.dualserve.urls")
class PooledThreadHandlerTests(SimpleTestCase):
    async def test_a_request_reuses_an_idle_thread(self) -> None:
        handler = PooledThreadASGIHandler()
        first = await thread_of(handler)
        second = await thread_of(handler)
        self.assertEqual(first, second)
        self.assertEqual(len(handler.executors), 1)

    async def test_djangos_handler_starts_a_thread_per_request(self) -> None:
        # The cost the pool removes (control for the test above).
        from django.core.handlers.asgi import ASGIHandler

        handler = ASGIHandler()
        threads = {await thread_of(handler) for _ in range(3)}  # type: ignore[arg-type]
        self.assertEqual(len(threads), 3)

    async def test_concurrent_requests_get_their_own_threads(self) -> None:
        handler = PooledThreadASGIHandler()
        # 1 s each: all four must hold their thread at once, even on a slow machine.
        threads = await asyncio.gather(*(thread_of(handler, sleep=1.0) for _ in range(4)))
        self.assertEqual(len(set(threads)), 4)

    @override_settings(ASGI_IDLE_THREADS=2)
    async def test_idle_threads_are_bounded(self) -> None:
        handler = PooledThreadASGIHandler()
        await asyncio.gather(*(thread_of(handler, sleep=0.1) for _ in range(5)))
        self.assertEqual(len(handler.executors), 2)

    async def test_request_signals_still_fire(self) -> None:
        # close_old_connections hangs on these: connections are still closed per request.
        handler = PooledThreadASGIHandler()
        seen: list[str] = []

        def started(**kwargs: object) -> None:
            seen.append("started")

        def finished(**kwargs: object) -> None:
            seen.append("finished")

        request_started.connect(started)
        request_finished.connect(finished)
        try:
            await thread_of(handler)
            await thread_of(handler)
        finally:
            request_started.disconnect(started)
            request_finished.disconnect(finished)
        self.assertEqual(seen, ["started", "finished", "started", "finished"])

    async def test_non_http_scopes_are_refused_as_django_does(self) -> None:
        communicator = ApplicationCommunicator(
            PooledThreadASGIHandler(), {"type": "websocket", "path": "/"}
        )
        with self.assertRaisesMessage(ValueError, "Django can only handle ASGI/HTTP"):
            await communicator.wait(2)


def record_connection_checks() -> tuple[list[str], Any]:
    """Patch the per-connection check close_old_connections makes; return (threads, patcher).

    The receiver itself cannot be replaced: the handler recognises Django's own by identity.
    """
    threads: list[str] = []
    original = BaseDatabaseWrapper.close_if_unusable_or_obsolete

    def recorded(self: BaseDatabaseWrapper) -> None:
        threads.append(threading.current_thread().name)
        original(self)

    return threads, mock.patch.object(
        BaseDatabaseWrapper, "close_if_unusable_or_obsolete", recorded
    )


@override_settings(ROOT_URLCONF="tests.dualserve.urls")
class DeferredRequestSignalTests(TransactionTestCase):
    """The two hops Django's handler makes per request, deferred to where they matter."""

    databases: ClassVar[set[str]] = {"default"}

    async def test_a_request_that_stays_on_the_loop_makes_no_hop(self) -> None:
        from project.asgi import application

        await asgi_request(application, "/async/ok/")
        with count_thread_hops() as counts:
            status, _, _ = await asgi_request(application, "/async/ok/")
        self.assertEqual(status, 200)
        self.assertEqual(counts["sync_to_async"], 0)

    async def test_djangos_handler_makes_two_for_the_same_request(self) -> None:
        # The control: the hops the test above shows removed.
        from django.core.handlers.asgi import ASGIHandler

        handler = ASGIHandler()
        await asgi_request(handler, "/async/ok/")
        with count_thread_hops() as counts:
            await asgi_request(handler, "/async/ok/")
        self.assertEqual(counts["sync_to_async"], 2)

    async def test_the_request_thread_is_checked_before_its_first_query_and_at_the_end(
        self,
    ) -> None:
        handler = PooledThreadASGIHandler()
        # The first request opens the thread's connection (nothing to check before it).
        status, _, chunks = await asgi_request(handler, "/async/count/")
        self.assertEqual(status, 200)
        thread = json.loads(b"".join(chunks))["thread"]
        self.assertTrue(thread.startswith("django-request-"), thread)
        checks, patcher = record_connection_checks()
        with patcher:
            status, _, chunks = await asgi_request(handler, "/async/count/")
        self.assertEqual(json.loads(b"".join(chunks))["thread"], thread)  # the pooled thread
        # request_started's check ran there before the query, request_finished's after it.
        self.assertEqual(checks, [thread, thread])

    async def test_a_request_that_never_uses_its_thread_checks_nothing(self) -> None:
        handler = PooledThreadASGIHandler()
        await asgi_request(handler, "/async/count/")  # the thread now holds a connection
        checks, patcher = record_connection_checks()
        with patcher:
            status, _, _ = await asgi_request(handler, "/async/ok/")
        self.assertEqual(status, 200)
        self.assertEqual(checks, [])
        # ...and the next request that uses the thread checks it first.
        with patcher:
            await asgi_request(handler, "/async/count/")
        self.assertEqual(len(checks), 2)

    async def test_a_receiver_of_the_project_brings_djangos_hops_back(self) -> None:
        handler = PooledThreadASGIHandler()
        seen: list[tuple[str, str]] = []

        def started(**kwargs: object) -> None:
            seen.append(("started", threading.current_thread().name))

        def finished(**kwargs: object) -> None:
            seen.append(("finished", threading.current_thread().name))

        request_started.connect(started)
        request_finished.connect(finished)
        try:
            with count_thread_hops() as counts:
                await asgi_request(handler, "/async/ok/")
        finally:
            request_started.disconnect(started)
            request_finished.disconnect(finished)
        self.assertEqual(counts["sync_to_async"], 2)
        self.assertEqual([name for name, _ in seen], ["started", "finished"])
        # Both on the request's thread, as Django's thread-sensitive hops put them.
        self.assertEqual(len({thread for _, thread in seen}), 1)
        self.assertTrue(seen[0][1].startswith("django-request-"), seen)

    async def test_a_response_with_a_resource_is_closed_on_the_request_thread(self) -> None:
        views.CLOSED_ON.clear()
        handler = PooledThreadASGIHandler()
        status, _, _ = await asgi_request(handler, "/async/closing/")
        self.assertEqual(status, 200)
        self.assertEqual(len(views.CLOSED_ON), 1)
        self.assertTrue(views.CLOSED_ON[0].startswith("django-request-"), views.CLOSED_ON)

    async def test_a_disconnect_cancels_the_view_and_finishes_the_request(self) -> None:
        views.WAIT_EVENTS.clear()
        handler = PooledThreadASGIHandler()
        finished: list[str] = []

        def on_finished(**kwargs: object) -> None:
            finished.append(threading.current_thread().name)

        request_finished.connect(on_finished)
        try:
            communicator = ApplicationCommunicator(handler, http_scope("/async/wait/"))
            await communicator.send_input({"type": "http.request", "body": b""})
            for _ in range(100):  # until the view runs (bounded: 5 s)
                if views.WAIT_EVENTS:
                    break
                await asyncio.sleep(0.05)
            await communicator.send_input({"type": "http.disconnect"})
            await communicator.wait(5)
        finally:
            request_finished.disconnect(on_finished)
        self.assertEqual(views.WAIT_EVENTS, ["started", "cancelled"])
        self.assertEqual(len(finished), 1)
        self.assertTrue(await communicator.receive_nothing())


async def receive_calls(handler: PooledThreadASGIHandler, path: str, query: bytes = b"") -> int:
    """Serve `path` through `handler` to a client that stays; return how often it read input."""
    calls = 0

    async def receive() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            return {"type": "http.request", "body": b""}
        await asyncio.Event().wait()  # the client never leaves
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        pass

    await asyncio.wait_for(handler(http_scope(path, query_string=query), receive, send), 5)
    return calls


@override_settings(ROOT_URLCONF="tests.dualserve.urls")
class DisconnectListenerTests(SimpleTestCase):
    """The disconnect listener starts only for a request that waits."""

    async def test_a_request_answered_without_waiting_reads_only_its_body(self) -> None:
        self.assertEqual(await receive_calls(PooledThreadASGIHandler(), "/async/ok/"), 1)

    async def test_a_request_that_waits_listens_for_a_disconnect(self) -> None:
        # The control: the sync view's thread hop makes the request wait.
        calls = await receive_calls(PooledThreadASGIHandler(), "/sync/thread/", b"sleep=0.05")
        self.assertEqual(calls, 2)

    async def test_a_cancelled_request_cancels_its_view_and_leaves_no_task(self) -> None:
        views.WAIT_EVENTS.clear()
        communicator = ApplicationCommunicator(
            PooledThreadASGIHandler(), http_scope("/async/wait/")
        )
        before = asyncio.all_tasks()
        await communicator.send_input({"type": "http.request", "body": b""})
        for _ in range(100):  # until the view runs (bounded: 5 s)
            if views.WAIT_EVENTS:
                break
            await asyncio.sleep(0.05)
        started = asyncio.all_tasks() - before  # the application, its view, its listener
        self.assertGreaterEqual(len(started), 3)
        communicator.future.cancel()  # as a server cancels an application on shutdown
        with self.assertRaises(asyncio.CancelledError):
            await communicator.future
        self.assertEqual(views.WAIT_EVENTS, ["started", "cancelled"])
        self.assertEqual([task for task in started if not task.done()], [])


class RequestExecutorTests(SimpleTestCase):
    def test_the_prologue_runs_once_on_the_thread_before_the_first_job(self) -> None:
        executor = RequestExecutor("test-request")
        calls: list[tuple[str, str]] = []
        try:
            executor.begin(lambda: calls.append(("prologue", threading.current_thread().name)))
            self.assertFalse(executor.used)
            for job in ("first", "second"):
                executor.submit(
                    lambda job=job: calls.append((job, threading.current_thread().name))
                ).result(5)
        finally:
            executor.shutdown(wait=True)
        self.assertTrue(executor.used)
        self.assertEqual([name for name, _ in calls], ["prologue", "first", "second"])
        self.assertEqual(len({thread for _, thread in calls}), 1)

    def test_a_released_executor_forgets_the_prologue_of_its_last_request(self) -> None:
        pool = ExecutorPool(max_idle=1)
        executor = pool.acquire()
        calls: list[str] = []
        try:
            executor.begin(lambda: calls.append("stale"))
            pool.release(executor)
            again = pool.acquire()
            self.assertIs(again, executor)
            self.assertFalse(again.used)
            again.submit(calls.append, "job").result(5)
        finally:
            executor.shutdown(wait=True)
        self.assertEqual(calls, ["job"])

    def test_only_djangos_housekeeping_receivers_are_deferred(self) -> None:
        self.assertTrue(only_thread_local_receivers(request_started, PooledThreadASGIHandler))

        def receiver(**kwargs: object) -> None:
            pass

        request_started.connect(receiver)
        try:
            self.assertFalse(only_thread_local_receivers(request_started, PooledThreadASGIHandler))
        finally:
            request_started.disconnect(receiver)

    def test_the_receiver_check_sees_a_receiver_come_and_go(self) -> None:
        check = ReceiverCheck(PooledThreadASGIHandler)
        self.assertTrue(check(request_finished))

        def receiver(**kwargs: object) -> None:
            pass

        request_finished.connect(receiver)
        try:
            self.assertFalse(check(request_finished))
        finally:
            request_finished.disconnect(receiver)
        self.assertTrue(check(request_finished))
        self.assertTrue(check(request_started))  # one answer per signal


class RetiredThreadTests(TransactionTestCase):
    databases: ClassVar[set[str]] = {"default"}

    def test_a_retired_thread_closes_its_database_connections_first(self) -> None:
        from django.db import connections

        # The backend's own wrapper class: SQLite here, PostgreSQL in tests/db/test_app_tests.py.
        wrapper_class = type(connections["default"])
        pool = ExecutorPool(max_idle=0)
        executor = pool.acquire()
        executor.begin()
        closed_on: list[str] = []
        original = wrapper_class.close

        def recorded(wrapper: BaseDatabaseWrapper) -> None:
            closed_on.append(threading.current_thread().name)
            original(wrapper)

        thread = executor.submit(lambda: threading.current_thread().name).result(5)
        # Opened on the executor's thread (connections are per thread).
        executor.submit(lambda: connections["default"].ensure_connection()).result(5)
        with mock.patch.object(wrapper_class, "close", recorded):
            pool.release(executor)  # over max_idle: retired
            executor.shutdown(wait=True)
        self.assertEqual(len(pool), 0)
        self.assertIn(thread, closed_on)


async def pulls_at_each_send(handler: PooledThreadASGIHandler, chunks: int) -> list[int]:
    """Serve /sync/counted-stream/ through `handler` to a slow client.

    Return, for each body chunk sent, how many chunks the generator had produced by then.
    """
    pulled_when_sent: list[int] = []
    messages = [{"type": "http.request", "body": b""}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # the client never leaves
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            pulled_when_sent.append(sum(e.startswith("pull") for e, _ in views.STREAM_LOG))
            await asyncio.sleep(0.05)  # time a read-ahead would use

    scope = http_scope("/sync/counted-stream/", query_string=b"chunks=%d" % chunks)
    await asyncio.wait_for(handler(scope, receive, send), 10)
    return pulled_when_sent


@override_settings(ROOT_URLCONF="tests.dualserve.urls")
class SyncStreamTests(SimpleTestCase):
    """A sync iterator is sent as it is produced, pulled on the request's thread."""

    def setUp(self) -> None:
        views.STREAM_LOG.clear()
        views.STREAM_GATE.clear()
        # Whatever a test leaves waiting is let go.
        self.addCleanup(views.STREAM_GATE.set)

    async def test_the_first_chunk_leaves_before_the_next_is_produced(self) -> None:
        communicator = ApplicationCommunicator(
            PooledThreadASGIHandler(), http_scope("/sync/gated-stream/")
        )
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # Django's "must consume synchronous iterators"
            await communicator.send_input({"type": "http.request", "body": b""})
            start = await communicator.receive_output(5)
            self.assertEqual(start["status"], 200)
            # The generator is now waiting for the gate, which only this arrival opens.
            first = await communicator.receive_output(5)
            self.assertEqual((first["body"], first["more_body"]), (b"first", True))
            views.STREAM_GATE.set()
            second = await communicator.receive_output(5)
            self.assertEqual((second["body"], second["more_body"]), (b"second", True))
            self.assertFalse((await communicator.receive_output(5)).get("more_body", False))
            await communicator.wait(5)
        events = [event for event, _ in views.STREAM_LOG]
        self.assertEqual(events, ["view", "first", "gate open", "closed"])
        # The view, every pull and the close: one thread, the request's pooled one.
        threads = {thread for _, thread in views.STREAM_LOG}
        self.assertEqual(len(threads), 1, views.STREAM_LOG)
        self.assertTrue(threads.pop().startswith("django-request-"))

    async def test_a_chunk_is_pulled_only_once_the_previous_one_is_sent(self) -> None:
        # Backpressure: a slow send() holds the generator back, nothing is read ahead.
        pulls = await pulls_at_each_send(PooledThreadASGIHandler(), chunks=5)
        self.assertEqual(pulls, [1, 2, 3, 4, 5])
        self.assertEqual(views.STREAM_LOG[-1][0], "closed")

    async def test_a_disconnect_stops_the_stream_and_closes_it_on_its_thread(self) -> None:
        finished: list[str] = []

        def on_finished(**kwargs: object) -> None:
            finished.append(threading.current_thread().name)

        request_finished.connect(on_finished)
        self.addCleanup(request_finished.disconnect, on_finished)
        # 1,000 chunks 10 ms apart: only the disconnect ends it early.
        scope = http_scope("/sync/counted-stream/", query_string=b"chunks=1000&ms=10")
        communicator = ApplicationCommunicator(PooledThreadASGIHandler(), scope)
        await communicator.send_input({"type": "http.request", "body": b""})
        await communicator.receive_output(5)  # http.response.start
        for number in (1, 2):
            chunk = await communicator.receive_output(5)
            self.assertEqual(chunk["body"], b"chunk %d\n" % number)
        await communicator.send_input({"type": "http.disconnect"})
        await communicator.wait(5)
        events = [event for event, _ in views.STREAM_LOG]
        self.assertEqual(events[-1], "closed")
        self.assertLess(len(events), 100, "the stream went on after the disconnect")
        self.assertEqual(len({thread for _, thread in views.STREAM_LOG}), 1, views.STREAM_LOG)
        self.assertEqual(len(finished), 1)
        self.assertEqual(finished[0], views.STREAM_LOG[-1][1])  # closing sends it, there

    async def test_djangos_handler_buffers_the_same_stream(self) -> None:
        # The control: what PooledThreadASGIHandler changes.
        from django.core.handlers.asgi import ASGIHandler

        # Detached as Django's test client does: its eager hops would check the test's
        # connection, which a SimpleTestCase may not touch.
        request_started.disconnect(close_old_connections)
        request_finished.disconnect(close_old_connections)
        try:
            with self.assertWarnsMessage(Warning, "must consume synchronous iterators"):
                pulls = await pulls_at_each_send(ASGIHandler(), chunks=5)  # type: ignore[arg-type]
        finally:
            request_started.connect(close_old_connections)
            request_finished.connect(close_old_connections)
        self.assertEqual(pulls, [5, 5, 5, 5, 5])  # all of it pulled before the first send


@override_settings(ROOT_URLCONF="tests.dualserve.urls")
class AsyncStreamTests(SimpleTestCase):
    """An async iterator ends and is closed when its response ends, however that happens."""

    def setUp(self) -> None:
        views.ASYNC_STREAM_LOG.clear()

    async def test_a_disconnect_ends_a_stream_that_swallowed_its_cancellation(self) -> None:
        communicator = ApplicationCommunicator(
            PooledThreadASGIHandler(), http_scope("/async/stubborn-stream/")
        )
        await communicator.send_input({"type": "http.request", "body": b""})
        self.assertEqual((await communicator.receive_output(5))["status"], 200)
        self.assertEqual((await communicator.receive_output(5))["body"], b"first")
        await communicator.send_input({"type": "http.disconnect"})
        await communicator.wait(5)  # asgiref cancels it after 5 s if it is still running
        self.assertEqual(views.ASYNC_STREAM_LOG, ["cancellation swallowed", "closed"])
        # What it yielded after the lost cancellation was not sent.
        self.assertTrue(await communicator.receive_nothing(0.1))

    async def test_a_response_that_fails_to_send_closes_its_iterator(self) -> None:
        # A send that fails leaves the iterator at a yield, where no cancellation reaches it.
        handler = PooledThreadASGIHandler()
        response = await views.async_stubborn_stream(None)  # type: ignore[arg-type]
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            if message.get("body"):
                raise OSError("the connection is gone")
            sent.append(message)

        with self.assertRaises(OSError):
            await handler.send_response(response, send)
        self.assertEqual([message["type"] for message in sent], ["http.response.start"])
        self.assertEqual(views.ASYNC_STREAM_LOG, ["closed"])  # at once, not at collection
