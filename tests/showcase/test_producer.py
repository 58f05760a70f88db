# showcase: this file goes with the showcase
"""`python -m apps.showcase.producer`, run for real: its events reach a WebSocket client of an
ASGI server through Redis."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from websockets.sync.client import ClientConnection

from lab import servers

pytestmark = [pytest.mark.serving, pytest.mark.slow]

RECEIVE_TIMEOUT = 10.0


def producer(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run the producer to its end (bounded); return what it did."""
    return subprocess.run(
        [sys.executable, "-m", "apps.showcase.producer", *args],
        cwd=servers.REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_every_event_reaches_a_live_client(
    bus_env: dict[str, str], live_feed: ClientConnection
) -> None:
    argv = [sys.executable, "-m", "apps.showcase.producer", "--count", "5", "--interval", "200"]
    process = subprocess.Popen(
        [*argv, "--text", "beat"],
        cwd=servers.REPO_ROOT,
        env=bus_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        events = []
        for _ in range(5):
            events.append(json.loads(live_feed.recv(RECEIVE_TIMEOUT)))
            # From publish to a client, for the record: each event carries its time.
            events[-1]["delay_ms"] = round((time.time() - events[-1]["at"]) * 1000, 1)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    assert [(event["n"], event["text"]) for event in events] == [
        (n, f"beat #{n}") for n in range(1, 6)
    ]
    assert {event["source"] for event in events} == {"producer"}
    assert len({event["id"] for event in events}) == 5
    assert "done, 5 events published" in stderr
    print("producer -> client delays (ms):", [event["delay_ms"] for event in events])


def test_without_redis_it_refuses_to_run(bus_env: dict[str, str]) -> None:
    env = {name: value for name, value in bus_env.items() if name != "REDIS_URL"}
    done = producer(env, "--count", "1")
    assert done.returncode == 2
    assert "REDIS_URL is not set" in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--count", "0"], "0 is not between 1 and 1000000"),
        (["--interval", "x"], "'x' is not an integer"),
        (["--text", "x" * 1000], "--text: text must be"),
    ],
)
def test_bad_arguments_are_refused(bus_env: dict[str, str], args: list[str], message: str) -> None:
    done = producer(bus_env, *args)
    assert done.returncode == 2
    assert message in done.stderr
