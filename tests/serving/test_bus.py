# showcase: this file goes with the showcase
"""One event bus for every live client, on real servers: WSGI publishes, ASGI workers deliver.

Each stack runs wsgi_gthread and an ASGI mode with two workers behind nginx, on a private Redis
(the channel layer of every process). A message POSTed to the sync view /sync/publish/ through
nginx's WSGI entry reaches a WebSocket client (/ws/live/) and a Server-Sent Events client
(/async/live/) held by different ASGI workers; a thousand clients that come and go leave no
subscription behind.

Which worker holds a client is read from Redis: the pub/sub layer subscribes each process to a
group's channel once, whatever its number of members, so PUBSUB NUMSUB of the live group's
channel counts the processes with live clients.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin

from lab import servers
from lab.stack import Stack, start_stack
from tests.support import require_nginx

pytestmark = [pytest.mark.serving, pytest.mark.slow]

ASGI_MODES = ["asgi_uvicorn", "asgi_gunicorn"]
WORKERS = 2
# Bounds: a hang fails, it never stalls the run.
OPEN_TIMEOUT = 10.0
RECEIVE_TIMEOUT = 10.0
SETTLE_TIMEOUT = 20.0
# Connections tried until the SSE client lands on the other worker than the WebSocket's.
PLACEMENT_ATTEMPTS = 30
# The leak test: clients that connect, subscribe and go, in batches.
CHURN_BATCHES = 10
CHURN_BATCH = 50  # per kind: 10 x (50 WebSockets + 50 SSE streams) = 1,000 disconnects
# What channels_redis's pub/sub layer subscribes to in Redis (prefix "asgi").
CONSUMER_CHANNELS = "asgispecific.*"
LIVE_GROUP_CHANNEL = "asgi__group__live"
# SO_LINGER on, 0 s: close() sends a TCP reset, as a client that vanishes mid-stream.
RESET = struct.pack("ii", 1, 0)


@pytest.fixture(scope="module", params=ASGI_MODES)
def stack(
    request: pytest.FixtureRequest,
    redis_url: str,
    var_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    require_nginx()
    env = {"REDIS_URL": redis_url, "WEB_CONCURRENCY": str(WORKERS)}
    with start_stack(
        "wsgi_gthread", request.param, var_dir, tmp_path_factory.mktemp("stack"), server_env=env
    ) as running:
        yield running
    assert "Traceback" not in running.asgi.output()
    assert "Traceback" not in running.wsgi.output()


# --- Clients ------------------------------------------------------------------------------------


def entry_port(stack: Stack, entry: str) -> int:
    """Return the port of nginx's `entry`, or the ASGI server's own for "direct"."""
    return stack.asgi.port if entry == "direct" else stack.ports[entry]


def open_socket(stack: Stack, entry: str) -> ClientConnection:
    """Open /ws/live/ on `entry` (see entry_port), as a page of the same origin would."""
    port = entry_port(stack, entry)
    return connect(
        f"ws://{servers.HOST}:{port}/ws/live/",
        origin=Origin(f"http://{servers.HOST}:{port}"),
        proxy=None,
        open_timeout=OPEN_TIMEOUT,
        close_timeout=OPEN_TIMEOUT,
    )


class EventStream:
    """A Server-Sent Events client of /async/live/ on a plain socket, HTTP/1.1 chunked aware.

    Opening returns once the `retry:` line has arrived: the server subscribes before it sends
    it, so the stream is in the group from then on. With `subscribed=False` it returns once the
    response head has arrived, which Django sends before the stream begins to subscribe.
    """

    def __init__(
        self, port: int, timeout: float = RECEIVE_TIMEOUT, *, subscribed: bool = True
    ) -> None:
        self.sock = socket.create_connection((servers.HOST, port), timeout=OPEN_TIMEOUT)
        self.sock.settimeout(timeout)
        request = (
            f"GET /async/live/ HTTP/1.1\r\nHost: {servers.HOST}:{port}\r\n"
            "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        self.buffer = b""
        head = self.read_until(b"\r\n\r\n")
        self.status = int(head.split(b" ", 2)[1])
        self.headers = head.decode("latin-1").lower()
        self.chunked = "transfer-encoding: chunked" in self.headers
        self.text = ""
        if self.status == 200 and subscribed:
            while "retry:" not in self.text:
                self.read_more()

    def read_until(self, marker: bytes) -> bytes:
        """Return the raw bytes up to `marker` (consumed), reading as needed."""
        while marker not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the stream")
            self.buffer += chunk
        found, self.buffer = self.buffer.split(marker, 1)
        return found

    def read_more(self) -> None:
        """Read the next piece of the body into `text` (one chunk when chunked)."""
        if self.chunked:
            size = int(self.read_until(b"\r\n").split(b";")[0], 16)
            while len(self.buffer) < size + 2:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("the server closed the stream")
                self.buffer += chunk
            self.text += self.buffer[:size].decode()
            self.buffer = self.buffer[size + 2 :]
        else:
            if not self.buffer:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("the server closed the stream")
                self.buffer = chunk
            self.text += self.buffer.decode()
            self.buffer = b""

    def next_event(self) -> Any:
        """Return the next `data:` event, decoded; skip comments and the retry field."""
        while True:
            while "\n\n" not in self.text:
                self.read_more()
            block, self.text = self.text.split("\n\n", 1)
            data = [line[6:] for line in block.split("\n") if line.startswith("data: ")]
            if data:
                return json.loads("\n".join(data))

    def close(self, abrupt: bool = False) -> None:
        """Close the connection: a FIN, or with `abrupt` a reset (no goodbye at all)."""
        if abrupt:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
        self.sock.close()


@contextlib.contextmanager
def csrf_client(base_url: str) -> Iterator[httpx.Client]:
    """Yield a client holding the CSRF cookie the publish views hand out on GET."""
    with httpx.Client(base_url=base_url, timeout=RECEIVE_TIMEOUT, trust_env=False) as client:
        answer = client.get("/sync/publish/")
        assert answer.status_code == 200, answer.text
        assert client.cookies.get("csrftoken")
        yield client


def post_message(client: httpx.Client, path: str, text: str) -> httpx.Response:
    """POST {"text": text} to `path` with the CSRF token from the client's cookie."""
    return client.post(
        path, json={"text": text}, headers={"X-CSRFToken": client.cookies["csrftoken"]}
    )


