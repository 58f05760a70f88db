"""The command: `python -m lab.bench [options]` (`make bench`). See `--help`."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import dj_database_url
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from deploy import nginx
from lab import servers
from lab.bench import charts, infra, machine, report, wrk
from lab.bench.analysis import analyse, scenario_dict
from lab.bench.contenders import (
    SUPERVISOR_INSTALL_HINT,
    SUPERVISOR_TWINS,
    ContenderError,
    available_modes,
    parse_modes,
    supervisor_installed,
)
from lab.bench.fanout import DEFAULT_RATES
from lab.bench.fanout import PATHS as FANOUT_PATHS
from lab.bench.infra import InfraError
from lab.bench.plan import FLOOR_REQUESTS, Options, Plan, build, builtin_scenarios, default_cpus
from lab.bench.runner import BenchError, Runner, hide_password, now, raise_open_files_limit
from lab.bench.scenarios import (
    # showcase:begin
    ENDPOINT_NAMES,
    # showcase:end
    STREAM,
    Scenario,
    ScenarioError,
    from_url,
    load_file,
    parse_endpoints,
    parse_levels,
)

RESULTS_ROOT = servers.REPO_ROOT / "bench-results"
# What a run measures with no --endpoints: nothing built in in a project without the showcase,
# which names its own --url or --scenario.
DEFAULT_ENDPOINTS: tuple[str, ...] = ()
# showcase:begin
DEFAULT_ENDPOINTS = ENDPOINT_NAMES
# showcase:end
# --quick: two modes, two endpoints, one level, one short repeat, 100 SSE clients (< 60 s).
QUICK = {
    "modes": "wsgi_gthread,asgi_uvicorn",
    "endpoints": "hello,sleep,stream",
    "concurrency": "50",
    "duration": 2.0,
    "warmup": 1,
    "repeat": 1,
    "sse_clients": "100",
    "sse_events": 10,
    "sse_interval": 100,
}
EXIT_INTERRUPTED = 130
# The summary of wrong statuses lists this many cells, then counts the rest.
SHOWN_WRONG = 10
NOTHING_TO_MEASURE = (
    "nothing to measure: --endpoints names no showcase endpoint and there is no --url or --scenario"
)


class UsageError(ValueError):
    """The command line cannot be run; the message says why."""


def parser() -> argparse.ArgumentParser:
    """Return the command's argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m lab.bench",
        description=(
            "Benchmark the serving modes side by side with wrk: a matrix of modes x endpoints x "
            "concurrency, directly and through nginx, plus long-lived SSE clients. Writes "
            "results.json, report.md and PNG charts to --out."
        ),
        epilog=(
            "Examples: `python -m lab.bench --quick`; "
            "`python -m lab.bench --url /api/items/ --modes wsgi_gthread,asgi_uvicorn`; "
            "`python -m lab.bench --scenario my-scenarios.toml --no-stock`; "
            "`python -m lab.bench --endpoints '' --url /blog/1/ --fixture blog.json`. "
            "Django runs with production settings on a private SQLite database, freshly migrated "
            "in the work directory; DATABASE_URL from the environment is ignored (see "
            "--database-url and --fixture). "
            "Needs wrk (`sudo apt-get install wrk`) and, for the nginx cells, nginx. "
            "Exit status: 0 every cell answered the status it expects, 1 a failed run or a cell "
            "that answered another status (listed at the end), 2 a usage error, 130 stopped."
        ),
    )
    p.add_argument(
        "--quick", action="store_true", help="a small matrix that runs in under a minute"
    )
    p.add_argument("--out", type=Path, help="output directory (default: bench-results/<timestamp>)")
    p.add_argument(
        "--modes",
        help="comma-separated serving modes (default: all available: "
        + ", ".join(available_modes())
        + ")",
    )
    p.add_argument(
        "--endpoints",
        help=f"comma-separated showcase endpoints (default: {','.join(DEFAULT_ENDPOINTS)}); "
        "'stream' selects the SSE runs; '' for none (then --url or --scenario is the work)",
    )
    p.add_argument(
        "--concurrency",
        help="comma-separated connection counts for every scenario (default: per endpoint)",
    )
    p.add_argument("--duration", type=int, help="whole seconds per measured run (default: 3)")
    p.add_argument(
        "--warmup",
        type=int,
        help="whole seconds of warm-up per scenario on each fresh server, 0 for none (default: 1)",
    )
    p.add_argument(
        "--repeat", type=int, help="repetitions of every cell, in alternating order (default: 3)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        help="worker processes per server (default: 2, as shipped)",
    )
    p.add_argument("--threads", type=int, default=4, help="gthread threads per worker (default: 4)")
    p.add_argument(
        "--url",
        action="append",
        default=[],
        metavar="PATH",
        help="also benchmark GET PATH in every mode (repeatable)",
    )
    p.add_argument(
        "--scenario",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="TOML scenario file (repeatable; see lab/bench/scenarios.py)",
    )
    p.add_argument(
        "--database-url",
        metavar="URL",
        help="serve from this database instead of the private one, e.g. "
        "postgres://user:pass@host/db or sqlite:////abs/db.sqlite3 (`--database-url "
        '"$DATABASE_URL"` for yours): used as it is, neither migrated nor loaded, and a '
        "scenario that writes (POST) writes to it",
    )
    p.add_argument(
        "--fixture",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="load FILE (a `manage.py dumpdata` fixture) into the private database after "
        "migrating it (repeatable, in order)",
    )
    p.add_argument("--no-nginx", action="store_true", help="skip the cells through nginx")
    p.add_argument("--no-stock", action="store_true", help="skip the stock profile")
    p.add_argument("--no-bare", action="store_true", help="skip the bare (no Django) ceiling apps")
    p.add_argument(
        "--frameworks",
        action=argparse.BooleanOptionalAction,
        help="the lean framework ceilings: Starlette on the asgi_uvicorn config and Sanic's own "
        "server answering hello and json (default: on, off with --quick)",
    )
    p.add_argument(
        "--floor",
        action=argparse.BooleanOptionalAction,
        help="the floor: Django's WSGI and ASGI handlers timed in-process on hello and json, "
        "without a server (default: on, off with --quick)",
    )
    p.add_argument(
        "--supervisor",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also run the supervisor process model (deploy/supervisor/run.sh): supervisor_wsgi "
        "beside wsgi_gthread and supervisor_asgi beside asgi_uvicorn, on hello and json, the "
        "same workers and CPUs; needs supervisord and 2 or more workers (default: off: it "
        "would take the default run past 15 minutes)",
    )
    p.add_argument(
        "--fanout",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also run the fan-out: a private redis-server, asgi_uvicorn with --workers workers "
        "on it, N WebSocket (/ws/live/) and N SSE (/async/live/) clients, events published at "
        "each --fanout-rates step until the clients no longer keep up (default: off; needs "
        "redis-server and the showcase's live feed)",
    )
    p.add_argument(
        "--fanout-clients", type=int, help="clients per transport in the fan-out (default: 1000)"
    )
    p.add_argument(
        "--fanout-rates",
        help="comma-separated events/s, stepped up in order (default: 10,50,100,200)",
    )
    p.add_argument("--fanout-step", type=float, help="seconds per fan-out rate (default: 5)")
    p.add_argument(
        "--floor-requests",
        type=int,
        help=f"requests per timed batch of the floor, one batch per repeat (default: "
        f"{FLOOR_REQUESTS})",
    )
    p.add_argument("--sse-clients", help="comma-separated SSE client counts (default: 100,1000)")
    p.add_argument("--sse-events", type=int, help="events per SSE stream (default: 15)")
    p.add_argument("--sse-interval", type=int, help="ms between two SSE events (default: 200)")
    p.add_argument(
        "--sse-ramp",
        type=float,
        help="seconds over which the SSE clients connect, evenly spread (default: 1)",
    )
    p.add_argument(
        "--timeout", type=int, default=2, help="wrk's request timeout in whole seconds (default: 2)"
    )
    p.add_argument("--server-cpus", help="CPUs for the servers, e.g. 0 (default: the first half)")
    p.add_argument(
        "--load-cpus",
        help="CPUs for wrk, nginx, the upstream and the SSE client (default: the rest)",
    )
    p.add_argument(
        "--rebuild",
        type=Path,
        metavar="DIR",
        help="redraw report.md and the charts from DIR/results.json",
    )
    p.add_argument(
        "--keep-work", action="store_true", help="keep the work directory (server logs, database)"
    )
    return p


