"""Run the local stack: `make up` (or `python -m lab.up` from the repo root).

Migrates, collects static files, renders nginx's config, then runs one WSGI server, one ASGI
server (WSGI_MODE / ASGI_MODE name configs in deploy/gunicorn/) and nginx under honcho, waits
until each answers its health check and prints the URLs. Ctrl-C (SIGINT) or SIGTERM stops
everything: honcho starts each process in a session of its own and sends SIGTERM to the whole
process group (gunicorn's UvicornWorker ignores SIGINT), then SIGKILL after 5 s. Without nginx
the direct ports still serve. Ports and paths: see deploy/nginx.py, plus UP_TIMEOUT (seconds to
wait for the health checks, 60).

PROCESS_MANAGER=supervisor runs the servers under supervisord instead (deploy/supervisor/): it
holds one socket per interface, WEB_CONCURRENCY uvicorn processes and as many single-worker
gunicorn masters (WSGI_MODE) serve them, on the same ports; nginx and the showcase upstream run
as supervisord programs too. Ctrl-C or SIGTERM stops supervisord, which stops every program
gracefully. ASGI_MODE does not apply there: its ASGI processes are always uvicorn's.

The event bus (the channel layer: WebSocket groups, the live feed): REDIS_URL from the
environment when set; else a local `redis-server` on REDIS_PORT (8004; nothing saved), started
with the stack, whose URL both servers get; else, without redis-server (REDIS_SERVER_BINARY
names another), Channels' in-memory layer, which reaches the clients of one process only: the
ASGI server then runs ONE worker, and an event published by the WSGI server reaches no client.
The launcher says which it chose.
"""

from __future__ import annotations

import errno
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType

from honcho.manager import Manager  # type: ignore[import-untyped]
from honcho.printer import Printer  # type: ignore[import-untyped]

from deploy import nginx
from lab import manage, servers
from lab.stack import nginx_config_path, write_nginx_config

BASE_DIR = nginx.BASE_DIR
MODES = {"WSGI_MODE": servers.WSGI_MODES, "ASGI_MODE": servers.ASGI_MODES}
DEFAULT_MODES = {"WSGI_MODE": "wsgi_gthread", "ASGI_MODE": "asgi_uvicorn"}
UP_TIMEOUT_DEFAULT = 60.0
# showcase:begin
# With the showcase app, its upstream runs too (the API its upstream views call), on
# UPSTREAM_PORT; the servers find it through SHOWCASE_UPSTREAM_URL.
UPSTREAM_PORT_DEFAULT = 8003
# showcase:end
# The local Redis of the event bus: not Redis's own 6379, where Debian's redis-server package
# runs the system's instance.
REDIS_PORT_DEFAULT = 8004
REDIS_INSTALL_HINT = (
    "redis-server is not installed (`sudo apt-get install redis-server` on Debian/Ubuntu)"
)
# Printed once every process answers; tests and scripts wait for this line.
READY_BANNER = "dualserve is up (Ctrl-C stops everything):"
# honcho's exit codes for a stop asked by SIGINT / SIGTERM: a normal end of `make up`.
SIGNAL_EXIT_CODES = {130, 143}
# Who runs the processes: honcho (the default) or supervisord (deploy/supervisor/).
PROCESS_MANAGERS = ("honcho", "supervisor")
SUPERVISOR_RUN = BASE_DIR / "deploy" / "supervisor" / "run.sh"
SUPERVISOR_INSTALL_HINT = (
    "supervisord is not installed: install it with `sudo apt-get install supervisor` "
    "(Debian/Ubuntu)."
)
# Above the servers' stopwaitsecs (deploy/supervisor/*.conf): supervisord's own SIGKILL comes first.
SUPERVISOR_STOP_TIMEOUT = 60.0


class UpError(Exception):
    """The stack cannot start; the message says what to do."""


@dataclass(frozen=True)
class Service:
    """One process of the stack, the URL it serves and the URL that proves it is ready."""

    name: str
    command: list[str]
    url: str
    health_url: str
    description: str
    # Set for this process only, over the stack's environment.
    env: Mapping[str, str] = field(default_factory=dict)


def mode(env: Mapping[str, str], name: str) -> str:
    """Return the serving mode named by `name` (WSGI_MODE or ASGI_MODE), checked to exist."""
    chosen = env.get(name, "").strip() or DEFAULT_MODES[name]
    if chosen not in MODES[name]:
        raise UpError(
            f"{name}={chosen!r} is not a serving mode for {name.split('_')[0]}: use one of "
            f"{', '.join(MODES[name])}."
        )
    return chosen


