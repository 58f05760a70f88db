"""lab.cluster for real: namespaces, PostgreSQL, Redis, app hosts and nginx, built and removed.

Each test builds its own small cluster (2 app hosts) under a prefix and a network of its own,
so it never meets a `python -m lab.cluster` run. Network namespaces need root: elsewhere these
tests skip, and under CI=true they fail.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from lab.cluster import (
    # showcase:begin
    live,
    # showcase:end
    netns,
    scenarios,
)
from lab.cluster.cluster import Cluster, ClusterError, Layout, cleanup, leftovers

pytestmark = [pytest.mark.serving, pytest.mark.slow]

PREFIX = "dstest"
SUBNET = "10.203.91.0/24"


@pytest.fixture
def layout() -> Iterator[Layout]:
    """Return a 2-app-host layout where namespaces can be built; skip (CI: fail) elsewhere."""
    reason = netns.unusable_reason()
    if reason:
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(f"CI=true and {reason}")
        pytest.skip(reason)
    chosen = Layout(app_hosts=2, prefix=PREFIX, subnet=SUBNET)
    yield chosen
    # A failed test must not leave the next one a namespace to refuse.
    cleanup(PREFIX)


def links_named(prefix: str) -> list[str]:
    """Return the root namespace's links whose name starts with `prefix` (veth or bridge)."""
    listed = subprocess.run(
        ["ip", "-o", "link", "show"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in listed.splitlines()]
    return [name for name in names if name.startswith(prefix) or name.startswith("v-")]


def alive(pid: int) -> bool:
    """Return whether a process with `pid` exists and is not a zombie."""
    return not netns.zombie(pid)


def test_cluster_starts_serves_from_every_host_and_tears_down_without_a_trace(
    layout: Layout,
) -> None:
    links_before = links_named(PREFIX)
    with Cluster(layout) as cluster:
        directory = cluster.directory
        pids = [process.pid for process in cluster.processes.values()]
        assert set(layout.namespaces()) <= set(netns.namespaces())
        answers = [cluster.get(path) for path in ("/sync/hello/", "/async/hello/") * 4]
        ready = cluster.get("/readyz")
    assert [answer.status for answer in answers] == [200] * 8
    assert {answer.upstream_host() for answer in answers} == {"10.203.91.11", "10.203.91.12"}
    assert ready.status == 200
    assert [name for name in netns.namespaces() if name.startswith(f"{PREFIX}-")] == []
    assert links_named(PREFIX) == links_before
    assert [pid for pid in pids if alive(pid)] == []
    assert not directory.exists()
    assert leftovers(PREFIX) == ([], [])


def test_cluster_refuses_to_start_over_a_leftover_namespace_until_cleanup(
    layout: Layout,
) -> None:
    leftover = f"{PREFIX}-lb"
    netns.ip_command("netns", "add", leftover)
    with pytest.raises(ClusterError, match=f"{leftover}.*--cleanup"), Cluster(layout):
        pass
    assert leftover in netns.namespaces()
    assert leftovers(PREFIX) == ([leftover], [])

    removed, _ = cleanup(PREFIX)

    assert removed == [leftover]
    assert leftover not in netns.namespaces()


# showcase:begin
def test_an_event_published_through_the_balancer_reaches_streams_held_by_both_hosts(
    layout: Layout,
) -> None:
    with Cluster(layout) as cluster:
        hosts = {cluster.address(role) for role in layout.app_roles()}
        # Round robin over the two ASGI servers: the clients of each transport land on both.
        figures = live.fanout(cluster, clients=4, events=1, interval_s=0.1)
    websocket, sse = figures["transports"]["websocket"], figures["transports"]["sse"]
    assert figures["publish"]["statuses"] == {"202": 1}, figures
    # A WebSocket client on one host and an SSE client on the other, whichever way round.
    assert set(websocket["per_host"]) | set(sse["per_host"]) == hosts, figures
    assert any(a != b for a in websocket["per_host"] for b in sse["per_host"]), figures
    assert figures["redis_group_subscriptions"] == 2, figures
    # Every client got the event, the ones whose host did not serve the POST included.
    assert (websocket["subscribed"], websocket["received"]) == (4, 4), figures
    assert (sse["subscribed"], sse["received"]) == (4, 4), figures


# showcase:end


def test_no_acknowledged_write_is_lost_when_an_app_host_is_killed(layout: Layout) -> None:
    with Cluster(layout) as cluster:
        writes = scenarios.writes_during_kill(cluster, duration_s=5.0, fault_at=1.5)
    # The surviving host took writes after the kill, and every 2xx is a row.
    assert writes["acknowledged_after_kill"] > 0, writes
    assert writes["acknowledged_missing"] == [], writes
