"""The servers the benchmark compares, and how each one is started, pinned and stopped.

A contender is a serving mode running one application profile:

- the four gunicorn modes of deploy/gunicorn/ (their shipped config files, unchanged), and
  granian for each interface when the optional extra is installed (`uv sync --all-extras`);
- profile "native" (the template), "stock" (DUALSERVE_PROFILE=stock: startproject's
  MIDDLEWARE, whitenoise and Django's own ASGI handler) or "bare" (lab.bench.bare: no
  Django at all, the server's ceiling).

Every server is started under `taskset` on the server CPUs, in a session of its own, and
stopped by its PID with SIGTERM (lab.servers.Server), SIGKILL to its group as a last resort.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lab import servers

GRANIAN_MODES = ("granian_wsgi", "granian_asgi")
ALL_MODES = (*servers.MODES, *GRANIAN_MODES)
PROFILES = ("native", "stock", "bare")
DJANGO_APPS = {"wsgi": "project.wsgi:application", "asgi": "project.asgi:application"}
BARE_APPS = {"wsgi": "lab.bench.bare:wsgi_app", "asgi": "lab.bench.bare:asgi_app"}
# Worker recycling restarts a worker (a full Django import) every ~10,000 requests: in a run
# of tens of thousands that is a stall measured as the server's speed. common.py says to turn
# it off for benchmarks; GUNICORN_CMD_ARGS beats the config file and leaves it unchanged.
GUNICORN_BENCH_ARGS = "--max-requests 0"
START_TIMEOUT = 60.0

# Called with the port chosen; returns the command and its environment overrides.
ArgvForPort = Callable[[int], tuple[list[str], dict[str, str | None]]]


class ContenderError(ValueError):
    """A contender cannot run here; the message says why and what to do."""


@dataclass(frozen=True)
class Contender:
    """A serving mode with an application profile, e.g. asgi_uvicorn+stock."""

    mode: str
    profile: str = "native"

    @property
    def name(self) -> str:
        """Return the display name: the mode, plus +profile unless native."""
        return self.mode if self.profile == "native" else f"{self.mode}+{self.profile}"

    @property
    def interface(self) -> str:
        """Return "wsgi" or "asgi"."""
        if self.mode in GRANIAN_MODES:
            return self.mode.removeprefix("granian_")
        return servers.interface_of_mode(self.mode)

    @property
    def app(self) -> str:
        """Return the application's import path."""
        apps = BARE_APPS if self.profile == "bare" else DJANGO_APPS
        return apps[self.interface]

    def argv(self, port: int, workers: int) -> list[str]:
        """Return the server's command line (without CPU pinning)."""
        if self.mode in GRANIAN_MODES:
            return [
                granian_executable() or "granian",
                "--interface",
                self.interface,
                "--host",
                servers.HOST,
                "--port",
                str(port),
                "--workers",
                str(workers),
                "--no-ws",
                self.app,
            ]
        argv = [servers.gunicorn_executable(), "-c", str(servers.mode_config(self.mode))]
        # Without an app argument the config's wsgi_app (the project) is served.
        return [*argv, self.app] if self.profile == "bare" else argv

    def env(self, port: int, workers: int, threads: int) -> dict[str, str | None]:
        """Return the environment overrides the server runs with (None removes a name)."""
        env: dict[str, str | None] = {
            "WEB_CONCURRENCY": str(workers),
            "GUNICORN_THREADS": str(threads),
            "GUNICORN_CMD_ARGS": GUNICORN_BENCH_ARGS,
            "BIND": f"{servers.HOST}:{port}",
            "DUALSERVE_PROFILE": "stock" if self.profile == "stock" else "native",
        }
        if self.mode in GRANIAN_MODES:
            env.update({"GUNICORN_CMD_ARGS": None, "BIND": None, "GUNICORN_THREADS": None})
        return env


def granian_executable() -> str | None:
    """Return the granian script of this interpreter's environment, or None."""
    candidate = Path(sys.executable).parent / "granian"
    if candidate.exists():
        return str(candidate)
    return shutil.which("granian")


