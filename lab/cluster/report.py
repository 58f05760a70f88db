"""Write the cluster run's results.json, report.md and cluster.png."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: render to files, never open a window

import matplotlib.pyplot as plt

from lab.bench.charts import save

FAULT_TITLES = {
    "app_host_killed": "App host killed (SIGKILL)",
    "app_host_cut": "App host's link down",
    "postgres_restarted": "PostgreSQL restarted",
}
FAULT_EVENTS = {
    "app_host_killed": ("kill", None),
    "app_host_cut": ("cut", None),
    "postgres_restarted": ("postgres_stop", "postgres_back"),
}
TWO_CORES = (
    "Every host shares this machine's CPUs. The app servers of all hosts are pinned to ONE "
    "CPU (the others run nginx, wrk, PostgreSQL and Redis), so 1, 2 and 3 app hosts get the "
    "same CPU budget: more hosts spread the same work, they cannot add throughput. What this "
    "run shows is spread and failover; throughput scaling needs hosts with CPUs of their own."
)


def write(out: Path, results: dict[str, Any]) -> list[str]:
    """Write results.json, cluster.png and report.md into `out`; return the file names."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    chart = chart_file(out, results)
    (out / "report.md").write_text(markdown(results, chart), encoding="utf-8")
    return ["results.json", chart, "report.md"]


def chart_file(out: Path, results: dict[str, Any]) -> str:
    """Draw throughput per host count and each fault's 100 ms timeline into cluster.png."""
    faults = [name for name in FAULT_TITLES if name in results.get("faults", {})]
    fanout = results.get("live", {}).get("fanout", [])
    panels = 1 + len(faults) + bool(fanout)
    figure, axes = plt.subplots(panels, 1, figsize=(9, 3.2 * panels))
    axes = list(axes) if panels > 1 else [axes]
    rows = results.get("throughput", [])
    pages = sorted({row["page"] for row in rows}, key=[row["page"] for row in rows].index)
    counts = sorted({row["hosts"] for row in rows})
    width = 0.8 / max(len(counts), 1)
    for offset, hosts in enumerate(counts):
        heights = [
            next((r["rps_2xx"] for r in rows if r["hosts"] == hosts and r["page"] == page), 0)
            for page in pages
        ]
        positions = [index + offset * width for index in range(len(pages))]
        axes[0].bar(positions, heights, width, label=f"{hosts} app host(s)")
    axes[0].set_xticks([index + width * (len(counts) - 1) / 2 for index in range(len(pages))])
    axes[0].set_xticklabels(pages)
    axes[0].set_ylabel("2xx req/s through nginx")
    axes[0].set_title("Throughput per app host count (all app servers share one CPU)")
    axes[0].legend()
    if fanout:
        fanout_chart(axes.pop(), fanout)
    for axis, name in zip(axes[1:], faults, strict=True):
        fault = results["faults"][name]
        times = [row["t"] for row in fault["buckets"]]
        axis.plot(times, [row["ok"] for row in fault["buckets"]], label="2xx per 100 ms")
        axis.plot(times, [row["failed"] for row in fault["buckets"]], label="failed per 100 ms")
        start, back = FAULT_EVENTS[name]
        axis.axvline(fault["events"][start], color="red", linestyle="--", label=start)
        if back:
            axis.axvline(fault["events"][back], color="green", linestyle="--", label=back)
        axis.set_title(FAULT_TITLES[name])
        axis.set_xlabel("seconds since the load started")
        axis.legend(loc="lower right", fontsize="small")
    return save(figure, out / "cluster.png")


def fanout_chart(axis: Any, runs: list[dict[str, Any]]) -> None:
    """Draw the fan-out's delivery latency (p50 bar, p99 tick) per transport and host count."""
    names = list(runs[0]["transports"])
    width = 0.8 / len(names)
    for offset, name in enumerate(names):
        positions = [index + offset * width for index in range(len(runs))]
        p50 = [run["transports"][name]["p50_ms"] for run in runs]
        p99 = [run["transports"][name]["p99_ms"] for run in runs]
        axis.bar(positions, p50, width, label=f"{name} p50")
        axis.scatter(positions, p99, marker="_", s=400, color="black", zorder=3)
    axis.scatter([], [], marker="_", color="black", label="p99")
    axis.set_xticks([index + width * (len(names) - 1) / 2 for index in range(len(runs))])
    axis.set_xticklabels([f"{run['app_hosts']} app host(s)" for run in runs])
    axis.set_ylabel("publish to delivery, ms")
    axis.set_title("Fan-out across hosts: POST /sync/publish/ to every WebSocket and SSE client")
    axis.legend(fontsize="small")


