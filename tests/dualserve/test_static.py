"""Tests for apps.dualserve.static: whitenoise's answers, native in both modes.

Each class collects its own static files (collectstatic into a temporary STATIC_ROOT) and builds
handlers after overriding the settings, because the middleware reads them when it is built.
Sync twins go through the test client (sync middleware chain), async twins through
`async_client` and through Django's real `ASGIHandler` driven by an ASGI communicator, which is
where a sync iterator would be read whole with Django's warning.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import random
import shutil
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any, ClassVar
from unittest import mock

from asgiref.sync import SyncToAsync, async_to_sync
from asgiref.testing import ApplicationCommunicator
from django.conf import settings
from django.contrib.staticfiles.storage import staticfiles_storage
from django.core.handlers.asgi import ASGIHandler
from django.core.management import call_command
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.http import HttpRequest, HttpResponse, HttpResponseNotFound
from django.test import SimpleTestCase, override_settings
from django.urls import path

from apps.dualserve.static import (
    CHUNK_SIZE,
    FileStream,
    ManifestStaticFilesStorage,
    StaticFilesMiddleware,
)

STATIC_MIDDLEWARE = "apps.dualserve.static.StaticFilesMiddleware"
STATIC_ONLY = [STATIC_MIDDLEWARE]
NOT_FOUND_BODY = b"not found, said Django"
FOREVER = "max-age=315360000, public, immutable"
# Compressible (so collectstatic writes a .gz variant) and bigger than one chunk.
SITE_CSS = b"".join(b".rule-%d { color: #%06x; margin: 0 auto; }\n" % (i, i) for i in range(3000))
# Random bytes do not compress: no .gz variant, and several MB to stream.
BIG_BIN = random.Random(20260).randbytes(3 * 1024 * 1024 + 12345)
# Bound on the ASGI messages one response may take (BIG_BIN needs about 50).
MAX_MESSAGES = 1000


async def hello(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b"hello from the view")


def not_found(request: HttpRequest, exception: Exception) -> HttpResponseNotFound:
    return HttpResponseNotFound(NOT_FOUND_BODY)


urlpatterns = [path("hello/", hello)]
handler404 = not_found


class AsgiResult:
    """What an ASGI client received: status, headers (lower-case names), body messages."""

    def __init__(self, start: dict[str, Any], bodies: list[bytes]) -> None:
        self.status: int = start["status"]
        self.headers = {name.decode().lower(): value.decode() for name, value in start["headers"]}
        self.bodies = bodies
        self.body = b"".join(bodies)


def http_scope(
    path: str, method: str = "GET", headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """Return an ASGI HTTP scope as uvicorn would build it."""
    raw_headers = [(b"host", b"testserver")]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": raw_headers,
        "client": ("127.0.0.1", 40000),
        "server": ("testserver", 80),
    }


async def asgi_request(
    path: str, method: str = "GET", headers: dict[str, str] | None = None
) -> AsgiResult:
    """Send one request through a fresh ASGIHandler and collect every message it sends."""
    communicator = ApplicationCommunicator(ASGIHandler(), http_scope(path, method, headers))
    await communicator.send_input({"type": "http.request", "body": b""})
    start = await communicator.receive_output(timeout=10)
    assert start["type"] == "http.response.start", start
    bodies = []
    for _ in range(MAX_MESSAGES):
        message = await communicator.receive_output(timeout=10)
        if message.get("body"):
            bodies.append(message["body"])
        if not message.get("more_body", False):
            break
    else:
        raise AssertionError(f"more than {MAX_MESSAGES} body messages")
    await communicator.wait(timeout=10)
    return AsgiResult(start, bodies)


async def count_sync_to_async(path: str) -> tuple[int, AsgiResult]:
    """Return how many `sync_to_async` calls one ASGI request makes, and what it answered."""
    calls = 0
    original = SyncToAsync.__call__

    def counting(self: SyncToAsync[Any, Any], *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return original(self, *args, **kwargs)

    with mock.patch.object(SyncToAsync, "__call__", counting):
        result = await asgi_request(path)
    return calls, result


def sync_body(response: Any) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


async def async_body(response: Any) -> bytes:
    if response.streaming and response.is_async:
        return b"".join([chunk async for chunk in response.streaming_content])
    return sync_body(response)


class RecordingFile(io.BufferedReader):
    """A real file that records where it was opened and each read: (thread, bytes read)."""

    def __init__(self, path: str) -> None:
        self.opened_in = threading.get_ident()
        super().__init__(io.FileIO(path, "rb"))
        self.reads: list[tuple[int, int]] = []

    def read(self, size: int | None = -1, /) -> bytes:
        data = super().read(size)
        self.reads.append((threading.get_ident(), len(data)))
        return data


class CollectedStaticMixin(SimpleTestCase):
    """Collect SITE_CSS and BIG_BIN into a temporary STATIC_ROOT for the whole class."""

    extra_settings: ClassVar[dict[str, Any]] = {}

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.tmp = Path(tempfile.mkdtemp(prefix="dualserve-static-"))
        cls.addClassCleanup(shutil.rmtree, cls.tmp, ignore_errors=True)
        cls.source = cls.tmp / "source"
        (cls.source / "css").mkdir(parents=True)
        (cls.source / "css" / "site.css").write_bytes(SITE_CSS)
        (cls.source / "big.bin").write_bytes(BIG_BIN)
        cls.enterClassContext(
            override_settings(
                STATIC_ROOT=str(cls.tmp / "root"),
                STATICFILES_DIRS=[str(cls.source)],
                # Only our files: the admin's would make collectstatic slow.
                STATICFILES_FINDERS=["django.contrib.staticfiles.finders.FileSystemFinder"],
                ROOT_URLCONF=__name__,
                **cls.extra_settings,
            )
        )
        call_command("collectstatic", interactive=False, verbosity=0)

    def setUp(self) -> None:
        super().setUp()
        # As Django's test clients do: the real ASGIHandler would otherwise health-check a
        # connection an earlier test left open, and these tests may not use the database.
        for signal in (request_started, request_finished):
            signal.disconnect(close_old_connections)
            self.addCleanup(signal.connect, close_old_connections)

    @property
    def css_hashed_url(self) -> str:
        url: str = staticfiles_storage.url("css/site.css")
        return url


@override_settings(MIDDLEWARE=STATIC_ONLY)
class StaticFilesTests(CollectedStaticMixin):
    """The same answers as whitenoise's, in both modes."""

    def test_collectstatic_wrote_the_variants_the_tests_rely_on(self) -> None:
        root = Path(settings.STATIC_ROOT)
        self.assertNotEqual(self.css_hashed_url, "/static/css/site.css")
        self.assertTrue((root / self.css_hashed_url.removeprefix("/static/")).is_file())
        self.assertTrue((root / "css" / "site.css.gz").is_file())
        self.assertFalse((root / "big.bin.gz").exists())

    def test_serves_the_file(self) -> None:
        response = self.client.get("/static/css/site.css")
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response["Content-Type"], 'text/css; charset="utf-8"')
        self.assertEqual(sync_body(response), SITE_CSS)

    async def test_async_serves_the_file(self) -> None:
        response = await self.async_client.get("/static/css/site.css")
        self.assertEqual(response.status_code, 200)
        self.assertTrue(response.is_async)
        self.assertEqual(response["Content-Type"], 'text/css; charset="utf-8"')
        self.assertEqual(await async_body(response), SITE_CSS)

    def test_hashed_name_is_cached_forever(self) -> None:
        response = self.client.get(self.css_hashed_url)
        self.assertEqual(response["Cache-Control"], FOREVER)
        self.assertEqual(sync_body(response), SITE_CSS)

    async def test_async_hashed_name_is_cached_forever(self) -> None:
        response = await self.async_client.get(self.css_hashed_url)
        self.assertEqual(response["Cache-Control"], FOREVER)
        self.assertEqual(await async_body(response), SITE_CSS)

    def test_unhashed_name_is_cached_briefly(self) -> None:
        response = self.client.get("/static/css/site.css")
        self.assertEqual(response["Cache-Control"], "max-age=60, public")
        self.assertEqual(sync_body(response), SITE_CSS)

    async def test_async_unhashed_name_is_cached_briefly(self) -> None:
        response = await self.async_client.get("/static/css/site.css")
        self.assertEqual(response["Cache-Control"], "max-age=60, public")
        self.assertEqual(await async_body(response), SITE_CSS)

    def test_gzip_variant_for_accept_encoding_gzip(self) -> None:
        response = self.client.get("/static/css/site.css", headers={"accept-encoding": "gzip"})
        self.assertEqual(response["Content-Encoding"], "gzip")
        self.assertEqual(response["Vary"], "Accept-Encoding")
        body = sync_body(response)
        self.assertEqual(int(response["Content-Length"]), len(body))
        self.assertEqual(gzip.decompress(body), SITE_CSS)

    async def test_async_gzip_variant_for_accept_encoding_gzip(self) -> None:
        response = await self.async_client.get(
            "/static/css/site.css", headers={"accept-encoding": "gzip"}
        )
        self.assertEqual(response["Content-Encoding"], "gzip")
        self.assertEqual(response["Vary"], "Accept-Encoding")
        body = await async_body(response)
        self.assertEqual(int(response["Content-Length"]), len(body))
        self.assertEqual(gzip.decompress(body), SITE_CSS)

    def test_not_modified_for_matching_etag(self) -> None:
        first = self.client.get("/static/css/site.css")
        self.assertEqual(sync_body(first), SITE_CSS)
        etag = first["ETag"]
        response = self.client.get("/static/css/site.css", headers={"if-none-match": etag})
        self.assertEqual(response.status_code, 304)
        self.assertEqual(response["ETag"], etag)
        self.assertEqual(sync_body(response), b"")

    async def test_async_not_modified_for_matching_etag(self) -> None:
        first = await self.async_client.get("/static/css/site.css")
        self.assertEqual(await async_body(first), SITE_CSS)
        etag = first["ETag"]
        response = await self.async_client.get(
            "/static/css/site.css", headers={"if-none-match": etag}
        )
        self.assertEqual(response.status_code, 304)
        self.assertEqual(response["ETag"], etag)
        self.assertEqual(await async_body(response), b"")

    def test_head_has_the_headers_and_no_body(self) -> None:
        response = self.client.head("/static/big.bin")
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response["Content-Length"], str(len(BIG_BIN)))
        self.assertEqual(sync_body(response), b"")

    async def test_async_head_has_the_headers_and_no_body(self) -> None:
        response = await self.async_client.head("/static/big.bin")
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response["Content-Length"], str(len(BIG_BIN)))
        self.assertEqual(await async_body(response), b"")

    def test_range_request(self) -> None:
        response = self.client.get("/static/big.bin", headers={"range": "bytes=100000-300000"})
        self.assertEqual(response.status_code, 206)
        self.assertEqual(response["Content-Range"], f"bytes 100000-300000/{len(BIG_BIN)}")
        self.assertEqual(sync_body(response), BIG_BIN[100000:300001])

    async def test_async_range_request(self) -> None:
        response = await self.async_client.get(
            "/static/big.bin", headers={"range": "bytes=100000-300000"}
        )
        self.assertEqual(response.status_code, 206)
        self.assertEqual(response["Content-Range"], f"bytes 100000-300000/{len(BIG_BIN)}")
        self.assertEqual(await async_body(response), BIG_BIN[100000:300001])

    def test_other_methods_are_not_allowed(self) -> None:
        response = self.client.post("/static/css/site.css")
        self.assertEqual(response.status_code, 405)
        self.assertEqual(response["Allow"], "GET, HEAD")

    async def test_async_other_methods_are_not_allowed(self) -> None:
        response = await self.async_client.post("/static/css/site.css")
        self.assertEqual(response.status_code, 405)
        self.assertEqual(response["Allow"], "GET, HEAD")

    def test_unknown_static_path_reaches_django(self) -> None:
        response = self.client.get("/static/css/missing.css")
        self.assertEqual(response.status_code, 404)
        self.assertEqual(response.content, NOT_FOUND_BODY)

    async def test_async_unknown_static_path_reaches_django(self) -> None:
        response = await self.async_client.get("/static/css/missing.css")
        self.assertEqual(response.status_code, 404)
        self.assertEqual(response.content, NOT_FOUND_BODY)

    def test_other_paths_reach_the_view(self) -> None:
        self.assertEqual(self.client.get("/hello/").content, b"hello from the view")

    async def test_async_other_paths_reach_the_view(self) -> None:
        response = await self.async_client.get("/hello/")
        self.assertEqual(response.content, b"hello from the view")


