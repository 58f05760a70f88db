"""From the raw results to everything the report shows: cells, targets, checks and verdict.

Computed from results.json alone, so `python -m lab.bench --rebuild DIR` redraws a report
without running anything again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from lab.bench.contenders import SANIC, STARLETTE, Contender, profile_of
from lab.bench.floor import share
from lab.bench.plan import CEILING_SCENARIOS
from lab.bench.scenarios import BUILTIN, Scenario
from lab.bench.stats import CellStats, Spread, aggregate, find
from lab.bench.targets import PASS, UNDECIDED, Target, checks, targets

# A wrong status's reason quotes the answer's body: this many characters of the reason are
# shown (results.json keeps the whole excerpt in the cell's flags).
SHOWN_REASON = 120
# The workloads of the verdict, by showcase scenario.
WORKLOADS = {
    "hello": "a fast view (plain text)",
    "json": "a small JSON answer",
    "db": "a fast database read (SQLite)",
    "cpu": "CPU-bound work in Python",
    "sleep": "waiting 50 ms (a slow dependency)",
    "upstream": "calling a 50 ms HTTP API",
}
# What each profile is, in the ceiling table.
KINDS = {
    "bare": "no framework",
    STARLETTE: "Starlette",
    SANIC: "Sanic",
    "native": "Django (the template)",
    "stock": "Django (stock)",
}
# The Django contender a framework is compared with: the ASGI one it shares a server with.
DJANGO_ASGI = "asgi_uvicorn"


@dataclass
class FloorFigure:
    """Django's own cost of one scenario through one interface's handler, in-process."""

    interface: str
    scenario: str
    path: str
    status: int
    requests: int
    cpu_us: Spread
    wall_us: Spread

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return asdict(self)


@dataclass
class FloorShare:
    """A served cell's CPU per request against the floor of its interface."""

    contender: str
    interface: str
    scenario: str
    concurrency: int
    floor_cpu_us: Spread
    floor_wall_us: Spread
    served_cpu_us: Spread
    # 1 - floor / served (medians): the share of a served request's CPU that is not Django's.
    share: float | None

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return asdict(self)


@dataclass
class Analysis:
    """What the report and the charts draw from."""

    results: Mapping[str, Any]
    scenarios: dict[str, Scenario]
    cells: dict[str, CellStats]
    targets: list[Target]
    checks: list[dict[str, Any]]
    contenders: list[str]
    # One line per cell that answered a status its scenario does not expect: the run exits 1.
    wrong_status: list[str]
    floor: list[FloorFigure] = field(default_factory=list)
    floor_shares: list[FloorShare] = field(default_factory=list)

    @property
    def options(self) -> Mapping[str, Any]:
        """Return the run's options as recorded."""
        options: Mapping[str, Any] = self.results["options"]
        return options


def scenario_from_dict(data: Mapping[str, Any]) -> Scenario:
    """Return a Scenario recorded in results.json."""
    return Scenario(
        name=data["name"],
        paths=dict(data["paths"]),
        method=data["method"],
        headers=dict(data["headers"]),
        body=data["body"],
        status=data["status"],
        concurrency=tuple(data["concurrency"]),
        wait_ms=data["wait_ms"],
        builtin=data["builtin"],
    )


def analyse(results: Mapping[str, Any]) -> Analysis:
    """Return the analysis of a results.json document."""
    options = results["options"]
    scenarios = {data["name"]: scenario_from_dict(data) for data in results["scenarios"]}
    wrk_threads = max(1, len(options.get("load_cpus") or []))
    cells = aggregate(results["runs"], wrk_threads)
    contenders = list(options["modes"])
    found_targets = targets(
        cells, results["sse_runs"], scenarios, contenders, options["workers"], options["threads"]
    )
    floor = floor_figures(results.get("floor_runs") or [])
    return Analysis(
        results,
        scenarios,
        cells,
        found_targets,
        checks(cells, scenarios, contenders),
        contenders,
        wrong_status(cells, scenarios),
        floor,
        floor_shares(floor, cells, contenders),
    )


def floor_figures(runs: Sequence[Mapping[str, Any]]) -> list[FloorFigure]:
    """Return the floor's figures per interface and scenario: µs per request over the batches."""
    figures = []
    for run in runs:
        count = run["requests"]
        figures.append(
            FloorFigure(
                interface=run["interface"],
                scenario=run["scenario"],
                path=run["path"],
                status=run["status"],
                requests=count,
                cpu_us=Spread.of([1e6 * batch["cpu_s"] / count for batch in run["batches"]]),
                wall_us=Spread.of([1e6 * batch["wall_s"] / count for batch in run["batches"]]),
            )
        )
    return figures


def floor_shares(
    floor: Sequence[FloorFigure], cells: Mapping[str, CellStats], contenders: Sequence[str]
) -> list[FloorShare]:
    """Return every direct Django cell of a floor scenario against its interface's floor."""
    shares = []
    for mode in contenders:
        interface = Contender(mode).interface
        for figure in floor:
            if figure.interface != interface or figure.status != 200:
                continue
            for cell in find(cells, mode, figure.scenario):
                served = cell.server_cpu_us_per_request
                shares.append(
                    FloorShare(
                        contender=mode,
                        interface=interface,
                        scenario=figure.scenario,
                        concurrency=cell.concurrency,
                        floor_cpu_us=figure.cpu_us,
                        floor_wall_us=figure.wall_us,
                        served_cpu_us=served,
                        share=share(figure.cpu_us.median, served.median),
                    )
                )
    return shares


CeilingRow = tuple[CellStats, str, CellStats | None]


