# showcase: this file goes with the showcase
"""`python -m apps.showcase.zmq_bridge`, run for real: what a ZeroMQ PUSH socket sends reaches a
WebSocket client of an ASGI server through Redis; what it cannot publish, it counts and drops."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from websockets.sync.client import ClientConnection

from lab import servers

pytestmark = [pytest.mark.serving, pytest.mark.slow]

RECEIVE_TIMEOUT = 10.0
MAX_BYTES = 1024
READY = r"zmq_bridge: pulling on (tcp://\S+),"


class Bridge:
    """The bridge in a process of its own, its output in a file."""

    def __init__(self, env: dict[str, str], log_path: Path, *args: str) -> None:
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "apps.showcase.zmq_bridge", *args],
                cwd=servers.REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = RECEIVE_TIMEOUT) -> re.Match[str]:
        """Return the first match of `pattern` in the output; fail after `timeout` s."""
        deadline = time.monotonic() + timeout
        while (found := re.search(pattern, self.output())) is None:
            assert self.process.poll() is None, self.output()
            assert time.monotonic() < deadline, f"no {pattern!r} in:\n{self.output()}"
            time.sleep(0.05)
        return found

    def stop(self) -> int:
        """SIGTERM, by PID; SIGKILL after 10 s. Return the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()


@pytest.fixture
def bridge(bus_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[Bridge, str]]:
    """Run the bridge on a free loopback port; yield it and its endpoint once it listens."""
    endpoint = f"tcp://{servers.HOST}:{servers.free_port()}"
    running = Bridge(
        bus_env, tmp_path / "bridge.log", "--bind", endpoint, "--max-bytes", str(MAX_BYTES)
    )
    try:
        assert running.wait_for(READY)[1] == endpoint
        yield running, endpoint
    finally:
        running.stop()


@pytest.fixture
def push() -> Iterator[zmq.Socket[bytes]]:
    context = zmq.Context()
    socket = context.socket(zmq.PUSH)
    socket.setsockopt(zmq.LINGER, 2000)
    socket.setsockopt(zmq.SNDTIMEO, 5000)
    try:
        yield socket
    finally:
        socket.close()
        context.term()


def test_pushed_events_reach_a_live_client_and_bad_ones_are_dropped(
    bridge: tuple[Bridge, str], push: zmq.Socket[bytes], live_feed: ClientConnection
) -> None:
    running, endpoint = bridge
    push.connect(endpoint)
    push.send(b"{not json")
    push.send(b"[1, 2]")
    push.send(b"\xff\xfe")
    oversized = json.dumps({"text": "x" * MAX_BYTES}).encode()
    push.send(oversized)
    push.send_multipart([b"{}", b"{}"])
    # Valid JSON the channel layer cannot carry: msgpack has no integer beyond 64 bits.
    push.send(b'{"n": 1180591620717411303424}')
    event = {"kind": "sensor", "text": "from zmq", "reading": [1.5, None, True]}
    push.send(json.dumps(event).encode())
    push.send(json.dumps({"id": "mine", "source": "a C program", "text": "keeps its own"}).encode())

    first = json.loads(live_feed.recv(RECEIVE_TIMEOUT))
    assert first == {**event, "id": first["id"], "source": "zmq"}
    assert len(first["id"]) == 32
    second = json.loads(live_feed.recv(RECEIVE_TIMEOUT))
    assert second == {"id": "mine", "source": "a C program", "text": "keeps its own"}

    assert running.stop() == 0, running.output()
    output = running.output()
    assert "dropped message 1: JSON body is malformed" in output
    assert "dropped message 2: JSON body must be an object, got list" in output
    assert "dropped message 3: JSON body is not UTF-8" in output
    assert f"dropped message 4: {len(oversized)} bytes, over the limit of {MAX_BYTES}" in output
    assert "dropped message 5: 2 frames, expected 1" in output
    assert "could not publish message 6: OverflowError" in output
    assert "received 8, published 2, dropped 5, failed 1" in output
    assert "Traceback" not in output


def test_without_redis_it_refuses_to_run(bus_env: dict[str, str], tmp_path: Path) -> None:
    env = {name: value for name, value in bus_env.items() if name != "REDIS_URL"}
    running = Bridge(env, tmp_path / "bridge.log", "--bind", "tcp://127.0.0.1:1")
    assert running.process.wait(60) == 2
    assert "REDIS_URL is not set" in running.output()


def test_an_endpoint_it_cannot_bind_is_said_plainly(
    bus_env: dict[str, str], bridge: tuple[Bridge, str], tmp_path: Path
) -> None:
    _, endpoint = bridge
    second = Bridge(bus_env, tmp_path / "second.log", "--bind", endpoint)
    assert second.process.wait(60) == 2
    assert f"cannot bind {endpoint}: Address already in use" in second.output()
