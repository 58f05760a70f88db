"""`manage.py dbbudget`: the PostgreSQL connections the serving modes hold at their peak.

Each mode is read the way its server would start: the gunicorn config file with gunicorn's own
loader (the environment, then GUNICORN_CMD_ARGS), and the settings module with DJANGO_INTERFACE
set as project/wsgi.py or project/asgi.py sets it, because the pool's size depends on it. Both
are read in a fresh interpreter per mode (`probe`): this process's settings were made for
manage.py, and a config file reads the environment once, at import. The rule itself is
apps.dualserve.budget; docs/connections.md explains it.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection
from gunicorn.app.base import Application
from gunicorn.workers.gthread import ThreadWorker
from gunicorn.workers.sync import SyncWorker

from apps.dualserve.budget import (
    DEFAULT_HEADROOM,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_SUPERUSER_RESERVED,
    Budget,
    Limit,
    Pool,
    Server,
    bounded_by,
    budget,
    per_process,
    per_replica,
)

POSTGRESQL = "django.db.backends.postgresql"
# What compose.yaml and `make up` run side by side when SERVE_MODE names no single mode.
DEFAULT_WSGI_MODE = "wsgi_gthread"
DEFAULT_ASGI_MODE = "asgi_uvicorn"
# Files in deploy/gunicorn/ that are not serving modes (as deploy/docker/entrypoint.sh says).
NOT_MODES = {"common", "__init__"}
# Loading a config file and a settings module, on a loaded machine: seconds, not minutes.
PROBE_TIMEOUT_S = 60
# --ask-server gives up on a server that does not answer within this many seconds.
CONNECT_TIMEOUT_S = 10
JOB = "-"  # the probe's name for a manage.py process: no gunicorn, no interface

PROBE = (
    "import sys\n"
    "from apps.dualserve.management.commands.dbbudget import print_probe\n"
    "print_probe(sys.argv[1])\n"
)


def modes_dir() -> Path:
    """Return the directory of the gunicorn config files, one per serving mode."""
    return Path(settings.BASE_DIR) / "deploy" / "gunicorn"


def available_modes() -> list[str]:
    """Return the serving modes: the config files in deploy/gunicorn/."""
    return sorted(path.stem for path in modes_dir().glob("*.py") if path.stem not in NOT_MODES)


def default_modes() -> list[str]:
    """Return SERVE_MODE (one container, one server), else the WSGI and ASGI pair compose runs."""
    serve_mode = os.environ.get("SERVE_MODE", "").strip()
    if serve_mode:
        return [serve_mode]
    return [
        os.environ.get("WSGI_MODE", "").strip() or DEFAULT_WSGI_MODE,
        os.environ.get("ASGI_MODE", "").strip() or DEFAULT_ASGI_MODE,
    ]


def env_count(name: str, default: int) -> int:
    """Return the environment variable `name` as a count (0 or more), or `default` when unset."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise CommandError(f"{name}={value!r} is not an integer.") from None
    if number < 0:
        raise CommandError(f"{name}={value!r} must be 0 or more.")
    return number


# --- The probe: runs in a fresh interpreter, prints one JSON object ------------------------------


class FileConfig(Application):  # type: ignore[misc]  # untyped base (no py.typed)
    """gunicorn's own loader on one config file, then GUNICORN_CMD_ARGS; no command line."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__()

    def load_config(self) -> None:
        # gunicorn's Application.load_config, minus sys.argv (this process's are not gunicorn's).
        self.load_config_from_file(self.path)
        parser = self.cfg.parser()
        for name, value in vars(parser.parse_args(self.cfg.get_cmd_args_from_env())).items():
            if value is not None and name not in {"args", "config"}:
                self.cfg.set(name.lower(), value)

    def load(self) -> None:
        raise NotImplementedError("only the configuration is read")


def pool_of(database: dict[str, Any]) -> dict[str, int] | None:
    """Return the psycopg pool's min_size and max_size configured for `database`, or None."""
    options = database.get("OPTIONS", {}).get("pool")
    if not options:
        return None
    options = {} if options is True else options
    # psycopg_pool's defaults: min_size 4, max_size None (= min_size).
    min_size = int(options.get("min_size", 4))
    max_size = options.get("max_size")
    return {"min_size": min_size, "max_size": min_size if max_size is None else int(max_size)}


