"""Static files in both interfaces: whitenoise's index and answers, native under ASGI.

whitenoise 6.12 is sync-only. Under ASGI its middleware costs every request a thread hop
(Django adapts it with `sync_to_async`), and it answers with a `FileResponse` over a sync
iterator, which Django's ASGI handler reads whole into memory, with the warning
"StreamingHttpResponse must consume synchronous iterators..." (whitenoise #359, #531).

`StaticFilesMiddleware` wraps a `WhiteNoiseMiddleware` built from the same settings (WHITENOISE_*,
STATIC_URL, STATIC_ROOT) and uses its file index (`files`, or `find_file` when autorefresh is on,
as under DEBUG) and its `StaticFile.get_response`, which decides status and headers: 304 on
If-None-Match / If-Modified-Since, Range, the .gz/.br variant for Accept-Encoding, cache headers
(forever and immutable for hashed names), CORS. Only the delivery of the bytes differs:

- sync mode (WSGI): whitenoise's own `serve`, unchanged, so the server's `wsgi.file_wrapper`
  (sendfile) still applies;
- async mode (ASGI): a request that is not for a static file costs a dict lookup and nothing
  else, no thread hop. A static GET opens the file and reads its first chunk in one call on a
  worker thread (`loop.run_in_executor`), so a file up to one chunk costs one hop in all; larger
  files are streamed by an async iterator, one worker-thread read per chunk, never whole in
  memory. The file is closed at its end, on cancellation (client gone) and by `response.close()`.
  HEAD and every bodiless answer do no I/O and run on the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import warnings
from collections.abc import AsyncIterator
from io import BufferedIOBase
from typing import Any

from django.conf import settings
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from whitenoise.middleware import WhiteNoiseFileResponse, WhiteNoiseMiddleware
from whitenoise.storage import CompressedManifestStaticFilesStorage

from apps.dualserve.middleware import BothModesMiddleware, GetResponse

logger = logging.getLogger(__name__)

# Django's ASGI handler sends at most this many bytes per http.response.body message
# (ASGIHandler.chunk_size): reading the same amount keeps one read per message.
CHUNK_SIZE = 64 * 1024


def read_chunk(file: BufferedIOBase) -> bytes:
    """Read the next chunk of `file` and close it at its end; runs on a worker thread."""
    try:
        chunk = file.read(CHUNK_SIZE)
    except BaseException:
        file.close()
        raise
    # A buffered read of a regular file returns less than asked only at the end of the file
    # (or of the requested Range, for whitenoise's SlicedFile).
    if len(chunk) < CHUNK_SIZE:
        file.close()
    return chunk


def open_static_file(static_file: Any, method: str, meta: dict[str, Any]) -> tuple[Any, bytes]:
    """Return whitenoise's answer and the body's first chunk; runs on a worker thread."""
    answer = static_file.get_response(method, meta)
    first = read_chunk(answer.file) if answer.file is not None else b""
    return answer, first


class FileStream:
    """The body of a static file as an async iterator of chunks read on worker threads."""

    def __init__(self, file: BufferedIOBase | None, first: bytes = b"") -> None:
        self.file = file
        self.first = first

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.chunks()

    async def chunks(self) -> AsyncIterator[bytes]:
        """Yield the first chunk, then the rest of the file one chunk at a time."""
        file = self.file
        loop = asyncio.get_running_loop()
        reading = False
        try:
            if self.first:
                yield self.first
            while file is not None and not file.closed:
                reading = True
                chunk = await loop.run_in_executor(None, read_chunk, file)
                reading = False
                if chunk:
                    yield chunk
        finally:
            if file is not None and not file.closed:
                if reading:
                    # Cancelled while a worker thread is still reading: close() would wait for
                    # that read on the event loop, so let a worker close the file after it.
                    loop.run_in_executor(None, file.close)
                else:
                    file.close()

    def close(self) -> None:
        """Close the file; Django calls this from `response.close()`."""
        if self.file is not None:
            self.file.close()


def file_response(answer: Any, content: FileStream) -> HttpResponseBase:
    """Turn whitenoise's answer into a Django response, as `WhiteNoiseMiddleware.serve` does."""
    response: HttpResponseBase = WhiteNoiseFileResponse(content, status=int(answer.status))
    # No default Content-Type: whitenoise's headers are the only ones, as in the sync path.
    del response["Content-Type"]
    for key, value in answer.headers:
        response[key] = value
    return response


@functools.cache
def _warn_missing_static_root(static_root: str) -> None:
    logger.warning(
        "STATIC_ROOT %s does not exist: static files are not served until "
        "`python manage.py collectstatic` has run.",
        static_root,
    )


class StaticFilesMiddleware(BothModesMiddleware):
    """Serve static files as whitenoise does, natively in both modes (see the module doc)."""

    def __init__(self, get_response: GetResponse) -> None:
        super().__init__(get_response)
        # Reads the settings and builds the file index now, as WhiteNoiseMiddleware does.
        # whitenoise warns (UserWarning) on every build when STATIC_ROOT does not exist yet,
        # which test runs and a fresh clone always hit; say it once in the log instead.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.whitenoise = WhiteNoiseMiddleware(get_response)
        for warning in caught:
            if str(warning.message).startswith("No directory at"):
                _warn_missing_static_root(str(settings.STATIC_ROOT))
            else:
                warnings.warn_explicit(
                    warning.message, warning.category, warning.filename, warning.lineno
                )

    def find(self, request: HttpRequest) -> Any:
        """Return whitenoise's static file (or redirect) for the request's path, or None."""
        if self.whitenoise.autorefresh:
            # DEBUG only: whitenoise looks at the filesystem (and the finders) per request.
            return self.whitenoise.find_file(request.path_info)
        return self.whitenoise.files.get(request.path_info)

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        static_file = self.find(request)
        if static_file is None:
            return self.get_response(request)
        return self.whitenoise.serve(static_file, request)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        static_file = self.find(request)
        if static_file is None:
            response: HttpResponseBase = await self.get_response(request)  # type: ignore[misc]
            return response
        method = request.method or ""
        if method == "GET":
            # Only a GET opens a file (and may read it): off the event loop.
            loop = asyncio.get_running_loop()
            answer, first = await loop.run_in_executor(
                None, open_static_file, static_file, method, request.META
            )
            return file_response(answer, FileStream(answer.file, first))
        # HEAD, 405 for other methods, redirects: headers only, no I/O.
        return file_response(static_file.get_response(method, request.META), FileStream(None))


class ManifestStaticFilesStorage(CompressedManifestStaticFilesStorage):  # type: ignore[misc]
    """whitenoise's storage (hashed names + .gz variants) that tolerates files not yet collected.

    With WHITENOISE_MANIFEST_STRICT = False Django still hashes a name missing from the manifest
    by opening the collected file, and raises when it is not there: `{% static %}` then fails
    with a 500 before collectstatic has run (a fresh clone with DEBUG off, the test suite).
    Here such a name falls back to the plain URL; collectstatic's own post-processing, which
    does not go through `stored_name`, still fails on a broken reference.
    """

    def stored_name(self, name: str) -> str:
        try:
            stored: str = super().stored_name(name)
        except ValueError:
            if self.manifest_strict:
                raise
            return name
        return stored
