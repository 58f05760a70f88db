"""The upstream views' httpx clients: reuse within a process or loop, never across loops."""

from __future__ import annotations

import asyncio

import httpx
from asgiref.sync import async_to_sync
from django.test import SimpleTestCase, override_settings

from apps.showcase import clients
from apps.showcase.clients import UpstreamFailure, failure, interpret


async def loop_client() -> tuple[httpx.AsyncClient, httpx.AsyncClient]:
    """Return the running loop's client, asked for twice."""
    return clients.async_client(), clients.async_client()


class SyncClientTests(SimpleTestCase):
    def test_one_client_per_process(self):
        self.addCleanup(clients.close_sync_client)
        self.assertIs(clients.sync_client(), clients.sync_client())

    def test_close_makes_the_next_call_build_a_new_client(self):
        self.addCleanup(clients.close_sync_client)
        first = clients.sync_client()
        clients.close_sync_client()
        self.assertTrue(first.is_closed)
        self.assertIsNot(clients.sync_client(), first)

    def test_proxies_from_the_environment_are_ignored(self):
        self.addCleanup(clients.close_sync_client)
        self.assertFalse(clients.sync_client().trust_env)


class AsyncClientTests(SimpleTestCase):
    async def test_one_client_per_loop(self):
        first, second = await loop_client()
        self.assertIs(first, second)
        self.assertFalse(first.trust_env)

    def test_each_loop_gets_its_own_client_closed_when_the_loop_ends(self):
        # asyncio.run is what uvicorn and asgiref's async_to_sync (an async view under WSGI,
        # an async test) run their loops with.
        first, _ = asyncio.run(loop_client())
        second, _ = asyncio.run(loop_client())
        self.assertIsNot(first, second)
        self.assertTrue(first.is_closed)
        self.assertTrue(second.is_closed)

    def test_async_to_sync_loops_close_their_clients(self):
        first, _ = async_to_sync(loop_client)()
        second, _ = async_to_sync(loop_client)()
        self.assertIsNot(first, second)
        self.assertTrue(first.is_closed and second.is_closed)

    async def test_aclose_makes_the_next_call_build_a_new_client(self):
        first = clients.async_client()
        await clients.aclose_async_client()
        self.assertTrue(first.is_closed)
        second = clients.async_client()
        self.assertIsNot(second, first)
        self.assertFalse(second.is_closed)


class InterpretTests(SimpleTestCase):
    def test_json_answer(self):
        self.assertEqual(interpret(httpx.Response(200, json={"ms": 3})), {"ms": 3})

    def test_error_status_is_a_502(self):
        with self.assertRaises(UpstreamFailure) as caught:
            interpret(httpx.Response(503, json={"error": "busy"}))
        self.assertEqual(
            (caught.exception.status, caught.exception.message), (502, "upstream answered 503")
        )

    def test_non_json_answer_is_a_502(self):
        with self.assertRaises(UpstreamFailure) as caught:
            interpret(httpx.Response(200, content=b"<html>"))
        self.assertEqual(caught.exception.status, 502)
        self.assertIn("not JSON", caught.exception.message)

    @override_settings(SHOWCASE_UPSTREAM_TIMEOUT=2.5)
    def test_failures(self):
        cases = [
            (httpx.ReadTimeout("slow"), 504, "upstream timed out after 2.5 s"),
            (httpx.ConnectTimeout("slow"), 504, "upstream timed out after 2.5 s"),
            (httpx.PoolTimeout("full"), 503, "no upstream connection free in time"),
            (httpx.ConnectError("refused"), 502, "upstream unreachable: ConnectError"),
            (httpx.RemoteProtocolError("bad"), 502, "upstream unreachable: RemoteProtocolError"),
        ]
        for exc, status, message in cases:
            with self.subTest(exc=type(exc).__name__):
                answer = failure(exc)
                self.assertEqual((answer.status, answer.message), (status, message))

    @override_settings(SHOWCASE_UPSTREAM_TIMEOUT=1.5)
    def test_timeout_follows_the_setting(self):
        self.assertEqual(clients.timeout(), httpx.Timeout(1.5))
