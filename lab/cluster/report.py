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
    figure, axes = plt.subplots(1 + len(faults), 1, figsize=(9, 3.2 * (1 + len(faults))))
    axes = list(axes) if len(faults) else [axes]
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
    lines += ["", "## Findings", ""]
    lines += [f"- {finding}" for finding in results.get("findings", [])]
    return "\n".join(lines) + "\n"