# --- Redis and the workers ----------------------------------------------------------------------


def subscriptions(client: redis.Redis) -> tuple[int, int]:
    """Return (consumer channels, processes subscribed to the live group) in Redis."""
    ((_, group),) = client.pubsub_numsub(LIVE_GROUP_CHANNEL)
    return len(client.pubsub_channels(CONSUMER_CHANNELS)), int(group)


def wait_subscriptions(client: redis.Redis, expected: tuple[int, int]) -> tuple[int, int]:
    """Wait (bounded) until subscriptions() is `expected`; return the last value seen."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while (found := subscriptions(client)) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def worker_pids(master: int) -> list[int]:
    """Return the PIDs of `master`'s child processes (gunicorn's workers)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                # The command name, in parentheses, may hold spaces: the fields follow it.
                if int(stat.rsplit(")", 1)[1].split()[1]) == master:
                    children.append(int(entry.name))
    return sorted(children)


def rss_kib(pids: list[int]) -> int:
    """Return the resident memory of `pids` together, in KiB."""
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


# --- Done when: one publish by WSGI, a WebSocket and an SSE client on different workers ---------


def test_a_sync_view_under_wsgi_reaches_websocket_and_sse_clients_of_different_workers(
    stack: Stack, redis_client: redis.Redis
) -> None:
    assert wait_subscriptions(redis_client, (0, 0)) == (0, 0)
    assert len(worker_pids(stack.asgi.pid)) == WORKERS
    with contextlib.ExitStack() as clients:
        feed = clients.enter_context(open_socket(stack, "asgi"))
        assert subscriptions(redis_client) == (1, 1)
        # Open streams until one lands on the other worker: the group then has two processes.
        streams: list[EventStream] = []
        for _ in range(PLACEMENT_ATTEMPTS):
            stream = EventStream(stack.ports["hybrid"])
            clients.callback(stream.close)
            assert stream.status == 200, stream.headers
            assert "content-type: text/event-stream" in stream.headers
            streams.append(stream)
            if subscriptions(redis_client)[1] == WORKERS:
                break
        consumers, processes = subscriptions(redis_client)
        assert processes == WORKERS, f"every stream on the WebSocket's worker ({len(streams)})"
        assert consumers == 1 + len(streams)

        with csrf_client(stack.url("wsgi", "")) as publisher:
            answer = post_message(publisher, "/sync/publish/", "from a sync view")
        assert answer.status_code == 202, answer.text
        assert answer.headers["x-interface"] == "wsgi"
        event = answer.json()["event"]
        assert event["id"] == answer.json()["id"]
        assert event["source"] == "sync view (wsgi)"
        assert event["text"] == "from a sync view"

        assert json.loads(feed.recv(RECEIVE_TIMEOUT)) == event
        for stream in streams:
            assert stream.next_event() == event
    print(f"{stack.asgi_mode}: WebSocket + {len(streams)} SSE stream(s) on {processes} workers")


