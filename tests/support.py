"""Helpers shared by the test modules: thread-hop counting, raw ASGI/WSGI requests, nginx."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock
from wsgiref.util import setup_testing_defaults

import pytest
from asgiref.sync import AsyncToSync, SyncToAsync
from asgiref.testing import ApplicationCommunicator
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections

from deploy import nginx


@contextlib.contextmanager
def count_thread_hops() -> Iterator[Counter[str]]:
    """Count sync_to_async and async_to_sync calls made inside the block.

    Patching the classes' __call__ catches every use: the decorators, the handler's adapters and
    MiddlewareMixin all go through them.
    """
    counts: Counter[str] = Counter()
    original_s2a = SyncToAsync.__call__
    original_a2s = AsyncToSync.__call__

    async def s2a(self: SyncToAsync[Any, Any], *args: Any, **kwargs: Any) -> Any:
        counts["sync_to_async"] += 1
        return await original_s2a(self, *args, **kwargs)

    def a2s(self: AsyncToSync[Any, Any], *args: Any, **kwargs: Any) -> Any:
        counts["async_to_sync"] += 1
        return original_a2s(self, *args, **kwargs)

    with (
        mock.patch.object(SyncToAsync, "__call__", s2a),
        mock.patch.object(AsyncToSync, "__call__", a2s),
    ):
        yield counts


def http_scope(
    path: str,
    method: str = "GET",
    headers: list[tuple[bytes, bytes]] | None = None,
    query_string: bytes = b"",
) -> dict[str, Any]:
    """Return an ASGI HTTP scope as a server on 127.0.0.1 would send it."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query_string,
        "root_path": "",
        "headers": headers if headers is not None else [(b"host", b"localhost")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def asgi_request(
    application: Any, path: str, method: str = "GET", body: bytes = b"", **scope: Any
) -> tuple[int, dict[str, str], list[bytes]]:
    """Send one request to an ASGI application; return status, headers and body messages."""
    communicator = ApplicationCommunicator(application, http_scope(path, method, **scope))
    await communicator.send_input({"type": "http.request", "body": body})
    start = await communicator.receive_output(5)
    assert start["type"] == "http.response.start", start
    headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    chunks = []
    while True:
        message = await communicator.receive_output(5)
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    # Let Django's handler finish (response.close, request_finished) before the next request.
    await communicator.wait(5)
    return start["status"], headers, chunks


def wsgi_request(path: str, **environ: Any) -> tuple[str, bytes]:
    """Send one request through Django's WSGIHandler; return the status line and the body.

    Its request signals are detached meanwhile, as Django's test client does: they would close
    the test's database connection.
    """
    environ = {"PATH_INFO": path, **environ}
    setup_testing_defaults(environ)
    environ["HTTP_HOST"] = "localhost"
    statuses: list[str] = []
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        response = WSGIHandler()(environ, lambda status, headers: statuses.append(status))
        try:
            body = b"".join(response)
        finally:
            response.close()
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)
    (status,) = statuses
    return status, body


def require_nginx() -> str:
    """Return the nginx binary; without one, fail under CI=true and skip elsewhere."""
    binary = nginx.nginx_binary(os.environ)
    if binary is None:
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(f"CI=true and {nginx.INSTALL_HINT}")
        pytest.skip(nginx.INSTALL_HINT)
    return binary


REPO_ROOT = Path(__file__).resolve().parents[1]


def copy_repository(destination: Path) -> Path:
    """Copy the repository's files (tracked and new, not ignored) to `destination`; return it.

    A user's project as it stands, for a test that must change a file the suite itself runs on.
    """
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO_ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination
