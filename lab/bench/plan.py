"""The matrix: which server runs which load, in what order, and how long that should take.

A group is one fresh server (a contender with its worker count) and the cells measured on
it; a cell is one scenario at one concurrency, sent directly or through nginx. Every group's
server starts once and stays up, idle, while the others run; odd repeats run the groups, and
the cells inside each, in reverse order, so slow drift (heat, other load) hits every side.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lab.bench.contenders import (
    FRAMEWORK_CONTENDERS,
    FRAMEWORK_MODE,
    GRANIAN_MODES,
    SUPERVISOR_TWINS,
    Contender,
)
from lab.bench.scenarios import BUILTIN, STREAM, Scenario

# The default run's ceiling check: the bare apps (and the frameworks) at this many connections.
BARE_CONCURRENCY = 100
# What the bare apps and the frameworks answer as the showcase does: the ceiling's scenarios.
CEILING_SCENARIOS = ("hello", "json")
# The scenarios the floor times through Django's handlers in-process (lab.bench.floor).
FLOOR_SCENARIOS = ("hello", "json")
FLOOR_REQUESTS = 2000
FLOOR_WARMUP = 200
# The floor's rough cost for the ETA: Django's import, and a generous time per request.
FLOOR_START_S = 2.5
FLOOR_REQUEST_S = 400e-6
# The profiles compared with "stock": the modes of targets 1 and 2.
STOCK_MODES = ("asgi_uvicorn", "wsgi_sync")
STOCK_SCENARIOS = ("hello", "json")
# The supervisor contenders run the cells their gunicorn-master twin runs on these scenarios.
SUPERVISOR_SCENARIOS = ("hello", "json")
# granian is the optional contender: the default matrix gives it the showcase endpoints that
# compare servers (hello, json, sleep) and skips the ones that compare Django code paths.
GRANIAN_SCENARIOS = ("hello", "json", "sleep")
# Rough costs for the ETA: seconds to start a server (Django import; a bare app is quicker)
# and around each run.
START_S = 3.0
START_BARE_S = 1.5
# supervisord: both interfaces' processes start (startsecs 2), then the idle one is stopped.
START_SUPERVISOR_S = 6.0
WARMUP_MAX_CONNECTIONS = 50
RUN_OVERHEAD_S = 0.4
SSE_GRACE_S = 3.0
# The fan-out's rough costs: handshakes a second, and the wait after each step.
FANOUT_CONNECTS_PER_S = 400
FANOUT_DRAIN_S = 2.0
# The fan-out runs on the ASGI mode whose workers are uvicorn's, with Redis as the bus.
FANOUT_MODE = "asgi_uvicorn"


@dataclass(frozen=True)
class Options:
    """Everything a run was asked to do (the command line, checked)."""

    out: Path
    modes: tuple[str, ...]
    endpoints: tuple[str, ...]
    scenarios: tuple[Scenario, ...]
    concurrency: tuple[int, ...] = ()
    duration_s: float = 3.0
    warmup_s: float = 1.0
    repeat: int = 3
    workers: int = 2
    threads: int = 4
    nginx: bool = True
    stock: bool = True
    bare: bool = True
    frameworks: bool = True
    floor: bool = True
    supervisor: bool = False
    fanout: bool = False
    fanout_clients: int = 1000
    fanout_rates: tuple[int, ...] = (10, 50, 100, 200)
    fanout_step_s: float = 5.0
    floor_requests: int = FLOOR_REQUESTS
    sse_clients: tuple[int, ...] = (100, 1000)
    sse_events: int = 15
    sse_interval_ms: int = 200
    sse_ramp_s: float = 1.0
    timeout_s: float = 2.0
    server_cpus: tuple[int, ...] = ()
    load_cpus: tuple[int, ...] = ()
    quick: bool = False
    # "": a private SQLite database, freshly migrated, with `fixtures` loaded into it.
    database_url: str = ""
    fixtures: tuple[Path, ...] = ()


@dataclass(frozen=True)
class Cell:
    """One scenario at one concurrency on one contender, directly or through nginx."""

    contender: str
    scenario: str
    concurrency: int
    via: str = "direct"

    @property
    def key(self) -> str:
        """Return the cell's identifier in results.json."""
        return f"{self.contender}|{self.scenario}|c{self.concurrency}|{self.via}"


