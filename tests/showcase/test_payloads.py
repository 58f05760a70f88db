"""Payloads and helpers shared by the twins."""

from __future__ import annotations

import hashlib
import io
import json

from django.test import SimpleTestCase

from apps.showcase import payloads
from apps.showcase.params import ParamError


class CpuWorkTests(SimpleTestCase):
    def test_checksum(self):
        # By hand: 0; 0*31+1 = 1; 1*31+2 = 33; 33*31+3 = 1026.
        self.assertEqual([payloads.cpu_work(n) for n in range(5)], [0, 0, 1, 33, 1026])

    def test_payload(self):
        self.assertEqual(payloads.cpu_payload(4), {"n": 4, "checksum": 1026})


class SseTests(SimpleTestCase):
    def test_event_framing(self):
        event = payloads.sse_event(2, 7)
        self.assertEqual(event, b'id: 2\ndata: {"event":2,"of":7}\n\n')
        self.assertEqual(json.loads(event.split(b"data: ")[1]), {"event": 2, "of": 7})

    def test_response_headers(self):
        response = payloads.sse_response(iter([b"x"]))
        self.assertEqual(response["Content-Type"], "text/event-stream")
        self.assertEqual(response["Cache-Control"], "no-cache")
        self.assertEqual(response["X-Accel-Buffering"], "no")


class DigestBodyTests(SimpleTestCase):
    def test_size_and_sha256_of_a_multi_chunk_body(self):
        body = bytes(range(256)) * 1000  # 256,000 bytes: four 64 KiB reads
        self.assertEqual(
            payloads.digest_body(io.BytesIO(body).read, limit=len(body)),
            {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()},
        )

    def test_body_growing_past_the_limit_is_a_413(self):
        # No Content-Length to check first (a chunked body): the count while reading stops it.
        stream = io.BytesIO(b"x" * 200_000)
        with self.assertRaisesMessage(ParamError, "over the limit of 100000 bytes") as caught:
            payloads.digest_body(stream.read, limit=100_000)
        self.assertEqual(caught.exception.status, 413)
        self.assertLess(stream.tell(), 200_000)


class ErrorResponseTests(SimpleTestCase):
    def test_error_response(self):
        response = payloads.error_response(418, "short and stout")
        self.assertEqual(response.status_code, 418)
        self.assertEqual(json.loads(response.content), {"error": "short and stout"})

    def test_method_not_allowed(self):
        response = payloads.method_not_allowed("PUT", ("GET", "POST"))
        self.assertEqual((response.status_code, response["Allow"]), (405, "GET, POST"))
        self.assertEqual(
            json.loads(response.content)["error"], "method PUT not allowed: use GET, POST"
        )


class EndpointCatalogueTests(SimpleTestCase):
    def test_each_kind_and_method_is_listed_once(self):
        pairs = [(endpoint.kind, endpoint.method) for endpoint in payloads.ENDPOINTS]
        self.assertEqual(len(pairs), len(set(pairs)))
        self.assertEqual(
            {endpoint.kind for endpoint in payloads.ENDPOINTS},
            {"hello", "json", "sleep", "upstream", "db", "cpu", "stream", "upload"},
        )
