"""PNG charts with matplotlib's Agg backend (no display needed): throughput, latency, memory.

A cell that was planned but not measured (its URL answered another status) stays in the
throughput and latency charts as an empty hatched bar or a cross labelled "n/a", never a bar
or a line that is silently absent.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: render to files, never open a window

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from lab.bench.analysis import Analysis, ceiling_rows
from lab.bench.contenders import DJANGO_FREE, SANIC, STARLETTE, SUPERVISOR_TWINS, profile_of
from lab.bench.fanout import ON_TIME_MS, TRANSPORTS
from lab.bench.plan import CEILING_SCENARIOS
from lab.bench.stats import CellStats

MIB = 1024 * 1024
DPI = 110
MISSING = "n/a"
MISSING_NOTE = "n/a: not measured (answered another status, see report.md)"


def save(figure: Figure, path: Path) -> str:
    """Write `figure` to `path` as PNG, close it, and return the file name."""
    figure.tight_layout()
    figure.savefig(path, dpi=DPI, format="png")
    plt.close(figure)
    return path.name


def series(analysis: Analysis, scenario: str) -> dict[str, list[CellStats]]:
    """Return the direct cells of `scenario` per contender (native, stock and bare).

    Unmeasured cells included: the charts draw them as missing.
    """
    found: dict[str, list[CellStats]] = {}
    for cell in analysis.cells.values():
        if cell.scenario == scenario and cell.via == "direct":
            found.setdefault(cell.contender, []).append(cell)
    return {name: sorted(cells, key=lambda c: c.concurrency) for name, cells in found.items()}


def missing_bar(axis: Axes, x: float, height: float, width: float = 0.8) -> None:
    """Draw an unmeasured cell: an empty hatched bar, labelled n/a."""
    axis.bar(x, height, width, fill=False, hatch="//", edgecolor="grey", linewidth=0.8)
    axis.text(x, height / 2, MISSING, ha="center", va="center", fontsize=9, backgroundcolor="w")


def no_scale(axis: Axes) -> None:
    """Hide the value axis of a panel where nothing was measured: its scale would mean nothing."""
    axis.tick_params(axis="y", which="both", left=False, labelleft=False)


# The frameworks' own colours, apart from the modes' cycle.
FRAMEWORK_COLORS = {STARLETTE: "olive", SANIC: "teal"}


def color(analysis: Analysis, contender: str) -> str:
    """Return the same colour for a contender in every chart."""
    if profile_of(contender) in FRAMEWORK_COLORS:
        return FRAMEWORK_COLORS[profile_of(contender)]
    mode, _, profile = contender.partition("+")
    # A supervisor mode in its gunicorn-master twin's colour, dotted (throughput.png).
    mode = SUPERVISOR_TWINS.get(mode, mode)
    base = analysis.contenders.index(mode) if mode in analysis.contenders else 9
    offset = {"": 0, "stock": len(analysis.contenders), "bare": 2 * len(analysis.contenders)}
    return f"C{(base + offset.get(profile, 0)) % 10}"


def grid(count: int) -> tuple[int, int]:
    """Return (rows, columns) for `count` panels, at most three per row."""
    columns = min(3, max(1, count))
    return math.ceil(count / columns), columns


def throughput_chart(analysis: Analysis, out: Path) -> str | None:
    """Draw throughput.png (see throughput_figure)."""
    figure = throughput_figure(analysis)
    return save(figure, out / "throughput.png") if figure else None


def throughput_figure(analysis: Analysis) -> Figure | None:
    """Return requests/s per scenario and mode: lines over connections, bars for one level.

    The apps without Django (bare, Starlette, Sanic) are left out (ceiling.png): at several
    times Django's figures they would flatten every other line.
    """
    panels = []
    for name in analysis.scenarios:
        found = {
            k: v for k, v in series(analysis, name).items() if profile_of(k) not in DJANGO_FREE
        }
        if found:
            panels.append((name, found))
    if not panels:
        return None
    rows, columns = grid(len(panels))
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.8 * rows), squeeze=False)
    for index, (name, found) in enumerate(panels):
        axis = axes[index // columns][index % columns]
        levels = sorted({cell.concurrency for cells in found.values() for cell in cells})
        missing = [cell for cells in found.values() for cell in cells if not cell.measured]
        if len(levels) > 1:
            for contender, all_cells in found.items():
                cells = [cell for cell in all_cells if cell.measured]
                x = [cell.concurrency for cell in cells]
                y = [cell.rps.median for cell in cells]
                errors = [
                    [cell.rps.median - cell.rps.low for cell in cells],
                    [cell.rps.high - cell.rps.median for cell in cells],
                ]
                style = ":" if contender in SUPERVISOR_TWINS else "--" if "+" in contender else "-"
                axis.errorbar(
                    x,
                    y,
                    yerr=errors,
                    label=contender if cells else f"{contender} ({MISSING})",
                    marker="o",
                    linestyle=style,
                    capsize=3,
                    color=color(analysis, contender),
                )
            for cell in missing:
                axis.plot(
                    cell.concurrency, 0, marker="x", color=color(analysis, cell.contender), ms=9
                )
                axis.annotate(
                    MISSING,
                    (cell.concurrency, 0),
                    textcoords="offset points",
                    xytext=(0, 6),
                    ha="center",
                    fontsize=7,
                    color="dimgrey",
                )
            axis.set_xscale("log")
            axis.xaxis.set_minor_formatter(NullFormatter())
            axis.set_xticks(levels, [str(level) for level in levels])
            axis.set_xlabel("connections")
            axis.legend(fontsize=7)
            axis.set_title(name)
        else:
            names = list(found)
            cells = [found[contender][0] for contender in names]
            top = max((cell.rps.high for cell in cells if cell.measured), default=1.0) or 1.0
            for position, (contender, cell) in enumerate(zip(names, cells, strict=True)):
                if not cell.measured:
                    missing_bar(axis, position, top)
                    continue
                axis.bar(
                    position,
                    cell.rps.median,
                    yerr=[[cell.rps.median - cell.rps.low], [cell.rps.high - cell.rps.median]],
                    capsize=3,
                    color=color(analysis, contender),
                )
            if not any(cell.measured for cell in cells):
                no_scale(axis)
            axis.set_xticks(range(len(cells)), names, rotation=30, ha="right", fontsize=7)
            axis.set_title(f"{name} at {levels[0]} connections")
        if missing:
            axis.set_xlabel(MISSING_NOTE, fontsize=7)
        axis.set_ylabel("requests/s (median, min-max)")
        axis.grid(True, alpha=0.3)
    for index in range(len(panels), rows * columns):
        axes[index // columns][index % columns].axis("off")
    figure.suptitle("Throughput (direct, no nginx)")
    return figure


def ceiling_chart(analysis: Analysis, out: Path) -> str | None:
    """Draw ceiling.png (see ceiling_figure)."""
    figure = ceiling_figure(analysis)
    return save(figure, out / "ceiling.png") if figure else None


def ceiling_figure(analysis: Analysis) -> Figure | None:
    """Return hello and JSON without Django (bare, Starlette, Sanic) and with it, per contender."""
    panels = [(name, rows) for name in CEILING_SCENARIOS if (rows := ceiling_rows(analysis, name))]
    # ceiling_rows lists Django only at the levels an app without it was measured at.
    if not panels:
        return None
    widest = max(len(rows) for _, rows in panels)
    figure, axes = plt.subplots(
        1, len(panels), figsize=(max(6.0, 0.7 * widest + 2) * len(panels), 4.4), squeeze=False
    )
    for axis, (name, rows) in zip(axes[0], panels, strict=True):
        cells = [cell for cell, _, _ in rows]
        axis.bar(
            range(len(cells)),
            [cell.rps.median for cell in cells],
            yerr=[
                [cell.rps.median - cell.rps.low for cell in cells],
                [cell.rps.high - cell.rps.median for cell in cells],
            ],
            capsize=3,
            color=[color(analysis, cell.contender) for cell in cells],
        )
        for position, (cell, kind, _) in enumerate(rows):
            if profile_of(cell.contender) not in DJANGO_FREE:
                continue  # Django's bars: their names say it, and the labels would collide
            axis.annotate(
                kind,
                (position, cell.rps.median),
                textcoords="offset points",
                xytext=(0, 3),
                ha="center",
                fontsize=6,
            )
        axis.set_xticks(list(range(len(cells))))
        axis.set_xticklabels(
            [cell.contender for cell in cells], rotation=30, ha="right", fontsize=7
        )
        axis.set_ylabel("requests/s (median, min-max)")
        axis.set_title(f"{name} at {cells[0].concurrency} connections")
        axis.grid(True, axis="y", alpha=0.3)
    figure.suptitle("Ceiling: no framework, a lean async framework, Django")
    return figure


def floor_chart(analysis: Analysis, out: Path) -> str | None:
    """Draw floor.png (see floor_figure)."""
    figure = floor_figure(analysis)
    return save(figure, out / "floor.png") if figure else None


def floor_figure(analysis: Analysis) -> Figure | None:
    """Return Django's in-process CPU per request against the served one, per mode and cell."""
    rows = [row for row in analysis.floor_shares if row.served_cpu_us.median]
    if not rows:
        return None
    figure, axis = plt.subplots(figsize=(max(6.0, 0.9 * len(rows) + 2), 4.4))
    positions = range(len(rows))
    axis.bar(
        [p - 0.2 for p in positions],
        [row.floor_cpu_us.median for row in rows],
        0.4,
        label="floor: Django's handler in-process",
        color="C7",
    )
    axis.bar(
        [p + 0.2 for p in positions],
        [row.served_cpu_us.median for row in rows],
        0.4,
        yerr=[
            [row.served_cpu_us.median - row.served_cpu_us.low for row in rows],
            [row.served_cpu_us.high - row.served_cpu_us.median for row in rows],
        ],
        capsize=3,
        label="served: the server's processes",
        color="C0",
    )
    for position, row in enumerate(rows):
        if row.share is not None:
            axis.annotate(
                f"server {100 * row.share:.0f}%",
                (position + 0.2, row.served_cpu_us.high),
                textcoords="offset points",
                xytext=(0, 3),
                ha="center",
                fontsize=7,
            )
    axis.set_xticks(list(positions))
    axis.set_xticklabels(
        [f"{row.contender}\n{row.scenario} c={row.concurrency}" for row in rows],
        rotation=30,
        ha="right",
        fontsize=7,
    )
    axis.set_ylabel("CPU µs per request (median)")
    axis.set_title("Floor: Django's own cost against a served request")
    axis.grid(True, axis="y", alpha=0.3)
    axis.legend(fontsize=7)
    return figure