def test_the_async_view_and_the_command_publish_to_the_same_clients(
    stack: Stack, redis_url: str
) -> None:
    with open_socket(stack, "hybrid") as feed:
        stream = EventStream(stack.ports["asgi"])
        try:
            with csrf_client(stack.url("asgi", "")) as publisher:
                answer = post_message(publisher, "/async/publish/", "from an async view")
            assert answer.status_code == 202, answer.text
            event = answer.json()["event"]
            assert event["source"] == "async view (asgi)"
            assert json.loads(feed.recv(RECEIVE_TIMEOUT)) == event
            assert stream.next_event() == event

            env = {**os.environ, "REDIS_URL": redis_url, "DJANGO_VAR_DIR": str(stack.var_dir)}
            done = subprocess.run(
                [sys.executable, "manage.py", "publish", "from manage.py"],
                cwd=servers.REPO_ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert done.returncode == 0, done.stderr
            assert done.stderr == ""
            event = json.loads(done.stdout)
            assert event["source"] == "manage.py publish"
            assert json.loads(feed.recv(RECEIVE_TIMEOUT)) == event
            assert stream.next_event() == event
        finally:
            stream.close()


def test_the_wsgi_entry_refuses_the_endless_stream(stack: Stack) -> None:
    answer = httpx.get(stack.url("wsgi", "/async/live/"), timeout=RECEIVE_TIMEOUT, trust_env=False)
    assert answer.status_code == 503
    assert "ASGI only" in answer.json()["error"]


# --- No leak: a thousand clients come and go ----------------------------------------------------


def churn(stack: Stack, batch: int, index: int) -> None:
    """Open `batch` WebSockets and `batch` streams, half direct and half through nginx, then
    drop them: half with a goodbye (close frame, FIN), half without (TCP reset)."""
    with contextlib.ExitStack() as opened:
        pairs = []
        for n in range(batch):
            feed = opened.enter_context(open_socket(stack, "direct" if (n + index) % 2 else "asgi"))
            stream = EventStream(entry_port(stack, "direct" if n % 2 else "hybrid"))
            opened.callback(stream.close)
            pairs.append((feed, stream))
        for n, (feed, stream) in enumerate(pairs):
            if n % 4 >= 2:
                feed.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
                feed.socket.close()
                stream.close(abrupt=True)
            else:
                feed.close()
                stream.close()


def test_a_thousand_clients_that_leave_leave_no_subscription(
    stack: Stack, redis_client: redis.Redis
) -> None:
    assert wait_subscriptions(redis_client, (0, 0)) == (0, 0)
    workers = worker_pids(stack.asgi.pid)
    # A first small batch: the workers' Redis connections and first-use caches exist after it.
    churn(stack, 10, 0)
    assert wait_subscriptions(redis_client, (0, 0)) == (0, 0)
    clients_before = int(redis_client.info("clients")["connected_clients"])
    rss_before = rss_kib(workers)
    started = time.monotonic()
    for index in range(CHURN_BATCHES):
        churn(stack, CHURN_BATCH, index)
        assert wait_subscriptions(redis_client, (0, 0)) == (0, 0), f"after batch {index + 1}"
    elapsed = time.monotonic() - started
    rss_after = rss_kib(workers)
    clients_after = int(redis_client.info("clients")["connected_clients"])
    print(
        f"{stack.asgi_mode}: {2 * CHURN_BATCHES * CHURN_BATCH} disconnects in {elapsed:.1f} s; "
        f"subscriptions (consumers, group) (0, 0) -> {subscriptions(redis_client)}; Redis "
        f"clients {clients_before} -> {clients_after}; ASGI workers' RSS "
        f"{rss_before / 1024:.1f} -> {rss_after / 1024:.1f} MiB"
    )
    assert worker_pids(stack.asgi.pid) == workers  # no worker died and came back
    # The workers' Redis connections are reused: none is left per client.
    assert clients_after <= clients_before + WORKERS
    # A generous bound: a leak of even 50 KiB per client (subscription state, tasks, buffers)
    # would show as 50 MiB here.
    assert rss_after - rss_before < 50 * 1024


# --- A client that leaves while its stream is still joining the group ---------------------------

HEAD_ONLY_CLIENTS = 40


def test_clients_that_leave_before_their_stream_joined_leave_no_subscription(
    stack: Stack, redis_client: redis.Redis
) -> None:
    """Django sends the response head before it pulls the stream's first chunk, so these
    clients leave while their stream is still on its way into the group (Redis round trips).
    Cancelled half-way there, a stream once left its channel subscribed (27 of 40 here, on
    asgi_uvicorn), or went on as if its client were there when redis-py lost the cancellation
    (Python 3.11's asyncio.wait_for), until the worker stopped."""
    assert wait_subscriptions(redis_client, (0, 0)) == (0, 0)
    statuses = []
    for n in range(HEAD_ONLY_CLIENTS):
        stream = EventStream(entry_port(stack, "direct" if n % 2 else "hybrid"), subscribed=False)
        statuses.append(stream.status)
        stream.close()
    assert statuses == [200] * HEAD_ONLY_CLIENTS
    assert wait_subscriptions(redis_client, (0, 0)) == (0, 0)
