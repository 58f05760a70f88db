"""Start a serving mode (or any gunicorn command line) on a free loopback port, and stop it.

Used by the tests, the benchmark and the fault tests::

    with start_mode("wsgi_gthread", env={"WEB_CONCURRENCY": "1"}) as server:
        httpx.get(server.base_url + "/sync/hello/")
    print(server.output())

Each server runs in its own session (process group), logs stdout and stderr to a file in its
own directory, and is stopped by its PID with SIGTERM: gunicorn's graceful shutdown, and the
one signal every worker class obeys (SIGINT to the master alone leaves the stock
UvicornWorker's workers running until graceful_timeout). SIGKILL to the server's own process
group is the last resort, so no worker outlives a stuck master.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

REPO_ROOT = Path(__file__).resolve().parent.parent
GUNICORN_CONFIG_DIR = REPO_ROOT / "deploy" / "gunicorn"
MODES = ("wsgi_sync", "wsgi_gthread", "asgi_uvicorn", "asgi_gunicorn")
WSGI_MODES = ("wsgi_sync", "wsgi_gthread")
ASGI_MODES = ("asgi_uvicorn", "asgi_gunicorn")
HOST = "127.0.0.1"
HEALTH_PATH = "/healthz"
# A port picked free can be taken before the server binds it (parallel test runs): retry.
BIND_ATTEMPTS = 3
ADDRESS_IN_USE = "Address already in use"

# Variables a developer's shell may export that would change what a server under test does:
# the tests, the benchmark and lab.stack clear them (a None value in `env`) and set what
# they mean to.
INHERITED_SETTINGS = (
    "BIND",
    "PORT",
    "WEB_CONCURRENCY",
    "GUNICORN_CMD_ARGS",
    "GUNICORN_THREADS",
    "GUNICORN_CONTROL_SOCKET",
    "GUNICORN_ACCESS_LOG",
    "FORWARDED_ALLOW_IPS",
    "DATABASE_URL",
    # The channel layer (WebSocket groups, the event bus): Redis when set.
    "REDIS_URL",
    "DJANGO_ENV",
    "DJANGO_DEBUG",
    "DJANGO_ALLOWED_HOSTS",
    "DJANGO_TRUST_X_FORWARDED_PROTO",
    "DJANGO_SECRET_KEY",
    "DJANGO_SETTINGS_MODULE",
    "DUALSERVE_PROFILE",
    # showcase:begin
    "SHOWCASE_UPSTREAM_URL",
    # showcase:end
)


# What deploy/gunicorn/common.py logs: the master listening (with the worker count), a worker
# ready to serve.
MASTER_READY = r"dualserve ready: .* workers=(\d+) "
WORKER_READY = r"Worker ready \(pid: (\d+)\)"


class ServerError(RuntimeError):
    """A server did not start or did not stop; the message carries the end of its output."""


def gunicorn_executable() -> str:
    """Return the gunicorn script next to this interpreter (the project's virtualenv)."""
    candidate = Path(sys.executable).parent / "gunicorn"
    return str(candidate) if candidate.exists() else "gunicorn"


def mode_config(mode: str) -> Path:
    """Return the config file of a serving mode; raise ValueError for an unknown mode."""
    if mode not in MODES:
        raise ValueError(f"unknown serving mode {mode!r}: choose one of {', '.join(MODES)}")
    return GUNICORN_CONFIG_DIR / f"{mode}.py"


def interface_of_mode(mode: str) -> str:
    """Return "wsgi" or "asgi": the interface a serving mode speaks."""
    mode_config(mode)
    return "wsgi" if mode in WSGI_MODES else "asgi"


def free_port(host: str = HOST) -> int:
    """Return a TCP port that is free on `host` right now."""
    (port,) = free_ports(1, host)
    return port


def free_ports(count: int, host: str = HOST) -> list[int]:
    """Return `count` distinct TCP ports that are free on `host` right now.

    Every probe stays bound until all are: the kernel may hand a port it just released to the
    next probe, so `count` calls of free_port() can return the same port twice (seen in CI:
    one nginx config with two entries on one port).
    """
    with contextlib.ExitStack() as probes:
        ports = []
        for _ in range(count):
            probe = probes.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            probe.bind((host, 0))
            ports.append(int(probe.getsockname()[1]))
        return ports


class Server:
    """A running server process: base_url, pid, its output file, and a graceful stop.

    `mode` names the serving mode when started by start_mode(), else it is empty.
    """

    def __init__(
        self,
        argv: Sequence[str],
        process: subprocess.Popen[bytes],
        port: int,
        log_path: Path,
        mode: str = "",
    ) -> None:
        self.argv = list(argv)
        self.mode = mode
        self.process = process
        self.port = port
        self.log_path = log_path
        self.base_url = f"http://{HOST}:{port}"

    @property
    def pid(self) -> int:
        """Return the PID of the process started (gunicorn's master)."""
        return self.process.pid

    def output(self) -> str:
        """Return everything the server wrote to stdout and stderr so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def tail(self, lines: int = 40) -> str:
        """Return the last lines of the output, for error messages."""
        return "\n".join(self.output().splitlines()[-lines:])

    def wait_for_output(self, pattern: str, count: int = 1, timeout: float = 30.0) -> bool:
        """Wait up to `timeout` s until the regex `pattern` matches `count` times in the output."""
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while len(regex.findall(self.output())) < count:
            if time.monotonic() >= deadline or not self.running():
                return len(regex.findall(self.output())) >= count
            time.sleep(0.05)
        return True

    def wait_workers_ready(self, timeout: float = 60.0) -> bool:
        """Wait up to `timeout` s until every worker of a template config logged it is ready.

        A server answers once ONE worker is up; the others may still be importing Django.
        The configs under deploy/gunicorn log `workers=N` when the master listens and
        "Worker ready" per worker (deploy/gunicorn/common.py).
        """
        deadline = time.monotonic() + timeout
        if not self.wait_for_output(MASTER_READY, timeout=timeout):
            return False
        match = re.search(MASTER_READY, self.output())
        assert match is not None  # the wait above matched it
        remaining = max(deadline - time.monotonic(), 0.0)
        return self.wait_for_output(WORKER_READY, count=int(match[1]), timeout=remaining)

    def running(self) -> bool:
        """Return whether the process started has not exited yet (without reaping it)."""
        if self.process.returncode is not None:
            return False
        try:
            # WNOWAIT leaves an exited master a zombie: its PID, the process group's ID, cannot
            # be reused by another process until stop() has killed the group and reaped it.
            state = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return False
        return state is None

    def wait_exit(self, timeout: float) -> bool:
        """Wait up to `timeout` s for the process to exit, without reaping it; return if it did."""
        deadline = time.monotonic() + timeout
        while self.running():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def wait_healthy(self, timeout: float = 30.0, path: str = HEALTH_PATH) -> None:
        """Return once GET `path` answers 200; raise ServerError on exit or timeout."""
        deadline = time.monotonic() + timeout
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            if not self.running():
                raise ServerError(
                    f"{' '.join(self.argv)} exited before answering {path}:\n{self.tail()}"
                )
            try:
                status = http_status(HOST, self.port, path, timeout=2.0)
            except OSError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            else:
                if status == 200:
                    return
                last_error = f"HTTP {status}"
            time.sleep(0.1)
        raise ServerError(
            f"{' '.join(self.argv)} did not answer {path} with 200 within {timeout} s "
            f"({last_error}):\n{self.tail()}"
        )

    def send_signal(self, signum: int) -> None:
        """Send `signum` to the process started, by its PID, if it still runs."""
        if self.running():
            os.kill(self.pid, signum)

    def stop(self, timeout: float = 30.0) -> int:
        """Stop with SIGTERM; after `timeout` s, SIGKILL the server's process group.

        Return the master's exit status (negative: killed by that signal).
        """
        if self.process.returncode is not None:
            return self.process.returncode
        self.send_signal(signal.SIGTERM)
        self.wait_exit(timeout)
        self.kill()
        return self.process.wait()

    def kill(self) -> None:
        """SIGKILL the server's process group (its own session), then reap the master.

        After a clean exit the group is empty; otherwise this ends a stuck master and any
        worker a dead master left behind.
        """
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        self.process.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def http_status(host: str, port: int, path: str, timeout: float) -> int:
    """Return the status of GET `path` on host:port."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def start(
    argv: Sequence[str],
    *,
    env: Mapping[str, str | None] | None = None,
    bind_with: str = "GUNICORN_CMD_ARGS",
    workdir: Path | None = None,
    cwd: Path = REPO_ROOT,
    timeout: float = 30.0,
    health_path: str = HEALTH_PATH,
) -> Server:
    """Start a gunicorn command line on a free 127.0.0.1 port; return once it is healthy.

    `argv` is used verbatim. The address reaches gunicorn through the environment:
    `bind_with="GUNICORN_CMD_ARGS"` appends `--bind 127.0.0.1:<port>` to that variable (works
    for any command line), `bind_with="BIND"` sets BIND (read by the mode configs). `env`
    overrides the inherited environment; a None value removes a variable. Output goes to
    `server.log` in `workdir` (a new temporary directory by default), which also serves as
    XDG_RUNTIME_DIR, so a gunicorn control socket, if enabled, is private to this server.
    """
    if bind_with not in {"GUNICORN_CMD_ARGS", "BIND"}:
        raise ValueError(f"bind_with must be GUNICORN_CMD_ARGS or BIND, not {bind_with!r}")
    workdir = workdir or Path(tempfile.mkdtemp(prefix="dualserve-server-"))
    workdir.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, BIND_ATTEMPTS + 1):
        port = free_port()
        child_env = server_environment(env, port, bind_with, workdir)
        log_path = workdir / (f"server-{port}.log" if attempt > 1 else "server.log")
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(  # noqa: S603  (argv comes from our own callers)
                list(argv),
                cwd=cwd,
                env=child_env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = Server(argv, process, port, log_path)
        try:
            server.wait_healthy(timeout=timeout, path=health_path)
        except ServerError:
            server.stop(timeout=5.0)
            if ADDRESS_IN_USE in server.output() and attempt < BIND_ATTEMPTS:
                continue
            raise
        except BaseException:
            server.stop(timeout=5.0)
            raise
        return server
    raise AssertionError("unreachable: the last attempt returns or raises")


def merged_environment(env: Mapping[str, str | None] | None) -> dict[str, str]:
    """Return this process's environment with `env` applied (a None value removes a name)."""
    merged = dict(os.environ)
    for name, value in (env or {}).items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    return merged


def server_environment(
    env: Mapping[str, str | None] | None, port: int, bind_with: str, workdir: Path
) -> dict[str, str]:
    """Return a server's environment: ours, a private runtime dir, the overrides, the address."""
    child_env = merged_environment({"XDG_RUNTIME_DIR": str(workdir), **(env or {})})
    address = f"{HOST}:{port}"
    if bind_with == "BIND":
        child_env["BIND"] = address
    else:
        extra = child_env.get("GUNICORN_CMD_ARGS", "").strip()
        child_env["GUNICORN_CMD_ARGS"] = f"{extra} --bind {address}".strip()
    return child_env


def start_mode(
    mode: str,
    *,
    env: Mapping[str, str | None] | None = None,
    extra_args: Sequence[str] = (),
    workdir: Path | None = None,
    timeout: float = 30.0,
) -> Server:
    """Start `gunicorn -c deploy/gunicorn/<mode>.py` on a free 127.0.0.1 port (via BIND)."""
    argv = [gunicorn_executable(), "-c", str(mode_config(mode)), *extra_args]
    server = start(argv, env=env, bind_with="BIND", workdir=workdir, timeout=timeout)
    server.mode = mode
    return server
