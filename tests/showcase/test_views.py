"""The showcase's mirrored views: each pair answers the same, in both forms.

Sync views go through `self.client` (a WSGIRequest), async views through `self.async_client`
(an ASGIRequest). In async tests the sync client runs in `sync_to_async`, so its ORM calls use
the test's own connection and transaction.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import threading
import warnings
from unittest import mock

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.test import AsyncClient, Client, SimpleTestCase, TestCase, override_settings
from django.urls import resolve

from apps.showcase import clients, payloads
from apps.showcase.clients import SHARD_TARGET
from apps.showcase.models import Item
from apps.showcase.upstream import start_in_thread
from tests.showcase.helpers import (
    TwinAssertions,
    async_stream_body,
    body_of,
    free_port,
    parse_sse,
    sync_stream_body,
)
from tests.support import asgi_request, wsgi_request


class PairTestCase(TwinAssertions, TestCase):
    """Fetch the sync and the async view of a pair from one async test."""

    async def get_pair(self, kind: str, query: str = "") -> tuple:
        sync = await sync_to_async(self.client.get)(f"/sync/{kind}/{query}")
        async_ = await self.async_client.get(f"/async/{kind}/{query}")
        return sync, async_

    async def post_pair(self, kind: str, data: bytes | dict, **extra: str) -> tuple:
        sync = await sync_to_async(self.client.post)(f"/sync/{kind}/", data, **extra)
        async_ = await self.async_client.post(f"/async/{kind}/", data, **extra)
        return sync, async_


class HelloJsonTests(PairTestCase):
    def test_hello(self):
        response = self.client.get("/sync/hello/")
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response["Content-Type"], "text/plain; charset=utf-8")
        self.assertEqual(response.content, b"Hello, world!\n")

    async def test_async_hello(self):
        response = await self.async_client.get("/async/hello/")
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response.content, b"Hello, world!\n")

    async def test_hello_pair_answers_the_same(self):
        self.assertSameAnswer(*await self.get_pair("hello"))

    def test_json(self):
        response = self.client.get("/sync/json/")
        self.assertEqual(response["Content-Type"], "application/json")
        self.assertEqual(response.json()["interfaces"], ["wsgi", "asgi"])

    async def test_async_json(self):
        response = await self.async_client.get("/async/json/")
        self.assertEqual(response.json(), payloads.json_payload())

    async def test_json_pair_answers_the_same(self):
        self.assertSameAnswer(*await self.get_pair("json"))


class SleepTests(PairTestCase):
    def test_sleep(self):
        response = self.client.get("/sync/sleep/?ms=5")
        self.assertEqual(response.json(), {"slept_ms": 5})

    async def test_async_sleep(self):
        response = await self.async_client.get("/async/sleep/?ms=5")
        self.assertEqual(response.json(), {"slept_ms": 5})

    async def test_sleep_pair_answers_the_same(self):
        self.assertSameAnswer(*await self.get_pair("sleep", "?ms=0"))


class CpuTests(PairTestCase):
    def test_cpu(self):
        # Three rounds by hand: 0, 0*31+1 = 1, 1*31+2 = 33.
        self.assertEqual(self.client.get("/sync/cpu/?n=3").json(), {"n": 3, "checksum": 33})

    async def test_async_cpu(self):
        response = await self.async_client.get("/async/cpu/?n=3")
        self.assertEqual(response.json(), {"n": 3, "checksum": 33})

    async def test_cpu_pair_answers_the_same(self):
        sync, async_ = await self.get_pair("cpu", "?n=20000")
        self.assertSameAnswer(sync, async_)
        self.assertEqual(sync.json()["checksum"], payloads.cpu_work(20000))


class ValidationTests(PairTestCase):
    """Bad or out-of-range input: a 400 JSON error naming the problem, never a 500."""

    CASES = (
        ("sleep", "?ms=abc", "ms must be an integer, got 'abc'"),
        ("sleep", "?ms=", "ms must be an integer, got ''"),
        ("sleep", "?ms=-1", "ms must be between 0 and 10000, got -1"),
        ("sleep", "?ms=10001", "ms must be between 0 and 10000, got 10001"),
        ("sleep", "?ms=1e3", "ms must be an integer"),
        ("sleep", "?ms=99999999999999999999", "ms must be an integer"),
        ("upstream", "?ms=x", "ms must be an integer, got 'x'"),
        ("upstream", "?ms=20000", "ms must be between 0 and 10000"),
        ("cpu", "?n=1.5", "n must be an integer, got '1.5'"),
        ("cpu", "?n=5000001", "n must be between 0 and 5000000"),
        ("stream", "?events=0", "events must be between 1 and 1000"),
        ("stream", "?events=two", "events must be an integer"),
        ("stream", "?interval=-5", "interval must be between 0 and 10000"),
        ("stream", "?events=1000&interval=1000", "events x interval must stay within 60000 ms"),
        ("db", "?id=0", "id must be between 1 and"),
        ("db", "?id=one", "id must be an integer, got 'one'"),
    )

    def test_bad_parameters(self):
        for kind, query, message in self.CASES:
            with self.subTest(kind=kind, query=query):
                self.assertJsonError(self.client.get(f"/sync/{kind}/{query}"), 400, message)

    async def test_async_bad_parameters(self):
        for kind, query, message in self.CASES:
            with self.subTest(kind=kind, query=query):
                response = await self.async_client.get(f"/async/{kind}/{query}")
                self.assertJsonError(response, 400, message)

    async def test_bad_parameter_pairs_answer_the_same(self):
        for kind, query, _ in self.CASES:
            with self.subTest(kind=kind, query=query):
                self.assertSameAnswer(*await self.get_pair(kind, query))

    async def test_bad_item_fields(self):
        cases = [
            ({"value": "lots"}, "value must be an integer, got 'lots'"),
            ({"value": str(2**31)}, "value must be between"),
            ({"name": ""}, "name must be 1 to 100 printable characters"),
            ({"name": "x" * 101}, "name must be 1 to 100 printable characters"),
            ({"name": "a\nb"}, "name must be 1 to 100 printable characters"),
        ]
        for data, message in cases:
            with self.subTest(data=data):
                sync, async_ = await self.post_pair("db", data)
                self.assertJsonError(sync, 400, message)
                self.assertSameAnswer(sync, async_)
        self.assertEqual(await Item.objects.acount(), Item.SEED_ROWS)

    async def test_wrong_method_is_a_json_405(self):
        for kind, method in [("hello", "post"), ("db", "put"), ("upload", "get")]:
            with self.subTest(kind=kind, method=method):
                sync = await sync_to_async(getattr(self.client, method))(f"/sync/{kind}/")
                async_ = await getattr(self.async_client, method)(f"/async/{kind}/")
                self.assertJsonError(sync, 405, f"method {method.upper()} not allowed")
                self.assertSameAnswer(sync, async_)
                self.assertEqual(sync["Allow"], async_["Allow"])


class UpstreamTests(PairTestCase):
    """The upstream views against a real upstream server on a free loopback port."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.upstream = start_in_thread()
        cls.addClassCleanup(cls.upstream.stop)
        # The sync client's pool outlives the test class: close its connections to this server.
        cls.addClassCleanup(clients.close_sync_client)
        cls.enterClassContext(override_settings(SHOWCASE_UPSTREAM_URL=cls.upstream.url))

    def test_upstream(self):
        response = self.client.get("/sync/upstream/?ms=10")
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response.json(), {"ms": 10, "upstream": {"service": "upstream", "ms": 10}})

    async def test_async_upstream(self):
        response = await self.async_client.get("/async/upstream/?ms=10")
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response.json(), {"ms": 10, "upstream": {"service": "upstream", "ms": 10}})

    async def test_upstream_pair_answers_the_same(self):
        self.assertSameAnswer(*await self.get_pair("upstream", "?ms=0"))

    async def test_clients_are_reused(self):
        requests_before = self.upstream.server.requests
        await sync_to_async(self.client.get)("/sync/upstream/?ms=0")
        sync_client = clients.sync_client()
        await self.async_client.get("/async/upstream/?ms=0")
        loop_clients = clients.loop_clients()
        await sync_to_async(self.client.get)("/sync/upstream/?ms=0")
        await self.async_client.get("/async/upstream/?ms=0")
        self.assertIs(clients.sync_client(), sync_client)
        self.assertIs(clients.loop_clients(), loop_clients)
        self.assertEqual(len(loop_clients.shards), 1)
        self.assertEqual(self.upstream.server.requests - requests_before, 4)

    async def test_concurrent_async_calls_spread_over_shards(self):
        responses = await asyncio.gather(
            *(self.async_client.get("/async/upstream/?ms=300") for _ in range(4 * SHARD_TARGET))
        )
        self.assertEqual(
            [response.status_code for response in responses], [200] * (4 * SHARD_TARGET)
        )
        self.assertGreaterEqual(len(clients.loop_clients().shards), 2)

    async def test_upstream_down_is_a_502(self):
        with override_settings(SHOWCASE_UPSTREAM_URL=f"http://127.0.0.1:{free_port()}/"):
            sync, async_ = await self.get_pair("upstream", "?ms=0")
        self.assertJsonError(sync, 502, "upstream unreachable: ConnectError")
        self.assertSameAnswer(sync, async_)

    async def test_upstream_error_status_is_a_502(self):
        with override_settings(SHOWCASE_UPSTREAM_URL=self.upstream.url + "missing"):
            sync, async_ = await self.get_pair("upstream", "?ms=0")
        self.assertJsonError(sync, 502, "upstream answered 404")
        self.assertSameAnswer(sync, async_)

    async def test_upstream_timeout_is_a_504(self):
        with override_settings(SHOWCASE_UPSTREAM_TIMEOUT=0.1):
            sync, async_ = await self.get_pair("upstream", "?ms=3000")
        self.assertJsonError(sync, 504, "upstream timed out after 0.1 s")
        self.assertSameAnswer(sync, async_)

    async def test_bad_upstream_url_is_a_502(self):
        with override_settings(SHOWCASE_UPSTREAM_URL="ftp://127.0.0.1/"):
            sync, async_ = await self.get_pair("upstream", "?ms=0")
        self.assertJsonError(sync, 502, "upstream unreachable: UnsupportedProtocol")
        self.assertSameAnswer(sync, async_)