def latency_chart(analysis: Analysis, out: Path) -> str | None:
    """Draw latency.png (see latency_figure)."""
    figure = latency_figure(analysis)
    return save(figure, out / "latency.png") if figure else None


def latency_figure(analysis: Analysis) -> Figure | None:
    """Return p50/p90/p99 per mode at each scenario's highest concurrency (log scale)."""
    panels = []
    for name in analysis.scenarios:
        cells = [cells[-1] for cells in series(analysis, name).values()]
        if cells:
            panels.append((name, cells))
    if not panels:
        return None
    rows, columns = grid(len(panels))
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.8 * rows), squeeze=False)
    for index, (name, cells) in enumerate(panels):
        axis = axes[index // columns][index % columns]
        width = 0.27
        measured = [(p, cell) for p, cell in enumerate(cells) if cell.measured]
        for offset, (label, key) in enumerate(
            (("p50", "p50_ms"), ("p90", "p90_ms"), ("p99", "p99_ms"))
        ):
            values = [max(getattr(cell, key).median, 0.01) for _, cell in measured]
            axis.bar(
                [p + (offset - 1) * width for p, _ in measured],
                values,
                width,
                label=label,
                color=f"C{offset}",
            )
        axis.set_yscale("log")
        top = max((cell.p99_ms.median for _, cell in measured), default=1.0)
        for position, cell in enumerate(cells):
            if not cell.measured:
                # On a log axis a bar starts at the bottom limit; from 0.01 ms it always shows.
                missing_bar(axis, position, max(top, 1.0), width=3 * width)
        if len(measured) < len(cells):
            axis.set_ylim(bottom=0.01)
            axis.set_xlabel(MISSING_NOTE, fontsize=7)
        if not measured:
            no_scale(axis)
        axis.set_xticks(list(range(len(cells))))
        axis.set_xticklabels(
            [cell.contender for cell in cells], rotation=35, ha="right", fontsize=7
        )
        axis.set_ylabel("latency, ms (log)")
        level = max(cell.concurrency for cell in cells)
        axis.set_title(f"{name} at {level} connections")
        axis.grid(True, axis="y", alpha=0.3)
        if measured:
            axis.legend(fontsize=7)
    for index in range(len(panels), rows * columns):
        axes[index // columns][index % columns].axis("off")
    figure.suptitle("Latency percentiles (direct)")
    return figure


def memory_chart(analysis: Analysis, out: Path) -> str | None:
    """Draw RSS per worker at rest and at its peak under load, per mode (SSE included)."""
    rest: dict[str, int] = {}
    load: dict[str, int] = {}
    for server in analysis.results["servers"]:
        name = server["contender"] + (" SSE" if server["tag"].startswith("sse-") else "")
        if server["rest_worker_rss"]:
            rest[name] = max(rest.get(name, 0), max(server["rest_worker_rss"]))
    for cell in analysis.cells.values():
        if cell.measured:
            load[cell.contender] = max(load.get(cell.contender, 0), cell.server_peak_worker_rss)
    for run in analysis.results["sse_runs"]:
        name = run["contender"] + " SSE"
        load[name] = max(load.get(name, 0), run["server"]["peak_worker_rss"])
    names = [name for name in rest if name in load]
    if not names:
        return None
    figure, axis = plt.subplots(figsize=(max(6.0, 0.7 * len(names) + 2), 4.2))
    positions = range(len(names))
    axis.bar([p - 0.2 for p in positions], [rest[n] / MIB for n in names], 0.4, label="at rest")
    axis.bar(
        [p + 0.2 for p in positions], [load[n] / MIB for n in names], 0.4, label="under load (peak)"
    )
    axis.axhline(200e6 / MIB, color="red", linestyle=":", linewidth=1, label="200 MB (target 6)")
    axis.set_xticks(list(positions))
    axis.set_xticklabels(names, rotation=35, ha="right", fontsize=7)
    axis.set_ylabel("RSS per worker, MiB")
    axis.set_title("Memory per worker process")
    axis.grid(True, axis="y", alpha=0.3)
    axis.legend(fontsize=7)
    return save(figure, out / "memory.png")


def sse_chart(analysis: Analysis, out: Path) -> str | None:
    """Draw the share of SSE events on time per mode and client count."""
    runs = analysis.results["sse_runs"]
    if not runs:
        return None
    contenders = list(dict.fromkeys(run["contender"] for run in runs))
    counts = sorted({run["clients"] for run in runs})
    figure, axis = plt.subplots(figsize=(max(6.0, 1.2 * len(contenders) + 2), 4.0))
    width = 0.8 / len(counts)
    for offset, count in enumerate(counts):
        values = []
        for contender in contenders:
            run = next(
                (r for r in runs if r["contender"] == contender and r["clients"] == count), None
            )
            values.append(100 * run["on_time_ratio"] if run else 0.0)
        axis.bar(
            [p + (offset - (len(counts) - 1) / 2) * width for p in range(len(contenders))],
            values,
            width,
            label=f"{count:,} clients",
        )
    axis.axhline(99, color="red", linestyle=":", linewidth=1, label="99% (target 4)")
    axis.set_xticks(list(range(len(contenders))))
    axis.set_xticklabels(contenders, rotation=20, ha="right", fontsize=8)
    axis.set_ylabel("events <= 100 ms late, %")
    axis.set_ylim(0, 105)
    axis.set_title("Server-Sent Events on one worker")
    axis.grid(True, axis="y", alpha=0.3)
    axis.legend(fontsize=7)
    return save(figure, out / "sse.png")


def fanout_chart(analysis: Analysis, out: Path) -> str | None:
    """Draw fanout.png: delivery latency and deliveries/s per transport over the rate."""
    runs = analysis.results.get("fanout_runs") or []
    runs = [run for run in runs if run["steps"]]
    if not runs:
        return None
    figure, (latency, delivered) = plt.subplots(1, 2, figsize=(11, 4.2))
    for run_index, run in enumerate(runs):
        for index, name in enumerate(TRANSPORTS):
            steps = [step for step in run["steps"] if name in step["transports"]]
            rates = [step["rate"] for step in steps]
            figures = [step["transports"][name] for step in steps]
            label = f"{name} ({run['clients']:,})" + (f" #{run_index + 1}" if run_index else "")
            colour = f"C{index + 2 * run_index}"
            latency.plot(
                rates,
                [max(f["p99_ms"], 0.1) for f in figures],
                marker="o",
                color=colour,
                label=f"{label} p99",
            )
            latency.plot(
                rates,
                [max(f["p50_ms"], 0.1) for f in figures],
                marker=".",
                linestyle="--",
                color=colour,
                label=f"{label} p50",
            )
            delivered.plot(
                rates, [f["events_per_s"] for f in figures], marker="o", color=colour, label=label
            )
        offered = [step["rate"] for step in run["steps"]]
        delivered.plot(
            offered,
            [rate * run["connected"].get("websocket", 0) for rate in offered],
            linestyle=":",
            marker="x",
            color="grey",
            label="every event to every client" if run_index == 0 else None,
        )
    latency.axhline(ON_TIME_MS, color="red", linestyle=":", linewidth=1, label="100 ms")
    latency.set_yscale("log")
    latency.set_xlabel("events published per second")
    latency.set_ylabel("delivery latency, ms (log)")
    latency.set_title("Publish to client read")
    delivered.set_xlabel("events published per second")
    delivered.set_ylabel("deliveries per second, per transport")
    delivered.set_title("Deliveries")
    delivered.set_ylim(bottom=0)
    for axis in (latency, delivered):
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle(f"Fan-out on {runs[0]['contender']} x{runs[0]['workers']} (Redis pub/sub)")
    return save(figure, out / "fanout.png")


def nginx_chart(analysis: Analysis, out: Path) -> str | None:
    """Draw direct against nginx throughput per mode (an unmeasured side as n/a)."""
    names: list[str] = []
    sides: dict[str, list[CellStats]] = {"direct": [], "through nginx": []}
    for cell in analysis.cells.values():
        direct = analysis.cells.get(cell.key.replace("|nginx", "|direct"))
        if cell.via == "nginx" and direct is not None:
            names.append(cell.contender)
            sides["direct"].append(direct)
            sides["through nginx"].append(cell)
    if not names:
        return None
    every = [cell for cells in sides.values() for cell in cells]
    top = max((cell.rps.median for cell in every if cell.measured), default=0.0) or 1.0
    figure, axis = plt.subplots(figsize=(max(6.0, 0.9 * len(names) + 2), 4.0))
    for index, (label, cells) in enumerate(sides.items()):
        offset = -0.2 if index == 0 else 0.2
        drawn = [(position, cell) for position, cell in enumerate(cells) if cell.measured]
        axis.bar(
            [position + offset for position, _ in drawn],
            [cell.rps.median for _, cell in drawn],
            0.4,
            label=label,
            color=f"C{index}",
        )
        for position, cell in enumerate(cells):
            if not cell.measured:
                missing_bar(axis, position + offset, top, width=0.4)
    if not all(cell.measured for cell in every):
        axis.set_xlabel(MISSING_NOTE, fontsize=7)
    axis.set_xticks(list(range(len(names))))
    axis.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
    axis.set_ylabel("requests/s (median)")
    axis.set_title("nginx in front")
    axis.grid(True, axis="y", alpha=0.3)
    axis.legend(fontsize=7)
    return save(figure, out / "nginx.png")


def draw_all(analysis: Analysis, out: Path) -> list[str]:
    """Draw every chart the results allow; return the file names written."""
    drawn = []
    for draw in (
        throughput_chart,
        latency_chart,
        ceiling_chart,
        floor_chart,
        nginx_chart,
        sse_chart,
        fanout_chart,
        memory_chart,
    ):
        name = draw(analysis, out)
        if name:
            drawn.append(name)
    return drawn