def cpu_list(text: str | None, name: str) -> tuple[int, ...] | None:
    """Return the CPUs of a --server-cpus/--load-cpus value, or None when not given."""
    if text is None:
        return None
    try:
        cpus = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"{name} {text!r}: expected CPU numbers such as 0 or 0,1") from None
    usable = os.sched_getaffinity(0)
    if not cpus or any(cpu not in usable for cpu in cpus):
        raise UsageError(f"{name} {text!r}: usable CPUs are {sorted(usable)}")
    return cpus


def positive(
    value: float | None, name: str, default: float, low: float = 0.1, high: float = 3600
) -> float:
    """Return `value` (or `default`) checked to lie in [low, high]."""
    chosen = default if value is None else value
    if not low <= chosen <= high:
        raise UsageError(f"{name} {chosen:g}: expected {low:g} to {high:g}")
    return chosen


def database_url(text: str | None) -> str:
    """Return --database-url checked ("" when not given), a relative SQLite path made absolute.

    The servers run in the checkout, not where the command was typed; and SQLite creates a
    missing file, so a mistyped path would serve an empty database.
    """
    if text is None:
        return ""
    try:
        config = dj_database_url.parse(text)
    except ValueError as exc:
        raise UsageError(f"--database-url {hide_password(text)!r}: {exc}") from None
    if config.get("ENGINE") != "django.db.backends.sqlite3":
        return text
    name = str(config.get("NAME") or "")
    if name in ("", ":memory:"):
        raise UsageError(
            "--database-url: an in-memory SQLite database is empty and private to each worker; "
            "give a file, e.g. sqlite:////abs/path/db.sqlite3"
        )
    path = Path(name).absolute()
    if not path.is_file():
        raise UsageError(f"--database-url: no SQLite database at {path}")
    return f"sqlite:///{path}"


