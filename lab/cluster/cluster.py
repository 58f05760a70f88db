"""Build the cluster, run its processes, break parts of it, and remove every trace of it.

::

    with Cluster(Layout(app_hosts=2)) as cluster:
        cluster.get("/sync/hello/")              # through the balancer, from the client host
        cluster.kill_app_host(2)                 # SIGKILL both servers of app host 2
        cluster.sql("SELECT count(*) FROM auth_group")

Hosts (namespace <prefix>-<role>, address on the test network): client .2 (wrk and the probe
clients), lb .10 (nginx), app1..appN .11.. (a WSGI and an ASGI gunicorn each), db .20
(PostgreSQL from a throw-away initdb), redis .21. Every process runs in its own session, is
stopped by its PID, and leaves its output in the cluster's temporary directory; the exit
removes processes, namespaces (their veths and the bridge go with them) and that directory,
whatever ended the run.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import psycopg

from deploy import nginx
from lab import servers
from lab.cluster import balancer, netns

DEFAULT_PREFIX = "dscl"
# Private and unused here (the compose file's network is 10.203.86.0/24).
DEFAULT_SUBNET = "10.203.90.0/24"
POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")
TEMP_PREFIX = "dualserve-cluster-"
WSGI_PORT = 8001
ASGI_PORT = 8002
POSTGRES_PORT = 5432
REDIS_PORT = 6379
BALANCER_PORT = 80
# Host numbers on the test network; app host i is APP_BASE + i.
HOST_NUMBERS = {"client": 2, "lb": 10, "db": 20, "redis": 21}
APP_BASE = 10
DATABASE = "dualserve"
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 25.0


class ClusterError(RuntimeError):
    """The cluster cannot be built, started or reached; the message says why and what to do."""


@dataclass(frozen=True)
class Layout:
    """What to build: how many app hosts, which serving modes, where, and on which CPUs."""

    app_hosts: int = 3
    prefix: str = DEFAULT_PREFIX
    subnet: str = DEFAULT_SUBNET
    wsgi_mode: str = "wsgi_gthread"
    asgi_mode: str = "asgi_uvicorn"
    # Per server: 1 keeps the PostgreSQL connections of 3 hosts well inside max_connections.
    workers: int = 1
    # Pin every app server to one CPU and everything else to the others, so 1, 2 and 3 app
    # hosts always share the same CPU budget. Needs 2 CPUs or more.
    pin: bool = True

    def roles(self) -> list[str]:
        """Return every host role, app hosts included, in start order."""
        return ["client", "lb", "db", "redis", *self.app_roles()]

    def app_roles(self) -> list[str]:
        """Return the app hosts' roles: app1 .. appN."""
        return [f"app{number}" for number in range(1, self.app_hosts + 1)]

    def namespaces(self) -> list[str]:
        """Return every namespace this layout creates."""
        return netns.Network(self.prefix, self.network()).names(self.roles())

    def network(self) -> ipaddress.IPv4Network:
        """Return the test network."""
        return ipaddress.IPv4Network(self.subnet)


def host_number(role: str) -> int:
    """Return a host's number on the test network (app host i: APP_BASE + i)."""
    return HOST_NUMBERS.get(role) or APP_BASE + int(role.removeprefix("app"))