def print_probe(path: str) -> None:
    """Print, as JSON, how the server of config file `path` (JOB: manage.py) would start."""
    report: dict[str, Any] = {}
    if path == JOB:
        os.environ.pop("DJANGO_INTERFACE", None)
    else:
        cfg = FileConfig(path).cfg
        # gunicorn turns `sync` with threads > 1 into gthread itself (Config.worker_class);
        # every other worker class serves requests concurrently on one thread: ASGI.
        asgi = not issubclass(cfg.worker_class, (SyncWorker, ThreadWorker))
        report.update(
            asgi=asgi,
            workers=cfg.workers,
            threads=cfg.threads,
            worker_connections=cfg.worker_connections,
        )
        os.environ["DJANGO_INTERFACE"] = "asgi" if asgi else "wsgi"
    module = importlib.import_module(os.environ.get("DJANGO_SETTINGS_MODULE", "project.settings"))
    database = module.DATABASES["default"]
    report.update(engine=database["ENGINE"], pool=pool_of(database))
    print(json.dumps(report))


def probe(path: str) -> dict[str, Any]:
    """Run `print_probe(path)` in a fresh interpreter, on this environment; return its report."""
    try:
        done = subprocess.run(  # noqa: S603  (our own interpreter and code, no shell)
            [sys.executable, "-c", PROBE, path],
            cwd=settings.BASE_DIR,
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise CommandError(f"Reading {path} took more than {PROBE_TIMEOUT_S} s.") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise CommandError(f"Could not read how {path} starts: {last}")
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


# --- The command ---------------------------------------------------------------------------------


def server_of(mode: str, report: dict[str, Any]) -> Server:
    """Return the budget's view of `mode` from its probe report."""
    pool = report["pool"]
    return Server(
        name=mode,
        asgi=report["asgi"],
        workers=report["workers"],
        threads=report["threads"],
        worker_connections=report["worker_connections"],
        pool=None if pool is None else Pool(**pool),
    )


def ask_server() -> Limit:
    """Return the configured database server's connection limit, read from the server."""
    if connection.vendor != "postgresql":
        raise CommandError(
            f"--ask-server needs PostgreSQL; DATABASES['default'] is {connection.vendor}."
        )
    where = f"{connection.settings_dict['HOST'] or 'local'}:{connection.settings_dict['PORT']}"
    names = ["max_connections", "superuser_reserved_connections", "reserved_connections"]
    # One connection of its own, as Django would open it but outside psycopg's pool: a pool
    # retries an unreachable server for its whole timeout (30 s) before it gives up.
    params = connection.get_connection_params()
    try:
        with psycopg.connect(**params, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
            # pg_settings, not SHOW: reserved_connections exists on PostgreSQL 16+ only.
            rows = conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", [names]
            ).fetchall()
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CommandError(f"--ask-server: could not ask the server at {where}: {first}") from exc
    found = {name: int(setting) for name, setting in rows}
    reserved = found["superuser_reserved_connections"] + found.get("reserved_connections", 0)
    return Limit(found["max_connections"], reserved, f"the server at {where}")


class Command(BaseCommand):
    help = (
        "Print the PostgreSQL connections each serving mode holds at its peak (per worker, per "
        "replica, in total) and exit non-zero when the total exceeds what the server admits "
        "(max_connections minus the superuser-reserved slots). The rule: docs/connections.md."
    )
    # Nothing here needs the project's checks, and --ask-server reads the server itself.
    requires_system_checks = ()

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--mode",
            action="append",
            dest="modes",
            metavar="MODE",
            help=(
                "a serving mode (a file in deploy/gunicorn/), repeatable; every mode given runs "
                "on each replica. Default: SERVE_MODE, else WSGI_MODE and ASGI_MODE "
                f"({DEFAULT_WSGI_MODE} and {DEFAULT_ASGI_MODE}, as compose runs them)"
            ),
        )
        parser.add_argument(
            "--replicas",
            type=int,
            help="replicas running at once, a rolling update's extra ones included "
            "(default: DUALSERVE_REPLICAS, else 1)",
        )
        parser.add_argument(
            "--jobs",
            type=int,
            default=1,
            help="manage.py processes beside the servers, such as the migrate job (1)",
        )
        parser.add_argument(
            "--headroom",
            type=int,
            default=DEFAULT_HEADROOM,
            help=f"sessions of people and tools: psql, a backup, monitoring ({DEFAULT_HEADROOM})",
        )
        limit = parser.add_mutually_exclusive_group()
        limit.add_argument(
            "--max-connections",
            type=int,
            help="the server's max_connections (default: DUALSERVE_DB_MAX_CONNECTIONS, else "
            f"PostgreSQL's default, {DEFAULT_MAX_CONNECTIONS})",
        )
        limit.add_argument(
            "--ask-server",
            action="store_true",
            help="read max_connections and the reserved slots from the configured database",
        )
        parser.add_argument(
            "--reserved",
            type=int,
            default=DEFAULT_SUPERUSER_RESERVED,
            help="the server's superuser_reserved_connections, with --max-connections "
            f"({DEFAULT_SUPERUSER_RESERVED})",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        modes = options["modes"] or default_modes()
        known = available_modes()
        for mode in modes:
            if mode not in known:
                raise CommandError(
                    f"{mode!r} is not a serving mode; use one of: {', '.join(known)}"
                )
        replicas = options["replicas"]
        if replicas is None:
            replicas = env_count("DUALSERVE_REPLICAS", 1)
        for name in ("replicas", "jobs", "headroom", "reserved"):
            value = replicas if name == "replicas" else options[name]
            if value < 0:
                raise CommandError(f"--{name} must be 0 or more.")

        reports = {mode: probe(str(modes_dir() / f"{mode}.py")) for mode in modes}
        job = probe(JOB)
        engines = {report["engine"] for report in [*reports.values(), job]}
        if engines != {POSTGRESQL}:
            raise CommandError(
                "dbbudget counts PostgreSQL connections, and DATABASES['default'] uses "
                f"{', '.join(sorted(engines))}. Set DATABASE_URL=postgres://... (the server "
                "is only contacted with --ask-server)."
            )
        servers = [server_of(mode, report) for mode, report in reports.items()]
        job_pool = None if job["pool"] is None else Pool(**job["pool"])
        result = budget(
            servers,
            replicas=replicas,
            jobs=options["jobs"],
            job_pool=job_pool,
            headroom=options["headroom"],
        )
        limit = self.limit(options)
        self.stdout.write("\n".join(self.report(result, limit)))
        over = result.over(limit)
        if over > 0:
            raise CommandError(self.refusal(result, limit, over))

    @staticmethod
    def limit(options: dict[str, Any]) -> Limit:
        """Return the server's limit: asked, given, from the environment, or PostgreSQL's."""
        if options["ask_server"]:
            return ask_server()
        if options["max_connections"] is not None:
            return Limit(options["max_connections"], options["reserved"], "--max-connections")
        given = env_count("DUALSERVE_DB_MAX_CONNECTIONS", 0)
        if given:
            return Limit(given, options["reserved"], "DUALSERVE_DB_MAX_CONNECTIONS")
        return Limit(
            DEFAULT_MAX_CONNECTIONS,
            options["reserved"],
            "PostgreSQL's default (pass --max-connections N or --ask-server)",
        )

    @staticmethod
    def report(result: Budget, limit: Limit) -> list[str]:
        """Return the table: a row per mode, then the deployment's totals and the limit."""
        rows = [
            (
                server.name,
                str(server.workers),
                str(per_process(server)),
                bounded_by(server),
                str(per_replica(server)),
            )
            for server in result.servers
        ]
        header = ("mode", "workers", "per worker", "bounded by", "per replica")
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

        def line(row: tuple[str, ...]) -> str:
            name, *figures, why, replica = row
            cells = [f"{name:<{widths[0]}}"]
            cells += [
                f"{figure:>{width}}" for figure, width in zip(figures, widths[1:3], strict=True)
            ]
            cells += [f"{why:<{widths[3]}}", f"{replica:>{widths[4]}}"]
            return "  ".join(cells)

        replicas = f"x {result.replicas} replica{'' if result.replicas == 1 else 's'}"
        jobs = f"+ {result.jobs} manage.py job{'' if result.jobs == 1 else 's'}"
        totals = [
            ("per replica", f"{result.per_replica}"),
            (replicas, f"{result.replicas * result.per_replica}"),
            (jobs, f"{result.jobs * result.per_job} ({result.per_job} each)"),
            ("+ headroom", f"{result.headroom}"),
            ("total at peak", f"{result.total}"),
            (
                "server admits",
                f"{limit.available} (max_connections {limit.max_connections} - {limit.reserved} "
                f"reserved: {limit.source})",
            ),
        ]
        label = max(len(name) for name, _ in totals)
        spare = limit.available - result.total
        verdict = f"fits, {spare} to spare" if spare >= 0 else f"over by {-spare}"
        return [
            line(header),
            *(line(row) for row in rows),
            "",
            *(f"{name:<{label}}  {value}" for name, value in totals),
            f"{'verdict':<{label}}  {verdict}",
        ]

    @staticmethod
    def refusal(result: Budget, limit: Limit, over: int) -> str:
        """Return why the budget does not fit, and what to change."""
        message = (
            f"{result.total} connections at peak exceed the {limit.available} the server admits "
            f"by {over}. Lower WEB_CONCURRENCY or DJANGO_DB_POOL_MAX_SIZE, run fewer replicas, "
            "raise max_connections, or put PgBouncer in front (docs/connections.md)."
        )
        unpooled = [server.name for server in result.servers if server.asgi and not server.pool]
        if unpooled:
            message += (
                f" {', '.join(unpooled)} runs without psycopg's pool: every request in flight "
                "can hold a connection of its own; DJANGO_DB_POOL=true bounds them."
            )
        return message