def granian_installed() -> bool:
    """Return whether granian can be run (the optional `granian` extra)."""
    return importlib.util.find_spec("granian") is not None and granian_executable() is not None


def available_modes() -> list[str]:
    """Return the modes this machine can run: the four gunicorn modes, granian if installed."""
    return list(servers.MODES) + (list(GRANIAN_MODES) if granian_installed() else [])


def parse_modes(text: str) -> list[str]:
    """Return the modes of a comma-separated --modes value; refuse unknown or missing ones."""
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [mode for mode in chosen if mode not in ALL_MODES]
    if unknown or not chosen:
        raise ContenderError(
            f"--modes {text!r}: unknown {unknown}; choose from {', '.join(ALL_MODES)}"
        )
    if any(mode in GRANIAN_MODES for mode in chosen) and not granian_installed():
        raise ContenderError(
            "granian is not installed: `uv sync --all-extras` (or `pip install granian`)"
        )
    return list(dict.fromkeys(chosen))


def pinned(argv: Sequence[str], cpus: Sequence[int]) -> list[str]:
    """Return `argv` run under `taskset -c <cpus>` (taskset execs it: the PID stays the same)."""
    if not cpus:
        return list(argv)
    taskset = shutil.which("taskset")
    if taskset is None:
        return list(argv)
    return [taskset, "-c", ",".join(map(str, cpus)), *argv]


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back for the block; deliver them when it ends.

    Between a child's fork and the caller knowing its PID, a Ctrl-C would leave a server
    nobody stops (seen in the interrupt test on a busy machine: an orphaned gunicorn).
    Handlers, not a blocked signal mask: a child inherits the mask across exec, and a
    gunicorn started with SIGTERM blocked never stops.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread receives signals in Python
        return
    received: list[int] = []

    def hold(signum: int, frame: object) -> None:
        received.append(signum)

    previous = {signum: signal.signal(signum, hold) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if received:
            signal.raise_signal(received[0])


def launch(
    argv_for_port: ArgvForPort,
    *,
    env: Mapping[str, str | None],
    workdir: Path,
    health_path: str = servers.HEALTH_PATH,
    timeout: float = START_TIMEOUT,
    on_spawn: Callable[[servers.Server], object] | None = None,
) -> servers.Server:
    """Start a server on a free loopback port; return once `health_path` answers 200.

    `argv_for_port(port)` returns the command and its environment overrides. A port taken
    between choosing and binding it is retried, as lab.servers does. `on_spawn(server)`
    runs as soon as the process exists, before anything can interrupt: register it there
    for clean-up.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, servers.BIND_ATTEMPTS + 1):
        port = servers.free_port()
        argv, extra_env = argv_for_port(port)
        child_env = servers.merged_environment(
            {"XDG_RUNTIME_DIR": str(workdir), **env, **extra_env}
        )
        log_path = workdir / f"server-{port}.log"
        with interrupts_held(), log_path.open("wb") as log_file:
            process = subprocess.Popen(  # noqa: S603  (argv built by this module)
                argv,
                cwd=servers.REPO_ROOT,
                env=child_env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            server = servers.Server(argv, process, port, log_path)
            if on_spawn is not None:
                on_spawn(server)
        try:
            server.wait_healthy(timeout=timeout, path=health_path)
        except servers.ServerError:
            server.stop(timeout=10.0)
            if servers.ADDRESS_IN_USE in server.output() and attempt < servers.BIND_ATTEMPTS:
                continue
            raise
        except BaseException:
            with contextlib.suppress(Exception):
                server.stop(timeout=10.0)
            raise
        return server
    raise AssertionError("unreachable: the last attempt returns or raises")


@dataclass(frozen=True)
class ContenderLaunch:
    """The command of a contender with `workers` workers, pinned to `cpus`."""

    contender: Contender
    workers: int
    threads: int
    cpus: tuple[int, ...]

    def __call__(self, port: int) -> tuple[list[str], dict[str, str | None]]:
        argv = pinned(self.contender.argv(port, self.workers), self.cpus)
        return argv, self.contender.env(port, self.workers, self.threads)
