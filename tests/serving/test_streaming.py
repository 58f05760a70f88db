"""A sync StreamingHttpResponse under ASGI leaves as it is produced, on real servers.

Django's own ASGI handler consumes a sync iterator whole before sending its first byte;
project.asgi's handler sends each chunk when the iterator yields it (apps/dualserve/asgi.py).
Both ASGI modes are checked: the events arrive spread out as the view sends them, and a
large body goes through a worker without the worker holding it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.servers import ASGI_MODES, Server, start_mode
from tests.serving.conftest import Env, client_for
from tests.serving.streaming_app import APP

pytestmark = pytest.mark.serving

# showcase:begin
EVENT_NUMBER = re.compile(rb'"event":([0-9]+),')
# The showcase's sync stream: the first event at once, then one every 500 ms (1.5 s in all).
SYNC_STREAM = "/sync/stream/?events=4&interval=500"
STREAM_SPREAD = 1.5


def event_arrivals(server: Server, target: str) -> tuple[float, dict[int, float]]:
    """GET an event stream; return when the request left and when each event arrived."""
    arrivals: dict[int, float] = {}
    seen = b""
    with client_for(server) as client:
        sent = time.monotonic()
        with client.stream("GET", target, headers={"Accept-Encoding": "identity"}) as response:
            assert response.status_code == 200
            for chunk in response.iter_raw():
                now = time.monotonic()
                seen += chunk
                for number in EVENT_NUMBER.findall(seen):
                    arrivals.setdefault(int(number), now)
    return sent, arrivals


@pytest.mark.parametrize("mode_server", ASGI_MODES, indirect=True)
def test_sync_stream_events_leave_as_they_are_produced(mode_server: Server) -> None:
    """The first event arrives long before the last: the spread the view puts between them
    survives (a loaded machine only widens it, so half of it is the bound). Buffered, all
    four arrived together after the whole 1.5 s."""
    sent, arrivals = event_arrivals(mode_server, SYNC_STREAM)
    print(
        f"{mode_server.mode}: events arrived at "
        + ", ".join(f"{arrivals[number] - sent:.2f}" for number in sorted(arrivals))
        + " s"
    )
    assert sorted(arrivals) == [1, 2, 3, 4]
    assert arrivals[1] <= arrivals[2] <= arrivals[3] <= arrivals[4]
    assert arrivals[4] - arrivals[1] >= STREAM_SPREAD / 2
    # The first one did not wait for the stream to be produced.
    assert arrivals[1] - sent < arrivals[4] - sent - STREAM_SPREAD / 2
    assert "must consume synchronous iterators" not in mode_server.output()


# showcase:end

# The large body: big enough that holding it shows (the worker's baseline is ~60-100 MiB),
# sent in 64 KiB chunks by tests.dualserve.views.sync_large.
LARGE_MIB = 256
# Streaming adds a few chunks in flight plus the server's write buffers; buffering adds the
# whole body. Far from both.
RSS_GROWTH_MIB = 64


@pytest.fixture(scope="module", params=ASGI_MODES)
def test_views_server(
    request: pytest.FixtureRequest, serving_env: Env, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """Return an ASGI mode serving tests.dualserve.urls (one worker) through project.asgi."""
    mode: str = request.param
    workdir = tmp_path_factory.mktemp(f"{mode}-streaming")
    with start_mode(mode, env=serving_env, workdir=workdir, extra_args=[APP]) as server:
        yield server


def worker_of(server: Server) -> int:
    """Return the PID of the server's only worker (a child of gunicorn's master)."""
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def memory_kib(pid: int) -> dict[str, int]:
    """Return VmRSS (now) and VmHWM (the peak so far) of `pid`, in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return {
        name: int(match[1])
        for name in ("VmRSS", "VmHWM")
        if (match := re.search(rf"^{name}:\s+(\d+) kB", status, re.MULTILINE))
    }


def read_and_discard(server: Server, mib: int) -> int:
    """GET mib MiB from the sync large view, dropping each chunk; return the bytes read."""
    received = 0
    with (
        client_for(server, timeout=120) as client,
        client.stream(
            "GET", f"/sync/large/?mib={mib}", headers={"Accept-Encoding": "identity"}
        ) as response,
    ):
        assert response.status_code == 200
        for chunk in response.iter_raw():
            received += len(chunk)
    return received


@pytest.mark.slow
def test_a_large_sync_stream_leaves_the_worker_memory_flat(test_views_server: Server) -> None:
    worker = worker_of(test_views_server)
    # The first request starts the request thread and the ORM; its peak is the baseline.
    assert read_and_discard(test_views_server, 8) == 8 * 1024 * 1024
    before = memory_kib(worker)
    started = time.monotonic()
    assert read_and_discard(test_views_server, LARGE_MIB) == LARGE_MIB * 1024 * 1024
    seconds = time.monotonic() - started
    after = memory_kib(worker)
    # The peak catches a body held and freed in between, which VmRSS afterwards may not.
    growth_mib = (after["VmHWM"] - before["VmHWM"]) / 1024
    print(
        f"{test_views_server.mode}: worker peak RSS +{growth_mib:.1f} MiB for {LARGE_MIB} MiB "
        f"({LARGE_MIB / seconds:.0f} MiB/s, a thread hop per 64 KiB chunk)"
    )
    assert growth_mib < RSS_GROWTH_MIB, (before, after)
    assert "must consume synchronous iterators" not in test_views_server.output()