# showcase:begin
def showcase_present() -> bool:
    """Whether this checkout has the showcase app (a project may have deleted apps/showcase)."""
    # Imported here, in the block a project without the showcase drops whole.
    import importlib.util

    return importlib.util.find_spec("apps.showcase") is not None


def upstream_port(env: Mapping[str, str]) -> int:
    """Return the showcase upstream's port (UPSTREAM_PORT)."""
    raw = env.get("UPSTREAM_PORT", "").strip() or str(UPSTREAM_PORT_DEFAULT)
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 65535:
        raise UpError(f"UPSTREAM_PORT={raw!r} is not a port number (1-65535).")
    return int(raw)


# showcase:end
def redis_port(env: Mapping[str, str]) -> int:
    """Return the local Redis's port (REDIS_PORT)."""
    raw = env.get("REDIS_PORT", "").strip() or str(REDIS_PORT_DEFAULT)
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 65535:
        raise UpError(f"REDIS_PORT={raw!r} is not a port number (1-65535).")
    return int(raw)


def redis_server_binary(env: Mapping[str, str]) -> str | None:
    """Return the redis-server to start (REDIS_SERVER_BINARY, else looked up), or None."""
    chosen = env.get("REDIS_SERVER_BINARY", "").strip()
    if chosen:
        return shutil.which(chosen)
    return shutil.which("redis-server") or shutil.which("redis-server", path="/usr/bin")


def local_redis(env: Mapping[str, str]) -> str | None:
    """Return the redis-server to run with the stack: None when REDIS_URL names one already."""
    if env.get("REDIS_URL", "").strip():
        return None
    return redis_server_binary(env)


def redis_url(port: int) -> str:
    """Return the URL of the local Redis on `port`."""
    return f"redis://127.0.0.1:{port}/0"


def up_timeout(env: Mapping[str, str]) -> float:
    """Return how long to wait for every health check (UP_TIMEOUT seconds)."""
    raw = env.get("UP_TIMEOUT", "").strip() or str(UP_TIMEOUT_DEFAULT)
    try:
        seconds = float(raw)
    except ValueError:
        raise UpError(f"UP_TIMEOUT={raw!r} is not a number of seconds.") from None
    if not 1 <= seconds <= 600:
        raise UpError(f"UP_TIMEOUT={raw!r} must be between 1 and 600 seconds.")
    return seconds


def process_manager(env: Mapping[str, str]) -> str:
    """Return who runs the stack (PROCESS_MANAGER), checked; under supervisor, check ASGI_MODE."""
    chosen = env.get("PROCESS_MANAGER", "").strip() or PROCESS_MANAGERS[0]
    if chosen not in PROCESS_MANAGERS:
        raise UpError(f"PROCESS_MANAGER={chosen!r}: use one of {', '.join(PROCESS_MANAGERS)}.")
    if chosen == "supervisor" and mode(env, "ASGI_MODE") != DEFAULT_MODES["ASGI_MODE"]:
        raise UpError(
            f"ASGI_MODE={env['ASGI_MODE']!r} does not apply under PROCESS_MANAGER=supervisor: "
            "its ASGI processes are uvicorn's (deploy/supervisor/asgi.conf); unset ASGI_MODE."
        )
    return chosen


def supervisord_binary() -> str | None:
    """Return supervisord's path (PATH, then Debian's /usr/bin), or None when missing."""
    found = shutil.which("supervisord")
    if found is None and os.access("/usr/bin/supervisord", os.X_OK):
        found = "/usr/bin/supervisord"
    return found


def gunicorn_command(config_mode: str, port: int) -> list[str]:
    """Return the command that serves `config_mode` on 127.0.0.1:`port`."""
    config = servers.mode_config(config_mode)
    bind = f"127.0.0.1:{port}"
    return [servers.gunicorn_executable(), "-c", str(config), "--bind", bind]


