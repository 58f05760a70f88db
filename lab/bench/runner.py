"""Run a plan: fresh servers, warm-up, wrk runs, SSE runs, and a clean stop whatever happens.

Every process the runner starts (servers, nginx, the upstream, wrk) is registered the moment
it exists and stopped by its PID in `stop_all()`, which the command calls in a `finally`:
Ctrl-C, SIGTERM or any failure leaves nothing running.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import http.client
import json
import os
import resource
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lab import manage, servers
from lab.bench import fanout, floor, infra, procs, sse, wrk
from lab.bench.contenders import (
    SANIC,
    START_TIMEOUT,
    SUPERVISOR_MODES,
    Contender,
    ContenderLaunch,
    launch,
    pinned,
    stop_other_interface,
    supervisor_log,
    wait_sanic_ready,
    wait_supervisor_ready,
)
from lab.bench.plan import (
    FLOOR_REQUEST_S,
    FLOOR_START_S,
    FLOOR_WARMUP,
    SSE_GRACE_S,
    Cell,
    FanoutJob,
    FloorJob,
    Group,
    Plan,
    SseGroup,
    warmups,
)
from lab.bench.scenarios import Scenario

PROBE_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 30.0
# After an overload (sync workers at 500 connections) the server still works through the
# requests queued in its listen backlog: wait for it, up to this long, before the next run.
SETTLE_TIMEOUT_S = 120.0
# A health check answered faster than this: the queue is drained.
SETTLED_S = 0.5
# The floor of one interface: Django's import plus its timed requests, with a wide margin.
FLOOR_TIMEOUT_S = 300.0
# The longest path a Unix socket may have (sun_path holds 108 bytes with the final NUL).
SOCKET_PATH_MAX = 107

Notify = Callable[[str], None]


class BenchError(RuntimeError):
    """The run cannot go on; the message says what failed."""


def now() -> str:
    """Return the current UTC time, ISO 8601, to the second."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def raise_open_files_limit() -> int:
    """Raise the soft open-files limit to the hard one (1,000 streams need 1,000 sockets)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def server_env(var_dir: Path, database_url: str = "") -> dict[str, str | None]:
    """Return the environment every Django server runs with: production, on a private DB.

    With `database_url`, on that database instead; DATABASE_URL from the caller's environment
    never leaks in (removed as every other inherited setting).
    """
    env: dict[str, str | None] = dict.fromkeys(servers.INHERITED_SETTINGS)
    if database_url:
        env["DATABASE_URL"] = database_url
    env.update(
        {
            # Production settings, as deployed, except the HTTPS redirect: the load is plain
            # HTTP on loopback, and a 301 to https:// would be all it measured.
            "DJANGO_ENV": "production",
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(60),
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
            "DJANGO_SECURE_SSL_REDIRECT": "false",
            "DJANGO_VAR_DIR": str(var_dir),
        }
    )
    return env


def shown_env(env: dict[str, str | None]) -> dict[str, str | None]:
    """Return `env` for results.json, the secret key and the database password hidden."""
    hidden = {"DJANGO_SECRET_KEY": lambda value: "<random>", "DATABASE_URL": hide_password}
    return {k: (hidden[k](v) if k in hidden and v else v) for k, v in env.items()}


def hide_password(url: str) -> str:
    """Return a database URL with its password, if any, replaced by ***."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def manage_steps(database_url: str, fixtures: Sequence[Path]) -> list[list[str]]:
    """Return the manage.py commands that prepare a run's database and static files.

    The private database is migrated, then the fixtures are loaded in order; a database of
    the user's (`database_url`) is used as it is.
    """
    steps = []
    if not database_url:
        steps.append(["migrate", "--noinput", "--verbosity", "0"])
        steps += [["loaddata", "--verbosity", "0", str(path)] for path in fixtures]
    steps.append(["collectstatic", "--noinput", "--verbosity", "0"])
    return steps


def probe(port: int, scenario: Scenario, interface: str) -> tuple[int, str]:
    """Send the scenario's request once; return the status and the start of the body."""
    request = scenario.request(interface)
    connection = http.client.HTTPConnection(servers.HOST, port, timeout=PROBE_TIMEOUT_S)
    try:
        headers = {"Host": f"{servers.HOST}:{port}", **request.headers}
        connection.request(request.method, request.path, body=request.body or None, headers=headers)
        response = connection.getresponse()
        return response.status, response.read(300).decode("utf-8", "replace")
    finally:
        connection.close()


