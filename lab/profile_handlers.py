"""CPU per request of the template's handlers called in-process: WSGI vs ASGI, no server, no socket.

    python -m lab.profile_handlers                      # this tree, both interfaces
    python -m lab.profile_handlers --before /tmp/wt     # ...and another checkout, alternated
    python -m lab.profile_handlers --cprofile asgi      # where an ASGI request's time goes
    python -m lab.profile_handlers --served             # served, access log off/gunicorn/queued

WSGI is `project.wsgi.application`; ASGI is the http application of `apps.dualserve.asgi`
(`get_asgi_application()`, what project.asgi routes http to), awaited on a uvloop loop as
uvicorn runs it. Each measurement runs in a fresh child process pinned to one CPU with
`taskset`, with the servers' production environment (lab.bench.runner.server_env) on a private
var dir. The figure is CPU time (time.process_time: every thread of the process) per request,
the minimum over batches: the machine is shared, and the minimum is the run least disturbed by
others. With --before, the rounds alternate between the two trees in one run, so drift in the
machine's load hits both alike.

--served starts each serving mode (asgi_uvicorn on /async/hello/, wsgi_sync on /sync/hello/)
with one worker pinned to one CPU and loads it with wrk pinned to the other, once for each
access log: off (accesslog = None), gunicorn's own Logger, and deploy.accesslog's
QueuedAccessLogger, written to the server's output file. The variants alternate within each
round. It prints requests/s and the server's CPU per request (utime + stime of its process
group, from /proc): the CPU figure is the one that holds on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, MutableMapping
from pathlib import Path
from typing import Any

from lab.bench.floor import asgi_scope, wsgi_environ

REPO_ROOT = Path(__file__).resolve().parents[1]
INTERFACES = ("wsgi", "asgi")
PATHS = {"wsgi": "/sync/hello/", "asgi": "/async/hello/"}
CHILD_TIMEOUT = 300  # seconds per child process
Message = MutableMapping[str, Any]


# --- The child: one interface, one tree --------------------------------------------------------


def wsgi_runner(path: str) -> Callable[[int], None]:
    """Return a function that sends GET `path` n times through project.wsgi, as gunicorn does."""
    from project.wsgi import application

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        if not status.startswith("200"):
            raise RuntimeError(f"{path}: {status}")

    def run(count: int) -> None:
        for _ in range(count):
            environ = wsgi_environ(path)
            body = application(environ, start_response)
            for _chunk in body:
                pass
            body.close()  # request_finished, as after a served request

    return run


def asgi_runner(path: str) -> Callable[[int], None]:
    """Return a function that sends GET `path` n times through the http application."""
    import uvloop

    os.environ["DJANGO_INTERFACE"] = "asgi"  # as project.asgi sets it
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    from apps.dualserve.asgi import get_asgi_application

    application = get_asgi_application()
    loop = uvloop.new_event_loop()

    async def one() -> None:
        sent: list[Message] = []
        messages = iter([{"type": "http.request", "body": b"", "more_body": False}])
        # After the body, a receive waits until it is cancelled: the client never leaves.
        never = loop.create_future()

        async def receive() -> Message:
            message = next(messages, None)
            if message is None:
                await never
            return message or {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            sent.append(message)

        scope = asgi_scope(path)
        await application(scope, receive, send)
        if sent[0]["status"] != 200:
            raise RuntimeError(f"{path}: {sent[0]['status']}")

    async def many(count: int) -> None:
        for _ in range(count):
            await one()

    def run(count: int) -> None:
        loop.run_until_complete(many(count))

    return run


def child(interface: str, requests: int, batches: int, warmup: int, cprofile: bool) -> None:
    """Time `batches` batches of `requests` requests; print the per-request CPU as JSON."""
    run = (wsgi_runner if interface == "wsgi" else asgi_runner)(PATHS[interface])
    run(warmup)
    if cprofile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.runcall(run, requests)
        stats = pstats.Stats(profiler, stream=sys.stderr)
        stats.sort_stats("tottime").print_stats(35)
        stats.sort_stats("cumulative").print_stats(45)
        return
    per_request = []
    for _ in range(batches):
        start = time.process_time()
        run(requests)
        per_request.append((time.process_time() - start) / requests * 1e6)
    print(json.dumps({"interface": interface, "us": per_request}))


# --- The parent: rounds of children, alternated -------------------------------------------------


def child_env(root: Path, var_dir: Path) -> dict[str, str]:
    """Return the production environment of the servers, importing from `root`."""
    from lab.bench.runner import server_env

    env = dict(os.environ)
    for key, value in server_env(var_dir).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    env["PYTHONPATH"] = str(root)
    return env


def run_child(
    root: Path, interface: str, options: argparse.Namespace, var_dir: Path, cprofile: bool = False
) -> list[float]:
    """Run one child for `interface` from the tree at `root`; return its per-batch figures."""
    command = [
        "taskset",
        "-c",
        str(options.cpu),
        sys.executable,
        # By file, not -m: the other tree may not have this module; -P keeps lab/ off sys.path.
        "-P",
        str(Path(__file__).resolve()),
        "--child",
        interface,
        f"--requests={options.requests}",
        f"--batches={options.batches}",
        f"--warmup={options.warmup}",
        *(["--cprofile", interface] if cprofile else []),
    ]
    done = subprocess.run(  # noqa: S603  (our own interpreter and this file, no shell)
        command,
        cwd=root,
        env=child_env(root, var_dir),
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{root} {interface}: exit {done.returncode}\n{done.stderr[-3000:]}")
    if cprofile:
        print(done.stderr)
        return []
    figures: list[float] = json.loads(done.stdout.strip().splitlines()[-1])["us"]
    return figures


# --- Served: the access log's cost under load ------------------------------------------------

SERVED = {"asgi_uvicorn": "/async/hello/", "wsgi_sync": "/sync/hello/"}
ACCESS_LOGS = {
    "off": "accesslog = None",
    "gunicorn": 'logger_class = "gunicorn.glogging.Logger"',
    "queued": 'logger_class = "deploy.accesslog.QueuedAccessLogger"',
}
WRK_TIMEOUT = 120  # seconds, beyond the run's own duration
RPS_RE = re.compile(r"^Requests/sec:\s+([0-9.]+)", re.MULTILINE)
TOTAL_RE = re.compile(r"^\s*(\d+) requests in ", re.MULTILINE)


def group_cpu_seconds(pgid: int) -> float:
    """Return the user + system CPU seconds of every live process in process group `pgid`."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name (field 2) may hold spaces: split after its closing parenthesis.
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # the process ended meanwhile
        if int(fields[2]) == pgid:  # fields[0] is field 3 (state): pgrp is field 5
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def served_round(
    mode: str, access_log: str, options: argparse.Namespace, scratch: Path
) -> tuple[float, float]:
    """Serve `mode` with `access_log`, load it with wrk; return (requests/s, CPU us/request)."""
    from lab.bench.runner import server_env
    from lab.servers import gunicorn_executable, start

    config = scratch / f"{mode}_{access_log}.py"
    config.write_text(f"from deploy.gunicorn.{mode} import *  # noqa: F403\n")
    with config.open("a") as file:
        file.write(f"{ACCESS_LOGS[access_log]}\nmax_requests = 0\n")
    env = {**server_env(scratch / "var"), "WEB_CONCURRENCY": "1"}
    argv = ["taskset", "-c", str(options.cpu), gunicorn_executable(), "-c", str(config)]
    path = SERVED[mode]
    with start(argv, env=env, bind_with="BIND", workdir=scratch / f"{mode}-{access_log}") as server:

        def wrk(seconds: int) -> list[str]:
            url = server.base_url + path
            connections = f"-c{options.connections}"
            return [
                "taskset",
                "-c",
                str(options.wrk_cpu),
                "wrk",
                "-t1",
                connections,
                f"-d{seconds}s",
                url,
            ]

        # A warm-up, then the measured run.
        subprocess.run(wrk(1), capture_output=True, check=True, timeout=WRK_TIMEOUT)  # noqa: S603
        cpu = group_cpu_seconds(server.pid)
        done = subprocess.run(  # noqa: S603  (wrk with our own arguments, no shell)
            wrk(options.duration),
            capture_output=True,
            text=True,
            check=True,
            timeout=options.duration + WRK_TIMEOUT,
        )
        cpu = group_cpu_seconds(server.pid) - cpu
        rps_match, total_match = RPS_RE.search(done.stdout), TOTAL_RE.search(done.stdout)
        if not rps_match or not total_match or "Non-2xx" in done.stdout:
            raise SystemExit(f"{mode} {access_log}: unexpected wrk output:\n{done.stdout}")
        if access_log != "off" and f"GET {path} HTTP/1.1" not in server.output():
            raise SystemExit(f"{mode} {access_log}: no access line in the server's output")
    return float(rps_match.group(1)), cpu / int(total_match.group(1)) * 1e6


