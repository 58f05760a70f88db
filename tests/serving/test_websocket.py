"""WebSockets on real servers: both ASGI modes, directly and through nginx, on a real Redis.

Each stack runs a WSGI and an ASGI mode (two workers each) behind nginx, with REDIS_URL naming
a redis-server this module starts on a free loopback port: the channel layer every worker and
this test process share. Clients are the `websockets` library's sync client.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin

from lab import servers
from lab.stack import Stack, start_stack
from tests.support import require_nginx

pytestmark = [pytest.mark.serving, pytest.mark.slow]

# Both ASGI modes, each behind nginx with a WSGI mode (as tests/deploy/test_nginx.py pairs them).
MODE_PAIRS = [("wsgi_gthread", "asgi_uvicorn"), ("wsgi_sync", "asgi_gunicorn")]
# Bounds for waiting on a server or on Redis: a hang fails, it never stalls the run.
OPEN_TIMEOUT = 10.0
RECEIVE_TIMEOUT = 10.0
# What channels_redis's pub/sub layer subscribes to in Redis (prefix "asgi"): a channel per
# consumer, and a group's channel once per process that has members in the group.
CONSUMER_CHANNELS = "asgispecific.*"
LIVE_GROUP_CHANNEL = "asgi__group__live"


@pytest.fixture(scope="module", params=MODE_PAIRS, ids="+".join)
def stack(
    request: pytest.FixtureRequest,
    redis_url: str,
    var_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    require_nginx()
    wsgi_mode, asgi_mode = request.param
    # The stack clears an inherited REDIS_URL: this module's own Redis is named here.
    with start_stack(
        wsgi_mode,
        asgi_mode,
        var_dir,
        tmp_path_factory.mktemp("stack"),
        server_env={"REDIS_URL": redis_url},
    ) as running:
        yield running
    # Every connection the module opened ended without an error, up to the server's shutdown.
    assert "Traceback" not in running.asgi.output()


def ws_url(stack: Stack, entry: str, path: str) -> str:
    """Return the ws:// URL of `path` on nginx's `entry`, or on the ASGI server for "direct"."""
    port = stack.asgi.port if entry == "direct" else stack.ports[entry]
    return f"ws://{servers.HOST}:{port}{path}"


def open_socket(url: str, origin: str | None = None) -> ClientConnection:
    """Open a WebSocket to `url` as a page of `origin` would (default: the URL's own origin)."""
    if origin is None:
        origin = "http://" + url.removeprefix("ws://").split("/", 1)[0]
    return connect(
        url,
        origin=Origin(origin),
        proxy=None,
        open_timeout=OPEN_TIMEOUT,
        close_timeout=OPEN_TIMEOUT,
    )


def refused_status(url: str, origin: str | None = None) -> int:
    """Return the HTTP status a handshake to `url` is refused with; fail if it is accepted."""
    with pytest.raises(InvalidStatus) as refused, open_socket(url, origin):
        pass
    status: int = refused.value.response.status_code
    return status


# --- Every project: what the machinery does whatever the routes ---------------------------------


def test_wsgi_entry_refuses_a_handshake_itself(stack: Stack) -> None:
    marker = uuid.uuid4().hex
    with (
        pytest.raises(InvalidStatus) as refused,
        open_socket(ws_url(stack, "wsgi", f"/ws/echo/?probe={marker}")),
    ):
        pass
    response = refused.value.response
    assert response.status_code == 400
    assert b"WebSockets are served by the hybrid and ASGI entries" in response.body
    assert response.headers["Content-Type"] == "text/plain"
    # nginx answered: the WSGI server never saw the request.
    assert marker not in stack.wsgi.output()


@pytest.mark.parametrize("entry", ["direct", "hybrid", "asgi"])
def test_a_path_without_a_route_is_refused_cleanly(stack: Stack, entry: str) -> None:
    marker = uuid.uuid4().hex
    assert refused_status(ws_url(stack, entry, f"/ws/nowhere-{marker}/")) == 403
    # Refused by the router's catch-all, not by an exception the server logs.
    assert "Traceback" not in stack.asgi.output()
    assert "No route found" not in stack.asgi.output()


# showcase:begin
# --- The showcase's consumers -------------------------------------------------------------------
# What only these tests use is imported here, so the module loses it with the showcase.
import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402

import redis  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

from apps.showcase.consumers import CLOSE_MESSAGE_TOO_BIG, ECHO_MAX_MESSAGE_BYTES  # noqa: E402


@pytest.mark.parametrize("entry", ["direct", "hybrid", "asgi"])
def test_echo_sends_text_and_bytes_back(stack: Stack, entry: str) -> None:
    with open_socket(ws_url(stack, entry, "/ws/echo/")) as echo:
        echo.send("héllo")
        assert echo.recv(RECEIVE_TIMEOUT) == "héllo"
        payload = os.urandom(1000)
        echo.send(payload)
        assert echo.recv(RECEIVE_TIMEOUT) == payload


