"""What the cluster measures: throughput per host count, and four faults under load."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

from lab.bench import wrk
from lab.cluster import balancer, netns, probe
from lab.cluster.cluster import BALANCER_PORT, Cluster, ClusterError, taskset

# DB-free pages: tests.serving's hello pair, and the admin's login form (a GET without a
# session cookie reads no table: the report's PostgreSQL run shows it answering throughout).
THROUGHPUT_PAGES = ("/sync/hello/", "/async/hello/", "/admin/login/")
FAILOVER_PATHS = ("/sync/hello/", "/async/hello/")
# DB-touching pages, and a DB-free one beside them to show what the outage reaches.
DATABASE_PATHS = ("/sync/groups/", "/async/groups/", "/admin/login/")
WRITE_PATH = "/sync/groups/"
WARMUP_S = 1


def run_wrk(cluster: Cluster, binary: str, path: str, duration_s: int, connections: int) -> Any:
    """Run wrk from the client host against `path` through the balancer; return its result."""
    script = cluster.directory / "wrk.lua"
    script.write_text(wrk.script(wrk.Request(path=path)), encoding="utf-8")
    argv = [
        *netns.exec_prefix(cluster.namespace("client")),
        *taskset(cluster.other_cpus),
        *wrk.command(
            binary,
            f"http://{cluster.balancer_address}:{BALANCER_PORT}{path}",
            connections=connections,
            duration_s=duration_s,
            threads=2,
            script_path=str(script),
            timeout_s=5,
        ),
    ]
    done = subprocess.run(  # noqa: S603  (wrk with our script)
        argv, capture_output=True, text=True, timeout=duration_s + 60, check=False
    )
    if done.returncode != 0:
        raise ClusterError(f"wrk failed: {done.stderr.strip()}")
    return wrk.parse(done.stdout)


def throughput(
    cluster: Cluster,
    host_counts: Sequence[int],
    *,
    pages: Sequence[str] = THROUGHPUT_PAGES,
    duration_s: int = 5,
    connections: int = 32,
) -> list[dict[str, Any]]:
    """Return wrk's figures for each page with 1..N app hosts behind the balancer."""
    binary = wrk.find_wrk()
    if binary is None:
        raise ClusterError(wrk.INSTALL_HINT)
    rows = []
    for hosts in host_counts:
        cluster.rebalance(hosts)
        for page in pages:
            run_wrk(cluster, binary, page, WARMUP_S, connections)
            time.sleep(1.2)  # nginx flushes its access log every second
            cluster.access_log_since_mark()
            result = run_wrk(cluster, binary, page, duration_s, connections)
            time.sleep(1.2)
            spread = balancer.upstream_counts(cluster.access_log_since_mark())
            answered_2xx = 1 - result.errors.status / max(result.requests, 1)
            rows.append(
                {
                    "hosts": hosts,
                    "page": page,
                    "rps": round(result.rps, 1),
                    # wrk counts every answer: a burst of instant 502s inflates rps.
                    "rps_2xx": round(result.rps * answered_2xx, 1),
                    "requests": result.requests,
                    "latency_ms": result.latency_ms,
                    "non_2xx": result.errors.status,
                    "socket_errors": result.errors.socket,
                    "spread": dict(sorted(spread.items())),
                }
            )
    cluster.rebalance(cluster.layout.app_hosts)
    return rows


def load(
    cluster: Cluster,
    paths: Sequence[str],
    duration_s: float,
    events: Sequence[tuple[float, str, Callable[[], Any]]],
    *,
    method: str = "GET",
    concurrency: int = 8,
    max_requests: int = 50_000,
) -> probe.Run:
    """Run the probe client from the client host through the balancer, with `events`."""
    return probe.run_load(
        cluster.namespace("client"),
        cluster.balancer_address,
        BALANCER_PORT,
        paths,
        method=method,
        concurrency=concurrency,
        duration_s=duration_s,
        max_requests=max_requests,
        events=events,
    )


def wait_all_hosts_serving(cluster: Cluster, timeout: float = 30.0) -> None:
    """Return once every app host answers through the balancer again (fail_timeout passed)."""
    expected = {cluster.address(role) for role in cluster.layout.app_roles()}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = {cluster.get("/sync/hello/", timeout=5).upstream_host() for _ in range(12)}
        seen |= {cluster.get("/async/hello/", timeout=5).upstream_host() for _ in range(12)}
        if seen == expected:
            return
        time.sleep(0.5)
    raise ClusterError(f"not every app host serves again within {timeout:g} s")