def services(
    env: Mapping[str, str], nginx_binary: str | None, redis_binary: str | None = None
) -> list[Service]:
    """Return the stack's processes; nginx only when `nginx_binary` is given, a local Redis
    only when `redis_binary` is (`env` is then child_environment's, REDIS_URL naming it)."""
    ports = nginx.ports(env)
    wsgi_mode, asgi_mode = mode(env, "WSGI_MODE"), mode(env, "ASGI_MODE")

    def local(port: int, path: str = "/") -> str:
        return f"http://127.0.0.1:{port}{path}"

    found = []
    if redis_binary is not None:
        port = redis_port(env)
        command = [redis_binary, "--port", str(port), "--bind", "127.0.0.1"]
        # Live events only: nothing to keep across a restart, no file in the working tree.
        command += ["--save", "", "--appendonly", "no"]
        found.append(
            Service(
                "redis",
                command,
                f"redis://127.0.0.1:{port}",
                f"redis://127.0.0.1:{port}",
                "Redis: the event bus (channel layer) of both servers",
            )
        )
    # Without Redis the bus is in memory, one process's: one ASGI worker holds every client.
    in_memory = not env.get("REDIS_URL", "").strip()
    found += [
        Service(
            "wsgi",
            gunicorn_command(wsgi_mode, ports["WSGI_PORT"]),
            local(ports["WSGI_PORT"]),
            local(ports["WSGI_PORT"], "/readyz"),
            f"WSGI server direct ({wsgi_mode})",
        ),
        Service(
            "asgi",
            gunicorn_command(asgi_mode, ports["ASGI_PORT"]),
            local(ports["ASGI_PORT"]),
            local(ports["ASGI_PORT"], "/readyz"),
            f"ASGI server direct ({asgi_mode})"
            + (", ONE worker: no Redis, the event bus is in memory" if in_memory else ""),
            {"WEB_CONCURRENCY": "1"} if in_memory else {},
        ),
    ]
    # showcase:begin
    if showcase_present():
        upstream = upstream_port(env)
        command = [sys.executable, "-m", "apps.showcase.upstream", "--host", "127.0.0.1"]
        found.append(
            Service(
                "upstream",
                [*command, "--port", str(upstream)],
                local(upstream),
                local(upstream, "/?ms=0"),
                "showcase upstream (answers /?ms=N after N ms)",
            )
        )
    # showcase:end
    if nginx_binary is not None:
        config = nginx_config_path(env)
        command = nginx.nginx_command(nginx_binary, config, "-g", "daemon off;")
        # One process, three entries: the table lists each entry, health-checked through nginx.
        found.append(
            Service(
                "nginx",
                command,
                local(ports["NGINX_HYBRID_PORT"]),
                local(ports["NGINX_HYBRID_PORT"], "/readyz"),
                "nginx hybrid: NGINX_ASGI_PREFIXES and event streams to ASGI, the rest to WSGI",
            )
        )
        for name, target in (("NGINX_WSGI_PORT", "WSGI"), ("NGINX_ASGI_PORT", "ASGI")):
            found.append(
                Service(
                    "",
                    [],
                    local(ports[name]),
                    local(ports[name], "/readyz"),
                    f"nginx: everything to {target}",
                )
            )
    return found


def check_ports_free(stack: Sequence[Service]) -> None:
    """Raise UpError naming the first port some other process already listens on."""
    for service in stack:
        port = int(service.url.rsplit(":", 1)[1].rstrip("/"))
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                raise UpError(
                    f"port {port} ({service.description}) is in use: stop what listens there, "
                    "or choose another port through the environment (see deploy/nginx.py)."
                ) from None


def run_step(args: list[str], env: Mapping[str, str], what: str) -> None:
    """Run one manage.py step to completion; raise UpError with its output on failure."""
    print(f"up: {what}", flush=True)
    manage.run_checked(args, env, what=what, error=UpError)


def answers(url: str) -> bool:
    """Return whether `url` answers 200 right now (a redis:// URL: PONG to a PING)."""
    if url.startswith("redis://"):
        host, port = url.removeprefix("redis://").rsplit(":", 1)
        try:
            with socket.create_connection((host, int(port)), timeout=2) as connection:
                connection.sendall(b"PING\r\n")
                return connection.recv(64).startswith(b"+PONG")
        except OSError:
            return False
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310  (our http URL)
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def table(stack: Sequence[Service]) -> str:
    """Return the banner and one line per URL."""
    width = max(len(service.url) for service in stack)
    lines = [READY_BANNER]
    lines += [f"  {service.url:<{width}}  {service.description}" for service in stack]
    return "\n".join(lines) + "\n"