@pytest.mark.parametrize("entry", ["direct", "hybrid"])
def test_echo_closes_an_oversized_message_with_1009(stack: Stack, entry: str) -> None:
    with open_socket(ws_url(stack, entry, "/ws/echo/")) as echo:
        echo.send(b"x" * (ECHO_MAX_MESSAGE_BYTES + 1))
        with pytest.raises(ConnectionClosed) as closed:
            echo.recv(RECEIVE_TIMEOUT)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == CLOSE_MESSAGE_TOO_BIG


@pytest.mark.parametrize("entry", ["direct", "hybrid", "asgi"])
def test_a_foreign_origin_is_refused(stack: Stack, entry: str) -> None:
    url = ws_url(stack, entry, "/ws/echo/")
    assert refused_status(url, origin="http://evil.example") == 403
    # The control: the same handshake from the site's own origin is accepted.
    with open_socket(url) as accepted:
        accepted.send("same origin")
        assert accepted.recv(RECEIVE_TIMEOUT) == "same origin"


def test_hybrid_sends_a_handshake_to_asgi_under_a_wsgi_location(stack: Stack) -> None:
    """/sync/stream/ is a WSGI location of the hybrid entry: a handshake there still goes to
    ASGI, whose router refuses the path (403); WSGI would have served the stream (200)."""
    marker = uuid.uuid4().hex
    assert refused_status(ws_url(stack, "hybrid", f"/sync/stream/?probe={marker}")) == 403
    assert marker not in stack.wsgi.output()


def publish_from_this_process(redis_url: str, event: dict[str, object]) -> None:
    """Publish `event` with apps.showcase.live.publish over the servers' Redis channel layer."""
    from django.test import override_settings

    from apps.showcase import live

    # What project/settings.py configures when REDIS_URL is set.
    layers = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [redis_url]},
        }
    }
    with override_settings(CHANNEL_LAYERS=layers):
        live.publish(event)


def test_live_clients_of_every_worker_get_an_event_published_elsewhere(
    stack: Stack, redis_url: str, redis_client: redis.Redis
) -> None:
    """Published from this process, through Redis, to clients of both workers, by any entry."""
    entries = ["direct", "hybrid", "asgi", "direct", "hybrid", "asgi"]
    with contextlib.ExitStack() as sockets:
        feeds = [
            sockets.enter_context(open_socket(ws_url(stack, entry, "/ws/live/")))
            for entry in entries
        ]
        assert len(redis_client.pubsub_channels(CONSUMER_CHANNELS)) == len(feeds)
        # Each worker process with clients in the group subscribes to it once.
        ((_, workers),) = redis_client.pubsub_numsub(LIVE_GROUP_CHANNEL)
        print(f"{stack.asgi_mode}: {len(feeds)} live clients on {workers} worker(s)")
        event = {"kind": "test", "id": uuid.uuid4().hex, "n": [1, 2.5, None, True]}
        publish_from_this_process(redis_url, event)
        for feed in feeds:
            assert json.loads(feed.recv(RECEIVE_TIMEOUT)) == event


def subscriptions(client: redis.Redis) -> tuple[int, int]:
    """Return how many consumer channels and subscriptions to the live group Redis has."""
    ((_, group),) = client.pubsub_numsub(LIVE_GROUP_CHANNEL)
    return len(client.pubsub_channels(CONSUMER_CHANNELS)), int(group)


def subscriptions_settle_at(client: redis.Redis, consumers: int) -> tuple[int, int]:
    """Wait (bounded) until Redis has `consumers` consumer channels; return subscriptions().

    A server handles a disconnect after the client has gone, so leaving takes a moment.
    """
    deadline = time.monotonic() + RECEIVE_TIMEOUT
    while (found := subscriptions(client))[0] != consumers and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def test_live_clients_leave_the_group_when_they_disconnect(
    stack: Stack, redis_client: redis.Redis
) -> None:
    """50 clients, half closing cleanly and half dropping the TCP connection, half of each
    through nginx: Redis has a subscription for each, then none, and none to the group."""
    count = 50
    assert subscriptions_settle_at(redis_client, 0) == (0, 0)
    with contextlib.ExitStack() as sockets:
        feeds = [
            sockets.enter_context(
                open_socket(ws_url(stack, "direct" if n % 2 else "hybrid", "/ws/live/"))
            )
            for n in range(count)
        ]
        consumers, group = subscriptions(redis_client)
        assert consumers == count
        assert group >= 1
        for n, feed in enumerate(feeds):
            if n % 4 < 2:
                feed.close()
            else:
                # No closing handshake: the server only sees the connection end.
                feed.socket.shutdown(socket.SHUT_RDWR)
                feed.socket.close()
    # The group's subscriptions go with the last member of each process.
    assert subscriptions_settle_at(redis_client, 0) == (0, 0)


# showcase:end
def test_a_handshake_without_origin_is_refused(stack: Stack) -> None:
    url = ws_url(stack, "direct", "/ws/echo/")
    with (
        pytest.raises(InvalidStatus) as refused,
        connect(url, proxy=None, open_timeout=OPEN_TIMEOUT),
    ):
        pass
    assert refused.value.response.status_code == 403