def served(options: argparse.Namespace) -> None:
    """Alternate the access-log variants for each mode; print the best round of each."""
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="profile-served-") as scratch:
        for round_number in range(1, options.rounds + 1):
            for mode in SERVED:
                for access_log in ACCESS_LOGS:
                    rps, cpu_us = served_round(mode, access_log, options, Path(scratch))
                    results.setdefault((mode, access_log), []).append((rps, cpu_us))
                    print(
                        f"round {round_number} {mode:<12} access log {access_log:<8}: "
                        f"{rps:8.0f} req/s  {cpu_us:6.1f} us CPU/request",
                        flush=True,
                    )
    print(f"\nbest of {options.rounds} rounds, 1 worker, wrk -c{options.connections}")
    print(f"{'mode':<12} {'access log':<10} {'req/s':>8} {'us CPU/req':>11}")
    for (mode, access_log), figures in results.items():
        best_rps = max(rps for rps, _ in figures)
        best_cpu = min(cpu for _, cpu in figures)
        print(f"{mode:<12} {access_log:<10} {best_rps:>8.0f} {best_cpu:>11.1f}")


def main(argv: Iterable[str] | None = None) -> int:
    """Measure (or profile) the handlers; print us of CPU per request and the ASGI/WSGI ratio."""
    parser = argparse.ArgumentParser(prog="python -m lab.profile_handlers", description=__doc__)
    parser.add_argument("--before", type=Path, help="another checkout to alternate with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000, help="requests per batch")
    parser.add_argument("--batches", type=int, default=5, help="batches per child")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--cpu", type=int, default=1, help="the CPU children are pinned to")
    parser.add_argument("--cprofile", choices=INTERFACES, help="profile one interface instead")
    parser.add_argument("--served", action="store_true", help="load real servers with wrk")
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections")
    parser.add_argument("--wrk-cpu", type=int, default=0, help="the CPU wrk is pinned to")
    parser.add_argument("--child", choices=INTERFACES, help=argparse.SUPPRESS)
    options = parser.parse_args(list(argv) if argv is not None else None)
    if options.child:
        child(
            options.child,
            options.requests,
            options.batches,
            options.warmup,
            cprofile=options.cprofile is not None,
        )
        return 0
    if shutil.which("taskset") is None:
        raise SystemExit("taskset (util-linux) is needed to pin the children to one CPU.")
    if options.served:
        if shutil.which("wrk") is None:
            raise SystemExit("wrk is needed for --served (apt-get install wrk).")
        served(options)
        return 0
    trees = {"after": REPO_ROOT}
    if options.before:
        trees = {"before": options.before.resolve(), **trees}
    with tempfile.TemporaryDirectory(prefix="profile-handlers-") as scratch:
        if options.cprofile:
            run_child(REPO_ROOT, options.cprofile, options, Path(scratch), cprofile=True)
            return 0
        results: dict[str, dict[str, list[float]]] = {
            name: {interface: [] for interface in INTERFACES} for name in trees
        }
        for round_number in range(1, options.rounds + 1):
            for name, root in trees.items():
                for interface in INTERFACES:
                    figures = run_child(root, interface, options, Path(scratch) / name)
                    results[name][interface].extend(figures)
                    print(
                        f"round {round_number} {name:<6} {interface}: "
                        f"min {min(figures):6.1f} us  median {statistics.median(figures):6.1f} us",
                        flush=True,
                    )
    print(f"\nus of CPU per request (min over {options.rounds} x {options.batches} batches)")
    print(f"{'tree':<8} {'WSGI ' + PATHS['wsgi']:>20} {'ASGI ' + PATHS['asgi']:>21} {'ratio':>6}")
    for name, per_interface in results.items():
        wsgi, asgi = min(per_interface["wsgi"]), min(per_interface["asgi"])
        print(f"{name:<8} {wsgi:>20.1f} {asgi:>21.1f} {asgi / wsgi:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