def live_markdown(figures: dict[str, Any]) -> list[str]:
    """Return the fan-out and live-stream fault sections (or the line saying why not)."""
    lines = ["", "## Fan-out across hosts", ""]
    if "skipped" in figures:
        return [*lines, f"Not run: {figures['skipped']}."]
    lines += [
        "WebSocket (/ws/live/) and SSE (/async/live/) clients connect from the client host "
        "through the balancer, which sends both to the app hosts' ASGI servers (a WebSocket "
        "handshake, or Accept: text/event-stream, with a 60 s read timeout). Events are POSTed "
        "to /sync/publish/ through the balancer, so WSGI workers on any host publish them to "
        "Redis; every client should receive every acknowledged (202) event. Latency: from the "
        "POST being sent (a timestamp in the event's text) to the client reading the event. "
        "Hosts: the X-Upstream of each client's handshake; Redis subscriptions: PUBSUB NUMSUB "
        "of the group's channel, one per ASGI process that holds clients. POST ms: how long "
        "the publish requests took to be answered (p50 / max); an event late to every client "
        "alike was late leaving.",
        "",
        "| app hosts | transport | clients | clients per host | Redis subs | events "
        "| POST ms | received / expected | p50 ms | p99 ms | max ms | errors |",
        "|---:|---|---:|---|---:|---:|---|---|---:|---:|---:|---|",
    ]
    for run in figures.get("fanout", []):
        for name, t in run["transports"].items():
            per_host = ", ".join(f"{host}: {count}" for host, count in t["per_host"].items())
            lines.append(
                f"| {run['app_hosts']} | {name} | {t['subscribed']}/{t['clients']} | {per_host} "
                f"| {run['redis_group_subscriptions']} | {run['publish']['published']} "
                f"({run['publish']['statuses']}) | {run['publish'].get('post_p50_ms', '-')} / "
                f"{run['publish'].get('post_max_ms', '-')} | {t['received']} / {t['expected']} | "
                f"{t['p50_ms']} | {t['p99_ms']} | {t['max_ms']} | {t['errors'] or '-'} |"
            )
    streams = figures.get("streams_during_kill")
    if not streams:
        return lines
    lines += [
        "",
        "## Live streams while an app host is killed",
        "",
        f"{streams['clients_per_transport']} WebSocket and as many SSE clients, reconnecting "
        "as a browser would (WebSocket: backoff from 0.1 s doubling to 2 s, jittered; SSE: "
        "after the stream's `retry:`, 3 s; the view sends no `id:` lines, so there is no "
        "Last-Event-ID to resume from). An event is published through the balancer every "
        f"{streams['interval_s']} s; {streams['victim']}'s servers are SIGKILLed "
        f"{streams['kill_after_s']} s in. Clients on it at the kill: "
        f"{streams['on_victim_at_kill']}. Publishes: {streams['publish']['statuses']}. "
        "Delivery is at most once: the channel layer keeps no history, so what is published "
        "while a client is between connections is lost to it.",
        "",
        "| transport | clients | cut | reconnected | reconnect p50 s | max s | events missed "
        "by cut clients (max each) | missed by the others | hosts after |",
        "|---|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for name, t in streams["transports"].items():
        lines.append(
            f"| {name} | {t['clients']} | {t['cut']} | {t['reconnected']} | "
            f"{t['reconnect_p50_s']} | {t['reconnect_max_s']} | "
            f"{t['missed_events_by_cut_clients']} ({t['missed_per_cut_client_max']}) | "
            f"{t['missed_events_by_others']} | {t['hosts_after']} |"
        )
    return lines


def markdown(results: dict[str, Any], chart: str) -> str:
    """Return report.md: set-up, throughput table, fault figures, what two cores cannot show."""
    setup = results["setup"]
    lines = [
        "# dualserve on a cluster of network namespaces",
        "",
        f"Command: `{results['command']}`, {results['started']}.",
        "",
        f"Hosts on {setup['subnet']} (bridge in namespace `{setup['bridge_namespace']}`): "
        + ", ".join(f"{role} {host['address']}" for role, host in setup["hosts"].items())
        + f". Each app host runs {setup['wsgi_mode']} on :8001 and {setup['asgi_mode']} on "
        f":8002, {setup['workers_per_server']} worker(s) each; nginx balances /async/ over the "
        "ASGI servers and everything else over the WSGI servers. "
        f"{setup['cpus']} CPUs; app servers pinned to {setup['app_cpus'] or 'none'}, the rest "
        f"to {setup['other_cpus'] or 'none'}.",
        "",
        f"![charts]({chart})",
        "",
        "## Throughput per app host count",
        "",
        TWO_CORES,
        "",
        "| app hosts | page | 2xx req/s | all req/s | p50 ms | p99 ms | non-2xx | socket errors "
        "| spread |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in results.get("throughput", []):
        spread = ", ".join(f"{host}: {count}" for host, count in row["spread"].items())
        lines.append(
            f"| {row['hosts']} | {row['page']} | {row['rps_2xx']:.0f} | {row['rps']:.0f} | "
            f"{row['latency_ms'].get('p50', 0):.2f} | {row['latency_ms'].get('p99', 0):.2f} | "
            f"{row['non_2xx']} | {row['socket_errors']} | {spread} |"
        )
    faults = results.get("faults", {})
    if faults:
        lines += ["", "## Faults under load", ""]
        lines += [
            "A probe client on the client host (8 keep-alive connections, every request "
            "timestamped) loads the balancer; the fault happens at the first dashed line. "
            "Recovered: 5 buckets of 100 ms in a row without a failure, each at half the "
            "rate before the fault or more, counted from the fault (PostgreSQL: from its "
            "return).",
            "",
            "| fault | requests | failed | failed by status | in flight at fault "
            "(slowest s) | longest stall s | recovered after s |",
            "|---|---:|---:|---|---|---:|---:|",
        ]
        for name, title in FAULT_TITLES.items():
            if name not in faults:
                continue
            fault = faults[name]
            lines.append(
                f"| {title} | {fault['requests']} | {fault['failed']} | "
                f"{fault['failed_by_status'] or '-'} | {fault['in_flight_at_fault']} "
                f"({fault['in_flight_max_latency_s']}) | {fault['longest_stall_s']} | "
                f"{fault['recovered_after_s']} |"
            )
        if "postgres_restarted" in faults:
            pg = faults["postgres_restarted"]
            lines += [
                "",
                f"PostgreSQL was down {pg['down_s']} s (fast shutdown, then a fresh start). "
                f"Statuses per page: {pg['statuses_by_path']}. Failed answers with Retry-After: "
                f"{pg['failed_with_retry_after']} of {pg['failed']}; with a traceback in the "
                f"body: {pg['failed_with_traceback']}. Slowest request: {pg['slowest_s']} s. "
                f"A body per failing status: {pg['failed_body_samples']}.",
            ]
        if "writes_during_kill" in faults:
            writes = faults["writes_during_kill"]
            lines += [
                "",
                f"Writes while an app host was killed: {writes['requests']} POSTs, "
                f"{writes['acknowledged']} acknowledged ({writes['acknowledged_after_kill']} "
                f"after the kill), acknowledged but missing from the database: "
                f"{len(writes['acknowledged_missing'])}; failed: {writes['failed_by_status']} "
                f"({writes['failed_but_stored']} of them stored anyway: a failed POST's "
                "outcome is unknown to the client).",
            ]
    if "live" in results:
        lines += live_markdown(results["live"])
    lines += ["", "## Findings", ""]
    lines += [f"- {finding}" for finding in results.get("findings", [])]
    return "\n".join(lines) + "\n"
