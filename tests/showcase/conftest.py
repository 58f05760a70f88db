# showcase: this file goes with the showcase
"""The bus on real parts for the producer and bridge tests: an ASGI server on the module's
private Redis (`redis_url`, tests/conftest.py), and a live WebSocket client of that server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin

from lab import servers

OPEN_TIMEOUT = 10.0


@pytest.fixture(scope="module")
def bus_env(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Return the environment of a process on the bus: the tests' own, cleaned, plus Redis."""
    env = {
        name: value for name, value in os.environ.items() if name not in servers.INHERITED_SETTINGS
    }
    env.update({"REDIS_URL": redis_url, "DJANGO_VAR_DIR": str(tmp_path_factory.mktemp("var"))})
    return env


@pytest.fixture(scope="module")
def asgi_server(
    bus_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[servers.Server]:
    """Run asgi_uvicorn with two workers on the bus's Redis."""
    env = {**bus_env, "WEB_CONCURRENCY": "2"}
    workdir: Path = tmp_path_factory.mktemp("asgi")
    with servers.start_mode("asgi_uvicorn", env=env, workdir=workdir) as server:
        assert server.wait_workers_ready()
        yield server
    assert "Traceback" not in server.output()


@pytest.fixture
def live_feed(asgi_server: servers.Server) -> Iterator[ClientConnection]:
    """Yield a WebSocket client of /ws/live/ on the ASGI server, subscribed."""
    address = f"{servers.HOST}:{asgi_server.port}"
    with connect(
        f"ws://{address}/ws/live/",
        origin=Origin(f"http://{address}"),
        proxy=None,
        open_timeout=OPEN_TIMEOUT,
        close_timeout=OPEN_TIMEOUT,
    ) as feed:
        yield feed
