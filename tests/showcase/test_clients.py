"""The upstream views' httpx clients: reuse within a process or loop, never across loops."""

from __future__ import annotations

import asyncio

import httpx
from asgiref.sync import async_to_sync
from django.test import SimpleTestCase, override_settings

from apps.showcase import clients
from apps.showcase.clients import (
    MAX_SHARDS,
    SHARD_TARGET,
    LoopClients,
    UpstreamFailure,
    failure,
    interpret,
)


async def loop_clients_twice() -> tuple[LoopClients, LoopClients]:
    """Return the running loop's clients, asked for twice, with one shard opened."""
    first = clients.loop_clients()
    first.pick()
    return first, clients.loop_clients()


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


class LoopClientsTests(SimpleTestCase):
    async def test_one_set_per_loop(self):
        first, second = await loop_clients_twice()
        self.assertIs(first, second)
        self.assertFalse(first.shards[0].client.trust_env)

    def test_each_loop_gets_its_own_clients_closed_when_the_loop_ends(self):
        # asyncio.run is what uvicorn and asgiref's async_to_sync (an async view under WSGI,
        # an async test) run their loops with.
        first, _ = asyncio.run(loop_clients_twice())
        second, _ = asyncio.run(loop_clients_twice())
        self.assertIsNot(first, second)
        self.assertTrue(first.shards[0].client.is_closed)
        self.assertTrue(second.shards[0].client.is_closed)

    def test_async_to_sync_loops_close_their_clients(self):
        first, _ = async_to_sync(loop_clients_twice)()
        second, _ = async_to_sync(loop_clients_twice)()
        self.assertIsNot(first, second)
        self.assertTrue(first.shards[0].client.is_closed and second.shards[0].client.is_closed)

    async def test_aclose_makes_the_next_call_build_new_clients(self):
        first = clients.loop_clients()
        shard = first.pick()
        await clients.aclose_loop_clients()
        self.assertTrue(shard.client.is_closed)
        second = clients.loop_clients()
        self.assertIsNot(second, first)
        self.assertIsNot(second.pick().client, shard.client)
        await clients.aclose_loop_clients()

    async def test_a_shard_opens_only_when_every_shard_is_busy(self):
        pool = clients.loop_clients()
        first = pool.pick()
        self.assertIs(pool.pick(), first)
        first.in_flight = SHARD_TARGET - 1
        self.assertIs(pool.pick(), first)
        first.in_flight = SHARD_TARGET
        second = pool.pick()
        self.assertIsNot(second, first)
        second.in_flight = 1
        self.assertIs(pool.pick(), second)
        first.in_flight = 0
        self.assertIs(pool.pick(), first)
        self.assertEqual(len(pool.shards), 2)
        await clients.aclose_loop_clients()

    async def test_shards_stop_at_the_maximum(self):
        pool = clients.loop_clients()
        for _ in range(MAX_SHARDS + 5):
            pool.pick().in_flight = SHARD_TARGET
        self.assertEqual(len(pool.shards), MAX_SHARDS)
        await clients.aclose_loop_clients()


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
