"""CPU per request of the template's handlers called in-process: WSGI vs ASGI, no server, no socket.

    python -m lab.profile_handlers                      # this tree, both interfaces
    python -m lab.profile_handlers --before /tmp/wt     # ...and another checkout, alternated
    python -m lab.profile_handlers --cprofile asgi      # where an ASGI request's time goes

WSGI is `project.wsgi.application`; ASGI is the http application of `apps.dualserve.asgi`
(`get_asgi_application()`, what project.asgi routes http to), awaited on a uvloop loop as
uvicorn runs it. Each measurement runs in a fresh child process pinned to one CPU with
`taskset`, with the servers' production environment (lab.bench.runner.server_env) on a private
var dir. The figure is CPU time (time.process_time: every thread of the process) per request,
the minimum over batches: the machine is shared, and the minimum is the run least disturbed by
others. With --before, the rounds alternate between the two trees in one run, so drift in the
machine's load hits both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, MutableMapping
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
INTERFACES = ("wsgi", "asgi")
PATHS = {"wsgi": "/sync/hello/", "asgi": "/async/hello/"}
HOST = "127.0.0.1"
CHILD_TIMEOUT = 300  # seconds per child process
Message = MutableMapping[str, Any]


# --- The child: one interface, one tree --------------------------------------------------------


def wsgi_runner(path: str) -> Callable[[int], None]:
    """Return a function that sends GET `path` n times through project.wsgi, as gunicorn does."""
    import io

    from project.wsgi import application

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        if not status.startswith("200"):
            raise RuntimeError(f"{path}: {status}")

    def run(count: int) -> None:
        for _ in range(count):
            environ = {
                "REQUEST_METHOD": "GET",
                "SCRIPT_NAME": "",
                "PATH_INFO": path,
                "QUERY_STRING": "",
                "SERVER_NAME": HOST,
                "SERVER_PORT": "8000",
                "SERVER_PROTOCOL": "HTTP/1.1",
                "REMOTE_ADDR": HOST,
                "HTTP_HOST": HOST,
                "wsgi.version": (1, 0),
                "wsgi.url_scheme": "http",
                "wsgi.input": io.BytesIO(b""),
                "wsgi.errors": sys.stderr,
                "wsgi.multithread": False,
                "wsgi.multiprocess": True,
                "wsgi.run_once": False,
            }
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

        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", HOST.encode())],
            "client": (HOST, 50000),
            "server": (HOST, 8000),
        }
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
