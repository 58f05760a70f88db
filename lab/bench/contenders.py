"""The servers the benchmark compares, and how each one is started, pinned and stopped.

A contender is a serving mode running one application profile:

- the four gunicorn modes of deploy/gunicorn/ (their shipped config files, unchanged), and
  granian for each interface when the optional extra is installed (`uv sync --all-extras`);
- profile "native" (the template), "stock" (DUALSERVE_PROFILE=stock: startproject's
  MIDDLEWARE, whitenoise and Django's own ASGI handler) or "bare" (lab.bench.bare: no
  Django at all, the server's ceiling);
- the lean async frameworks as reference ceilings (lab.bench.frameworks), the showcase's
  hello and JSON answers without Django: "asgi_uvicorn+starlette" (Starlette on the shipped
  asgi_uvicorn config) and "sanic" (Sanic on its own server, mode and profile "sanic");
- the supervisor process model (deploy/supervisor/run.sh, `--supervisor`): "supervisor_wsgi"
  (single-worker gunicorn masters on the socket supervisord holds) and "supervisor_asgi"
  (uvicorn processes on theirs), the same worker count as the gunicorn-master contenders.

Every server is started under `taskset` on the server CPUs, in a session of its own, and
stopped by its PID with SIGTERM (lab.servers.Server), SIGKILL to its group as a last resort.
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lab import servers

GRANIAN_MODES = ("granian_wsgi", "granian_asgi")
ALL_MODES = (*servers.MODES, *GRANIAN_MODES)
# supervisord's modes, each measured beside the gunicorn-master mode it replaces: the same
# gunicorn config (run.sh's default WSGI_MODE) or the same uvicorn settings (asgi.conf).
SUPERVISOR_TWINS = {"supervisor_wsgi": "wsgi_gthread", "supervisor_asgi": "asgi_uvicorn"}
SUPERVISOR_MODES = tuple(SUPERVISOR_TWINS)
SUPERVISOR_RUN = servers.REPO_ROOT / "deploy" / "supervisor" / "run.sh"
SUPERVISOR_INSTALL_HINT = (
    "supervisord is not installed: `sudo apt-get install supervisor`, or leave out --supervisor"
)
# What each supervised process logs once it serves (deploy/gunicorn/common.py; uvicorn).
SUPERVISOR_READY = {"wsgi": r"Worker ready \(pid: \d+\)", "asgi": r"Application startup complete\."}
# Sanic serves itself: a mode of its own, never a --modes choice (it cannot serve Django).
SANIC = "sanic"
STARLETTE = "starlette"
PROFILES = ("native", "stock", "bare", STARLETTE, SANIC)
# The profiles that run no Django: the ceilings.
DJANGO_FREE = ("bare", STARLETTE, SANIC)
DJANGO_APPS = {"wsgi": "project.wsgi:application", "asgi": "project.asgi:application"}
BARE_APPS = {"wsgi": "lab.bench.bare:wsgi_app", "asgi": "lab.bench.bare:asgi_app"}
FRAMEWORK_APPS = {
    STARLETTE: "lab.bench.frameworks.starlette_app:app",
    SANIC: "lab.bench.frameworks.sanic_app:app",
}
# Worker recycling restarts a worker (a full Django import) every ~10,000 requests: in a run
# of tens of thousands that is a stall measured as the server's speed. common.py says to turn
# it off for benchmarks; GUNICORN_CMD_ARGS beats the config file and leaves it unchanged.
GUNICORN_BENCH_ARGS = "--max-requests 0"
START_TIMEOUT = 60.0
# Sanic logs this once per worker process ready to serve; its main process takes the
# workers' acknowledgements within a few of its 0.1 s polls after that.
SANIC_WORKER_READY = r"Worker ready \[\d+\]"
SANIC_ACK_S = 1.0

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
        """Return the display name: the mode, plus +profile unless native (or the mode itself)."""
        if self.profile in ("native", self.mode):
            return self.mode
        return f"{self.mode}+{self.profile}"

    @property
    def interface(self) -> str:
        """Return "wsgi" or "asgi"."""
        if self.mode in GRANIAN_MODES:
            return self.mode.removeprefix("granian_")
        if self.mode == SANIC:
            return "asgi"
        if self.mode in SUPERVISOR_MODES:
            return self.mode.removeprefix("supervisor_")
        return servers.interface_of_mode(self.mode)

    @property
    def app(self) -> str:
        """Return the application's import path."""
        if self.profile in FRAMEWORK_APPS:
            return FRAMEWORK_APPS[self.profile]
        apps = BARE_APPS if self.profile == "bare" else DJANGO_APPS
        return apps[self.interface]

    def argv(self, port: int, workers: int) -> list[str]:
        """Return the server's command line (without CPU pinning)."""
        if self.mode == SANIC:
            # Sanic's own server: a main process and `workers` worker processes, uvloop, no
            # access log (what production runs), no banner; debug is off unless asked for.
            return [
                sanic_executable(),
                self.app,
                "--host",
                servers.HOST,
                "--port",
                str(port),
                "--workers",
                str(workers),
                "--no-access-logs",
                "--no-motd",
            ]
        if self.mode in SUPERVISOR_MODES:
            # run.sh execs supervisord: the PID the harness holds is supervisord's.
            return [str(SUPERVISOR_RUN)]
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
        return [*argv, self.app] if self.profile in DJANGO_FREE else argv

    def env(
        self, port: int, workers: int, threads: int, other_port: int = 0
    ) -> dict[str, str | None]:
        """Return the environment overrides the server runs with (None removes a name).

        `other_port`: under supervisord, the socket of the interface not measured (default:
        a free one).
        """
        env: dict[str, str | None] = {
            "WEB_CONCURRENCY": str(workers),
            "GUNICORN_THREADS": str(threads),
            "GUNICORN_CMD_ARGS": GUNICORN_BENCH_ARGS,
            "BIND": f"{servers.HOST}:{port}",
            "DUALSERVE_PROFILE": "stock" if self.profile == "stock" else "native",
        }
        if self.mode in (*GRANIAN_MODES, SANIC):
            env.update({"GUNICORN_CMD_ARGS": None, "BIND": None, "GUNICORN_THREADS": None})
        if self.mode in SUPERVISOR_MODES:
            # supervisord binds both interfaces' sockets: this one on `port`, the other (stopped
            # once everything is up, see stop_other_interface) on a second free port.
            other = "asgi" if self.interface == "wsgi" else "wsgi"
            env.update(
                {
                    "BIND": None,
                    f"{self.interface.upper()}_PORT": str(port),
                    f"{other.upper()}_PORT": str(other_port or servers.free_port()),
                    "WSGI_MODE": SUPERVISOR_TWINS["supervisor_wsgi"],
                }
            )
        return env


