# showcase: this file goes with the showcase (it drives the showcase's endpoints).
"""The showcase requests the serving tests send, and the answers every server must give.

One `Probe` per showcase pair and method. `answer()` reduces an HTTP response to what must be
identical between /sync/ and /async/ and between WSGI and ASGI: status, content type and the
decoded body, minus what legitimately differs per request (a created row's id and time).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import Any

import httpx

from apps.showcase import payloads

INTERFACE_HEADER = "X-Interface"
UPSTREAM_MS = 50
SLEEP_MS = 50
CPU_N = 20_000
STREAM_EVENTS = 3
SEEDED_ID = 7
# Large enough for several reads by the views' 64 KiB chunks, small enough to stay quick.
UPLOAD = random.Random(20261121).randbytes(3 * 64 * 1024 + 123)


@dataclass(frozen=True)
class Answer:
    """What a response must agree on: status, content type, decoded body."""

    status: int
    content_type: str
    body: Any


@dataclass(frozen=True)
class Probe:
    """One request to a showcase pair and the answer it expects."""

    kind: str
    method: str = "GET"
    query: str = ""
    form: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None
    status: int = 200
    content_type: str = "application/json"
    body: Any = None
    # Keys a JSON body must hold with these values, when the whole body cannot be known.
    includes: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    @property
    def name(self) -> str:
        """Return a short test id, e.g. "db-POST"."""
        return self.label or f"{self.kind}-{self.method}"

    def path(self, side: str) -> str:
        """Return the path of the `side` ("sync" or "async") twin."""
        return f"/{side}/{self.kind}/{self.query}"

    def send(self, client: httpx.Client, side: str) -> httpx.Response:
        """Send this request to the `side` twin through `client`."""
        return client.request(
            self.method,
            self.path(side),
            data=self.form or None,
            content=self.content,
        )

    def check(self, got: Answer) -> None:
        """Assert that `got` is the answer this probe expects."""
        assert (got.status, got.content_type) == (self.status, self.content_type), got
        if self.body is not None:
            assert got.body == self.body
        for key, value in self.includes.items():
            assert got.body[key] == value, got.body


def sse_body(events: int) -> list[dict[str, Any]]:
    """Return the decoded events the stream views send."""
    return decode_sse(b"".join(payloads.sse_event(n, events) for n in range(1, events + 1)))


def decode_sse(body: bytes) -> list[dict[str, Any]]:
    """Return the events of a Server-Sent Events body as {"id": ..., "data": ...} dicts."""
    events = []
    for block in body.decode().split("\n\n"):
        if block:
            fields = dict(line.split(": ", 1) for line in block.split("\n"))
            events.append({"id": fields["id"], "data": json.loads(fields["data"])})
    return events


def answer(probe: Probe, response: httpx.Response) -> Answer:
    """Reduce a response to what every server and both twins must agree on."""
    content_type = response.headers.get("content-type", "").split(";")[0].strip()
    body: Any
    if content_type == "application/json":
        body = response.json()
        item = body.get("item") if isinstance(body, dict) else None
        if probe.method == "POST" and isinstance(item, dict):
            # A created row: its id and creation time are new on every request.
            body = {**body, "item": {k: v for k, v in item.items() if k not in {"id", "created"}}}
        elif isinstance(item, dict):
            body = {**body, "item": {k: v for k, v in item.items() if k != "created"}}
    elif content_type == payloads.EVENT_STREAM:
        body = decode_sse(response.content)
    else:
        body = response.text
    return Answer(response.status_code, content_type, body)


PROBES = (
    Probe("hello", content_type="text/plain", body=payloads.HELLO),
    Probe("json", body=payloads.json_payload()),
    Probe("sleep", query=f"?ms={SLEEP_MS}", body=payloads.slept_payload(SLEEP_MS)),
    Probe(
        "upstream",
        query=f"?ms={UPSTREAM_MS}",
        body=payloads.upstream_payload(UPSTREAM_MS, {"service": "upstream", "ms": UPSTREAM_MS}),
    ),
    # The count grows with every POST: a read is compared between twins, not to a constant.
    Probe(
        "db",
        query=f"?id={SEEDED_ID}",
        includes={"item": {"id": SEEDED_ID, "name": "item-007", "value": SEEDED_ID**2}},
    ),
    Probe(
        "db",
        method="POST",
        form={"name": "serving-test", "value": "42"},
        status=201,
        body={"item": {"name": "serving-test", "value": 42}},
    ),
    Probe("cpu", query=f"?n={CPU_N}", body=payloads.cpu_payload(CPU_N)),
    Probe(
        "stream",
        query=f"?events={STREAM_EVENTS}&interval=20",
        content_type=payloads.EVENT_STREAM,
        body=sse_body(STREAM_EVENTS),
    ),
    Probe(
        "upload",
        method="POST",
        content=UPLOAD,
        body={"size": len(UPLOAD), "sha256": hashlib.sha256(UPLOAD).hexdigest()},
    ),
    # Refused input is part of the contract: a 400 JSON error, never a 500, in every mode.
    Probe("sleep", query="?ms=banana", status=400, label="sleep-bad-input"),
)
