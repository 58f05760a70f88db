"""report.md: the targets, the tables, the trust checks and the verdict, in Markdown."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import Any

from lab.bench import fanout
from lab.bench.analysis import Analysis, ceiling_rows, verdict_lines
from lab.bench.contenders import SUPERVISOR_TWINS
from lab.bench.fanout import ON_TIME_MS
from lab.bench.plan import CEILING_SCENARIOS
from lab.bench.stats import CellStats, Spread
from lab.bench.targets import NGINX_RULE, nginx_costs, nginx_verdict
from lab.servers import REPO_ROOT

MIB = 1024 * 1024
# A machine busier than this (load average per CPU) before the run skews every figure.
BUSY_LOAD_PER_CPU = 0.3


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Return a Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return [*lines, ""]


def spread(value: Spread, digits: int = 0, unit: str = "") -> str:
    """Return "median (min-max)" for a spread of several values, else the value alone."""
    if value.low == value.high:
        return f"{value.median:,.{digits}f}{unit}"
    return f"{value.median:,.{digits}f}{unit} ({value.low:,.{digits}f}-{value.high:,.{digits}f})"


def triple(values: dict[str, float]) -> str:
    """Return "p50 / p99 / max" of a latency dict, in whole ms."""
    return " / ".join(f"{values[key]:.0f}" for key in ("p50", "p99", "max"))


def mib(value: float) -> str:
    """Return bytes as MiB."""
    return f"{value / MIB:,.0f} MiB"


def cell_row(cell: CellStats) -> list[str]:
    """Return one throughput table row."""
    if not cell.measured:
        return [
            cell.contender,
            str(cell.concurrency),
            cell.via,
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "; ".join(cell.flags),
        ]
    return [
        cell.contender,
        str(cell.concurrency),
        cell.via,
        spread(cell.rps),
        f"{cell.p50_ms.median:.1f}",
        f"{cell.p90_ms.median:.1f}",
        f"{cell.p99_ms.median:.1f}",
        f"{cell.max_ms:.0f}",
        str(cell.error_count) if cell.error_count else "0",
        f"{cell.server_cpu_percent.median:.0f}%",
        mib(cell.server_peak_rss),
        "; ".join(cell.flags) if cell.flags else "",
    ]


def header_section(analysis: Analysis) -> list[str]:
    """Return the title, the run's facts and the machine's."""
    results = analysis.results
    options = analysis.options
    machine = results["machine"]
    cpus = machine.get("cpus") or 1
    load_start = results.get("load_start") or []
    load_end = results.get("load_end") or []
    lines = [
        "# dualserve benchmark: WSGI and ASGI side by side",
        "",
        f"- **Run**: {results['started']} to {results.get('finished', '?')}, "
        f"{results.get('elapsed_s', 0) / 60:.1f} min, status **{results['status']}**"
        + (f" ({results['message']})" if results.get("message") else ""),
        f"- **Command**: `{results['command']}`",
        f"- **Machine**: {machine['cpu_model']}, {cpus} CPUs, "
        f"{machine['memory_bytes'] / 1024**3:.0f} GiB, "
        f"{machine['os']}, kernel {machine['kernel']}, Python {machine['python']}"
        + (f", governor {machine['governor']}" if machine.get("governor") else ""),
        f"- **Pinning**: servers on CPU {fmt_cpus(options['server_cpus'])}; wrk, nginx, "
        "the upstream "
        f"and the SSE client on CPU {fmt_cpus(options['load_cpus'])}",
        f"- **Load average** (1/5/15 min) at start {fmt_load(load_start)}, "
        f"at end {fmt_load(load_end)}" + busy_warning(load_start, cpus),
        "- **Software**: "
        + ", ".join(f"{name} {version}" for name, version in machine["packages"].items())
        + f", {machine['wrk']}, {machine['nginx']}, git {machine['git']}",
        f"- **Settings**: {options['workers']} workers per server (SSE: 1), "
        f"gthread {options['threads']} threads per worker, "
        f"{options['duration_s']:g} s per run after a {options['warmup_s']:g} s "
        f"warm-up, {options['repeat']} repeats in alternating order on one fresh server per mode, "
        f"wrk timeout {options['timeout_s']:g} s; "
        f"Django in production settings (DEBUG off) on {database(options)}; "
        "gunicorn's worker recycling off (`--max-requests 0`); figures are medians (min-max).",
    ]
    wrong = analysis.wrong_status
    if wrong:
        lines.append(
            f"- **Wrong status**: {len(wrong)} cell(s) answered a status they do not expect, "
            "so the command exited 1: " + "; ".join(f"`{line}`" for line in wrong)
        )
    return [*lines, ""]


def database(options: Any) -> str:
    """Return which database the servers used, as the options record it."""
    if options.get("database_url"):
        return f"the database at `{options['database_url']}` (--database-url), used as it was"
    fixtures = options.get("fixtures") or []
    loaded = f", with {', '.join(f'`{name}`' for name in fixtures)} loaded" if fixtures else ""
    return f"a private SQLite database, freshly migrated{loaded}"


def fmt_cpus(cpus: Sequence[int]) -> str:
    """Return a CPU list, or "any" when nothing was pinned."""
    return ",".join(map(str, cpus)) if cpus else "any (not pinned)"


def fmt_load(load: Sequence[float]) -> str:
    """Return a load average triple."""
    return " / ".join(f"{value:.2f}" for value in load) if load else "unknown"


def busy_warning(load: Sequence[float], cpus: int) -> str:
    """Return a warning when the machine was busy before the run started."""
    if load and load[0] > BUSY_LOAD_PER_CPU * cpus:
        return (
            f": **the machine was busy** ({load[0]:.2f} on {cpus} CPUs), other work shared it, "
            "so absolute figures are low and noisy; ratios from the same run hold up better"
        )
    return ""


def targets_section(analysis: Analysis) -> list[str]:
    """Return the targets table and the figures behind each."""
    lines = ["## Targets", ""]
    lines += table(
        ["#", "Target", "Measured", "Result"],
        [[str(t.number), t.title, t.figure, f"**{t.verdict}**"] for t in analysis.targets],
    )
    for target in analysis.targets:
        if target.details:
            lines.append(f"- Target {target.number}: " + "; ".join(target.details))
    return [*lines, ""]


def throughput_section(analysis: Analysis) -> list[str]:
    """Return one table per scenario: every cell measured, direct and through nginx."""
    lines = [
        "## Throughput and latency",
        "",
        "Latency in ms (p50/p90/p99: medians over the repeats; max: the largest seen). "
        "Errors: responses >= 400 plus socket errors (connect, read, write, timeout), summed "
        "over the repeats. CPU: the server's processes, in % of one core. RSS: the server's "
        "processes summed, peak.",
        "",
    ]
    for name, scenario in analysis.scenarios.items():
        cells = [cell for cell in analysis.cells.values() if cell.scenario == name]
        if not cells:
            continue
        cells.sort(
            key=lambda c: (c.via != "direct", contender_order(analysis, c.contender), c.concurrency)
        )
        paths = " / ".join(dict.fromkeys(scenario.paths.values()))
        lines += [f"### {name}: `{scenario.method} {paths}`", ""]
        lines += table(
            [
                "mode",
                "conn.",
                "via",
                "req/s",
                "p50",
                "p90",
                "p99",
                "max",
                "errors",
                "CPU",
                "RSS",
                "flags",
            ],
            [cell_row(cell) for cell in cells],
        )
    return lines


def contender_order(analysis: Analysis, contender: str) -> tuple[int, str]:
    """Return a sort key: the chosen modes' order, then profiles."""
    mode, _, profile = contender.partition("+")
    # A supervisor mode right after its gunicorn-master twin.
    twin = SUPERVISOR_TWINS.get(mode)
    if twin is not None:
        mode, profile = twin, " " + mode
    index = analysis.contenders.index(mode) if mode in analysis.contenders else 99
    return index, profile


def ceiling_section(analysis: Analysis) -> list[str]:
    """Return where Django sits between no framework (bare) and a lean async framework."""
    lines: list[str] = []
    for name in CEILING_SCENARIOS:
        rows = []
        for cell, kind, django in ceiling_rows(analysis, name):
            ratio = (
                f"{cell.rps.median / django.rps.median:.2f}x {django.contender}"
                if django is not None and django.rps.median
                else ""
            )
            cpu = cell.server_cpu_us_per_request
            rows.append(
                [
                    cell.contender,
                    kind,
                    str(cell.concurrency),
                    spread(cell.rps),
                    f"{cell.p99_ms.median:.1f}",
                    f"{cpu.median:,.0f}" if cpu.median else "-",
                    ratio,
                    "; ".join(cell.flags),
                ]
            )
        if rows:
            lines += [f"### {name}", ""]
            lines += table(
                [
                    "contender",
                    "app",
                    "conn.",
                    "req/s",
                    "p99 (ms)",
                    "server CPU µs/request",
                    "req/s against Django",
                    "flags",
                ],
                rows,
            )
    if not lines:
        return []
    return [
        "## Ceiling: no framework, a lean framework, Django",
        "",
        "The showcase's hello and JSON answers, byte for byte, without Django: the bare apps "
        "(lab/bench/bare.py) on each mode's shipped gunicorn config, Starlette on the "
        "asgi_uvicorn config (same uvicorn workers, worker count, CPUs and access log as "
        "Django's ASGI contender) and Sanic on its own server (same worker count and CPUs, "
        "uvloop, no access log). Every JSON answer is serialised per request. Server CPU: "
        "the server's processes (master and workers) per request answered. A bare app compares "
        "with Django on its own server config, Starlette and Sanic with Django on asgi_uvicorn.",
        "",
        *lines,
    ]


def floor_section(analysis: Analysis) -> list[str]:
    """Return Django's own cost per request against what a served request costs the server."""
    if not analysis.floor:
        return []
    figures = [
        [
            figure.interface,
            f"{figure.scenario}: `GET {figure.path}`",
            f"{figure.requests:,}" + ("" if figure.status == 200 else f" (status {figure.status})"),
            spread(figure.cpu_us, 1),
            spread(figure.wall_us, 1),
        ]
        for figure in analysis.floor
    ]
    shares = [
        [
            row.contender,
            row.scenario,
            str(row.concurrency),
            f"{row.floor_cpu_us.median:,.1f}",
            spread(row.served_cpu_us, 1) if row.served_cpu_us.median else "-",
            f"{100 * row.share:.0f}%" if row.share is not None else "-",
        ]
        for row in analysis.floor_shares
    ]
    lines = [
        "## Floor: Django's own cost",
        "",
        "Django's handlers called in-process, no socket and no server (lab/bench/floor.py): "
        "`project.wsgi.application` with a minimal environ, its body consumed and closed; "
        "`project.asgi.application` (the template's handler) awaited with receive/send on one "
        "uvloop event loop. In a subprocess with the servers' production settings, pinned to "
        "the servers' CPUs, before any server started; after a warm-up, each batch times the "
        "requests one after another. CPU: time.process_time over every thread of the process.",
        "",
        *table(
            ["interface", "scenario", "requests per batch", "CPU µs/request", "wall µs/request"],
            figures,
        ),
    ]
    if not shares:
        return lines
    return [
        *lines,
        "Server share = 1 - floor CPU / served CPU per request (medians): the part of what a "
        "served request costs the server's processes (master and workers, from /proc) that is "
        "not Django's handler: HTTP parsing, the event loop or the worker's accept loop, the "
        "socket system calls, the access log. An upper bound of the server's own work: a tight "
        "in-process loop keeps Django hot in the CPU's caches, which a served request, "
        "interleaved with the kernel's network work, does not.",
        "",
        *table(
            [
                "mode",
                "scenario",
                "conn.",
                "floor CPU µs/request",
                "served CPU µs/request",
                "server share",
            ],
            shares,
        ),
    ]


def process_model_section(analysis: Analysis) -> list[str]:
    """Return each supervisor mode against its gunicorn-master twin, cell by cell."""
    rows = []
    for mode, twin in SUPERVISOR_TWINS.items():
        for cell in analysis.cells.values():
            if cell.contender != mode or cell.via != "direct" or not cell.measured:
                continue
            master = analysis.cells.get(cell.key.replace(mode + "|", twin + "|", 1))
            if master is None or not master.measured or not master.rps.median:
                continue
            rows.append(
                [
                    f"{twin} / {mode}",
                    f"{cell.scenario} c={cell.concurrency}",
                    f"{master.rps.median:,.0f}",
                    f"{cell.rps.median:,.0f}",
                    f"{cell.rps.median / master.rps.median:.2f}x",
                    f"{master.p50_ms.median:.1f} / {cell.p50_ms.median:.1f}",
                    f"{master.p99_ms.median:.1f} / {cell.p99_ms.median:.1f}",
                    f"{mib(master.server_peak_rss)} / {mib(cell.server_peak_rss)}",
                ]
            )
    if not rows:
        return []
    return [
        "## Process model: a gunicorn master or supervisord",
        "",
        "The same worker count on the same CPUs: gunicorn's master with its workers (the "
        "shipped config), against deploy/supervisor/run.sh: supervisord holding the socket, "
        "with single-worker gunicorn masters (WSGI, the same gthread config) or uvicorn "
        "processes started with `--fd 0` (ASGI, asgi.conf). The interface not measured is "
        "stopped once everything is up. RSS: every process of the tree (supervisord, masters, "
        "workers), peak. supervisor_asgi keeps asgi.conf's `--limit-max-requests`: a uvicorn "
        "process is replaced every ~10,000 requests during the runs, where the gunicorn "
        "contenders run with recycling off.",
        "",
        *table(
            [
                "master / supervisor",
                "scenario",
                "master req/s",
                "supervisor req/s",
                "supervisor against master",
                "p50 (ms)",
                "p99 (ms)",
                "RSS",
            ],
            rows,
        ),
    ]


def nginx_section(analysis: Analysis) -> list[str]:
    """Return the direct-against-nginx table."""
    rows = []
    for cell in analysis.cells.values():
        if cell.via != "nginx" or not cell.measured:
            continue
        direct = analysis.cells.get(cell.key.replace("|nginx", "|direct"))
        if direct is None or not direct.measured or not direct.rps.median:
            continue
        cost = 1 - cell.rps.median / direct.rps.median
        costs = nginx_costs(direct, cell)
        found, reason = nginx_verdict(costs)
        nginx_cpu = cell.nginx_cpu_percent.median if cell.nginx_cpu_percent else 0.0
        rows.append(
            [
                cell.contender,
                f"{cell.scenario} c={cell.concurrency}",
                f"{direct.rps.median:,.0f}",
                f"{cell.rps.median:,.0f}",
                f"{100 * cost:+.1f}%",
                " / ".join(f"{100 * value:+.0f}%" for value in costs) or "-",
                f"{found} ({reason})",
                f"{direct.p99_ms.median:.1f} / {cell.p99_ms.median:.1f}",
                f"{nginx_cpu:.0f}%",
            ]
        )
    if not rows:
        return []
    return [
        "## nginx in front",
        "",
        "The shipped config (deploy/nginx.py, upstream keep-alive, buffered access log), one "
        "nginx worker on the load generator's CPU. Cost = 1 - (through nginx / direct), of the "
        f"medians and of each repeat. Target 5's {NGINX_RULE}.",
        "",
        *table(
            [
                "mode",
                "scenario",
                "direct req/s",
                "nginx req/s",
                "cost of the medians",
                "cost per repeat",
                "target 5",
                "p99 direct / nginx (ms)",
                "nginx CPU",
            ],
            rows,
        ),
    ]


def sse_section(analysis: Analysis) -> list[str]:
    """Return the long-lived connections table."""
    runs = analysis.results["sse_runs"]
    if not runs:
        return []
    first = runs[0]
    rows = [
        [
            run["contender"],
            f"{run['clients']:,}",
            f"{run['connected']:,}",
            f"{run['completed']:,}",
            f"{100 * run['on_time_ratio']:.1f}%",
            triple(run["lateness_ms"]),
            triple(run.get("gap_lateness_ms") or {"p50": 0, "p99": 0, "max": 0}),
            triple(run.get("first_event_ms") or {"p50": 0, "p99": 0, "max": 0}),
            mib(run["server"]["peak_worker_rss"]),
            f"{run['server']['cpu_percent']:.0f}%",
            f"{run.get('client_cpu_percent', 0):.0f}%",
            ", ".join(f"{k}: {v}" for k, v in run["statuses"].items()),
            ", ".join(f"{k}: {v}" for k, v in run["errors"].items()) or "",
        ]
        for run in runs
    ]
    return [
        "## Long-lived connections (Server-Sent Events)",
        "",
        f"Each client asks for {first['events']} events {first['interval_ms']} ms apart from a "
        "fresh one-worker server (ASGI modes: the async view; WSGI modes: the sync view); the "
        f"clients connect evenly over {first.get('ramp_s', 0):g} s. Event k is due "
        "(k - 1) x interval after the stream's first event: **late** is how far the stream fell "
        "behind that schedule (delays add up), **gap** is each event against the previous one "
        "(the delay of that step alone), **first** is the time from request to first event. "
        "On time = no more than 100 ms late, over every event expected (an event never received "
        "counts as late). Status 0: no answer before the deadline. Client CPU: the SSE client's "
        "own use of its core (near 100%, the client itself may be late).",
        "",
        *table(
            [
                "mode",
                "clients",
                "connected",
                "completed",
                "on time",
                "late p50/p99/max (ms)",
                "gap p50/p99/max (ms)",
                "first p50/p99/max (ms)",
                "worker RSS",
                "CPU",
                "client CPU",
                "statuses",
                "client errors",
            ],
            rows,
        ),
    ]


def fanout_section(analysis: Analysis) -> list[str]:
    """Return the fan-out: delivery latency per transport and rate, memory per connection."""
    lines: list[str] = []
    for run in analysis.results.get("fanout_runs") or []:
        clients = run["clients"]
        connected = run["connected"]
        rows = []
        for step in run["steps"]:
            for name, figures in step["transports"].items():
                rows.append(
                    [
                        f"{step['rate']}/s",
                        f"{step['achieved_rate']:.0f}/s",
                        name,
                        f"{figures['received']:,} of {figures['expected']:,}",
                        f"{figures['events_per_s']:,.0f}",
                        f"{figures['p50_ms']:.0f} / {figures['p99_ms']:.0f} / "
                        f"{figures['max_ms']:.0f}",
                        f"{100 * figures['on_time_share']:.1f}%",
                        f"{step.get('server_cpu_us_per_delivery', 0):,.0f}",
                        f"{step['client_cpu_percent']:.0f}%",
                        "yes" if step["keeps_up"] else "**no**",
                    ]
                )
        added = fanout_per_connection(run)
        memory = run["memory"]
        rest_worker = max(memory["rest"]["worker_rss"], default=0)
        held = memory.get("sse") or memory.get("websocket") or memory["rest"]
        first = next(iter(run["steps"]), None)
        target_p99 = (
            max(figures["p99_ms"] for figures in first["transports"].values()) if first else None
        )
        projected = rest_worker + 1000 * added.get("websocket", 0.0)
        lines += [
            f"### {run['contender']} x{run['workers']}: {clients:,} WebSockets + {clients:,} "
            "SSE streams",
            "",
            f"- **Connected**: {connected.get('websocket', 0):,} WebSockets "
            f"(`{run['paths'].get('websocket', '?')}`), {connected.get('sse', 0):,} SSE streams "
            f"(`{run['paths'].get('sse', '?')}`) in {run['connect_s']:.1f} s"
            + (f"; client errors {run['errors']}" if any(run["errors"].values()) else ""),
            f"- **Keeps up to**: {fanout_keeps_up(run)} (each step {run['step_s']:g} s, then "
            "stopped after the first it did not keep up with)",
            "- **Target, p99 <= 100 ms for "
            f"{connected.get('websocket', 0) + connected.get('sse', 0):,} clients at "
            f"{first['rate'] if first else '?'} events/s** (reported, not asserted): "
            + (
                f"p99 {target_p99:.0f} ms, {'met' if target_p99 <= ON_TIME_MS else '**not met**'}"
                if target_p99 is not None
                else "not measured"
            ),
            "- **Memory per connection** (workers' RSS added, divided by the clients): "
            + ", ".join(f"{name} {value / 1024:,.0f} KiB" for name, value in added.items())
            + f"; workers at rest {' + '.join(mib(v) for v in memory['rest']['worker_rss'])}, "
            f"holding every client {' + '.join(mib(v) for v in held['worker_rss'])} "
            f"(sockets per worker: {', '.join(map(str, held['worker_sockets']))})",
            "- **Target, one ASGI worker holding 1,000 WebSockets < 150 MB RSS** (reported, not "
            f"asserted): {mib(projected)} projected (the largest worker at rest plus 1,000 x the "
            f"WebSocket cost above), {'met' if projected < 150e6 else '**not met**'}",
            f"- **Server CPU** over the whole fan-out: {run['server']['cpu_percent']:.0f}% of "
            f"one core, while other processes used "
            f"{run['server']['foreign_cpu_percent']:.0f}% of the server's CPUs; Redis RSS "
            f"{mib(run.get('redis_rss', 0))}",
            "",
            *table(
                [
                    "offered",
                    "published",
                    "transport",
                    "delivered",
                    "deliveries/s",
                    "latency p50 / p99 / max (ms)",
                    "on time (<= 100 ms)",
                    "server CPU µs/delivery",
                    "client CPU",
                    "keeps up",
                ],
                rows,
            ),
        ]
    if not lines:
        return []
    return [
        "## Fan-out: one event to many WebSocket and SSE clients",
        "",
        "A private redis-server (no persistence, on the load generator's CPUs) is the channel "
        "layer; the ASGI server runs with REDIS_URL. Every client subscribes to the live group "
        "(WebSocket: the consumer; SSE: the async stream). The harness publishes straight into "
        "the channel layer, each event stamped with the time it was sent; latency is that "
        "stamp to the client's read, on one clock. Published: the rate the publisher achieved "
        "(below offered, the harness's own loop fell behind). Deliveries/s: from the step's "
        "first publish to its last delivery. Server CPU per delivery: the server's processes "
        "over the step (publish and drain), divided by the deliveries. A step keeps up when each "
        "transport received 99% of its events with a p99 of 100 ms or less. The clients and "
        "the publisher share one asyncio process on one CPU: client CPU near 100% means "
        "the client, not only the server, may be what is late.",
        "",
        *lines,
    ]


def fanout_per_connection(run: dict[str, Any]) -> dict[str, float]:
    """Return the workers' RSS added per connection of each transport, in bytes."""
    return fanout.per_connection(run["memory"], run["connected"])


def fanout_keeps_up(run: dict[str, Any]) -> str:
    """Return the highest rate every transport kept up with, in words."""
    kept = [step["rate"] for step in run["steps"] if step["keeps_up"]]
    if not kept:
        return "no rate measured kept up"
    return f"{max(kept)} events/s ({max(kept) * run['clients'] * 2:,} deliveries/s)"


def memory_section(analysis: Analysis) -> list[str]:
    """Return RSS per worker at rest and under load, for every server started."""
    per_contender: dict[str, dict[str, Any]] = {}
    for server in analysis.results["servers"]:
        entry = per_contender.setdefault(
            server["contender"] + (" (SSE)" if server["tag"].startswith("sse-") else ""),
            {"rest": [], "rest_total": [], "workers": server["workers"]},
        )
        entry["rest"] += server["rest_worker_rss"]
        entry["rest_total"].append(server["rest_rss"])
    for cell in analysis.cells.values():
        if cell.measured and cell.contender in per_contender:
            entry = per_contender[cell.contender]
            entry["load_worker"] = max(entry.get("load_worker", 0), cell.server_peak_worker_rss)
            entry["load_total"] = max(entry.get("load_total", 0), cell.server_peak_rss)
            entry["threads"] = max(entry.get("threads", 0), cell.server_peak_worker_threads)
    for run in analysis.results["sse_runs"]:
        sse_entry = per_contender.get(run["contender"] + " (SSE)")
        if sse_entry is not None:
            entry = sse_entry
            entry["load_worker"] = max(
                entry.get("load_worker", 0), run["server"]["peak_worker_rss"]
            )
            entry["load_total"] = max(entry.get("load_total", 0), run["server"]["peak_rss"])
            entry["threads"] = max(
                entry.get("threads", 0), run["server"].get("peak_worker_threads", 0)
            )
    rows = []
    for name, entry in per_contender.items():
        rest = entry["rest"]
        rows.append(
            [
                name,
                str(entry["workers"]),
                mib(sorted(rest)[len(rest) // 2]) if rest else "-",
                mib(max(entry["rest_total"])) if entry["rest_total"] else "-",
                mib(entry.get("load_worker", 0)),
                mib(entry.get("load_total", 0)),
                str(entry.get("threads", "-")),
            ]
        )
    return [
        "## Memory",
        "",
        "RSS from /proc (VmRSS) of the master and each worker. At rest: just after the server "
        "answered its health check (median worker; total of the largest). Under load: the peak of "
        "samples taken every 250 ms during the runs (SSE rows: while the streams were open). "
        "Threads: the most OS threads one worker ran (Django's ASGI handler gives every "
        "in-flight request a thread of its own for its sync parts).",
        "",
        *table(
            [
                "mode",
                "workers",
                "worker at rest",
                "total at rest",
                "worker under load (peak)",
                "total under load (peak)",
                "threads per worker (peak)",
            ],
            rows,
        ),
    ]


def checks_section(analysis: Analysis) -> list[str]:
    """Return the trust checks."""
    lines = ["## Trust checks", ""]
    kinds = {
        "harness": "Harness",
        "ceiling": "Ceiling (bare app without Django on the same server config)",
        "littles_law": "Little's law (waiting scenarios)",
        "flag": "Flagged cells",
    }
    for kind, title in kinds.items():
        found = [check for check in analysis.checks if check["check"] == kind]
        if not found:
            continue
        lines += [f"**{title}**", ""]
        lines += [f"- {'ok' if check['ok'] else '**check**'}: {check['text']}" for check in found]
        lines.append("")
    if len(lines) == 2:
        lines += [
            "No check applies to this matrix "
            "(no bare apps, no waiting scenarios, nothing flagged).",
            "",
        ]
    return lines


def charts_section(charts: Sequence[str]) -> list[str]:
    """Return the embedded charts."""
    if not charts:
        return []
    lines = ["## Charts", ""]
    lines += [f"![{name}]({name})" for name in charts]
    return [*lines, ""]


SHOWN_ENV = (
    "DJANGO_ENV",
    "DJANGO_SECRET_KEY",
    "DJANGO_ALLOWED_HOSTS",
    "DJANGO_SECURE_SSL_REDIRECT",
    "DUALSERVE_PROFILE",
    "WEB_CONCURRENCY",
    "GUNICORN_THREADS",
    "GUNICORN_CMD_ARGS",
    "DATABASE_URL",
)


def shown_command(argv: Sequence[str], root: str) -> str:
    """Return a command line for the report: quoted, paths relative to the checkout."""
    return shlex.join(argv).replace(root + "/", "")


def reproduce_section(analysis: Analysis) -> list[str]:
    """Return how to run this again, and where the exact commands are."""
    results = analysis.results
    root = str(REPO_ROOT)
    first_run = next((run for run in results["runs"] if "command" in run), None)
    first_server = results["servers"][0] if results["servers"] else None
    lines = ["## Reproduce", "", "```sh", results["command"], "```", ""]
    if first_server:
        env = first_server["env"]
        assignments = [
            f"{name}={shlex.quote(str(env[name]))}" for name in SHOWN_ENV if env.get(name)
        ]
        lines += [
            f"A server as the harness starts it, e.g. {first_server['contender']} (bound with "
            "BIND=127.0.0.1:<port>; static files, and the database unless DATABASE_URL "
            "names one, live in a private DJANGO_VAR_DIR):",
            "",
            "```sh",
            " ".join([*assignments, shown_command(first_server["argv"], root)]),
            "```",
            "",
        ]
    if first_run:
        lines += [
            "A load run, e.g. (the generated Lua script sets the request, prints exact figures):",
            "",
            "```sh",
            first_run["command"],
            "```",
            "",
        ]
    lines += [
        "results.json holds every run's wrk command and output, each server's command line and "
        "environment, the nginx config, and the machine facts.",
        "",
    ]
    return lines


def render(analysis: Analysis, charts: Sequence[str]) -> str:
    """Return the whole report."""
    lines = header_section(analysis)
    lines += ["## Verdict", ""] + [f"- {line}" for line in verdict_lines(analysis)] + [""]
    lines += targets_section(analysis)
    lines += throughput_section(analysis)
    lines += ceiling_section(analysis)
    lines += floor_section(analysis)
    lines += process_model_section(analysis)
    lines += nginx_section(analysis)
    lines += sse_section(analysis)
    lines += fanout_section(analysis)
    lines += memory_section(analysis)
    lines += checks_section(analysis)
    lines += charts_section(charts)
    lines += reproduce_section(analysis)
    return "\n".join(lines).rstrip() + "\n"


def summary_lines(analysis: Analysis) -> list[str]:
    """Return the few lines the command prints at the end: the targets."""
    return [f"target {t.number}: {t.verdict:<12} {t.figure}" for t in analysis.targets]