class HealthWatch(threading.Thread):
    """Wait (bounded) until every service answers, then print the table; else stop the stack."""

    def __init__(
        self, stop_stack: Callable[[], None], stack: Sequence[Service], timeout: float
    ) -> None:
        super().__init__(name="up-health", daemon=True)
        self.stop_stack = stop_stack
        self.stack = stack
        self.timeout = timeout
        self.stopped = threading.Event()
        self.failed = False

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        waiting = list(self.stack)
        # In order, so nginx is asked only once the servers behind it answer (fewer 502 lines).
        while waiting and time.monotonic() < deadline and not self.stopped.is_set():
            if answers(waiting[0].health_url):
                waiting.pop(0)
            else:
                self.stopped.wait(0.2)
        if self.stopped.is_set():
            return
        if waiting:
            self.failed = True
            names = ", ".join(service.health_url for service in waiting)
            print(f"up: no answer within {self.timeout:g} s from {names}; stopping.", flush=True)
            self.stop_stack()
            return
        sys.stdout.write(table(self.stack))
        sys.stdout.flush()


def child_environment(env: Mapping[str, str], redis_binary: str | None = None) -> dict[str, str]:
    """Return the environment of every process: the caller's, plus unbuffered Python output,
    and REDIS_URL naming the local Redis when `redis_binary` runs one."""
    merged = dict(env)
    merged["PYTHONUNBUFFERED"] = "1"
    if redis_binary is not None:
        merged["REDIS_URL"] = redis_url(redis_port(env))
    # showcase:begin
    if showcase_present():
        merged.setdefault("SHOWCASE_UPSTREAM_URL", f"http://127.0.0.1:{upstream_port(env)}/")
    # showcase:end
    return merged


def supervisor_run_dir(env: Mapping[str, str]) -> Path:
    """Return supervisord's run directory: SUPERVISOR_RUN_DIR, else the state dir's supervisor/."""
    explicit = env.get("SUPERVISOR_RUN_DIR", "").strip()
    if explicit:
        return Path(explicit)
    var_dir = env.get("DJANGO_VAR_DIR", "").strip()
    return (Path(var_dir) if var_dir else BASE_DIR / "var") / "supervisor"


def supervised(stack: Sequence[Service], env: Mapping[str, str]) -> list[Service]:
    """Return the stack with the servers described as deploy/supervisor runs them."""
    described = {
        "wsgi": f"WSGI server direct (gunicorn {mode(env, 'WSGI_MODE')} under supervisord)",
        "asgi": "ASGI server direct (uvicorn under supervisord)",
    }
    return [replace(s, description=described.get(s.name, s.description)) for s in stack]


def supervisor_programs(stack: Sequence[Service]) -> str:
    """Return supervisord's sections for the processes besides the servers (nginx, upstream)."""
    sections = []
    for service in stack:
        if not service.command or service.name in {"wsgi", "asgi"}:
            continue
        # supervisord expands %(name)s in every value: a literal % is written %%.
        command = shlex.join(service.command).replace("%", "%%")
        directory = str(BASE_DIR).replace("%", "%%")
        # nginx's graceful stop is SIGQUIT (SIGTERM drops its open connections).
        stop = "QUIT" if service.name == "nginx" else "TERM"
        sections.append(
            f"[program:{service.name}]\n"
            f"command={command}\n"
            f"directory={directory}\n"
            # After the servers (priority 100): started after them, stopped before them.
            "priority=200\n"
            f"stopsignal={stop}\n"
            "stopwaitsecs=10\n"
            "redirect_stderr=true\n"
            f"stdout_logfile=%(ENV_SUPERVISOR_RUN_DIR)s/{service.name}.log\n"
        )
    header = "; Written by lab/up.py (`PROCESS_MANAGER=supervisor make up`) at each start.\n\n"
    return header + "\n".join(sections)


def run_honcho(stack: Sequence[Service], env: Mapping[str, str], timeout: float) -> int:
    """Run every process under honcho until a signal or a process ends; return the exit code."""
    manager = Manager(Printer(sys.stdout, colour=sys.stdout.isatty()))
    for service in stack:
        if service.command:
            # exec: the shell honcho starts gives way to the server, which gets signals itself.
            command = "exec " + shlex.join(service.command)
            process_env = {**env, **service.env}
            manager.add_process(service.name, command, env=process_env, cwd=str(BASE_DIR))
    watch = HealthWatch(manager.terminate, stack, timeout)
    watch.start()
    manager.loop()
    watch.stopped.set()
    watch.join(5)
    if watch.failed:
        return 1
    code: int = manager.returncode or 0
    return 0 if code in SIGNAL_EXIT_CODES else code


