"""The floor: Django's own cost per request, its handlers called in-process (no socket, no server).

`python -m lab.bench.floor wsgi /sync/hello/ /sync/json/` imports `project.wsgi` and calls
its `application` with a minimal environ for each path, consuming and closing the body as a
server does; `asgi` awaits `project.asgi.application` (the template's handler, http scope)
with receive/send callables on one uvloop event loop, as uvicorn runs it. Each path gets a
warm-up, then `--batches` timed batches of `--requests` requests: process CPU time
(time.process_time, every thread of the process) and wall time per request. It prints one
JSON document.

The runner starts it in a subprocess with the servers' environment (production settings,
the private database) under `taskset` on the servers' CPUs, so its figures compare with the
served cells: the share of a served request's CPU that is the server's and not Django's is
1 - floor / served (`share`).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import io
import json
import sys
import time
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from typing import Any

HOST = "127.0.0.1"
PORT = "8000"
# The handler each interface is timed through: the entry points the servers load.
APPLICATIONS = {"wsgi": "project.wsgi", "asgi": "project.asgi"}
Message = MutableMapping[str, Any]


def wsgi_environ(path: str) -> dict[str, Any]:
    """Return a minimal WSGI environ for GET `path` (query string split off), as gunicorn does."""
    path_info, _, query = path.partition("?")
    return {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path_info,
        "QUERY_STRING": query,
        "SERVER_NAME": HOST,
        "SERVER_PORT": PORT,
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


def wsgi_request(application: Callable[..., Iterable[bytes]], path: str) -> tuple[int, int]:
    """Send GET `path` through a WSGI application; return its status and body length."""
    statuses: list[str] = []

    def start_response(status: str, headers: object, exc_info: object = None) -> None:
        statuses.append(status)

    body = application(wsgi_environ(path), start_response)
    try:
        size = sum(len(chunk) for chunk in body)
    finally:
        # Django sends request_finished (closing old connections) here, as after a served request.
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return int(statuses[0].split()[0]), size


def asgi_scope(path: str) -> dict[str, Any]:
    """Return an ASGI http scope for GET `path`, as uvicorn builds it."""
    path_only, _, query = path.partition("?")
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path_only,
        "raw_path": path_only.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", HOST.encode())],
        "client": (HOST, 50000),
        "server": (HOST, int(PORT)),
    }


async def asgi_request(application: Callable[..., Any], path: str) -> tuple[int, int]:
    """Send GET `path` through an ASGI application; return its status and body length."""
    sent: list[Message] = []
    request_sent = False
    # Django listens for a disconnect after the body: that receive waits until it is cancelled.
    never = asyncio.Event()

    async def receive() -> Message:
        nonlocal request_sent
        if not request_sent:
            request_sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await never.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await application(asgi_scope(path), receive, send)
    start = next(message for message in sent if message["type"] == "http.response.start")
    size = sum(len(m.get("body", b"")) for m in sent if m["type"] == "http.response.body")
    return int(start["status"]), size


def timed(run: Callable[[int], None], count: int) -> dict[str, float]:
    """Return the CPU and wall seconds of `run(count)`."""
    cpu, wall = time.process_time(), time.perf_counter()
    run(count)
    return {"cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall}


def measure(
    interface: str, paths: Sequence[str], requests: int, warmup: int, batches: int
) -> dict[str, Any]:
    """Import the interface's handler and time every path; return the figures."""
    application = importlib.import_module(APPLICATIONS[interface]).application
    results = []
    loop = new_event_loop() if interface == "asgi" else None
    try:
        for path in paths:
            if loop is not None:

                def run(count: int, path: str = path) -> None:
                    assert loop is not None
                    loop.run_until_complete(repeat_asgi(application, path, count))

                status, size = loop.run_until_complete(asgi_request(application, path))
            else:

                def run(count: int, path: str = path) -> None:
                    for _ in range(count):
                        wsgi_request(application, path)

                status, size = wsgi_request(application, path)
            run(warmup)
            results.append(
                {
                    "path": path,
                    "status": status,
                    "body_bytes": size,
                    "requests": requests,
                    "warmup": warmup,
                    "batches": [timed(run, requests) for _ in range(batches)],
                }
            )
    finally:
        if loop is not None:
            loop.close()
    return {"interface": interface, "application": APPLICATIONS[interface], "paths": results}


async def repeat_asgi(application: Callable[..., Any], path: str, count: int) -> None:
    """Send GET `path` `count` times, one after another, on the running loop."""
    for _ in range(count):
        await asgi_request(application, path)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """Return a uvloop loop when uvloop is installed (as uvicorn's "auto"), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def command(
    interface: str, paths: Sequence[str], requests: int, warmup: int, batches: int
) -> list[str]:
    """Return the command that times `paths` through the interface's handler."""
    return [
        sys.executable,
        "-m",
        "lab.bench.floor",
        interface,
        *paths,
        "--requests",
        str(requests),
        "--warmup",
        str(warmup),
        "--batches",
        str(batches),
    ]


def share(floor_us: float, served_us: float) -> float | None:
    """Return the server's share of a served request's CPU: 1 - floor / served (None: no served)."""
    if served_us <= 0:
        return None
    return 1.0 - floor_us / served_us


def main(argv: Sequence[str] | None = None) -> int:
    """Time the paths through one interface's handler; print the figures as JSON."""
    parser = argparse.ArgumentParser(prog="python -m lab.bench.floor", description=__doc__)
    parser.add_argument("interface", choices=sorted(APPLICATIONS))
    parser.add_argument("paths", nargs="+", metavar="PATH")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--batches", type=int, default=3)
    args = parser.parse_args(argv)
    if args.requests < 1 or args.warmup < 0 or args.batches < 1:
        parser.error("--requests and --batches must be at least 1, --warmup at least 0")
    figures = measure(args.interface, args.paths, args.requests, args.warmup, args.batches)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