def fixtures(paths: Sequence[Path], url: str | None) -> tuple[Path, ...]:
    """Return the --fixture files, absolute, once each exists (and no --database-url is given)."""
    if paths and url is not None:
        raise UsageError(
            "--fixture loads into the private database; with --database-url the data is "
            "already yours: load it there yourself (`manage.py loaddata`)"
        )
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise UsageError(f"--fixture: no such file {', '.join(missing)}")
    return tuple(path.absolute() for path in paths)


def fanout_wanted(chosen: bool) -> bool:
    """Return --fanout checked: the live feed's paths known (the showcase), redis-server here."""
    if not chosen:
        return False
    if not FANOUT_PATHS:
        raise UsageError("--fanout needs the showcase's live feed (/ws/live/, /async/live/)")
    if infra.redis_binary() is None:
        raise UsageError(infra.REDIS_INSTALL_HINT)
    return True


def supervisor(chosen: bool, modes: Sequence[str], workers: int) -> bool:
    """Return --supervisor checked: supervisord installed, a twin mode chosen, 2+ workers."""
    if not chosen:
        return False
    if not supervisor_installed():
        raise UsageError(SUPERVISOR_INSTALL_HINT)
    twins = [twin for twin in SUPERVISOR_TWINS.values() if twin in modes]
    if not twins:
        raise UsageError(
            "--supervisor compares with "
            + " and ".join(SUPERVISOR_TWINS.values())
            + ": choose one of them in --modes"
        )
    if workers < 2:
        raise UsageError(
            "--supervisor needs --workers 2 or more (deploy/supervisor/run.sh refuses fewer)"
        )
    return True


def options_from(args: argparse.Namespace) -> Options:
    """Return the run's options from the command line (--quick fills what is not given)."""
    quick: dict[str, Any] = QUICK if args.quick else {}

    def pick(name: str) -> Any:
        value = getattr(args, name)
        return quick.get(name) if value is None else value

    modes = parse_modes(pick("modes") or ",".join(available_modes()))
    chosen = pick("endpoints")
    endpoints = parse_endpoints(",".join(DEFAULT_ENDPOINTS) if chosen is None else chosen)
    user: list[Scenario] = [from_url(path) for path in args.url]
    for path in args.scenario:
        user += load_file(path)
    scenarios = builtin_scenarios(tuple(endpoints)) + user
    if not scenarios and STREAM not in endpoints and not args.fanout:
        raise UsageError(NOTHING_TO_MEASURE)
    names = [scenario.name for scenario in scenarios]
    if len(set(names)) != len(names):
        raise UsageError(f"scenario names must differ: {names}")
    server_cpus, load_cpus = default_cpus()
    server_cpus = cpu_list(args.server_cpus, "--server-cpus") or server_cpus
    load_cpus = cpu_list(args.load_cpus, "--load-cpus") or load_cpus
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Options(
        out=(args.out or RESULTS_ROOT / stamp).absolute(),
        modes=tuple(modes),
        database_url=database_url(args.database_url),
        fixtures=fixtures(args.fixture, args.database_url),
        endpoints=tuple(endpoints),
        scenarios=tuple(scenarios),
        concurrency=parse_levels(pick("concurrency") or ""),
        duration_s=positive(pick("duration"), "--duration", 3, low=1),
        warmup_s=positive(pick("warmup"), "--warmup", 1, low=0),
        repeat=int(positive(pick("repeat"), "--repeat", 3, low=1, high=50)),
        workers=int(positive(args.workers, "--workers", 2, low=1, high=64)),
        threads=int(positive(args.threads, "--threads", 4, low=1, high=256)),
        nginx=not args.no_nginx,
        stock=not args.no_stock and not args.quick,
        bare=not args.no_bare,
        frameworks=not args.quick if args.frameworks is None else args.frameworks,
        floor=not args.quick if args.floor is None else args.floor,
        supervisor=supervisor(args.supervisor, modes, args.workers),
        fanout=fanout_wanted(args.fanout),
        fanout_clients=int(
            positive(args.fanout_clients, "--fanout-clients", 1000, low=1, high=10_000)
        ),
        fanout_rates=parse_levels(args.fanout_rates or ",".join(map(str, DEFAULT_RATES))),
        fanout_step_s=positive(args.fanout_step, "--fanout-step", 5.0, low=1, high=120),
        floor_requests=int(
            positive(args.floor_requests, "--floor-requests", FLOOR_REQUESTS, low=1, high=1e6)
        ),
        sse_clients=parse_levels(pick("sse_clients") or "100,1000"),
        sse_events=int(positive(pick("sse_events"), "--sse-events", 15, low=1, high=1000)),
        sse_interval_ms=int(
            positive(pick("sse_interval"), "--sse-interval", 200, low=0, high=10_000)
        ),
        sse_ramp_s=positive(pick("sse_ramp"), "--sse-ramp", 1.0, low=0.0, high=600),
        timeout_s=positive(args.timeout, "--timeout", 2, low=1),
        server_cpus=server_cpus,
        load_cpus=load_cpus,
        quick=args.quick,
    )


