"""`python -m lab.cluster`: build the cluster, measure it, break it, report, tear it down.

    python -m lab.cluster                      # 3 app hosts; report in var/cluster-results/
    python -m lab.cluster --quick              # 2 app hosts, short runs
    python -m lab.cluster --cleanup            # remove what a crashed run left behind

Needs root (network namespaces), nginx, PostgreSQL 15, redis-server and wrk.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import shutil
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from lab.cluster import live, report, scenarios
from lab.cluster.cluster import DEFAULT_PREFIX, DEFAULT_SUBNET, Cluster, ClusterError, Layout
from lab.cluster.cluster import cleanup as remove_leftovers

DESCRIPTION = "Build a cluster of network namespaces, measure it, break it, tear it down."


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lab.cluster", description=DESCRIPTION)
    parser.add_argument("--out", type=Path, default=Path("var/cluster-results"), help="report dir")
    parser.add_argument("--hosts", type=int, default=3, choices=(2, 3), help="app hosts")
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--fault-duration", type=float, default=10.0, help="seconds per fault run")
    parser.add_argument(
        "--live-clients", type=int, default=100, help="WebSocket and SSE clients each (fan-out)"
    )
    parser.add_argument("--live-events", type=int, default=20, help="events per fan-out run")
    parser.add_argument(
        "--stream-clients", type=int, default=20, help="streams of each transport during a kill"
    )
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="namespace name prefix")
    parser.add_argument("--subnet", default=DEFAULT_SUBNET, help="the private test network")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--quick", action="store_true", help="2 app hosts, short runs")
    parser.add_argument(
        "--cleanup", action="store_true", help="remove a crashed run's namespaces and files"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.hosts, args.duration, args.fault_duration = 2, 2, 6.0
        args.live_clients, args.live_events, args.stream_clients = 50, 10, 10
    return args


def interrupt(signum: int, frame: FrameType | None) -> None:
    """Turn SIGTERM and SIGHUP into KeyboardInterrupt: the cluster's exit tears it down."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def measure(cluster: Cluster, args: argparse.Namespace) -> dict[str, Any]:
    """Run every scenario on `cluster`; return the results."""
    fault_at = min(3.0, args.fault_duration / 3)
    print(f"throughput with 1..{args.hosts} app hosts ...", flush=True)
    throughput = scenarios.throughput(
        cluster,
        range(1, args.hosts + 1),
        duration_s=args.duration,
        connections=args.connections,
    )
    faults: dict[str, Any] = {}
    print("fault: app host killed ...", flush=True)
    faults["app_host_killed"] = scenarios.app_host_killed(cluster, args.fault_duration, fault_at)
    print("fault: app host's link down ...", flush=True)
    # Requests caught on the cut host wait out nginx's proxy_read_timeout (5 s): the run must
    # outlast it to see the recovery.
    cut_duration = max(args.fault_duration, fault_at + 8.0)
    faults["app_host_cut"] = scenarios.app_host_cut(cluster, cut_duration, fault_at)
    print("fault: PostgreSQL restarted ...", flush=True)
    faults["postgres_restarted"] = scenarios.postgres_restarted(
        cluster, args.fault_duration, fault_at
    )
    print("fault: writes while an app host is killed ...", flush=True)
    faults["writes_during_kill"] = scenarios.writes_during_kill(
        cluster, min(args.fault_duration, 6.0), min(fault_at, 2.0)
    )
    return {
        "setup": cluster.describe(),
        "throughput": throughput,
        "faults": faults,
        "live": measure_live(cluster, args, fault_at),
    }


def measure_live(cluster: Cluster, args: argparse.Namespace, fault_at: float) -> dict[str, Any]:
    """Fan out events over 1..N app hosts, then kill a host under held streams; or say why
    not (a project without the showcase has no live feed)."""
    reason = live.missing_reason()
    if reason:
        print(f"live streams: {reason}", flush=True)
        return {"skipped": reason}
    fanout = []
    for hosts in range(1, args.hosts + 1):
        print(f"fan-out with {hosts} app host(s) ...", flush=True)
        cluster.rebalance(hosts)
        fanout.append(live.fanout(cluster, args.live_clients, args.live_events))
    cluster.rebalance(cluster.layout.app_hosts)
    print("fault: app host killed under live streams ...", flush=True)
    # SSE clients wait the stream's retry: (3 s) before reconnecting: the run outlasts it.
    streams = live.streams_during_kill(
        cluster, args.stream_clients, max(args.fault_duration, fault_at + 6.0), fault_at
    )
    scenarios.wait_all_hosts_serving(cluster)
    return {"fanout": fanout, "streams_during_kill": streams}