class DbTests(PairTestCase):
    def test_read(self):
        response = self.client.get("/sync/db/?id=7")
        self.assertEqual(response.status_code, 200)
        data = response.json()
        self.assertEqual(data["count"], Item.SEED_ROWS)
        self.assertEqual(
            {key: data["item"][key] for key in ("id", "name", "value")},
            {"id": 7, "name": "item-007", "value": 49},
        )

    async def test_async_read(self):
        response = await self.async_client.get("/async/db/?id=7")
        self.assertEqual(response.json()["item"]["name"], "item-007")
        self.assertEqual(response.json()["count"], Item.SEED_ROWS)

    async def test_read_pair_answers_the_same(self):
        self.assertSameAnswer(*await self.get_pair("db", "?id=42"))

    async def test_read_any_item(self):
        for response in await self.get_pair("db"):
            self.assertEqual(response.status_code, 200)
            self.assertIn(response.json()["item"]["id"], range(1, Item.SEED_ROWS + 1))

    async def test_missing_item_is_a_404(self):
        sync, async_ = await self.get_pair("db", "?id=100000")
        self.assertJsonError(sync, 404, "no item with id 100000")
        self.assertSameAnswer(sync, async_)

    def test_write(self):
        response = self.client.post("/sync/db/", {"name": "sync-made", "value": "12"})
        self.assertEqual(response.status_code, 201)
        item = Item.objects.get(name="sync-made")
        self.assertEqual(response.json()["item"]["id"], item.pk)
        self.assertEqual(item.value, 12)
        self.assertEqual(Item.objects.count(), Item.SEED_ROWS + 1)

    async def test_async_write(self):
        response = await self.async_client.post("/async/db/", {"name": "async-made", "value": "-3"})
        self.assertEqual(response.status_code, 201)
        item = await Item.objects.aget(name="async-made")
        self.assertEqual(response.json()["item"]["id"], item.pk)
        self.assertEqual(item.value, -3)
        self.assertEqual(await Item.objects.acount(), Item.SEED_ROWS + 1)

    async def test_write_pair_answers_alike(self):
        sync, async_ = await self.post_pair("db", {})
        # Two rows: ids and creation times differ, everything else is the same.
        self.assertEqual((sync.status_code, sync["Content-Type"]), (201, "application/json"))
        self.assertEqual((async_.status_code, async_["Content-Type"]), (201, "application/json"))
        sync_item, async_item = sync.json()["item"], async_.json()["item"]
        self.assertEqual(sync_item.keys(), async_item.keys())
        self.assertEqual((sync_item["name"], sync_item["value"]), ("posted", 0))
        self.assertEqual((async_item["name"], async_item["value"]), ("posted", 0))
        self.assertNotEqual(sync_item["id"], async_item["id"])

    def test_writes_need_no_csrf_token(self):
        response = Client(enforce_csrf_checks=True).post("/sync/db/", {"name": "tokenless"})
        self.assertEqual(response.status_code, 201)
        response = Client(enforce_csrf_checks=True).post(
            "/sync/upload/", b"x", content_type="application/octet-stream"
        )
        self.assertEqual(response.status_code, 200)

    async def test_async_writes_need_no_csrf_token(self):
        client = AsyncClient(enforce_csrf_checks=True)
        self.assertEqual((await client.post("/async/db/", {"name": "t"})).status_code, 201)
        response = await client.post("/async/upload/", b"x", content_type="text/plain")
        self.assertEqual(response.status_code, 200)