def cpu_split(pin: bool) -> tuple[list[int], list[int]]:
    """Return (app CPUs, other CPUs): the last CPU for the apps, the rest for the others.

    Without pinning, or with a single CPU, both are empty: no taskset.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        return [], []
    return cpus[-1:], cpus[:-1]


def taskset(cpus: Sequence[int]) -> list[str]:
    """Return the argv prefix pinning a command to `cpus` (nothing when there are none)."""
    return ["taskset", "-c", ",".join(map(str, cpus))] if cpus else []


def as_user(user: str, group: str) -> list[str]:
    """Return the argv prefix that runs a command as `user` (setpriv execs: the PID stays)."""
    return ["setpriv", f"--reuid={user}", f"--regid={group}", "--init-groups", "--"]


class Process:
    """A process of the cluster: started in its own session, stopped by its PID.

    `stop_signal` is the process's graceful stop: SIGTERM for gunicorn, nginx (fast) and Redis;
    SIGINT for PostgreSQL, whose SIGTERM ("smart") waits for every client to leave, and the
    app servers' pools never leave.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        stop_signal: int = signal.SIGTERM,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.stop_signal = stop_signal
        with log_path.open("ab") as log_file:
            self.process = subprocess.Popen(  # noqa: S603  (our own argv, no shell)
                self.argv,
                cwd=servers.REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        """Return the PID of the process started (ip netns exec and setpriv exec in place)."""
        return self.process.pid

    def running(self) -> bool:
        """Return whether the process has not exited yet, without reaping it."""
        if self.process.returncode is not None:
            return False
        # WNOWAIT leaves an exited process a zombie: its PID, which is also its process
        # group's ID, cannot be reused until kill() has signalled the group and reaped it.
        return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None

    def output(self) -> str:
        """Return everything the process wrote so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def tail(self, lines: int = 30) -> str:
        """Return the last lines of the output, for error messages."""
        return "\n".join(self.output().splitlines()[-lines:])

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """Send the graceful stop signal; after `timeout` s, SIGKILL the process group."""
        if self.running():
            os.kill(self.pid, self.stop_signal)
            deadline = time.monotonic() + timeout
            while self.running() and time.monotonic() < deadline:
                time.sleep(0.05)
        self.kill()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL the process's group (its session: workers included), then reap it.

        Once reaped, the PID may belong to someone else: a second call does nothing.
        """
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            self.process.wait()


@dataclass
class Response:
    """One answer through the balancer: status, headers (lower-case names) and body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def upstream_host(self) -> str:
        """Return the address of the app host that answered (the last one nginx tried)."""
        tried = self.headers.get("x-upstream", "")
        return tried.split(",")[-1].strip().rpartition(":")[0]


def request(
    address: str,
    port: int,
    path: str,
    *,
    method: str = "GET",
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> Response:
    """Send one request on a fresh connection from the calling thread's namespace."""
    connection = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        connection.request(method, path, body=body or None, headers=headers or {})
        answer = connection.getresponse()
        content = answer.read()
        return Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, content)
    finally:
        connection.close()


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, detail: Callable[[], str] = str
) -> None:
    """Poll `check` every 0.1 s until it returns True; raise ClusterError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            raise ClusterError(f"{what} did not happen within {timeout:g} s.\n{detail()}")
        time.sleep(0.1)


def quietly(check: Callable[[], bool]) -> Callable[[], bool]:
    """Return `check` with connection errors read as False (the service is not up yet)."""

    def guarded() -> bool:
        try:
            return check()
        except (OSError, http.client.HTTPException, psycopg.Error):
            return False

    return guarded


@contextlib.contextmanager
def teardown_signals() -> Iterator[None]:
    """Hold off SIGINT and SIGTERM while the cluster is torn down: a second Ctrl-C would
    otherwise abort the teardown half-way and leave namespaces behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def remember(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    previous = {sig: signal.signal(sig, remember) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def leftovers(prefix: str) -> tuple[list[str], list[Path]]:
    """Return the namespaces and temporary directories a run with `prefix` may have left."""
    names = [name for name in netns.namespaces() if name.startswith(f"{prefix}-")]
    directories = sorted(Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}{prefix}-*"))
    return names, directories


def cleanup(prefix: str) -> tuple[list[str], list[Path]]:
    """Remove what a crashed run with `prefix` left: its namespaces (and whatever runs in
    them) and its temporary directories. Return what was removed."""
    names, directories = leftovers(prefix)
    removed = netns.remove_namespaces(names)
    for directory in directories:
        shutil.rmtree(directory, ignore_errors=True)
    return removed, directories


class Cluster:
    """The running cluster: its hosts, processes and the actions that break and mend them."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.network = netns.Network(layout.prefix, layout.network())
        self.app_cpus, self.other_cpus = cpu_split(layout.pin)
        self.directory = Path()
        self.processes: dict[str, Process] = {}
        self.password = secrets.token_hex(16)
        self.secret_key = secrets.token_urlsafe(48)
        self._exit = contextlib.ExitStack()
        self.nginx_binary = ""
        self.log_offset = 0
        self.balanced_hosts = layout.app_hosts

    # --- Addresses ------------------------------------------------------------------------

    def address(self, role: str) -> str:
        """Return a host's address on the test network."""
        return str(self.network.subnet.network_address + host_number(role))

    def namespace(self, role: str) -> str:
        """Return a host's namespace."""
        return f"{self.layout.prefix}-{role}"

    @property
    def balancer_address(self) -> str:
        """Return the balancer's address (port 80)."""
        return self.address("lb")

    @property
    def database_url(self) -> str:
        """Return the app role's URL on the db host."""
        return (
            f"postgres://{DATABASE}:{self.password}@{self.address('db')}:{POSTGRES_PORT}/{DATABASE}"
        )

    @property
    def socket_directory(self) -> Path:
        """Return where PostgreSQL's Unix socket is: this process reaches it without a route."""
        return self.directory / "postgres"

    # --- Start and stop -------------------------------------------------------------------

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop every process, delete every namespace, remove the temporary directory."""
        with teardown_signals():
            self._exit.close()

    def start(self) -> None:
        """Check the machine, then build the network and start every service."""
        self.preflight()
        self.directory = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{self.layout.prefix}-"))
        self._exit.callback(shutil.rmtree, self.directory, ignore_errors=True)
        # Traversable by the postgres and nobody users, who own their directories inside.
        self.directory.chmod(0o711)
        # Registered before any namespace exists: the safety net after every process's stop.
        self._exit.callback(netns.remove_namespaces, self.layout.namespaces())
        self.network.create_bridge()
        for role in self.layout.roles():
            self.network.add_host(role, host_number(role))
        self.start_postgres()
        self.create_database()
        self.start_redis()
        self.migrate()
        self.start_apps(self.layout.app_roles())
        self.start_balancer()

    def preflight(self) -> None:
        """Refuse to start where the cluster cannot run or would collide with something."""
        reason = netns.unusable_reason()
        if reason:
            raise ClusterError(reason)
        for tool, hint in (
            (str(POSTGRES_BIN / "postgres"), "apt-get install postgresql-15"),
            ("redis-server", "apt-get install redis-server"),
            ("setpriv", "apt-get install util-linux"),
            ("taskset", "apt-get install util-linux"),
        ):
            if shutil.which(tool) is None:
                raise ClusterError(f"{tool} is not installed: {hint}")
        binary = nginx.nginx_binary(os.environ)
        if binary is None:
            raise ClusterError(nginx.INSTALL_HINT)
        self.nginx_binary = binary
        existing = sorted(set(self.layout.namespaces()) & set(netns.namespaces()))
        if existing:
            raise ClusterError(
                f"namespace(s) {', '.join(existing)} already exist: another cluster runs, or "
                f"one crashed. Remove the leftovers with `python -m lab.cluster --cleanup "
                f"--prefix {self.layout.prefix}`."
            )
        overlaps = netns.root_overlaps(self.layout.network())
        if overlaps:
            raise ClusterError(
                f"{self.layout.subnet} overlaps this machine's own addresses or routes "
                f"({'; '.join(overlaps)}): choose another with --subnet."
            )

    def spawn(
        self,
        name: str,
        role: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        stop_signal: int = signal.SIGTERM,
        cpus: Sequence[int] = (),
    ) -> Process:
        """Start `argv` on host `role` (pinned to `cpus`); stop it on exit."""
        full = [*netns.exec_prefix(self.namespace(role)), *taskset(cpus), *argv]
        process = Process(name, full, self.directory / f"{name}.log", env, stop_signal)
        self.processes[name] = process
        self._exit.callback(process.stop)
        return process

    # --- PostgreSQL -----------------------------------------------------------------------

    def postgres_argv(self) -> list[str]:
        """Return the postgres server's command line (run as the postgres user)."""
        return [
            *as_user("postgres", "postgres"),
            str(POSTGRES_BIN / "postgres"),
            "-D", str(self.socket_directory / "data"),
            "-c", f"listen_addresses={self.address('db')}",
            "-c", f"port={POSTGRES_PORT}",
            "-c", f"unix_socket_directories={self.socket_directory}",
            # 3 hosts x 2 servers x 1 worker x a pool of 8, with room for workers=2.
            "-c", "max_connections=200",
        ]  # fmt: skip

    def start_postgres(self) -> None:
        """initdb a throw-away cluster owned by postgres, and run it on the db host."""
        self.socket_directory.mkdir()
        shutil.chown(self.socket_directory, "postgres", "postgres")
        pwfile = self.socket_directory / "pwfile"
        pwfile.write_text(secrets.token_hex(16), encoding="ascii")
        shutil.chown(pwfile, "postgres", "postgres")
        initdb = [
            *as_user("postgres", "postgres"),
            str(POSTGRES_BIN / "initdb"),
            "-D", str(self.socket_directory / "data"),
            "--username=postgres", f"--pwfile={pwfile}",
            "--auth-local=trust", "--auth-host=scram-sha-256",
            "--encoding=UTF8", "--no-sync",
        ]  # fmt: skip
        done = subprocess.run(  # noqa: S603  (PostgreSQL's initdb, our arguments)
            initdb,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise ClusterError(f"initdb failed:\n{done.stdout}{done.stderr}")
        with (self.socket_directory / "data" / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {self.layout.subnet} scram-sha-256\n")
        self.run_postgres()

    def run_postgres(self) -> Process:
        """Start the postgres server on its data directory; return once it accepts queries."""
        process = self.spawn(
            "postgres", "db", self.postgres_argv(), stop_signal=signal.SIGINT, cpus=self.other_cpus
        )
        wait_until(
            quietly(lambda: self.sql("SELECT 1", database="postgres") == [(1,)]),
            START_TIMEOUT_S,
            "PostgreSQL accepting connections",
            process.tail,
        )
        return process

    def sql(
        self, statement: str, params: Sequence[Any] = (), database: str = DATABASE
    ) -> list[tuple[Any, ...]]:
        """Return the rows of `statement`, run as postgres over the Unix socket."""
        with psycopg.connect(
            host=str(self.socket_directory),
            port=POSTGRES_PORT,
            user="postgres",
            dbname=database,
            autocommit=True,
            connect_timeout=5,
        ) as connection:
            cursor = connection.execute(statement, params)
            return list(cursor.fetchall()) if cursor.description else []

    def create_database(self) -> None:
        """Create the app's role and its database."""
        # Identifiers and the password are ours (hex and a fixed name): no quoting needed.
        self.sql(f"CREATE ROLE {DATABASE} LOGIN PASSWORD '{self.password}'", database="postgres")
        self.sql(f"CREATE DATABASE {DATABASE} OWNER {DATABASE}", database="postgres")

    def restart_postgres(self, down_s: float) -> tuple[float, float]:
        """Stop PostgreSQL (fast shutdown: sessions are cut), wait `down_s`, start it again.

        Return (monotonic time it stopped accepting, monotonic time it accepts again).
        """
        old = self.processes["postgres"]
        old.stop()
        stopped = time.monotonic()
        time.sleep(down_s)
        self.run_postgres()
        return stopped, time.monotonic()

    # --- Redis ----------------------------------------------------------------------------

    def start_redis(self) -> None:
        """Run Redis on the redis host, nothing saved to disk; return once it answers PING."""
        directory = self.directory / "redis"
        directory.mkdir()
        shutil.chown(directory, "nobody", "nogroup")
        argv = [
            *as_user("nobody", "nogroup"),
            "redis-server",
            "--bind", self.address("redis"),
            "--port", str(REDIS_PORT),
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "no",
            "--dir", str(directory),
        ]  # fmt: skip
        process = self.spawn("redis", "redis", argv, cpus=self.other_cpus)
        wait_until(
            quietly(lambda: self.redis_ping("app1")),
            START_TIMEOUT_S,
            "Redis answering PING from app1",
            process.tail,
        )

    def redis_ping(self, role: str) -> bool:
        """Return whether Redis answers PING from host `role`."""

        def ping() -> bool:
            with socket.create_connection((self.address("redis"), REDIS_PORT), 2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")

        return netns.run_in_namespace(self.namespace(role), ping)

    # --- App hosts ------------------------------------------------------------------------

    def app_environment(self, role: str) -> dict[str, str]:
        """Return the environment of an app host's servers: production settings, test views."""
        host_dir = self.directory / role
        host_dir.mkdir(exist_ok=True)
        return servers.merged_environment(
            {
                **dict.fromkeys(servers.INHERITED_SETTINGS),
                "DJANGO_SETTINGS_MODULE": "tests.cluster.settings",
                "DJANGO_ENV": "production",
                "DJANGO_SECRET_KEY": self.secret_key,
                "DJANGO_ALLOWED_HOSTS": self.balancer_address,
                # No TLS on the test network: the balancer speaks plain HTTP to the client.
                "DJANGO_SECURE_SSL_REDIRECT": "false",
                "DJANGO_VAR_DIR": str(host_dir),
                "DJANGO_STATIC_ROOT": None,
                "DATABASE_URL": self.database_url,
                "REDIS_URL": f"redis://{self.address('redis')}:{REDIS_PORT}/0",
                "WEB_CONCURRENCY": str(self.layout.workers),
                "FORWARDED_ALLOW_IPS": self.balancer_address,
                "XDG_RUNTIME_DIR": str(host_dir),
            }
        )

    def migrate(self) -> None:
        """Apply the migrations once, from app1 over the network, as a deploy step would."""
        env = self.app_environment("app1")
        argv = [*netns.exec_prefix(self.namespace("app1")), *manage_argv("migrate", "--noinput")]
        try:
            done = subprocess.run(  # noqa: S603  (our interpreter and manage.py)
                argv,
                cwd=servers.REPO_ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ClusterError("manage.py migrate did not finish within 300 s") from exc
        if done.returncode != 0:
            raise ClusterError(f"manage.py migrate failed:\n{done.stdout}{done.stderr}")

    def start_apps(self, roles: Sequence[str]) -> None:
        """Start the WSGI and ASGI servers of each host in `roles`; return once all serve."""
        started = []
        for role in roles:
            env = self.app_environment(role)
            for interface, mode, port in (
                ("wsgi", self.layout.wsgi_mode, WSGI_PORT),
                ("asgi", self.layout.asgi_mode, ASGI_PORT),
            ):
                name = f"{role}-{interface}"
                argv = [servers.gunicorn_executable(), "-c", str(servers.mode_config(mode))]
                env_bound = {**env, "BIND": f"{self.address(role)}:{port}"}
                started.append(
                    (role, port, self.spawn(name, role, argv, env=env_bound, cpus=self.app_cpus))
                )
        for role, port, process in started:
            self.wait_app_server(role, port, process)

    def wait_app_server(self, role: str, port: int, process: Process) -> None:
        """Return once every worker of `process` booted and it answers /healthz on the network."""
        wait_until(
            quietly(lambda: workers_ready(process)),
            START_TIMEOUT_S,
            f"{process.name}'s workers booting",
            process.tail,
        )
        wait_until(
            quietly(lambda: self.app_status(role, port, "/healthz") == 200),
            START_TIMEOUT_S,
            f"{process.name} answering /healthz",
            process.tail,
        )

    def app_status(self, role: str, port: int, path: str) -> int:
        """Return the status of GET `path` on an app host's server, asked from the balancer."""
        address = self.address(role)
        return netns.run_in_namespace(
            self.namespace("lb"), lambda: request(address, port, path, timeout=3).status
        )

    def kill_app_host(self, number: int) -> None:
        """SIGKILL both servers of app host `number`, workers and all (a crashed host)."""
        for interface in ("wsgi", "asgi"):
            self.processes[f"app{number}-{interface}"].kill()

    def restart_app_host(self, number: int) -> None:
        """Start the servers of app host `number` again after kill_app_host."""
        self.start_apps([f"app{number}"])

    def cut_app_host(self, number: int, cut: bool) -> None:
        """Take app host `number`'s link down (its processes keep running) or bring it back."""
        self.network.set_link(f"app{number}", up=not cut)

    # --- Balancer -------------------------------------------------------------------------

    @property
    def balancer_dir(self) -> Path:
        """Return nginx's run directory (config, pid, logs, temporary files)."""
        return self.directory / "nginx"

    def render_balancer(self, hosts: int) -> None:
        """Write the balancer's config over the first `hosts` app hosts; nginx -t must pass."""
        roles = self.layout.app_roles()[:hosts]
        text = balancer.render(
            self.balancer_dir,
            f"{self.balancer_address}:{BALANCER_PORT}",
            [f"{self.address(role)}:{WSGI_PORT}" for role in roles],
            [f"{self.address(role)}:{ASGI_PORT}" for role in roles],
        )
        balancer.write(
            self.nginx_binary,
            self.balancer_dir / "nginx.conf",
            text,
            netns.exec_prefix(self.namespace("lb")),
        )
        self.balanced_hosts = hosts

    def start_balancer(self) -> None:
        """Run nginx on the lb host; return once /readyz answers 200 through it."""
        self.balancer_dir.mkdir()
        shutil.chown(self.balancer_dir, "nobody", "nogroup")
        self.render_balancer(self.layout.app_hosts)
        argv = nginx.nginx_command(
            self.nginx_binary, self.balancer_dir / "nginx.conf", "-g", "daemon off;"
        )
        process = self.spawn("nginx", "lb", argv, cpus=self.other_cpus)
        wait_until(
            quietly(lambda: self.get("/readyz", timeout=3).status == 200),
            START_TIMEOUT_S,
            "the balancer answering /readyz with 200",
            lambda: process.tail() + "\n" + self.error_log(),
        )

    def rebalance(self, hosts: int) -> None:
        """Put the first `hosts` app hosts behind the balancer (nginx reload); return once
        only they answer."""
        self.render_balancer(hosts)
        os.kill(self.processes["nginx"].pid, signal.SIGHUP)
        expected = {self.address(role) for role in self.layout.app_roles()[:hosts]}

        def only_expected() -> bool:
            answered = {self.get("/sync/hello/", timeout=3).upstream_host() for _ in range(12)}
            return answered == expected

        wait_until(quietly(only_expected), 30, f"nginx serving from {sorted(expected)} only")

    def error_log(self) -> str:
        """Return nginx's error log (empty before it exists)."""
        path = self.balancer_dir / "error.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def access_log_since_mark(self) -> list[str]:
        """Return the access-log lines written since the last call (nginx flushes each 1 s)."""
        path = self.balancer_dir / "access.log"
        if not path.exists():
            return []
        with path.open("rb") as log:
            log.seek(self.log_offset)
            data = log.read()
        complete = data[: data.rfind(b"\n") + 1]
        self.log_offset += len(complete)
        return complete.decode("utf-8", errors="replace").splitlines()

    def get(self, path: str, timeout: float = 10.0) -> Response:
        """GET `path` through the balancer from the client host."""
        address = self.balancer_address
        return netns.run_in_namespace(
            self.namespace("client"),
            lambda: request(address, BALANCER_PORT, path, timeout=timeout),
        )

    def describe(self) -> dict[str, Any]:
        """Return the hosts, addresses, modes and CPU pinning, for the report."""
        return {
            "subnet": self.layout.subnet,
            "hosts": {
                role: {"namespace": self.namespace(role), "address": self.address(role)}
                for role in self.layout.roles()
            },
            "bridge_namespace": self.network.bridge_namespace,
            "wsgi_mode": self.layout.wsgi_mode,
            "asgi_mode": self.layout.asgi_mode,
            "workers_per_server": self.layout.workers,
            "app_cpus": self.app_cpus,
            "other_cpus": self.other_cpus,
            "cpus": len(os.sched_getaffinity(0)),
        }


def manage_argv(*args: str) -> list[str]:
    """Return manage.py's command line with this interpreter (the project's virtualenv)."""
    return [sys.executable, "manage.py", *args]


def workers_ready(process: Process) -> bool:
    """Return whether a template gunicorn logged its master ready and every worker booted."""
    output = process.output()
    master = re.search(servers.MASTER_READY, output)
    if master is None:
        return False
    return len(re.findall(servers.WORKER_READY, output)) >= int(master[1])