@dataclass
class Group:
    """One fresh server, and the cells measured on it in every repeat."""

    contender: Contender
    workers: int
    cells: list[Cell] = field(default_factory=list)

    @property
    def needs_nginx(self) -> bool:
        """Return whether any cell goes through nginx."""
        return any(cell.via == "nginx" for cell in self.cells)


@dataclass
class SseGroup:
    """One fresh one-worker server holding `clients` streams per run, once each."""

    contender: Contender
    clients: tuple[int, ...]


@dataclass(frozen=True)
class FloorJob:
    """One interface's handler timed in-process on the scenarios' paths (lab.bench.floor)."""

    interface: str
    scenarios: tuple[str, ...]


@dataclass(frozen=True)
class FanoutJob:
    """The fan-out on one ASGI server: `clients` WebSockets and as many SSE streams."""

    contender: Contender
    workers: int
    clients: int
    rates: tuple[int, ...]
    step_s: float


@dataclass
class Plan:
    """The whole run: the wrk groups, the SSE groups, the floor, and the scenarios by name."""

    groups: list[Group]
    sse: list[SseGroup]
    scenarios: dict[str, Scenario]
    options: Options
    floor: list[FloorJob] = field(default_factory=list)
    fanout: list[FanoutJob] = field(default_factory=list)

    def ordered(self, repeat: int) -> Iterator[tuple[Group, list[Cell]]]:
        """Yield the groups and their cells in the order of repeat `repeat` (0-based)."""
        groups = self.groups if repeat % 2 == 0 else list(reversed(self.groups))
        for group in groups:
            cells = group.cells if repeat % 2 == 0 else list(reversed(group.cells))
            yield group, cells

    def cell_count(self) -> int:
        """Return the number of cells (each measured `repeat` times)."""
        return sum(len(group.cells) for group in self.groups)

    def estimate_s(self) -> float:
        """Return how long the run should take, roughly, in seconds."""
        opts = self.options
        starts = sum(start_s(group.contender) + opts.warmup_s for group in self.groups)
        runs = self.cell_count() * opts.repeat * (opts.duration_s + RUN_OVERHEAD_S)
        stream_s = opts.sse_ramp_s + (opts.sse_events - 1) * opts.sse_interval_ms / 1000 + 1.0
        sse = sum(START_S + len(group.clients) * (stream_s + 1.0) for group in self.sse)
        requests = opts.floor_requests * opts.repeat + FLOOR_WARMUP
        floor = sum(
            FLOOR_START_S + len(job.scenarios) * requests * FLOOR_REQUEST_S for job in self.floor
        )
        fanout = sum(
            START_S
            + 2 * job.clients / FANOUT_CONNECTS_PER_S
            + len(job.rates) * (job.step_s + FANOUT_DRAIN_S)
            for job in self.fanout
        )
        return starts + runs + sse + floor + fanout


def start_s(contender: Contender) -> float:
    """Return roughly how long a contender's server takes to start."""
    if contender.profile == "bare":
        return START_BARE_S
    return START_SUPERVISOR_S if contender.mode in SUPERVISOR_TWINS else START_S


def warmups(group: Group) -> tuple[list[str], int]:
    """Return the scenarios a fresh server warms up with, all at once, and the connections.

    Directly, at the group's highest level (capped), so worker start-up, lazy imports, database
    connections, HTTP client pools and threads exist before the first measured second.
    nginx's upstream connections open within the first milliseconds of its own runs.
    """
    scenarios = list(dict.fromkeys(cell.scenario for cell in group.cells))
    # Capped: a sync worker at 500 connections queues the overflow in its backlog, which the
    # first measured run would then pay for.
    return scenarios, min(WARMUP_MAX_CONNECTIONS, max(cell.concurrency for cell in group.cells))


def levels(scenario: Scenario, options: Options) -> tuple[int, ...]:
    """Return the concurrency levels of `scenario`: --concurrency, else its own, else 10,100."""
    return options.concurrency or scenario.concurrency or (10, 100)


def ceiling_level(scenario: Scenario, options: Options) -> int:
    """Return the one level a ceiling app runs at: 100 when the scenario has it, else its top."""
    chosen = levels(scenario, options)
    return BARE_CONCURRENCY if BARE_CONCURRENCY in chosen else max(chosen)