def options_dict(options: Options) -> dict[str, Any]:
    """Return the options for results.json."""
    data = {name: getattr(options, name) for name in Options.__dataclass_fields__}
    data["out"] = str(options.out)
    data["database_url"] = hide_password(options.database_url)
    data["fixtures"] = [str(path) for path in options.fixtures]
    data["scenarios"] = [scenario.name for scenario in options.scenarios]
    return {
        name: list(value) if isinstance(value, tuple) else value for name, value in data.items()
    }


def write_outputs(results: dict[str, Any], out: Path) -> list[str]:
    """Write results.json, the charts and report.md into `out`; return the chart names."""
    out.mkdir(parents=True, exist_ok=True)
    analysis = analyse(results)
    results["cells"] = [cell.as_dict() for cell in analysis.cells.values()]
    results["targets"] = [target.as_dict() for target in analysis.targets]
    results["checks"] = analysis.checks
    results["wrong_status"] = analysis.wrong_status
    results["floor"] = [figure.as_dict() for figure in analysis.floor]
    results["floor_shares"] = [row.as_dict() for row in analysis.floor_shares]
    (out / "results.json").write_text(
        json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8"
    )
    drawn = (
        charts.draw_all(analysis, out)
        if analysis.cells or results["sse_runs"] or results.get("fanout_runs")
        else []
    )
    (out / "report.md").write_text(report.render(analysis, drawn), encoding="utf-8")
    return drawn


def rebuild(directory: Path, console: Console) -> int:
    """Redraw report.md and the charts of an earlier run from its results.json."""
    path = directory / "results.json"
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        console.print(f"[red]cannot read {path}: {exc}[/red]")
        return 2
    drawn = write_outputs(results, directory)
    console.print(f"rebuilt {directory / 'report.md'} and {len(drawn)} charts")
    return 0


def interrupt(signum: int, frame: FrameType | None) -> None:
    """Turn SIGTERM into KeyboardInterrupt, so the same clean-up runs as for Ctrl-C."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; return 0, 1 (failed, or a wrong status), 2 (usage) or 130 (stopped)."""
    args = parser().parse_args(argv)
    console = Console(stderr=True)
    if args.rebuild:
        return rebuild(args.rebuild, console)
    wrk_binary = wrk.find_wrk()
    if wrk_binary is None:
        console.print(f"[red]{wrk.INSTALL_HINT}[/red]")
        return 2
    try:
        options = options_from(args)
    except (UsageError, ScenarioError, ContenderError) as exc:
        console.print(f"[red]{exc}[/red]")
        return 2
    if options.nginx and nginx.nginx_binary() is None:
        console.print(f"[red]{nginx.INSTALL_HINT} Or skip those cells with --no-nginx.[/red]")
        return 2
    plan = build(options)
    return run(plan, wrk_binary, console, keep_work=args.keep_work, argv=argv)