@override_settings(MIDDLEWARE=STATIC_ONLY)
class AsgiStaticFilesTests(CollectedStaticMixin):
    """Through Django's real ASGI handler, as an ASGI server drives it."""

    CASES: tuple[tuple[str, str, dict[str, str]], ...] = (
        ("GET", "/static/css/site.css", {}),
        ("GET", "/static/css/site.css", {"accept-encoding": "gzip, br"}),
        ("GET", "/static/big.bin", {"range": "bytes=-1000"}),
        ("GET", "/static/big.bin", {"range": f"bytes={len(BIG_BIN)}-"}),
        ("HEAD", "/static/big.bin", {}),
        ("PUT", "/static/big.bin", {}),
    )

    def sync_headers(self, method: str, path: str, headers: dict[str, str]) -> dict[str, str]:
        response = self.client.generic(method, path, headers=headers)
        response.close()  # the body is not needed; close the file as a server would
        return {name.lower(): value for name, value in response.items()}

    def test_headers_are_the_same_as_in_sync_mode(self) -> None:
        for method, url, headers in self.CASES:
            with self.subTest(method=method, url=url, headers=headers):
                asgi = async_to_sync(asgi_request)(url, method, headers)
                self.assertEqual(asgi.headers, self.sync_headers(method, url, headers))

    async def test_not_modified_and_head_send_no_body_and_no_warning(self) -> None:
        etag = (await asgi_request(self.css_hashed_url)).headers["etag"]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            not_modified = await asgi_request(self.css_hashed_url, headers={"if-none-match": etag})
            head = await asgi_request(self.css_hashed_url, "HEAD")
        self.assertEqual([str(w.message) for w in caught], [])
        self.assertEqual((not_modified.status, not_modified.body), (304, b""))
        self.assertEqual((head.status, head.body), (200, b""))
        self.assertEqual(head.headers["content-length"], str(len(SITE_CSS)))

    async def test_large_file_is_streamed_in_chunks_without_warning(self) -> None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = await asgi_request("/static/big.bin")
        self.assertEqual([str(w.message) for w in caught], [])
        self.assertEqual(result.status, 200)
        self.assertEqual(result.body, BIG_BIN)
        self.assertGreaterEqual(len(result.bodies), len(BIG_BIN) // CHUNK_SIZE)
        self.assertLessEqual(max(len(body) for body in result.bodies), CHUNK_SIZE)

    async def test_range_is_streamed_in_chunks(self) -> None:
        result = await asgi_request("/static/big.bin", headers={"range": "bytes=70000-1000000"})
        self.assertEqual(result.status, 206)
        self.assertEqual(result.body, BIG_BIN[70000:1000001])
        self.assertGreaterEqual(len(result.bodies), (1000001 - 70000) // CHUNK_SIZE)
        self.assertLessEqual(max(len(body) for body in result.bodies), CHUNK_SIZE)

    async def test_file_is_read_in_chunks_off_the_event_loop_while_sending(self) -> None:
        files: list[RecordingFile] = []

        def recording_open(path: str, mode: str) -> RecordingFile:
            self.assertEqual(mode, "rb")
            files.append(RecordingFile(path))
            return files[-1]

        request_sent = False
        bodies: list[bytes] = []
        reads_before_send: list[int] = []

        async def receive() -> dict[str, Any]:
            nonlocal request_sent
            if not request_sent:
                request_sent = True
                return {"type": "http.request", "body": b""}
            await asyncio.Event().wait()  # a client that stays until the end
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                bodies.append(message["body"])
                reads_before_send.append(len(files[0].reads))

        loop_thread = threading.get_ident()
        with mock.patch("whitenoise.responders.open", recording_open, create=True):
            await asyncio.wait_for(
                ASGIHandler()(http_scope("/static/big.bin"), receive, send), timeout=10
            )
        self.assertEqual(b"".join(bodies), BIG_BIN)
        self.assertEqual(len(files), 1)
        file = files[0]
        self.assertTrue(file.closed)
        read_threads = {thread for thread, _ in file.reads}
        self.assertNotIn(loop_thread, read_threads | {file.opened_in})
        # Never more than a chunk in memory: every read is bounded, and the first bytes go
        # out before the file has been read to its end.
        self.assertLessEqual(max(size for _, size in file.reads), CHUNK_SIZE)
        self.assertEqual(sum(size for _, size in file.reads), len(BIG_BIN))
        self.assertLess(reads_before_send[0], len(file.reads))

    async def test_client_disconnect_closes_the_file(self) -> None:
        files: list[RecordingFile] = []

        def recording_open(path: str, mode: str) -> RecordingFile:
            files.append(RecordingFile(path))
            return files[-1]

        disconnected = asyncio.Event()
        request_sent = False
        bodies: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal request_sent
            if not request_sent:
                request_sent = True
                return {"type": "http.request", "body": b""}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                bodies.append(message.get("body", b""))
                # A client that stops reading and goes away: the send never completes.
                disconnected.set()
                await asyncio.Event().wait()

        with mock.patch("whitenoise.responders.open", recording_open, create=True):
            await asyncio.wait_for(
                ASGIHandler()(http_scope("/static/big.bin"), receive, send), timeout=10
            )
        self.assertEqual(len(bodies), 1)
        self.assertEqual(len(files), 1)
        self.assertTrue(files[0].closed)


class ThreadHopTests(CollectedStaticMixin):
    """No `sync_to_async` of our own under ASGI, for static and other requests alike."""

    async def test_non_static_request_costs_no_extra_sync_to_async(self) -> None:
        shipped = list(settings.MIDDLEWARE)
        self.assertIn(STATIC_MIDDLEWARE, shipped)
        without = [entry for entry in shipped if entry != STATIC_MIDDLEWARE]
        with override_settings(MIDDLEWARE=without):
            floor, baseline = await count_sync_to_async("/hello/")
        with override_settings(MIDDLEWARE=shipped):
            calls, result = await count_sync_to_async("/hello/")
        self.assertEqual((baseline.status, baseline.body), (200, b"hello from the view"))
        self.assertEqual((result.status, result.body), (200, b"hello from the view"))
        self.assertEqual(calls, floor)

    async def test_whitenoise_itself_would_cost_a_hop(self) -> None:
        # The control for the test above: the count does see a sync-only middleware.
        with override_settings(MIDDLEWARE=[]):
            floor, _ = await count_sync_to_async("/hello/")
        with override_settings(MIDDLEWARE=["whitenoise.middleware.WhiteNoiseMiddleware"]):
            calls, result = await count_sync_to_async("/hello/")
        self.assertEqual(result.body, b"hello from the view")
        self.assertGreater(calls, floor)

    async def test_static_request_costs_no_sync_to_async_of_its_own(self) -> None:
        with override_settings(MIDDLEWARE=[]):
            floor, _ = await count_sync_to_async("/hello/")
        with override_settings(MIDDLEWARE=STATIC_ONLY):
            calls, result = await count_sync_to_async("/static/big.bin")
        self.assertEqual(result.body, BIG_BIN)
        self.assertEqual(calls, floor)

    async def test_shipped_stack_serves_static_files(self) -> None:
        result = await asgi_request(self.css_hashed_url, headers={"accept-encoding": "gzip"})
        self.assertEqual(result.status, 200)
        self.assertEqual(result.headers["cache-control"], FOREVER)
        self.assertEqual(gzip.decompress(result.body), SITE_CSS)

    def test_shipped_stack_serves_static_files_in_sync_mode(self) -> None:
        response = self.client.get(self.css_hashed_url, headers={"accept-encoding": "gzip"})
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response["Cache-Control"], FOREVER)
        self.assertEqual(gzip.decompress(sync_body(response)), SITE_CSS)


class AutorefreshTests(CollectedStaticMixin):
    """DEBUG's autorefresh and finders: files are looked up per request, as whitenoise does."""

    extra_settings: ClassVar[dict[str, Any]] = {
        "MIDDLEWARE": STATIC_ONLY,
        "WHITENOISE_AUTOREFRESH": True,
        "WHITENOISE_USE_FINDERS": True,
    }

    def add_source_file(self, name: str, content: bytes) -> None:
        target = self.source / name
        target.write_bytes(content)
        self.addCleanup(target.unlink)

    def test_file_added_after_start_is_served(self) -> None:
        self.client.get("/hello/")  # builds the middleware before the file exists
        self.add_source_file("late.txt", b"added later, sync")
        response = self.client.get("/static/late.txt")
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response["Content-Type"], 'text/plain; charset="utf-8"')
        self.assertEqual(sync_body(response), b"added later, sync")

    async def test_async_file_added_after_start_is_served(self) -> None:
        await self.async_client.get("/hello/")
        self.add_source_file("late-async.txt", b"added later, async")
        response = await self.async_client.get("/static/late-async.txt")
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response["Content-Type"], 'text/plain; charset="utf-8"')
        self.assertEqual(await async_body(response), b"added later, async")

    async def test_async_unknown_path_still_reaches_django(self) -> None:
        response = await self.async_client.get("/static/late-never.txt")
        self.assertEqual(response.status_code, 404)
        self.assertEqual(response.content, NOT_FOUND_BODY)


class BlockingFile(io.BufferedIOBase):
    """A file whose reads wait for `release`; close() waits for a running read, as
    BufferedReader's lock makes it do."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.reading = threading.Event()
        self.release = threading.Event()
        self.closed_event = threading.Event()
        self.close_thread: int | None = None

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1, /) -> bytes:
        with self.lock:
            self.reading.set()
            # Bounded: without a release the file ends, so a read on the loop cannot hang.
            return b"x" * (size or 0) if self.release.wait(10) else b""

    def close(self) -> None:
        with self.lock:
            self.close_thread = threading.get_ident()
            super().close()
        self.closed_event.set()


class FileStreamTests(SimpleTestCase):
    """The async iterator on its own: chunks, and the file closed however iteration ends."""

    def setUp(self) -> None:
        handle, name = tempfile.mkstemp()
        self.path = Path(name)
        self.addCleanup(self.path.unlink)
        with open(handle, "wb") as file:
            file.write(BIG_BIN)

    def open_big(self) -> io.BufferedReader:
        file = open(self.path, "rb")  # noqa: SIM115 (the stream under test closes it)
        self.addCleanup(file.close)
        return file

    async def test_yields_the_whole_file_in_chunks_and_closes_it(self) -> None:
        file = self.open_big()
        first = file.read(CHUNK_SIZE)
        chunks = [chunk async for chunk in FileStream(file, first)]
        self.assertEqual(b"".join(chunks), BIG_BIN)
        self.assertEqual(chunks[0], BIG_BIN[:CHUNK_SIZE])
        self.assertLessEqual(max(map(len, chunks)), CHUNK_SIZE)
        self.assertTrue(file.closed)

    async def test_consumer_stopping_early_closes_the_file(self) -> None:
        file = self.open_big()
        chunks = aiter(FileStream(file, file.read(CHUNK_SIZE)))
        await anext(chunks)
        await anext(chunks)
        self.assertFalse(file.closed)
        await chunks.aclose()  # type: ignore[attr-defined]
        self.assertTrue(file.closed)

    async def test_response_close_closes_an_unread_file(self) -> None:
        file = self.open_big()
        FileStream(file).close()
        self.assertTrue(file.closed)

    async def test_cancel_during_a_read_closes_the_file_on_a_worker(self) -> None:
        file = BlockingFile()
        loop = asyncio.get_running_loop()

        async def consume() -> None:
            async for _ in FileStream(file, b"first"):  # type: ignore[arg-type]
                pass

        task = asyncio.create_task(consume())
        self.assertTrue(await loop.run_in_executor(None, file.reading.wait, 10))
        task.cancel()
        with self.assertRaises(asyncio.CancelledError):
            await task
        # The event loop went on while the read still runs: the close waits on a worker.
        self.assertFalse(file.closed_event.is_set())
        file.release.set()
        self.assertTrue(await loop.run_in_executor(None, file.closed_event.wait, 10))
        self.assertTrue(file.closed)
        self.assertNotEqual(file.close_thread, threading.get_ident())


class ManifestStorageTests(SimpleTestCase):
    """{% static %} before and after collectstatic, with DEBUG off."""

    def test_uncollected_file_falls_back_to_its_plain_url(self) -> None:
        with tempfile.TemporaryDirectory() as root, override_settings(STATIC_ROOT=root):
            storage = ManifestStaticFilesStorage()
            self.assertEqual(storage.url("admin/css/base.css"), "/static/admin/css/base.css")

    def test_collected_file_gets_its_hashed_url(self) -> None:
        with tempfile.TemporaryDirectory() as root, override_settings(STATIC_ROOT=root):
            call_command("collectstatic", interactive=False, verbosity=0)
            url = ManifestStaticFilesStorage().url("admin/css/base.css")
        self.assertRegex(url, r"^/static/admin/css/base\.[0-9a-f]{12}\.css$")

    def test_strict_mode_still_raises(self) -> None:
        with (
            tempfile.TemporaryDirectory() as root,
            override_settings(STATIC_ROOT=root, WHITENOISE_MANIFEST_STRICT=True),
            self.assertRaisesMessage(ValueError, "Missing staticfiles manifest entry"),
        ):
            ManifestStaticFilesStorage().url("admin/css/base.css")

    def test_index_renders_before_collectstatic(self) -> None:
        with tempfile.TemporaryDirectory() as root, override_settings(STATIC_ROOT=root):
            response = self.client.get("/admin/login/")
        self.assertEqual(response.status_code, 200)
        self.assertContains(response, "/static/admin/css/base.css")


class MissingStaticRootTests(SimpleTestCase):
    def test_missing_static_root_is_logged_once_not_warned(self) -> None:
        missing = Path(tempfile.gettempdir()) / f"dualserve-no-static-{random.random()}"

        async def get_response(request: HttpRequest) -> HttpResponse:
            return HttpResponse()

        with (
            override_settings(STATIC_ROOT=str(missing)),
            self.assertLogs("apps.dualserve.static", "WARNING") as logs,
        ):
            StaticFilesMiddleware(get_response)
            StaticFilesMiddleware(get_response)  # the second build says nothing more
        self.assertEqual(len(logs.records), 1)
        self.assertIn("collectstatic", logs.output[0])