# Starlette runs on the Django ASGI contender's server config; Sanic on its own server.
FRAMEWORK_MODE = "asgi_uvicorn"
# The reference ceilings, in the order the report lists them.
FRAMEWORK_CONTENDERS = (Contender(FRAMEWORK_MODE, STARLETTE), Contender(SANIC, SANIC))


def profile_of(name: str) -> str:
    """Return the profile of a contender's display name ("sanic" for Sanic's own server)."""
    mode, _, profile = name.partition("+")
    return profile or (SANIC if mode == SANIC else "native")


def wait_sanic_ready(server: servers.Server, workers: int, timeout: float = START_TIMEOUT) -> bool:
    """Wait until every Sanic worker logged it is ready and the main process took it in.

    The main process polls its workers' acknowledgements every 0.1 s after they log ready; a
    SIGTERM before it has them all makes it send the shutdown message to itself forever
    (sanic 25.12, sanic/worker/manager.py `wait_for_ack`), a spin only SIGKILL ends.
    """
    if not server.wait_for_output(SANIC_WORKER_READY, workers, timeout=timeout):
        return False
    time.sleep(SANIC_ACK_S)
    return server.running()


def supervisor_installed() -> bool:
    """Return whether supervisord can be run (PATH, or Debian's /usr/bin that run.sh adds)."""
    return shutil.which("supervisord") is not None or Path("/usr/bin/supervisord").exists()


def supervisor_log(run_dir: Path, name: str) -> str:
    """Return a log of supervisord's run directory ("supervisord", "wsgi-0", ...), or ""."""
    path = run_dir / f"{name}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def wait_supervisor_ready(
    server: servers.Server, run_dir: Path, workers: int, timeout: float = START_TIMEOUT
) -> bool:
    """Wait until every process of both interfaces logged that it serves (bounded).

    supervisord answers once one process accepts; the others may still be importing Django.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.running():
        if all(
            re.search(SUPERVISOR_READY[interface], supervisor_log(run_dir, f"{interface}-{n}"))
            for interface in SUPERVISOR_READY
            for n in range(workers)
        ):
            return True
        time.sleep(0.2)
    return False


def stop_other_interface(contender: Contender, env: Mapping[str, str]) -> str:
    """Stop the interface `contender` does not measure (`run.sh ctl stop asgi:*`); return the
    output. run.sh always starts both: the idle one would count in the memory and the CPUs."""
    other = "asgi" if contender.interface == "wsgi" else "wsgi"
    done = subprocess.run(  # noqa: S603  (our script, fixed arguments)
        [str(SUPERVISOR_RUN), "ctl", "stop", f"{other}:*"],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.stdout + done.stderr


def sanic_executable() -> str:
    """Return the sanic script of this interpreter's environment (the lab group installs it)."""
    candidate = Path(sys.executable).parent / "sanic"
    return str(candidate) if candidate.exists() else shutil.which("sanic") or "sanic"


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
    # supervisord's control socket, pid file and logs (SUPERVISOR_RUN_DIR): private per server.
    run_dir: Path | None = None
    other_port: int = 0

    def __call__(self, port: int) -> tuple[list[str], dict[str, str | None]]:
        # taskset pins run.sh, so supervisord and every process it starts: affinity is inherited.
        argv = pinned(self.contender.argv(port, self.workers), self.cpus)
        env = self.contender.env(port, self.workers, self.threads, self.other_port)
        if self.run_dir is not None:
            env["SUPERVISOR_RUN_DIR"] = str(self.run_dir)
        return argv, env