def run(
    plan: Plan, wrk_binary: str, console: Console, *, keep_work: bool, argv: Sequence[str] | None
) -> int:
    """Run `plan`, write the outputs (partial ones after a stop), and report what happened."""
    options = plan.options
    command = "python -m lab.bench " + shlex.join(
        shown_argv(sys.argv[1:] if argv is None else argv)
    )
    if options.load_cpus:
        # The harness itself (sampling, SSE client, progress) stays off the servers' CPUs.
        os.sched_setaffinity(0, options.load_cpus)
    open_files = raise_open_files_limit()
    estimate = plan.estimate_s()
    console.print(
        f"[bold]dualserve bench[/bold]: {len(plan.groups)} servers x {options.repeat} repeats, "
        f"{plan.cell_count()} cells, {len(plan.sse)} SSE servers; about {estimate / 60:.1f} min. "
        f"Load average now {' '.join(f'{v:.2f}' for v in machine.loadavg())}. Output: {options.out}"
    )
    workdir = Path(tempfile.mkdtemp(prefix="dualserve-bench-"))
    results: dict[str, Any] = {
        "schema": 1,
        "command": command,
        "started": now(),
        "status": "running",
        "options": options_dict(options),
        "scenarios": [scenario_dict(scenario) for scenario in plan.scenarios.values()],
        "machine": machine.facts(wrk.version(wrk_binary)),
        "open_files_limit": open_files,
        "load_start": machine.loadavg(),
    }
    started = time.monotonic()
    previous_term = signal.signal(signal.SIGTERM, interrupt)
    progress = Progress(
        TextColumn("[progress.description]{task.description}", table_column=None),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    )
    task = progress.add_task("starting", total=estimate)

    def advance(seconds: float, label: str) -> None:
        progress.update(task, advance=seconds, description=label[:60] if label else None)

    runner = Runner(plan, wrk_binary, workdir, notify=progress.console.log, advance=advance)
    status, message, stopped = "complete", "", []
    try:
        with progress:
            runner.run()
            progress.update(task, completed=estimate, description="done")
    except KeyboardInterrupt:
        status, message = "interrupted", "stopped by Ctrl-C or SIGTERM"
    except (BenchError, servers.ServerError, wrk.WrkError, InfraError, OSError) as exc:
        status, message = "failed", f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # a bug here: still stop everything, keep what was measured
        status, message = "failed", f"{type(exc).__name__}: {exc}"
        results["traceback"] = traceback.format_exc()
        console.print_exception()
    finally:
        stopped = runner.stop_all()
        signal.signal(signal.SIGTERM, previous_term)
    results.update(
        {
            "status": status,
            "message": message,
            "finished": now(),
            "elapsed_s": time.monotonic() - started,
            "load_end": machine.loadavg(),
            "runs": runner.runs,
            "servers": runner.servers_started,
            "sse_runs": runner.sse_runs,
            "fanout_runs": runner.fanout_runs,
            "floor_runs": runner.floor_runs,
            "commands": runner.commands,
        }
    )
    drawn = write_outputs(results, options.out)
    analysis = analyse(results)
    for line in report.summary_lines(analysis):
        console.print(line)
    console.print(f"results.json, report.md and {len(drawn)} charts in {options.out}")
    if status == "complete" and analysis.wrong_status:
        # Not markup: the lines quote the answers' bodies, which may hold [brackets].
        console.print(wrong_status_summary(analysis.wrong_status), style="red", markup=False)
        console.print(f"server logs kept in {workdir}")
        return 1
    if status == "complete":
        if not keep_work:
            shutil.rmtree(workdir, ignore_errors=True)
            runner.cleanup()
        return 0
    console.print(f"[red]{status}: {message}[/red]")
    if stopped:
        console.print("stopped: " + ", ".join(stopped))
    console.print(f"server logs kept in {workdir}")
    return EXIT_INTERRUPTED if status == "interrupted" else 1


def shown_argv(argv: Sequence[str]) -> list[str]:
    """Return the command line for results.json and the report, database passwords hidden."""
    prefix = "--database-url="
    return [
        prefix + hide_password(arg.removeprefix(prefix))
        if arg.startswith(prefix)
        else hide_password(arg)
        for arg in argv
    ]


def wrong_status_summary(lines: Sequence[str]) -> str:
    """Return what the command prints when cells answered a status they do not expect."""
    shown = [f"  {line}" for line in lines[:SHOWN_WRONG]]
    if len(lines) > SHOWN_WRONG:
        shown.append(f"  and {len(lines) - SHOWN_WRONG} more (report.md)")
    return "\n".join(
        [
            f"{len(lines)} cell(s) answered a status they do not expect, so their figures are not "
            "what was asked for (exit 1); check the URL, the database (--database-url, "
            "--fixture) and the server logs:",
            *shown,
        ]
    )
