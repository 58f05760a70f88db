"""Aggregation: the repeats of each cell become a median with its min and max, and flags.

A run with errors is never folded in silently: its cell carries the error count and a flag,
and the report marks it. A cell whose load generator was saturated, or whose repeats spread
widely, is flagged too.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

# wrk busy above this share of its CPUs: the load generator, not the server, may be the limit.
WRK_SATURATED_PERCENT = 90.0
# Repeats spread wider than this (max - min over the median): the figure is noisy.
NOISY_SPREAD = 0.25
# Other processes busy on the server's CPUs above this share: the server did not have them.
FOREIGN_CPU_PERCENT = 10.0


@dataclass(frozen=True)
class Spread:
    """A median with the smallest and largest value it came from."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        """Return the spread of `values` (all zero when there are none)."""
        if not values:
            return cls(0.0, 0.0, 0.0)
        return cls(statistics.median(values), min(values), max(values))

    @property
    def relative(self) -> float:
        """Return (high - low) / median, 0 when the median is 0."""
        return (self.high - self.low) / self.median if self.median else 0.0


@dataclass
class CellStats:
    """One cell over its repeats."""

    key: str
    contender: str
    scenario: str
    concurrency: int
    via: str
    runs: int
    rps: Spread
    p50_ms: Spread
    p90_ms: Spread
    p99_ms: Spread
    max_ms: float
    mean_ms: Spread
    requests: int
    errors: dict[str, int]
    server_cpu_percent: Spread
    # The server's processes' CPU time (master and workers) per request answered, in µs.
    server_cpu_us_per_request: Spread
    foreign_cpu_percent: Spread
    server_peak_rss: int
    server_peak_worker_rss: int
    server_peak_worker_threads: int
    nginx_cpu_percent: Spread | None
    wrk_cpu_percent: float
    skipped: str = ""
    flags: list[str] = field(default_factory=list)
    # Each repeat's throughput by repeat number: pairs cells measured side by side (target 5).
    rps_by_repeat: dict[int, float] = field(default_factory=dict)

    @property
    def error_count(self) -> int:
        """Return status errors plus socket errors over every repeat."""
        return self.errors.get("status", 0) + self.errors.get("socket", 0)

    @property
    def measured(self) -> bool:
        """Return whether the cell has at least one wrk run."""
        return self.runs > 0

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        data = asdict(self)
        data["error_count"] = self.error_count
        return data


def aggregate(runs: Iterable[Mapping[str, Any]], wrk_threads: int = 1) -> dict[str, CellStats]:
    """Return every cell's statistics from the raw runs, keyed by cell, in first-seen order."""
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for run in runs:
        grouped.setdefault(run["cell"], []).append(run)
    return {key: cell_stats(key, cell_runs, wrk_threads) for key, cell_runs in grouped.items()}


def cell_stats(key: str, runs: Sequence[Mapping[str, Any]], wrk_threads: int) -> CellStats:
    """Return the statistics of one cell from its runs (skipped runs only count as a reason)."""
    first = runs[0]
    measured = [run for run in runs if "wrk" in run]
    skipped = next((run["skipped"] for run in runs if run.get("skipped")), "")

    def latency(name: str) -> Spread:
        return Spread.of([run["wrk"]["latency_ms"][name] for run in measured])

    errors: dict[str, int] = {}
    for run in measured:
        for name, count in run["wrk"]["errors"].items():
            errors[name] = errors.get(name, 0) + int(count)
    nginx_runs = [run["nginx"]["cpu_percent"] for run in measured if run.get("nginx")]
    stats = CellStats(
        key=key,
        contender=first["contender"],
        scenario=first["scenario"],
        concurrency=first["concurrency"],
        via=first["via"],
        runs=len(measured),
        rps=Spread.of([run["wrk"]["rps"] for run in measured]),
        p50_ms=latency("p50"),
        p90_ms=latency("p90"),
        p99_ms=latency("p99"),
        max_ms=max((run["wrk"]["latency_ms"]["max"] for run in measured), default=0.0),
        mean_ms=latency("mean"),
        requests=sum(run["wrk"]["requests"] for run in measured),
        errors=errors,
        server_cpu_percent=Spread.of([run["server"]["cpu_percent"] for run in measured]),
        server_cpu_us_per_request=Spread.of(
            [
                1e6 * run["server"]["cpu_s"] / run["wrk"]["requests"]
                for run in measured
                if run["wrk"]["requests"] and "cpu_s" in run["server"]
            ]
        ),
        foreign_cpu_percent=Spread.of(
            [run["server"].get("foreign_cpu_percent", 0.0) for run in measured]
        ),
        server_peak_rss=max((run["server"]["peak_rss"] for run in measured), default=0),
        server_peak_worker_rss=max(
            (run["server"]["peak_worker_rss"] for run in measured), default=0
        ),
        server_peak_worker_threads=max(
            (run["server"].get("peak_worker_threads", 0) for run in measured), default=0
        ),
        nginx_cpu_percent=Spread.of(nginx_runs) if nginx_runs else None,
        wrk_cpu_percent=max((run.get("wrk_cpu_percent", 0.0) for run in measured), default=0.0),
        skipped=skipped,
        rps_by_repeat={int(run["repeat"]): run["wrk"]["rps"] for run in measured},
    )
    stats.flags = flags(stats, wrk_threads)
    return stats


def flags(stats: CellStats, wrk_threads: int) -> list[str]:
    """Return what a reader must know before trusting the cell's figures."""
    found = []
    if stats.skipped:
        found.append(f"not measured: {stats.skipped}")
    if stats.error_count:
        total = stats.requests + stats.errors.get("socket", 0)
        share = 100.0 * stats.error_count / total if total else 100.0
        parts = [
            f"{name} {count}" for name, count in stats.errors.items() if count and name != "socket"
        ]
        found.append(f"errors: {stats.error_count} ({share:.1f}%: {', '.join(parts)})")
    if stats.wrk_cpu_percent >= WRK_SATURATED_PERCENT * wrk_threads:
        found.append(f"load generator saturated (wrk at {stats.wrk_cpu_percent:.0f}% CPU)")
    if stats.foreign_cpu_percent.median > FOREIGN_CPU_PERCENT:
        found.append(
            f"shared CPU: other processes used {stats.foreign_cpu_percent.median:.0f}% "
            "of the server's CPUs"
        )
    if stats.runs > 1 and stats.rps.relative > NOISY_SPREAD:
        found.append(f"noisy: repeats spread {100 * stats.rps.relative:.0f}% of the median")
    return found


def littles_law_limit(connections: int, wait_ms: float) -> float:
    """Return the most requests per second `connections` can carry when each waits `wait_ms`."""
    return connections / (wait_ms / 1000) if wait_ms > 0 else float("inf")


def find(
    cells: Mapping[str, CellStats],
    contender: str,
    scenario: str,
    concurrency: int | None = None,
    via: str = "direct",
) -> list[CellStats]:
    """Return the measured cells matching, lowest concurrency first."""
    found = [
        cell
        for cell in cells.values()
        if cell.contender == contender
        and cell.scenario == scenario
        and cell.via == via
        and (concurrency is None or cell.concurrency == concurrency)
        and cell.measured
    ]
    return sorted(found, key=lambda cell: cell.concurrency)