def ceiling_group(
    contender: Contender, options: Options, scenarios: dict[str, Scenario], names: Sequence[str]
) -> Group:
    """Return a ceiling app's group: the chosen scenarios of `names`, each at its ceiling level."""
    return Group(
        contender,
        options.workers,
        [
            Cell(contender.name, name, ceiling_level(scenarios[name], options))
            for name in names
            if name in scenarios
        ],
    )


def build(options: Options) -> Plan:
    """Return the plan of a run from its options."""
    scenarios = {scenario.name: scenario for scenario in options.scenarios}
    groups = []
    native = [Contender(mode) for mode in options.modes]
    for contender in native:
        group = Group(contender, options.workers)
        for scenario in scenarios.values():
            if (
                contender.mode in GRANIAN_MODES
                and scenario.builtin
                and scenario.name not in GRANIAN_SCENARIOS
            ):
                continue
            group.cells += [
                Cell(contender.name, scenario.name, c) for c in levels(scenario, options)
            ]
        if options.nginx and scenarios:
            # nginx's cost is measured on the first scenario (hello when chosen), at its
            # highest level: the proxy hop, not the app, is what differs.
            first = next(iter(scenarios.values()))
            group.cells.append(
                Cell(contender.name, first.name, max(levels(first, options)), via="nginx")
            )
        if group.cells:
            groups.append(group)
    if options.supervisor:
        groups += supervisor_groups(options, scenarios)
    if options.stock:
        for mode in options.modes:
            if mode not in STOCK_MODES:
                continue
            contender = Contender(mode, "stock")
            group = Group(contender, options.workers)
            for name in STOCK_SCENARIOS:
                if name in scenarios:
                    group.cells += [
                        Cell(contender.name, name, c) for c in levels(scenarios[name], options)
                    ]
            if group.cells:
                groups.append(group)
    ceilings: list[tuple[Contender, Sequence[str]]] = []
    if options.bare:
        # hello on every mode: each server's ceiling. JSON too on the server the frameworks
        # share, so the ceiling table has all three apps without Django for both answers.
        ceilings += [
            (
                Contender(mode, "bare"),
                CEILING_SCENARIOS if options.frameworks and mode == FRAMEWORK_MODE else ("hello",),
            )
            for mode in options.modes
        ]
    if options.frameworks:
        ceilings += [(contender, CEILING_SCENARIOS) for contender in FRAMEWORK_CONTENDERS]
    for contender, names in ceilings:
        group = ceiling_group(contender, options, scenarios, names)
        if group.cells:
            groups.append(group)
    sse = []
    if STREAM in options.endpoints and options.sse_clients:
        sse = [SseGroup(contender, options.sse_clients) for contender in native]
    floor = []
    if options.floor:
        chosen = tuple(name for name in FLOOR_SCENARIOS if name in scenarios)
        interfaces = dict.fromkeys(contender.interface for contender in native)
        floor = [FloorJob(interface, chosen) for interface in interfaces if chosen]
    fanout = []
    if options.fanout:
        fanout = [
            FanoutJob(
                Contender(FANOUT_MODE),
                options.workers,
                options.fanout_clients,
                options.fanout_rates,
                options.fanout_step_s,
            )
        ]
    return Plan(groups, sse, scenarios, options, floor, fanout)


def supervisor_groups(options: Options, scenarios: dict[str, Scenario]) -> list[Group]:
    """Return a group per supervisor mode whose twin is chosen: the twin's hello and json cells.

    Direct only: nginx in front is the same proxy hop whatever runs behind it.
    """
    groups = []
    for mode, twin in SUPERVISOR_TWINS.items():
        if twin not in options.modes:
            continue
        contender = Contender(mode)
        group = Group(contender, options.workers)
        for name in SUPERVISOR_SCENARIOS:
            if name in scenarios:
                group.cells += [
                    Cell(contender.name, name, c) for c in levels(scenarios[name], options)
                ]
        if group.cells:
            groups.append(group)
    return groups


def default_cpus() -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Return (server CPUs, load CPUs): the first half for the server, the rest for the load.

    One usable CPU: no pinning at all (both empty), and the report says so.
    """
    usable = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(usable) < 2:
        return (), ()
    half = len(usable) // 2
    return tuple(usable[:half]), tuple(usable[half:])


def builtin_scenarios(endpoints: tuple[str, ...]) -> list[Scenario]:
    """Return the showcase scenarios named in `endpoints`, in the order given."""
    return [BUILTIN[name] for name in endpoints if name in BUILTIN]