def ceiling_rows(analysis: Analysis, scenario: str) -> list[CeilingRow]:
    """Return the ceiling table of `scenario`: (cell, kind, the Django cell it compares with).

    The ceiling apps first (bare per mode, then the frameworks), then Django at the same
    connections. A bare app compares with Django on its own server config; Starlette and
    Sanic with Django's ASGI contender.
    """
    if scenario not in CEILING_SCENARIOS:
        return []
    ceilings = [
        cell
        for cell in analysis.cells.values()
        if cell.scenario == scenario
        and cell.via == "direct"
        and cell.measured
        and profile_of(cell.contender) in ("bare", STARLETTE, SANIC)
    ]
    order = {"bare": 0, STARLETTE: 1, SANIC: 2}
    ceilings.sort(key=lambda cell: order[profile_of(cell.contender)])
    levels = {cell.concurrency for cell in ceilings}
    rows: list[CeilingRow] = []
    for cell in ceilings:
        profile = profile_of(cell.contender)
        mode = cell.contender.partition("+")[0] if profile == "bare" else DJANGO_ASGI
        django = find(analysis.cells, mode, scenario, cell.concurrency)
        rows.append((cell, KINDS[profile], django[0] if django else None))
    for cell in analysis.cells.values():
        profile = profile_of(cell.contender)
        if (
            cell.scenario == scenario
            and cell.via == "direct"
            and cell.measured
            and profile in ("native", "stock")
            and cell.concurrency in levels
        ):
            rows.append((cell, KINDS[profile], None))
    return rows


def wrong_status(cells: Mapping[str, CellStats], scenarios: Mapping[str, Scenario]) -> list[str]:
    """Return a line for every cell that answered a status its scenario does not expect.

    Either the probe before a run answered another status (the cell was not measured), or wrk
    counted answers of 400 or more where the scenario expects a success.
    """
    found = []
    for cell in cells.values():
        scenario = scenarios.get(cell.scenario)
        expected = scenario.status if scenario else 200
        if cell.skipped:
            reason = cell.skipped
            if len(reason) > SHOWN_REASON:
                reason = reason[: SHOWN_REASON - 3] + "..."
            found.append(f"{cell.key}: {reason}")
        elif expected < 400 and cell.errors.get("status"):
            found.append(
                f"{cell.key}: {cell.errors['status']:,} of {cell.requests:,} answers had a "
                f"status of 400 or more, expected {expected}"
            )
    return found


def best(analysis: Analysis, scenario: str) -> tuple[CellStats | None, list[CellStats]]:
    """Return the fastest native cell of `scenario` at its highest level, and all of that level."""
    level_cells = []
    for contender in analysis.contenders:
        measured = find(analysis.cells, contender, scenario)
        if measured:
            level_cells.append(measured[-1])
    if not level_cells:
        return None, []
    top = max(cell.concurrency for cell in level_cells)
    level_cells = [cell for cell in level_cells if cell.concurrency == top]
    return max(level_cells, key=lambda cell: cell.rps.median), level_cells


def verdict_lines(analysis: Analysis) -> list[str]:
    """Return the verdict in plain words, one line per workload, from the measured figures."""
    lines = []
    for scenario in analysis.scenarios:
        winner, field = best(analysis, scenario)
        if winner is None:
            continue
        others = sorted(
            (cell for cell in field if cell is not winner), key=lambda cell: -cell.rps.median
        )
        workload = WORKLOADS.get(scenario, f"`{analysis.scenarios[scenario].path_for('asgi')}`")
        text = (
            f"**{workload}** ({winner.concurrency} connections): **{winner.contender}** "
            "serves the most, "
            f"{winner.rps.median:,.0f} req/s"
        )
        if others:
            runner_up = others[0]
            lead = (
                winner.rps.median / runner_up.rps.median if runner_up.rps.median else float("inf")
            )
            slowest = others[-1]
            text += (
                f", {lead:.2f}x the next ({runner_up.contender}, {runner_up.rps.median:,.0f})"
                f" and {winner.rps.median / max(slowest.rps.median, 1e-9):.1f}x the slowest "
                f"({slowest.contender}, {slowest.rps.median:,.0f})"
            )
        flagged = [cell.contender for cell in field if cell.error_count]
        if flagged:
            text += f"; with errors: {', '.join(flagged)}"
        lines.append(text + ".")
    sse_runs = analysis.results["sse_runs"]
    if sse_runs:
        top_clients = max(run["clients"] for run in sse_runs)
        parts = [
            f"{run['contender']} {run['connected']:,} connected, "
            f"{100 * run['on_time_ratio']:.0f}% on time"
            for run in sse_runs
            if run["clients"] == top_clients
        ]
        lines.append(f"**{top_clients:,} event streams on one worker**: " + "; ".join(parts) + ".")
    passed = sum(target.verdict == PASS for target in analysis.targets)
    measured = sum(target.verdict != "NOT MEASURED" for target in analysis.targets)
    undecided = sum(target.verdict == UNDECIDED for target in analysis.targets)
    lines.append(
        f"**Targets**: {passed} of {measured} measured targets pass (of 6)"
        + (f", {undecided} undecided (within the noise)" if undecided else "")
        + "."
    )
    return lines


def scenario_dict(scenario: Scenario) -> dict[str, Any]:
    """Return a Scenario for results.json."""
    return {
        "name": scenario.name,
        "paths": dict(scenario.paths),
        "method": scenario.method,
        "headers": dict(scenario.headers),
        "body": scenario.body,
        "status": scenario.status,
        "concurrency": list(scenario.concurrency),
        "wait_ms": scenario.wait_ms,
        "builtin": scenario.builtin,
    }


def is_builtin(name: str) -> bool:
    """Return whether `name` is a showcase scenario."""
    return name in BUILTIN