def run_supervisor(stack: Sequence[Service], env: Mapping[str, str], timeout: float) -> int:
    """Run supervisord (deploy/supervisor/run.sh) until a signal or its end; return the code."""
    run_dir = Path(env["SUPERVISOR_RUN_DIR"])
    programs = run_dir / "conf.d" / "up.conf"
    programs.parent.mkdir(parents=True, exist_ok=True)
    programs.write_text(supervisor_programs(stack), encoding="utf-8")
    print(f"up: supervisord runs the stack; each program logs to {run_dir}/<name>.log", flush=True)

    asked = threading.Event()

    def ask_to_stop(signum: int, frame: FrameType | None) -> None:
        asked.set()

    previous = {sig: signal.signal(sig, ask_to_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        # A session of its own: Ctrl-C reaches this process alone, which stops supervisord
        # with SIGTERM once (supervisord, not the terminal, then stops each program).
        supervisord = subprocess.Popen(  # noqa: S603  (our script)
            [str(SUPERVISOR_RUN)],
            cwd=BASE_DIR,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        watch = HealthWatch(asked.set, stack, timeout)
        watch.start()
        while not asked.is_set() and supervisord.poll() is None:
            asked.wait(0.5)
        watch.stopped.set()
        watch.join(5)
        if supervisord.poll() is None:
            supervisord.terminate()
            try:
                supervisord.wait(SUPERVISOR_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                print("up: supervisord did not stop in time; killing it.", flush=True)
                supervisord.kill()
                supervisord.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if watch.failed:
        return 1
    if asked.is_set():
        return 0
    print(f"up: supervisord ended by itself (exit code {supervisord.returncode}).", flush=True)
    return supervisord.returncode or 1


def say_which_bus(env: Mapping[str, str], redis_binary: str | None, manager: str) -> None:
    """Print which event bus the stack runs on; refuse the in-memory one under supervisord."""
    if redis_binary is not None:
        print(
            f"up: event bus: redis-server on 127.0.0.1:{redis_port(env)}, nothing saved.",
            flush=True,
        )
    elif env.get("REDIS_URL", "").strip():
        print("up: event bus: the Redis at REDIS_URL from the environment.", flush=True)
    elif manager == "supervisor":
        raise UpError(
            f"{REDIS_INSTALL_HINT}, and PROCESS_MANAGER=supervisor runs two ASGI processes or "
            "more, which an in-memory event bus would split: install it, or set REDIS_URL."
        )
    else:
        print(
            f"up: {REDIS_INSTALL_HINT}: the event bus runs in memory, in ONE ASGI worker; "
            "events published by the WSGI server or another process reach no client.",
            flush=True,
        )


def up(env: Mapping[str, str]) -> int:
    """Prepare and run the stack until a signal or a process ends; return the exit code."""
    redis_binary = local_redis(env)
    child_env = child_environment(env, redis_binary)
    # Settings checked, nginx config tested and ports found free before anything starts.
    timeout = up_timeout(child_env)
    manager = process_manager(child_env)
    if manager == "supervisor":
        if supervisord_binary() is None:
            raise UpError(SUPERVISOR_INSTALL_HINT)
        child_env["SUPERVISOR_RUN_DIR"] = str(supervisor_run_dir(child_env))
    say_which_bus(child_env, redis_binary, manager)
    binary = nginx.nginx_binary(child_env)
    stack = services(child_env, binary, redis_binary)
    if binary is None:
        print(f"up: {nginx.INSTALL_HINT} Serving the direct ports only.", flush=True)
    else:
        write_nginx_config(binary, child_env, error=UpError)
    check_ports_free(stack)
    run_step(["migrate", "--noinput"], child_env, "migrating the database")
    run_step(
        ["collectstatic", "--noinput", "--verbosity", "0"], child_env, "collecting static files"
    )
    if manager == "supervisor":
        return run_supervisor(supervised(stack, child_env), child_env, timeout)
    return run_honcho(stack, child_env, timeout)


def main() -> int:
    """Run `up` with this process's environment; print what went wrong, if anything."""
    try:
        return up(os.environ)
    except (UpError, nginx.ConfigError) as exc:
        print(f"up: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