class DbJsonTests(PairTestCase):
    def test_write_from_json(self):
        response = self.client.post(
            "/sync/db/", {"name": "json-made", "value": 5}, "application/json"
        )
        self.assertEqual(response.status_code, 201)
        self.assertEqual(
            (response.json()["item"]["name"], response.json()["item"]["value"]), ("json-made", 5)
        )

    async def test_async_write_from_json(self):
        response = await self.async_client.post(
            "/async/db/", {"name": "json-made", "value": 5}, "application/json"
        )
        self.assertEqual(response.status_code, 201)
        self.assertEqual(await Item.objects.filter(name="json-made", value=5).acount(), 1)

    async def test_malformed_json_is_a_400_naming_the_problem(self):
        sync, async_ = await self.post_pair("db", b'{"name": ', content_type="application/json")
        self.assertJsonError(sync, 400, "JSON body is malformed: Expecting value at character 9")
        self.assertSameAnswer(sync, async_)
        self.assertEqual(await Item.objects.acount(), Item.SEED_ROWS)

    async def test_deeply_nested_json_is_a_400_not_a_500(self):
        sync, async_ = await self.post_pair("db", b"[" * 100_000, content_type="application/json")
        self.assertJsonError(sync, 400, "JSON body is nested too deeply")
        self.assertSameAnswer(sync, async_)