def findings(results: dict[str, Any]) -> list[str]:
    """Return what the figures say, in sentences (no judgement the numbers do not carry)."""
    said = []
    rows = results["throughput"]
    for page in dict.fromkeys(row["page"] for row in rows):
        rates = [f"{row['hosts']}: {row['rps_2xx']:.0f}" for row in rows if row["page"] == page]
        said.append(f"{page} 2xx req/s by app host count: {', '.join(rates)} (same CPU budget).")
    for row in rows:
        if row["non_2xx"] or row["socket_errors"]:
            said.append(
                f"{row['page']} with {row['hosts']} app host(s): {row['non_2xx']} non-2xx and "
                f"{row['socket_errors']} socket errors under wrk; see logs/nginx-error.log and "
                "logs/app*.log."
            )
    faults = results["faults"]
    for name in ("app_host_killed", "app_host_cut"):
        fault = faults[name]
        carried = recovery(fault["recovered_after_s"], "the fault")
        said.append(
            f"{report.FAULT_TITLES[name]}: {fault['failed']} of {fault['requests']} requests "
            f"failed; survivors carried the load {carried}; "
            f"answers after it came from {sorted(fault['upstreams_after'])}."
        )
    pg = faults["postgres_restarted"]
    statuses = sorted({s for counts in pg["statuses_by_path"].values() for s in counts})
    said.append(
        f"PostgreSQL down {pg['down_s']} s under load: statuses seen {statuses}; "
        f"{pg['failed_with_retry_after']} of {pg['failed']} failures carried Retry-After, "
        f"{pg['failed_with_traceback']} a traceback; service back "
        f"{recovery(pg['recovered_after_s'], 'PostgreSQL accepted again')}."
    )
    if pg["failed"] and pg["failed_with_retry_after"] < pg["failed"]:
        said.append(
            f"{pg['failed'] - pg['failed_with_retry_after']} failed answers during the outage "
            "carried no Retry-After: not the app's 503 (apps/dualserve/errors.py) but another "
            "status (a 500, or the balancer's own 502/504): see the statuses per page."
        )
    writes = faults["writes_during_kill"]
    said.append(
        f"Acknowledged writes missing after an app host was killed: "
        f"{len(writes['acknowledged_missing'])} of {writes['acknowledged']}."
    )
    return said + live_findings(results.get("live", {}))


def live_findings(figures: dict[str, Any]) -> list[str]:
    """Return what the live-stream figures say (or why there are none)."""
    if "skipped" in figures:
        return [f"Live streams: {figures['skipped']}."]
    said = []
    for run in figures.get("fanout", []):
        parts = [
            f"{name} {t['received']}/{t['expected']} (p50 {t['p50_ms']} ms, p99 {t['p99_ms']} ms)"
            for name, t in run["transports"].items()
        ]
        hosts = sorted({h for t in run["transports"].values() for h in t["per_host"]})
        said.append(
            f"Fan-out over {run['app_hosts']} app host(s), clients on {len(hosts)} host(s), "
            f"{run['redis_group_subscriptions']} Redis subscription(s) to the group: "
            f"delivered {'; '.join(parts)}."
        )
    streams = figures.get("streams_during_kill")
    if streams:
        for name, t in streams["transports"].items():
            said.append(
                f"App host killed under {t['clients']} {name} streams: {t['cut']} cut, "
                f"{t['reconnected']} reconnected (p50 {t['reconnect_p50_s']} s, max "
                f"{t['reconnect_max_s']} s), {t['missed_events_by_cut_clients']} events missed "
                f"by the cut clients (at most {t['missed_per_cut_client_max']} each), "
                f"{t['missed_events_by_others']} by the others."
            )
    return said


def keep_logs(cluster: Cluster, destination: Path) -> None:
    """Copy every process's output and nginx's error log out of the cluster's temporary dir."""
    destination.mkdir(parents=True, exist_ok=True)
    for log in [*cluster.directory.glob("*.log"), cluster.balancer_dir / "error.log"]:
        if log.exists():
            shutil.copyfile(log, destination / log.name.replace("error.log", "nginx-error.log"))


def recovery(seconds: float | None, after: str) -> str:
    """Return "N s after <after>", or that the run ended first."""
    return "not within the run" if seconds is None else f"{seconds} s after {after}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cleanup:
        try:
            names, directories = remove_leftovers(args.prefix)
        except (ClusterError, RuntimeError) as exc:
            print(f"cleanup failed: {exc}", file=sys.stderr)
            return 1
        print(f"removed namespaces: {names or 'none'}; directories: {directories or 'none'}")
        return 0
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupt)
    layout = Layout(
        app_hosts=args.hosts, prefix=args.prefix, subnet=args.subnet, pin=not args.no_pin
    )
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    try:
        with Cluster(layout) as cluster:
            print(f"cluster up: {len(layout.roles())} hosts in {cluster.directory}", flush=True)
            try:
                results = measure(cluster, args)
            finally:
                keep_logs(cluster, args.out / "logs")
    except ClusterError as exc:
        print(f"lab.cluster: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: the cluster is torn down", file=sys.stderr)
        return 130
    results["command"] = shlex.join(["python", "-m", "lab.cluster", *(argv or sys.argv[1:])])
    results["started"] = started
    results["findings"] = findings(results)
    written = report.write(args.out, results)
    print(f"report: {', '.join(str(args.out / name) for name in written)}")
    for line in results["findings"]:
        print(f"- {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
