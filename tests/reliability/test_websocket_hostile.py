# showcase: this file goes with the showcase
"""Hostile WebSocket and event-stream clients, on real servers: each gets a clear refusal.

Each stack runs wsgi_gthread and an ASGI mode (one worker each, so every client of a case
shares the worker it attacks) behind nginx, on a private Redis (the channel layer). Every case
runs on the ASGI server directly and through nginx's hybrid entry, and ends with a canary: a new
echo connection answers, the worker's PID is the same, and the server logged no traceback.

The cases speak the protocol on a plain socket (RawSocket), so a frame can be as broken as a
case needs. Figures (a second client's round trip during a flood, the worker's RSS under slow
readers) are printed with the prefix "[ws-hostile]", never asserted:

    .venv/bin/pytest -s tests/reliability/test_websocket_hostile.py | grep ws-hostile
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import statistics
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis
from channels.layers import get_channel_layer
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin

from apps.showcase import live
from apps.showcase.consumers import (
    CLOSE_LOGIN_REQUIRED,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_POLICY_VIOLATION,
    ECHO_MAX_MESSAGE_BYTES,
    ECHO_MESSAGE_BURST,
    LOGIN_REASON,
    TOO_BIG_REASON,
    TOO_MANY_REASON,
    TOO_SLOW_REASON,
)
from apps.showcase.views import LIVE_DROPPED
from deploy.gunicorn import common
from lab import manage, servers
from lab.stack import Stack, start_stack
from tests.support import require_nginx

pytestmark = [pytest.mark.serving, pytest.mark.slow]

ASGI_MODES = ["asgi_uvicorn", "asgi_gunicorn"]
ENTRIES = ["direct", "hybrid"]
# Bounds: a hang fails, it never stalls the run.
TIMEOUT = 10.0
# Both servers' limit on a message: gunicorn's websocket_max_message_size, which UvicornWorker
# hands to uvicorn as ws_max_size (deploy/gunicorn/common.py: 1 MiB).
SERVER_MAX_MESSAGE_BYTES = common.websocket_max_message_size
# RFC 6455, 7.4.1.
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_DATA = 1007
# The flood: small messages sent at once, and the round trips a second client makes meanwhile.
FLOOD_MESSAGES = 10_000
FLOOD_PAYLOAD = b"flood-0123456789"
# One round trip every 10 ms for at most 1 s: within the echo's budget (a burst of 100).
RTT_SAMPLES = 100
RTT_INTERVAL = 0.01
# The slow readers: a burst of events of about 1 KiB, published from this process.
SLOW_EVENTS = 5_000
SLOW_TEXT = "x" * 1000
# The receive buffer of a client that never reads: small, so the server's buffers fill, not ours.
SLOW_RCVBUF = 4096
RSS_SAMPLE_SECONDS = 0.1
# What channels_redis's pub/sub layer subscribes to in Redis (prefix "asgi").
CONSUMER_CHANNELS = "asgispecific.*"
# The private consumer's user (created in the stack's database, with the mode's name added).
USERNAME = "hostile"
PASSWORD = "a-long-password-for-the-test-9"

OPCODE_CONTINUATION = 0x0
OPCODE_TEXT = 0x1
OPCODE_BINARY = 0x2
OPCODE_CLOSE = 0x8
OPCODE_PING = 0x9


@pytest.fixture(scope="module", params=ASGI_MODES)
def stack(
    request: pytest.FixtureRequest,
    redis_url: str,
    var_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    require_nginx()
    env = {"REDIS_URL": redis_url, "WEB_CONCURRENCY": "1"}
    with start_stack(
        "wsgi_gthread", request.param, var_dir, tmp_path_factory.mktemp("stack"), server_env=env
    ) as running:
        yield running


def report(*parts: object) -> None:
    """Print one figure line for docs/reliability.md (run with -s to see them)."""
    print("[ws-hostile]", *parts)


# --- Clients ------------------------------------------------------------------------------------


def entry_port(stack: Stack, entry: str) -> int:
    """Return the port of nginx's `entry`, or the ASGI server's own for "direct"."""
    return stack.asgi.port if entry == "direct" else stack.ports[entry]


def same_origin(port: int) -> str:
    return f"http://{servers.HOST}:{port}"


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    length: int | None = None,
) -> bytes:
    """Return a client frame; `length` claims another payload length than the payload's."""
    size = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    mask_bit = 0x80 if masked else 0
    if size < 126:
        head += bytes([mask_bit | size])
    elif size < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", size)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", size)
    if not masked:
        return head + payload
    key = os.urandom(4)
    keystream = (key * (len(payload) // 4 + 1))[: len(payload)]
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(keystream, "big")).to_bytes(
        len(payload), "big"
    )
    return head + key + body


class RawSocket:
    """A WebSocket client on a plain socket: the handshake, then whatever bytes a case sends."""

    def __init__(
        self,
        port: int,
        path: str,
        origin: str | None,
        *,
        cookie: str = "",
        rcvbuf: int | None = None,
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Before connect(), so the window the server sees is small from the start.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect((servers.HOST, port))
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {servers.HOST}:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if origin is not None:
            lines.append(f"Origin: {origin}")
        if cookie:
            lines.append(f"Cookie: {cookie}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.buffer = b""
        head = self.read_until(b"\r\n\r\n")
        self.status = int(head.split(b" ", 2)[1])

    def read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            self.fill()
        found, self.buffer = self.buffer.split(marker, 1)
        return found

    def fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("the server closed the connection")
        self.buffer += chunk

    def read_exact(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self.fill()
        found, self.buffer = self.buffer[:size], self.buffer[size:]
        return found

    def read_frame(self) -> tuple[int, bytes]:
        """Return the next server frame's opcode and payload (server frames are unmasked)."""
        first, second = self.read_exact(2)
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", self.read_exact(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", self.read_exact(8))
        return first & 0x0F, self.read_exact(size)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def outcome(self, max_frames: int = FLOOD_MESSAGES + 10) -> Outcome:
        """Read until the server's close frame or the end of the connection; say which."""
        data_frames = 0
        try:
            for _ in range(max_frames):
                opcode, payload = self.read_frame()
                if opcode == OPCODE_CLOSE:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                    return Outcome(code, payload[2:].decode(errors="replace"), data_frames)
                data_frames += 1
        except (EOFError, ConnectionResetError):
            return Outcome(None, "", data_frames)
        except TimeoutError:
            return Outcome(None, "", data_frames, ended=False)
        raise AssertionError(f"no close after {max_frames} frames")

    def close(self) -> None:
        self.sock.close()


@dataclass
class Outcome:
    """How a connection ended: the server's close code and reason, or None if it just ended."""

    code: int | None
    reason: str
    data_frames: int = 0
    # False: still open when the read timed out.
    ended: bool = True

    def __str__(self) -> str:
        if self.code is None:
            return "dropped" if self.ended else f"still open after {TIMEOUT:.0f} s"
        return f"{self.code} ({self.reason})" if self.reason else str(self.code)


@contextlib.contextmanager
def raw_socket(
    stack: Stack, entry: str, path: str, origin: str | None = "", **kwargs: object
) -> Iterator[RawSocket]:
    """Open a RawSocket to `path` on `entry`; origin "" means the entry's own origin."""
    port = entry_port(stack, entry)
    client = RawSocket(port, path, same_origin(port) if origin == "" else origin, **kwargs)  # type: ignore[arg-type]
    try:
        yield client
    finally:
        client.close()


def open_socket(stack: Stack, entry: str, path: str, cookie: str = "") -> ClientConnection:
    """Open `path` with the websockets client, as a page of the entry's own origin would."""
    port = entry_port(stack, entry)
    return connect(
        f"ws://{servers.HOST}:{port}{path}",
        origin=Origin(same_origin(port)),
        additional_headers={"Cookie": cookie} if cookie else None,
        proxy=None,
        open_timeout=TIMEOUT,
        close_timeout=TIMEOUT,
    )


# --- The canary ---------------------------------------------------------------------------------


def worker_pids(stack: Stack) -> set[int]:
    """Return the PIDs of the ASGI master's children (its workers), read from /proc."""
    children = Path(f"/proc/{stack.asgi.pid}/task/{stack.asgi.pid}/children").read_text()
    return {int(pid) for pid in children.split()}


@dataclass
class Canary:
    """What a case must leave as it found: the worker, a quiet log, a working echo."""

    stack: Stack
    workers: set[int] = field(default_factory=set)
    log_from: int = 0

    def __post_init__(self) -> None:
        self.workers = worker_pids(self.stack)
        self.log_from = len(self.stack.asgi.output())

    def check(self, entry: str, logged_line: str = "") -> None:
        """Check the canary; `logged_line`: what the server logs for the case (no traceback)."""
        with open_socket(self.stack, entry, "/ws/echo/") as echo:
            echo.send("canary")
            assert echo.recv(TIMEOUT) == "canary"
        assert worker_pids(self.stack) == self.workers
        logged = self.stack.asgi.output()[self.log_from :]
        assert "Traceback" not in logged
        assert logged_line in logged


# --- 1. Oversized messages ----------------------------------------------------------------------

# (name, frames, what wins). Over the server's limit only the frame's head and the first KiB
# are sent: both servers refuse on the head's length, before reading the payload.
OVERSIZED = {
    "text over the consumer's limit": (
        [frame(OPCODE_TEXT, b"x" * (ECHO_MAX_MESSAGE_BYTES + 1))],
        "consumer",
    ),
    "binary over the consumer's limit": (
        [frame(OPCODE_BINARY, os.urandom(ECHO_MAX_MESSAGE_BYTES + 1))],
        "consumer",
    ),
    "fragments over the consumer's limit": (
        [
            frame(OPCODE_BINARY, b"x" * ECHO_MAX_MESSAGE_BYTES, fin=False),
            frame(OPCODE_CONTINUATION, b"x"),
        ],
        "consumer",
    ),
    "text over the server's limit": (
        [frame(OPCODE_TEXT, b"x" * 1024, length=SERVER_MAX_MESSAGE_BYTES + 1)],
        "server",
    ),
    "binary over the server's limit": (
        [frame(OPCODE_BINARY, b"x" * 1024, length=SERVER_MAX_MESSAGE_BYTES + 1)],
        "server",
    ),
    "fragments over the server's limit": (
        [
            frame(OPCODE_BINARY, b"x" * 65536, fin=False),
            frame(OPCODE_CONTINUATION, b"x" * 1024, length=SERVER_MAX_MESSAGE_BYTES),
        ],
        "server",
    ),
}


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("case", OVERSIZED)
def test_an_oversized_message_is_closed_with_1009(stack: Stack, entry: str, case: str) -> None:
    frames, winner = OVERSIZED[case]
    canary = Canary(stack)
    with raw_socket(stack, entry, "/ws/echo/") as client:
        assert client.status == 101
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            for data in frames:
                client.send(data)
        outcome = client.outcome()
    report("case", case, stack.asgi_mode, entry, outcome)
    if winner == "consumer":
        # The consumer names its limit in the reason.
        assert (outcome.code, outcome.reason) == (CLOSE_MESSAGE_TOO_BIG, TOO_BIG_REASON)
    else:
        # The server refuses on the frame's head, while the client still sends: its close
        # frame may be lost to the reset the rest of the payload meets (RFC 6455 7.1.7).
        assert outcome.code in {CLOSE_MESSAGE_TOO_BIG, None}
        assert outcome.reason != TOO_BIG_REASON
    canary.check(entry)


# --- 2. Malformed frames after a valid handshake -------------------------------------------------

MALFORMED = {
    "unmasked client frame": (frame(OPCODE_TEXT, b"hello", masked=False), CLOSE_PROTOCOL_ERROR),
    "reserved bit set": (frame(OPCODE_TEXT, b"hello", rsv=0b100), CLOSE_PROTOCOL_ERROR),
    "unknown opcode": (frame(0x3, b"hello"), CLOSE_PROTOCOL_ERROR),
    "control frame over 125 bytes": (frame(OPCODE_PING, b"p" * 126), CLOSE_PROTOCOL_ERROR),
    "fragmented control frame": (frame(OPCODE_PING, b"ping", fin=False), CLOSE_PROTOCOL_ERROR),
    "invalid UTF-8 in a text frame": (frame(OPCODE_TEXT, b"ok \xff\xfe"), CLOSE_INVALID_DATA),
    "continuation without a start": (frame(OPCODE_CONTINUATION, b"x"), CLOSE_PROTOCOL_ERROR),
}


# uvicorn (websockets-sansio) closes with 1007 as it should, and logs the client's bad bytes
# with logger.exception(): a traceback per frame, which deploy/workers.py's ClientFaultFilter
# drops. The line itself stays.
LOGGED_LINES = {
    ("asgi_uvicorn", "invalid UTF-8 in a text frame"): "Invalid UTF-8 sequence received",
}


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_frame_fails_the_connection(stack: Stack, entry: str, case: str) -> None:
    """RFC 6455 7.1.7: the server fails the connection, with a close frame (SHOULD) or not."""
    data, code = MALFORMED[case]
    canary = Canary(stack)
    with raw_socket(stack, entry, "/ws/echo/") as client:
        assert client.status == 101
        client.send(data)
        outcome = client.outcome()
    report("case", case, stack.asgi_mode, entry, outcome)
    assert outcome.code in {code, None}
    assert outcome.data_frames == 0  # nothing reached the echo
    canary.check(entry, LOGGED_LINES.get((stack.asgi_mode, case), ""))


# --- 3. A flood of messages from one client ----------------------------------------------------


def round_trips(echo: ClientConnection, stop: threading.Event) -> list[float]:
    """Return the round trips (ms) of echo messages, one every RTT_INTERVAL, until `stop`.

    Paced, and at most RTT_SAMPLES: a client of its own would be a flood too.
    """
    times: list[float] = []
    for n in range(RTT_SAMPLES):
        if stop.wait(RTT_INTERVAL):
            break
        started = time.perf_counter()
        echo.send(f"rtt {n}")
        assert echo.recv(TIMEOUT) == f"rtt {n}"
        times.append((time.perf_counter() - started) * 1000)
    return times


def summary(times: list[float]) -> str:
    if not times:
        return "no round trip"
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"{len(times)} round trips, p50 {statistics.median(times):.1f} ms, "
        f"p99 {p99:.1f} ms, max {ordered[-1]:.1f} ms"
    )


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("path", ["/ws/echo/", "/ws/live/"])
def test_a_flood_is_closed_with_1008_and_others_stay_served(
    stack: Stack, entry: str, path: str
) -> None:
    """10,000 small messages in one write: the consumer closes at its budget; a second client's
    echo round trips meanwhile are measured (printed, not asserted)."""
    canary = Canary(stack)
    flood = b"".join(frame(OPCODE_TEXT, FLOOD_PAYLOAD) for _ in range(FLOOD_MESSAGES))
    with open_socket(stack, entry, "/ws/echo/") as other:
        quiet = round_trips(other, threading.Event())
    with open_socket(stack, entry, "/ws/echo/") as other, raw_socket(stack, entry, path) as client:
        assert client.status == 101
        measured: list[float] = []
        meter = threading.Thread(
            target=lambda: measured.extend(round_trips(other, threading.Event()))
        )

        def send_flood() -> None:
            with contextlib.suppress(OSError):  # the server may close mid-flood
                client.send(flood)

        sender = threading.Thread(target=send_flood)
        started = time.perf_counter()
        meter.start()
        sender.start()
        outcome = client.outcome()
        closed_after = time.perf_counter() - started
        sender.join(TIMEOUT)
        meter.join(TIMEOUT)  # its second of round trips: the flood and what follows
    report(
        "flood",
        stack.asgi_mode,
        entry,
        path,
        f"{outcome} after {outcome.data_frames} echoes, {closed_after:.2f} s;",
        f"other client before: {summary(quiet)}; during: {summary(measured)}",
    )
    assert outcome.code == CLOSE_POLICY_VIOLATION
    assert outcome.reason == TOO_MANY_REASON
    # Never more than the budget holds (it refills while the flood is read: hence the margin).
    assert outcome.data_frames <= ECHO_MESSAGE_BURST * 2
    canary.check(entry)


# --- 4. Origins ---------------------------------------------------------------------------------

ORIGINS = {
    "missing Origin": None,
    "foreign Origin": "http://evil.example",
    "look-alike Origin": f"http://{servers.HOST}.evil.example",
    "null Origin": "null",
}


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("case", ORIGINS)
def test_a_handshake_from_another_origin_is_refused_with_403(
    stack: Stack, entry: str, case: str
) -> None:
    canary = Canary(stack)
    with raw_socket(stack, entry, "/ws/echo/", origin=ORIGINS[case]) as client:
        status = client.status
    report("case", case, stack.asgi_mode, entry, status)
    assert status == 403
    canary.check(entry)


# --- 5. An anonymous client on an authenticated channel -----------------------------------------


@pytest.fixture(scope="module")
def session_cookie(stack: Stack) -> str:
    """Create a user in the stack's database, log in through the admin's form; return the cookie."""
    env = {
        **dict.fromkeys(servers.INHERITED_SETTINGS),
        "DJANGO_VAR_DIR": str(stack.var_dir),
        "DJANGO_SUPERUSER_PASSWORD": PASSWORD,
    }
    # One user per stack: the module's stacks share var_dir.
    username = f"{USERNAME}-{stack.asgi_mode}"
    create = ["createsuperuser", "--noinput", "--username", username, "--email", "t@example.com"]
    manage.run_checked(create, env)
    with httpx.Client(base_url=stack.url("hybrid", ""), timeout=TIMEOUT) as browser:
        form = browser.get("/admin/login/")
        token = form.text.split('name="csrfmiddlewaretoken" value="', 1)[1].split('"', 1)[0]
        answer = browser.post(
            "/admin/login/?next=/admin/",
            data={"username": username, "password": PASSWORD, "csrfmiddlewaretoken": token},
        )
        assert answer.status_code == 302, answer.text[:500]
        return f"sessionid={browser.cookies['sessionid']}"


@pytest.mark.parametrize("entry", ENTRIES)
def test_an_anonymous_client_of_the_private_echo_is_closed_with_4401(
    stack: Stack, entry: str
) -> None:
    canary = Canary(stack)
    with raw_socket(stack, entry, "/ws/private/") as client:
        assert client.status == 101
        outcome = client.outcome()
    report("case", "anonymous on /ws/private/", stack.asgi_mode, entry, outcome)
    assert (outcome.code, outcome.reason, outcome.data_frames) == (
        CLOSE_LOGIN_REQUIRED,
        LOGIN_REASON,
        0,
    )
    canary.check(entry)


@pytest.mark.parametrize("entry", ENTRIES)
def test_a_logged_in_client_of_the_private_echo_is_served(
    stack: Stack, entry: str, session_cookie: str
) -> None:
    canary = Canary(stack)
    with open_socket(stack, entry, "/ws/private/", cookie=session_cookie) as private:
        assert json.loads(private.recv(TIMEOUT)) == {"user": f"{USERNAME}-{stack.asgi_mode}"}
        private.send("only for you")
        assert private.recv(TIMEOUT) == "only for you"
    # A session cookie that names no session is anonymous.
    with raw_socket(stack, entry, "/ws/private/", cookie="sessionid=forged") as forged:
        assert forged.outcome().code == CLOSE_LOGIN_REQUIRED
    canary.check(entry)


# --- 6. Slow readers on the live feed ------------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


class RssSampler(threading.Thread):
    """Sample a process's RSS every RSS_SAMPLE_SECONDS until stopped: (seconds, KiB)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, int]] = []
        self.halt = threading.Event()
        self.started_at = time.monotonic()

    def run(self) -> None:
        while not self.halt.wait(RSS_SAMPLE_SECONDS):
            self.samples.append((time.monotonic() - self.started_at, rss_kib(self.pid)))

    def stop(self) -> list[tuple[float, int]]:
        self.halt.set()
        self.join(TIMEOUT)
        return self.samples


def publish_burst(redis_url: str, count: int) -> float:
    """Publish `count` events of about 1 KiB through the servers' Redis layer; return seconds."""
    from django.test import override_settings

    layers = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [redis_url]},
        }
    }

    async def burst() -> None:
        for n in range(count):
            await live.apublish({"kind": "burst", "n": n, "text": SLOW_TEXT})
        await get_channel_layer().flush()

    started = time.perf_counter()
    with override_settings(CHANNEL_LAYERS=layers):
        asyncio.run(burst())
    return time.perf_counter() - started