class RefusedBodyTests(PairTestCase):
    """Bodies Django refuses before the view: 400, in both modes."""

    async def assertPairRefused(self, body: bytes, content_type: str) -> None:
        sync, async_ = await self.post_pair("db", body, content_type=content_type)
        self.assertEqual((sync.status_code, async_.status_code), (400, 400))
        self.assertEqual(await Item.objects.acount(), Item.SEED_ROWS)

    async def test_too_many_form_fields(self):
        await self.assertPairRefused(b"a=1&" * 1001, "application/x-www-form-urlencoded")

    async def test_too_many_files(self):
        part = (
            b'--b\r\nContent-Disposition: form-data; name="f"; filename="f.txt"\r\n'
            b"Content-Type: text/plain\r\n\r\nx\r\n"
        )
        await self.assertPairRefused(part * 101 + b"--b--\r\n", "multipart/form-data; boundary=b")

    async def test_multipart_without_boundary_is_a_400_not_a_500(self):
        await self.assertPairRefused(b"--x\r\n\r\n--x--\r\n", "multipart/form-data")

    async def test_body_over_the_upload_memory_size(self):
        await self.assertPairRefused(
            b"name=" + b"a" * 2_700_000, "application/x-www-form-urlencoded"
        )

    def test_form_cut_short_under_wsgi_is_a_400(self):
        """gunicorn hands WSGI a body that ends at the client's EOF as if it were whole."""
        status, body = wsgi_request(
            "/sync/db/",
            REQUEST_METHOD="POST",
            CONTENT_TYPE="application/x-www-form-urlencoded",
            CONTENT_LENGTH="50",
            **{"wsgi.input": io.BytesIO(b"name=trun")},
        )
        self.assertEqual(status, "400 Bad Request")
        self.assertEqual(json.loads(body), {"error": "body ended after 9 of 50 bytes"})
        self.assertFalse(Item.objects.filter(name="trun").exists())