def app_host_killed(cluster: Cluster, duration_s: float, fault_at: float) -> dict[str, Any]:
    """SIGKILL both servers of the last app host under load; restart it afterwards."""
    victim = cluster.layout.app_hosts
    kill = (fault_at, "kill", lambda: cluster.kill_app_host(victim))
    run = load(cluster, FAILOVER_PATHS, duration_s, [kill])
    cluster.restart_app_host(victim)
    wait_all_hosts_serving(cluster)
    return {
        **probe.analyse(run, "kill"),
        "victim": cluster.address(f"app{victim}"),
        "buckets": probe.buckets(run),
    }


def app_host_cut(cluster: Cluster, duration_s: float, fault_at: float) -> dict[str, Any]:
    """Take the last app host's link down under load (its servers keep running); restore it."""
    victim = cluster.layout.app_hosts
    try:
        run = load(
            cluster,
            FAILOVER_PATHS,
            duration_s,
            [(fault_at, "cut", lambda: cluster.cut_app_host(victim, cut=True))],
        )
    finally:
        cluster.cut_app_host(victim, cut=False)
    wait_all_hosts_serving(cluster)
    return {
        **probe.analyse(run, "cut"),
        "victim": cluster.address(f"app{victim}"),
        "buckets": probe.buckets(run),
    }


def postgres_restarted(
    cluster: Cluster, duration_s: float, fault_at: float, down_s: float = 2.0
) -> dict[str, Any]:
    """Stop PostgreSQL (fast shutdown) under load on DB pages, keep it down `down_s`, restart."""
    restart = (fault_at, "postgres_stop", lambda: cluster.restart_postgres(down_s))
    run = load(cluster, DATABASE_PATHS, duration_s, [restart])
    # "postgres_stop_done" is when it accepted queries again.
    run.events["postgres_back"] = run.events["postgres_stop_done"]
    figures = probe.analyse(run, "postgres_stop", back="postgres_back")
    failed = [outcome for outcome in run.outcomes if not outcome.ok]
    per_path = {
        path: probe.status_counts([o for o in run.outcomes if o.path == path])
        for path in DATABASE_PATHS
    }
    bodies: dict[str, str] = {}
    for outcome in failed:
        bodies.setdefault(str(outcome.status), outcome.body)
    return {
        **figures,
        "down_s": down_s,
        "statuses_by_path": per_path,
        "failed_with_retry_after": sum(bool(outcome.retry_after) for outcome in failed),
        "failed_with_traceback": sum(outcome.traceback for outcome in failed),
        "failed_body_samples": bodies,
        "slowest_s": round(max((o.end - o.start for o in run.outcomes), default=0.0), 2),
        "buckets": probe.buckets(run),
    }


def writes_during_kill(
    cluster: Cluster, duration_s: float, fault_at: float, max_requests: int = 2_000
) -> dict[str, Any]:
    """POST unique groups through the balancer while an app host is killed; then check that
    every acknowledged (2xx) write is in the database. The killed host is restarted after."""
    victim = cluster.layout.app_hosts
    run = load(
        cluster,
        (WRITE_PATH,),
        duration_s,
        [(fault_at, "kill", lambda: cluster.kill_app_host(victim))],
        method="POST",
        concurrency=4,
        max_requests=max_requests,
    )
    cluster.restart_app_host(victim)
    wait_all_hosts_serving(cluster)
    acknowledged = {outcome.name for outcome in run.outcomes if outcome.ok}
    stored = {row[0] for row in cluster.sql("SELECT name FROM auth_group")}
    unacknowledged = {outcome.name for outcome in run.outcomes if not outcome.ok}
    kill_at = run.events["kill"]
    return {
        "requests": len(run.outcomes),
        "acknowledged": len(acknowledged),
        "acknowledged_after_kill": sum(o.ok and o.start > kill_at for o in run.outcomes),
        "acknowledged_missing": sorted(acknowledged - stored),
        "failed_by_status": probe.status_counts([o for o in run.outcomes if not o.ok]),
        "failed_but_stored": len(unacknowledged & stored),
        "events": {name: round(offset, 3) for name, offset in run.events.items()},
        "victim": cluster.address(f"app{victim}"),
    }
