"""Helpers for the showcase tests: collecting answers and comparing the twins."""

from __future__ import annotations

import json
import socket
from typing import Any

from django.http.response import HttpResponseBase
from django.test import SimpleTestCase


def body_of(response: HttpResponseBase) -> bytes:
    """Return a non-streaming response's body."""
    assert not response.streaming, "use abody_of() or sync_stream_body() for streams"
    return response.content  # type: ignore[attr-defined,no-any-return]


def sync_stream_body(response: HttpResponseBase) -> bytes:
    """Return the whole body of a streaming response from the sync test client."""
    return b"".join(response.streaming_content)  # type: ignore[attr-defined,arg-type]


async def async_stream_body(response: HttpResponseBase) -> bytes:
    """Return the whole body of a streaming response from the async test client."""
    return b"".join([chunk async for chunk in response.streaming_content])  # type: ignore[attr-defined]


def parse_sse(body: bytes) -> list[dict[str, Any]]:
    """Return the events of an SSE body, each as {"id": ..., "data": <decoded JSON>}."""
    events = []
    for block in body.decode().split("\n\n"):
        if not block:
            continue
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append({"id": fields["id"], "data": json.loads(fields["data"])})
    return events


def free_port() -> int:
    """Return a loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class TwinAssertions:
    """Mixin for test cases: compare the answers of a sync view and its async twin."""

    def assertSameAnswer(
        self: SimpleTestCase,
        sync: HttpResponseBase,
        async_: HttpResponseBase,
        sync_body: bytes | None = None,
        async_body: bytes | None = None,
    ) -> None:
        """Assert equal status, content type and body (bodies given for streams)."""
        self.assertEqual(sync.status_code, async_.status_code)
        self.assertEqual(sync["Content-Type"], async_["Content-Type"])
        self.assertEqual(
            sync_body if sync_body is not None else body_of(sync),
            async_body if async_body is not None else body_of(async_),
        )

    def assertJsonError(
        self: SimpleTestCase, response: HttpResponseBase, status: int, fragment: str
    ) -> None:
        """Assert a JSON error answer with `status` whose message contains `fragment`."""
        self.assertEqual(response.status_code, status, body_of(response))
        self.assertEqual(response["Content-Type"], "application/json")
        self.assertIn(fragment, json.loads(body_of(response))["error"])