class StreamTests(PairTestCase):
    def assertStreamHeaders(self, response):
        self.assertTrue(response.streaming)
        self.assertEqual(response["Content-Type"], "text/event-stream")
        self.assertEqual(response["Cache-Control"], "no-cache")
        self.assertEqual(response["X-Accel-Buffering"], "no")

    def test_stream(self):
        response = self.client.get("/sync/stream/?events=3&interval=1")
        self.assertStreamHeaders(response)
        events = parse_sse(sync_stream_body(response))
        self.assertEqual([event["id"] for event in events], ["1", "2", "3"])
        self.assertEqual(events[2]["data"], {"event": 3, "of": 3})

    async def test_async_stream(self):
        response = await self.async_client.get("/async/stream/?events=4&interval=1")
        self.assertStreamHeaders(response)
        events = parse_sse(await async_stream_body(response))
        self.assertEqual([event["data"]["event"] for event in events], [1, 2, 3, 4])

    def test_stream_sends_each_event_as_its_own_chunk(self):
        response = self.client.get("/sync/stream/?events=5&interval=0")
        self.assertEqual(len(list(response.streaming_content)), 5)

    async def test_async_stream_sends_each_event_as_its_own_chunk(self):
        response = await self.async_client.get("/async/stream/?events=5&interval=0")
        self.assertEqual(len([chunk async for chunk in response.streaming_content]), 5)

    async def test_stream_pair_answers_the_same(self):
        sync, async_ = await self.get_pair("stream", "?events=6&interval=0")
        sync_body = await sync_to_async(sync_stream_body)(sync)
        async_body = await async_stream_body(async_)
        self.assertEqual(len(parse_sse(sync_body)), 6)
        self.assertSameAnswer(sync, async_, sync_body, async_body)


class StreamAcrossInterfacesTests(SimpleTestCase):
    """The trap the twins exist for: each generator kind is buffered by the other interface."""

    async def test_sync_stream_under_asgi_is_consumed_whole_first(self):
        with self.assertWarnsMessage(Warning, "must consume synchronous iterators"):
            status, _, chunks = await asgi_request(
                ASGIHandler(), "/sync/stream/", query_string=b"events=3&interval=0"
            )
        self.assertEqual(status, 200)
        self.assertEqual(len(parse_sse(b"".join(chunks))), 3)

    async def test_async_stream_under_asgi_is_not_buffered(self):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            status, headers, chunks = await asgi_request(
                ASGIHandler(), "/async/stream/", query_string=b"events=3&interval=0"
            )
        self.assertEqual((status, headers["x-accel-buffering"]), (200, "no"))
        self.assertEqual(len(parse_sse(b"".join(chunks))), 3)

    def test_async_stream_under_wsgi_is_consumed_whole_first(self):
        with self.assertWarnsMessage(Warning, "must consume asynchronous iterators"):
            status, body = wsgi_request("/async/stream/", QUERY_STRING="events=3&interval=0")
        self.assertEqual(status, "200 OK")
        self.assertEqual(len(parse_sse(body)), 3)


class UploadTests(PairTestCase):
    def test_upload(self):
        body = os.urandom(300_000)
        response = self.client.post("/sync/upload/", body, content_type="application/octet-stream")
        self.assertEqual(
            response.json(), {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        )

    async def test_async_upload(self):
        body = os.urandom(300_000)
        response = await self.async_client.post(
            "/async/upload/", body, content_type="application/octet-stream"
        )
        self.assertEqual(
            response.json(), {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        )

    async def test_async_upload_hashes_off_the_event_loop(self):
        loop_thread = threading.get_ident()
        hashed_on = []
        digest = payloads.digest_body

        def recording_digest(read, limit):
            hashed_on.append(threading.get_ident())
            return digest(read, limit)

        with mock.patch.object(payloads, "digest_body", recording_digest):
            response = await self.async_client.post(
                "/async/upload/", b"abc", content_type="application/octet-stream"
            )
        self.assertEqual(response.json()["size"], 3)
        self.assertEqual(len(hashed_on), 1)
        self.assertNotEqual(hashed_on[0], loop_thread)

    async def test_upload_pair_answers_the_same(self):
        body = os.urandom(200_001)
        self.assertSameAnswer(
            *await self.post_pair("upload", body, content_type="application/octet-stream")
        )

    async def test_empty_upload(self):
        sync, async_ = await self.post_pair("upload", b"", content_type="text/plain")
        self.assertEqual(sync.json(), {"size": 0, "sha256": hashlib.sha256(b"").hexdigest()})
        self.assertSameAnswer(sync, async_)

    @override_settings(SHOWCASE_UPLOAD_MAX_BYTES=1024)
    async def test_upload_above_the_limit_is_a_413(self):
        sync, async_ = await self.post_pair(
            "upload", b"x" * 1025, content_type="application/octet-stream"
        )
        self.assertJsonError(sync, 413, "body of 1025 bytes is over the limit of 1024 bytes")
        self.assertSameAnswer(sync, async_)

    @override_settings(SHOWCASE_UPLOAD_MAX_BYTES=1024)
    async def test_upload_at_the_limit_is_accepted(self):
        sync, async_ = await self.post_pair(
            "upload", b"x" * 1024, content_type="application/octet-stream"
        )
        self.assertEqual(sync.json()["size"], 1024)
        self.assertSameAnswer(sync, async_)


# The manifest storage cannot name a file collectstatic has not written yet (DEBUG is off in
# tests): the index's CSS link is checked by name with the plain storage.
@override_settings(
    STORAGES={
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
)
class IndexTests(TestCase):
    def assertListsEveryEndpoint(self, html):
        for endpoint in payloads.ENDPOINTS:
            with self.subTest(kind=endpoint.kind, method=endpoint.method):
                self.assertIn(endpoint.path_sync.replace("&", "&amp;"), html)
                self.assertIn(endpoint.path_async.replace("&", "&amp;"), html)
        self.assertIn("showcase/showcase.css", html)

    def test_index(self):
        response = self.client.get("/")
        self.assertEqual(response.status_code, 200)
        self.assertTemplateUsed(response, "showcase/index.html")
        html = response.content.decode()
        self.assertListsEveryEndpoint(html)
        self.assertInHTML('<strong id="interface">WSGI</strong>', html)

    async def test_async_index(self):
        response = await self.async_client.get("/")
        html = response.content.decode()
        self.assertListsEveryEndpoint(html)
        self.assertInHTML('<strong id="interface">ASGI</strong>', html)

    def test_index_has_no_inline_script_or_style(self):
        html = self.client.get("/").content.decode().lower()
        for inline in ("<script", "<style", "style=", "onclick="):
            self.assertNotIn(inline, html)

    def test_every_listed_endpoint_is_a_mirrored_pair(self):
        for endpoint in payloads.ENDPOINTS:
            with self.subTest(kind=endpoint.kind):
                sync = resolve(endpoint.path_sync.partition("?")[0])
                async_ = resolve(endpoint.path_async.partition("?")[0])
                self.assertEqual(sync.url_name, f"sync_{endpoint.kind}")
                self.assertEqual(async_.url_name, f"async_{endpoint.kind}")

    def test_index_rejects_post(self):
        response = self.client.post("/")
        self.assertEqual(response.status_code, 405)
        self.assertEqual(
            json.loads(body_of(response))["error"], "method POST not allowed: use GET, HEAD"
        )