def open_stream(port: int, rcvbuf: int | None) -> socket.socket:
    """Open /async/live/ (with a receive buffer of `rcvbuf`); return once subscribed."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(TIMEOUT)
    sock.connect((servers.HOST, port))
    sock.sendall(
        # HTTP/1.0: a body that ends with the connection, no chunks whose size lines nginx
        # (which chunks it again) could put in the middle of an event.
        f"GET /async/live/ HTTP/1.0\r\nHost: {servers.HOST}:{port}\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    seen = b""
    while b"retry:" not in seen:
        chunk = sock.recv(4096)
        assert chunk, "the stream ended before it began"
        seen += chunk
    return sock


def read_stream_to_end(sock: socket.socket) -> tuple[int, bool, bool]:
    """Read an SSE stream until it ends; return (events, whether it said dropped, ended).

    It ends with the connection (HTTP/1.0); a stream still open after 3 s of silence has not.
    """
    data = b""
    ended = False
    sock.settimeout(3.0)
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while not ended:
            chunk = sock.recv(65536)
            data += chunk
            ended = not chunk
    return data.count(b"data: "), LIVE_DROPPED in data, ended


def wait_until(condition: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def read_stream(sock: socket.socket, events: int) -> int:
    """Read an SSE stream until it has brought `events` events (or stalls 10 s); return them."""
    seen, tail = 0, b""
    with contextlib.suppress(TimeoutError):
        while seen < events:
            chunk = sock.recv(65536)
            if not chunk:
                break
            # Counted as it comes (a reader slower than the feed would be dropped), across
            # chunk boundaries through the tail.
            seen += (tail + chunk).count(b"data: ")
            tail = (tail + chunk)[-5:]
    return seen


@pytest.mark.parametrize("entry", ENTRIES)
def test_slow_readers_of_the_live_feed_are_dropped(
    stack: Stack, entry: str, redis_url: str, redis_client: redis.Redis
) -> None:
    """A WebSocket and an SSE client that read nothing while 5,000 events of 1 KiB are published:
    the server drops both (leaves their subscriptions, ends their connections) instead of
    keeping the events for them; a WebSocket and an SSE client that read get every event."""
    canary = Canary(stack)
    (worker,) = canary.workers
    port = entry_port(stack, entry)
    assert wait_until(lambda: not redis_client.pubsub_channels(CONSUMER_CHANNELS))
    with contextlib.ExitStack() as opened:
        slow_ws = opened.enter_context(raw_socket(stack, entry, "/ws/live/", rcvbuf=SLOW_RCVBUF))
        assert slow_ws.status == 101
        slow_sse = open_stream(port, SLOW_RCVBUF)
        opened.callback(slow_sse.close)
        ws_reader = opened.enter_context(open_socket(stack, entry, "/ws/live/"))
        sse_reader = open_stream(port, None)
        opened.callback(sse_reader.close)
        assert wait_until(lambda: len(redis_client.pubsub_channels(CONSUMER_CHANNELS)) == 4)
        ws_received: list[int] = []
        sse_received: list[int] = []

        def read_ws() -> None:
            with contextlib.suppress(TimeoutError, ConnectionClosed):
                while len(ws_received) < SLOW_EVENTS:
                    ws_received.append(json.loads(ws_reader.recv(TIMEOUT))["n"])

        readers = [
            threading.Thread(target=read_ws),
            threading.Thread(
                target=lambda: sse_received.append(read_stream(sse_reader, SLOW_EVENTS))
            ),
        ]
        for reader in readers:
            reader.start()
        sampler = RssSampler(worker)
        before = rss_kib(worker)
        sampler.start()
        seconds = publish_burst(redis_url, SLOW_EVENTS)
        for reader in readers:
            reader.join(60)
        # The slow clients were dropped while still connected: only the readers are subscribed.
        dropped = wait_until(lambda: len(redis_client.pubsub_channels(CONSUMER_CHANNELS)) == 2)
        subscribed = len(redis_client.pubsub_channels(CONSUMER_CHANNELS))
        samples = sampler.stop()
        ws_outcome = slow_ws.outcome()
        sse_events, sse_said_dropped, sse_ended = read_stream_to_end(slow_sse)
    peak = max(kib for _, kib in samples)
    report(
        "slow",
        stack.asgi_mode,
        entry,
        f"{SLOW_EVENTS} events in {seconds:.2f} s; readers got {len(ws_received)} (WebSocket)",
        f"and {sse_received} (SSE); slow WebSocket: {ws_outcome.data_frames} events then",
        f"{ws_outcome}; slow SSE: {sse_events} events, dropped line {sse_said_dropped},",
        f"ended {sse_ended}; subscriptions left {subscribed}; worker RSS {before} KiB -> peak",
        f"{peak} KiB (+{(peak - before) / 1024:.1f} MiB), last {samples[-1][1]} KiB",
    )
    report("rss", stack.asgi_mode, entry, " ".join(f"{t:.1f}s:{kib}" for t, kib in samples))
    assert ws_received == list(range(SLOW_EVENTS))
    assert sse_received == [SLOW_EVENTS]
    if entry != "direct":
        # Behind nginx the burst fits in the sockets' buffers of both hops (5 MiB): the app
        # never waits on the slow clients, nginx holds them (its send_timeout ends them).
        canary.check(entry)
        return
    assert dropped, f"{subscribed} subscriptions left"
    assert ws_outcome.data_frames < SLOW_EVENTS
    assert ws_outcome.code in {CLOSE_POLICY_VIOLATION, None}
    if ws_outcome.code is not None:
        assert ws_outcome.reason == TOO_SLOW_REASON
    assert sse_events < SLOW_EVENTS
    assert sse_ended
    assert sse_said_dropped
    canary.check(entry)