class Runner:
    """Run a plan and collect raw results; `stop_all()` stops everything it started."""

    def __init__(
        self,
        plan: Plan,
        wrk_binary: str,
        workdir: Path,
        notify: Notify = lambda message: None,
        advance: Callable[[float, str], None] = lambda seconds, label: None,
    ) -> None:
        self.plan = plan
        self.options = plan.options
        self.wrk_binary = wrk_binary
        self.workdir = workdir
        self.notify = notify
        self.advance = advance
        self.var_dir = workdir / "var"
        self.env = server_env(self.var_dir, self.options.database_url)
        self.running: list[tuple[str, servers.Server]] = []
        self.wrk_process: subprocess.Popen[str] | None = None
        self.floor_process: subprocess.Popen[str] | None = None
        # showcase:begin
        self.upstream: servers.Server | None = None
        # showcase:end
        self.runs: list[dict[str, Any]] = []
        self.servers_started: list[dict[str, Any]] = []
        self.sse_runs: list[dict[str, Any]] = []
        self.floor_runs: list[dict[str, Any]] = []
        self.fanout_runs: list[dict[str, Any]] = []
        self.commands: dict[str, Any] = {}
        self.sequence = 0
        self.scratch: list[Path] = []

    # --- processes -------------------------------------------------------------------------

    def register(self, label: str, server: servers.Server) -> servers.Server:
        """Remember a started process for stop_all()."""
        self.running.append((label, server))
        return server

    def stop(self, server: servers.Server) -> int:
        """Stop one started process by its PID and forget it; return its exit status."""
        self.running = [(label, s) for label, s in self.running if s is not server]
        left = procs.Descendants.of(server.pid)
        status = server.stop(timeout=STOP_TIMEOUT_S)
        self.check_left(server, left)
        return status

    def check_left(self, server: servers.Server, left: procs.Descendants) -> str:
        """Kill by PID whatever of a stopped server's tree outlived it; say what, if anything.

        supervisord starts each program in a process group of its own, so the group kill of
        lab.servers cannot reach them: a supervised process that outlived supervisord (it should
        not) is found here, from the tree read just before the stop.
        """
        survivors = left.alive(timeout=5.0)
        if not survivors:
            return ""
        for pid in survivors:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        record = next((r for r in self.servers_started if r["pid"] == server.pid), None)
        if record is not None:
            record["left_after_stop"] = survivors
        message = f"{len(survivors)} process(es) outlived pid {server.pid}, killed: {survivors}"
        self.notify(message)
        return message

    def stop_all(self) -> list[str]:
        """Stop wrk and every started process, newest first; return what was stopped."""
        stopped = []
        if self.wrk_process is not None and self.wrk_process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.wrk_process.pid, signal.SIGKILL)
            self.wrk_process.wait()
            stopped.append(f"wrk (pid {self.wrk_process.pid})")
        if self.floor_process is not None and self.floor_process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.floor_process.pid, signal.SIGKILL)
            self.floor_process.wait()
            stopped.append(f"floor (pid {self.floor_process.pid})")
        # A second Ctrl-C must not leave the rest running: ignore it while stopping.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            # SIGTERM to all first, so they shut down side by side, then wait for each.
            trees = {server.pid: procs.Descendants.of(server.pid) for _, server in self.running}
            for _, server in self.running:
                server.send_signal(signal.SIGTERM)
            for label, server in reversed(self.running):
                status = server.stop(timeout=STOP_TIMEOUT_S)
                left = self.check_left(server, trees[server.pid])
                stopped.append(
                    f"{label} (pid {server.pid}, exit {status})" + (f": {left}" if left else "")
                )
        finally:
            signal.signal(signal.SIGINT, previous)
        self.running.clear()
        return stopped

    # --- preparation -----------------------------------------------------------------------

    def prepare(self) -> None:
        """Prepare the database and static files; start the upstream when needed."""
        self.var_dir.mkdir(parents=True, exist_ok=True)
        for step in manage_steps(self.options.database_url, self.options.fixtures):
            manage.run_checked(step, self.env, error=BenchError)
        # showcase:begin
        if "upstream" in self.plan.scenarios:
            self.upstream = infra.start_upstream(
                self.workdir / "upstream",
                self.options.load_cpus,
                on_spawn=lambda started: self.register("upstream", started),
            )
            self.env["SHOWCASE_UPSTREAM_URL"] = self.upstream.base_url + "/"
            self.commands["upstream"] = self.upstream.argv
            self.notify(f"upstream on {self.upstream.base_url} (pid {self.upstream.pid})")
        # showcase:end

    def start_server(
        self,
        contender: Contender,
        workers: int,
        tag: str,
        extra_env: dict[str, str | None] | None = None,
    ) -> servers.Server:
        """Start a fresh server for `contender`; record its command and resting memory."""
        workdir = self.workdir / "servers" / tag
        supervised = contender.mode in SUPERVISOR_MODES
        run_dir = self.supervisor_run_dir(workdir) if supervised else None
        command = ContenderLaunch(
            contender,
            workers,
            self.options.threads,
            self.options.server_cpus,
            run_dir=run_dir,
            other_port=servers.free_port() if supervised else 0,
        )
        env = {**self.env, **(extra_env or {})}
        server = launch(
            command,
            env=env,
            workdir=workdir,
            on_spawn=lambda started: self.register(contender.name, started),
        )
        # Resting memory with every worker booted: gunicorn answers once the first one is up,
        # and the template's configs log each worker ready. granian logs no such line: a
        # moment for its other workers instead.
        if contender.mode in servers.MODES:
            if not server.wait_workers_ready(timeout=START_TIMEOUT):
                raise BenchError(f"{contender.name}: not every worker booted:\n{server.tail()}")
        elif contender.mode == SANIC:
            if not wait_sanic_ready(server, workers):
                raise BenchError(f"{contender.name}: not every worker booted:\n{server.tail()}")
        elif run_dir is not None:
            if not wait_supervisor_ready(server, run_dir, workers):
                log = supervisor_log(run_dir, "supervisord")[-3000:]
                raise BenchError(f"{contender.name}: not every process serves:\n{log}")
            child_env = servers.merged_environment(
                {**env, **command(server.port)[1], "SUPERVISOR_RUN_DIR": str(run_dir)}
            )
            said = stop_other_interface(contender, child_env)
            if "stopped" not in said:
                raise BenchError(f"{contender.name}: could not stop the other interface: {said}")
        else:
            time.sleep(0.5)
        rest = procs.snapshot(server.pid)
        record = {
            "contender": contender.name,
            "tag": tag,
            "workers": workers,
            "pid": server.pid,
            "argv": server.argv,
            "env": shown_env({**env, **command(server.port)[1]}),
            "rest_rss": rest.total,
            "rest_worker_rss": sorted(rest.worker_rss.values()),
            "log": str(server.log_path),
        }
        self.servers_started.append(record)
        self.notify(f"started {contender.name} x{workers} (pid {server.pid}, port {server.port})")
        return server

    def supervisor_run_dir(self, workdir: Path) -> Path:
        """Return a run directory for supervisord whose control socket path fits AF_UNIX.

        A socket path is at most 107 bytes; under a deep work directory (pytest's) supervisord
        refuses to start, so the directory goes to a short one, removed by `cleanup()`.
        """
        run_dir = workdir / "supervisor"
        if len(str(run_dir / "supervisor.sock")) <= SOCKET_PATH_MAX:
            return run_dir
        short = Path(tempfile.mkdtemp(prefix="dualserve-sv-"))
        self.scratch.append(short)
        return short

    def cleanup(self) -> None:
        """Remove the directories made outside the work directory (after a complete run)."""
        for path in self.scratch:
            shutil.rmtree(path, ignore_errors=True)
        self.scratch.clear()

    # --- the plan --------------------------------------------------------------------------

    def run(self) -> None:
        """Start every group's server, run the repeats across them, then the SSE groups.

        One fresh server per group serves all its repeats: idle servers cost their CPU
        nothing, and the alternating order then spreads drift across every mode.
        """
        self.prepare()
        # Before any server exists: the floor has the servers' CPUs to itself.
        for job in self.plan.floor:
            self.run_floor(job)
        started: dict[str, tuple[servers.Server, servers.Server | None]] = {}
        for group in self.plan.groups:
            started[group.contender.name] = self.start_group(group)
        for repeat in range(self.options.repeat):
            for group, cells in self.plan.ordered(repeat):
                server, front = started[group.contender.name]
                for cell in cells:
                    target = front if cell.via == "nginx" and front else server
                    scenario = self.plan.scenarios[cell.scenario]
                    self.measure(
                        server,
                        front if cell.via == "nginx" else None,
                        target,
                        cell,
                        scenario,
                        repeat,
                    )
                    self.advance(self.options.duration_s + 0.4, cell.key)
        for record in self.servers_started:
            after = procs.snapshot(record["pid"])
            record.update(
                {"after_rss": after.total, "after_worker_rss": sorted(after.worker_rss.values())}
            )
        self.stop_all()
        for sse_group in self.plan.sse:
            self.run_sse(sse_group)
        for fanout_job in self.plan.fanout:
            self.run_fanout(fanout_job)

    def start_group(self, group: Group) -> tuple[servers.Server, servers.Server | None]:
        """Start the group's server and, when a cell needs it, nginx in front; warm it up."""
        contender = group.contender
        server = self.start_server(contender, group.workers, contender.name)
        self.advance(3.0, f"started {contender.name}")
        front: servers.Server | None = None
        if group.needs_nginx:
            front, config = infra.start_nginx(
                server,
                contender.interface,
                self.workdir / "nginx" / contender.name,
                self.options.load_cpus,
                on_spawn=lambda started: self.register(f"nginx for {contender.name}", started),
            )
            self.commands.setdefault("nginx", {"argv": front.argv, "config": config})
        if self.options.warmup_s >= 1:
            self.warm_up(server, group)
        return server, front

    def warm_up(self, server: servers.Server, group: Group) -> None:
        """Send every scenario of the group to a fresh server at once; discard the figures."""
        names, connections = warmups(group)
        interface = group.contender.interface
        requests = [self.plan.scenarios[name].request(interface) for name in names]
        self.notify(f"warm-up {group.contender.name}: {', '.join(names)} at {connections}")
        self.run_wrk(
            server.base_url + requests[0].path,
            wrk.mixed_script(requests),
            connections,
            self.options.warmup_s,
        )
        self.advance(self.options.warmup_s, f"warm-up {group.contender.name}")

    def settle(self, server: servers.Server) -> float:
        """Wait until the server answers /healthz promptly again; return how long that took."""
        started = time.monotonic()
        deadline = started + SETTLE_TIMEOUT_S
        last = "no answer"
        while time.monotonic() < deadline:
            asked = time.monotonic()
            try:
                status = servers.http_status(
                    servers.HOST, server.port, servers.HEALTH_PATH, timeout=deadline - asked
                )
            except OSError as exc:
                last = f"{type(exc).__name__}: {exc}"
                time.sleep(0.2)
                continue
            if status == 200 and time.monotonic() - asked < SETTLED_S:
                return time.monotonic() - started
            last = f"HTTP {status} after {time.monotonic() - asked:.1f} s"
        raise BenchError(
            f"{' '.join(server.argv)} still busy {SETTLE_TIMEOUT_S:.0f} s after the last run "
            f"({last}):\n{server.tail()}"
        )

    def measure(
        self,
        server: servers.Server,
        front: servers.Server | None,
        target: servers.Server,
        cell: Cell,
        scenario: Scenario,
        repeat: int,
    ) -> None:
        """Measure one cell once: probe its status, run wrk, sample the server and nginx."""
        interface = Contender(cell.contender.split("+")[0]).interface
        self.sequence += 1
        record: dict[str, Any] = {
            "cell": cell.key,
            "contender": cell.contender,
            "scenario": cell.scenario,
            "concurrency": cell.concurrency,
            "via": cell.via,
            "repeat": repeat + 1,
            "sequence": self.sequence,
            "started": now(),
            "path": scenario.path_for(interface),
            "method": scenario.method,
        }
        record["settle_s"] = self.settle(server)
        try:
            status, body = probe(target.port, scenario, interface)
        except OSError as exc:
            raise BenchError(f"{cell.key}: the probe request failed: {exc}") from exc
        record["probe_status"] = status
        if status != scenario.status:
            record["skipped"] = f"answered {status}, expected {scenario.status}: {body[:200]!r}"
            self.notify(f"{cell.key}: {record['skipped']}")
            self.runs.append(record)
            return
        with contextlib.ExitStack() as stack:
            server_usage = stack.enter_context(
                procs.Sampler(server.pid, self.options.server_cpus)
            ).usage
            nginx_usage = stack.enter_context(procs.Sampler(front.pid)).usage if front else None
            result, argv, output, wrk_cpu_s = self.wrk_run(
                target, scenario, interface, cell.concurrency, self.options.duration_s
            )
        record.update(
            {
                "command": " ".join(argv),
                "wrk": result.as_dict(),
                "wrk_output": output,
                "wrk_cpu_percent": 100.0 * wrk_cpu_s / result.duration_s,
                "server": usage_dict(server_usage),
                "nginx": usage_dict(nginx_usage) if nginx_usage else None,
            }
        )
        self.runs.append(record)
        self.notify(
            f"{cell.key} r{repeat + 1}: {result.rps:,.0f} req/s, "
            f"p99 {result.latency_ms['p99']:.1f} ms"
            + (
                f", {result.errors.socket + result.errors.status} errors"
                if result.errors.socket + result.errors.status
                else ""
            )
        )

    def wrk_run(
        self,
        target: servers.Server,
        scenario: Scenario,
        interface: str,
        connections: int,
        duration_s: float,
    ) -> tuple[wrk.WrkResult, list[str], str, float]:
        """Run wrk once against `target`; return its figures, command, output and CPU time."""
        request = scenario.request(interface)
        return self.run_wrk(
            f"{target.base_url}{request.path}", wrk.script(request), connections, duration_s
        )

    def run_wrk(
        self, url: str, text: str, connections: int, duration_s: float
    ) -> tuple[wrk.WrkResult, list[str], str, float]:
        """Run wrk with the Lua script `text`; return its figures, command, output, CPU time."""
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        script = self.workdir / "scripts" / f"{digest}.lua"
        script.parent.mkdir(parents=True, exist_ok=True)
        if not script.exists():
            script.write_text(text, encoding="utf-8")
        threads = max(1, len(self.options.load_cpus))
        argv = pinned(
            wrk.command(
                self.wrk_binary,
                url,
                connections=connections,
                duration_s=duration_s,
                threads=threads,
                script_path=str(script),
                timeout_s=self.options.timeout_s,
            ),
            self.options.load_cpus,
        )
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.wrk_process = subprocess.Popen(  # noqa: S603  (wrk, arguments built here)
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            output, _ = self.wrk_process.communicate(
                timeout=duration_s + self.options.timeout_s + 30
            )
        except subprocess.TimeoutExpired:
            os.killpg(self.wrk_process.pid, signal.SIGKILL)
            self.wrk_process.wait()
            raise BenchError(f"wrk did not finish: {' '.join(argv)}") from None
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        code = self.wrk_process.returncode
        self.wrk_process = None
        if code != 0:
            raise BenchError(f"wrk exited with {code}: {' '.join(argv)}\n{output[-2000:]}")
        cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        return wrk.parse(output), argv, output, cpu_s

    # --- the floor: Django's handlers in-process ------------------------------------------

    def run_floor(self, job: FloorJob) -> None:
        """Time the job's paths through one interface's handler in a pinned subprocess."""
        opts = self.options
        paths = [self.plan.scenarios[name].path_for(job.interface) for name in job.scenarios]
        argv = pinned(
            floor.command(job.interface, paths, opts.floor_requests, FLOOR_WARMUP, opts.repeat),
            opts.server_cpus,
        )
        self.notify(f"floor {job.interface}: {', '.join(paths)} in-process")
        # The servers' environment: production settings, the private database and var dir.
        self.floor_process = subprocess.Popen(  # noqa: S603  (this interpreter, our module)
            argv,
            cwd=servers.REPO_ROOT,
            env=servers.merged_environment(self.env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            output, errors = self.floor_process.communicate(timeout=FLOOR_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.floor_process.pid, signal.SIGKILL)
            self.floor_process.wait()
            raise BenchError(f"the floor did not finish: {' '.join(argv)}") from None
        code = self.floor_process.returncode
        self.floor_process = None
        if code != 0:
            raise BenchError(f"the floor exited with {code}: {' '.join(argv)}\n{errors[-2000:]}")
        figures = json.loads(output)
        for scenario, measured in zip(job.scenarios, figures["paths"], strict=True):
            self.floor_runs.append(
                {
                    "interface": job.interface,
                    "scenario": scenario,
                    "command": " ".join(argv),
                    **measured,
                }
            )
        requests = opts.floor_requests * opts.repeat + FLOOR_WARMUP
        self.advance(FLOOR_START_S + len(paths) * requests * FLOOR_REQUEST_S, "floor")

    # --- long-lived connections ------------------------------------------------------------

    def run_sse(self, group: SseGroup) -> None:
        """Hold `clients` SSE streams on a fresh one-worker server, for each client count."""
        contender = group.contender
        opts = self.options
        server = self.start_server(contender, 1, f"sse-{contender.name}")
        self.advance(3.0, f"started {contender.name} for SSE")
        twin = "async" if contender.interface == "asgi" else "sync"
        path = f"/{twin}/stream/?events={opts.sse_events}&interval={opts.sse_interval_ms}"
        try:
            for clients in group.clients:
                self.notify(f"SSE {contender.name}: {clients} clients on {path}")
                with procs.Sampler(server.pid, opts.server_cpus) as sampler:
                    result = sse.run(
                        servers.HOST,
                        server.port,
                        path,
                        clients,
                        opts.sse_events,
                        opts.sse_interval_ms,
                        grace_s=SSE_GRACE_S,
                        ramp_s=opts.sse_ramp_s,
                    )
                self.sse_runs.append(
                    {
                        "contender": contender.name,
                        "workers": 1,
                        "path": path,
                        **result.as_dict(),
                        "server": usage_dict(sampler.usage),
                    }
                )
                self.notify(
                    f"SSE {contender.name} x{clients}: {result.connected} connected, "
                    f"{100 * result.on_time_ratio:.1f}% of events on time"
                )
                self.advance((opts.sse_events - 1) * opts.sse_interval_ms / 1000 + 2.0, "")
                # Let closed streams wind down before the next, larger run.
                time.sleep(1.0)
        finally:
            self.stop(server)

    # --- fan-out: one event to many clients -----------------------------------------------

    def run_fanout(self, job: FanoutJob) -> None:
        """Redis, then a fresh ASGI server on it; N WebSockets + N SSE streams; the rates."""
        opts = self.options
        redis = infra.start_redis(
            self.workdir / "redis",
            opts.load_cpus,
            on_spawn=lambda started: self.register("redis-server", started),
        )
        redis_url = f"redis://{servers.HOST}:{redis.port}/0"
        self.commands["redis"] = redis.argv
        contender = job.contender
        server: servers.Server | None = None
        try:
            server = self.start_server(
                contender, job.workers, f"fanout-{contender.name}", {"REDIS_URL": redis_url}
            )
            self.advance(3.0, f"started {contender.name} for the fan-out")
            pid = server.pid
            self.notify(
                f"fan-out {contender.name} x{job.workers}: {job.clients:,} WebSockets + "
                f"{job.clients:,} SSE, rates {', '.join(map(str, job.rates))}/s"
            )

            def stepped(step: dict[str, Any]) -> None:
                shown = "; ".join(
                    f"{name} p99 {figures['p99_ms']:.0f} ms, "
                    f"{100 * figures['delivered_share']:.1f}% delivered"
                    for name, figures in step["transports"].items()
                )
                self.notify(f"fan-out {step['rate']}/s: {shown}")
                self.advance(job.step_s + 2.0, f"fan-out {step['rate']}/s")

            with procs.Sampler(pid, opts.server_cpus) as sampler:
                result = fanout.run(
                    servers.HOST,
                    server.port,
                    redis_url,
                    job.clients,
                    job.rates,
                    job.step_s,
                    lambda: memory_of(pid),
                    lambda: procs.cpu_seconds(procs.tree(pid)),
                    stepped,
                )
            self.fanout_runs.append(
                {
                    "contender": contender.name,
                    "workers": job.workers,
                    "paths": dict(fanout.PATHS),
                    **result,
                    "server": usage_dict(sampler.usage),
                    "redis_rss": procs.rss_bytes(redis.pid),
                    "redis_pid": redis.pid,
                }
            )
        finally:
            if server is not None:
                self.stop(server)
            self.stop(redis)


def memory_of(pid: int) -> dict[str, Any]:
    """Return a server tree's memory now, and how many sockets each worker holds."""
    shot = procs.snapshot(pid)
    return {
        "total_rss": shot.total,
        "workers_rss": sum(shot.worker_rss.values()),
        "worker_rss": sorted(shot.worker_rss.values()),
        "worker_sockets": sorted(procs.sockets(worker) for worker in shot.worker_rss),
    }


def usage_dict(usage: procs.Usage) -> dict[str, Any]:
    """Return a Sampler's figures for results.json."""
    return {
        "cpu_s": usage.cpu_s,
        "cpu_percent": usage.cpu_percent,
        "wall_s": usage.wall_s,
        "peak_rss": usage.peak_total_rss,
        "peak_worker_rss": usage.peak_worker_rss,
        "processes": usage.workers + 1,
        "foreign_cpu_percent": usage.foreign_percent,
        "peak_worker_threads": usage.peak_worker_threads,
        "samples": usage.samples,
    }
