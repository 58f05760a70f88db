"""deploy/supervisor: supervisord holds each interface's listening socket and runs
WEB_CONCURRENCY processes on it, started for real through deploy/supervisor/run.sh.

Which process served a request is read from /proc: the server's end of the connection is a
socket inode (/proc/net/tcp) that exactly one process holds among its descriptors.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lab import up
from lab.servers import HOST, INHERITED_SETTINGS, REPO_ROOT, free_ports, merged_environment
from lab.stack import prepare_var_dir
from tests.lab.test_up import alive, process_tree, require_supervisord, wait_gone
from tests.reliability.load import BackgroundLoad

pytestmark = [pytest.mark.serving, pytest.mark.slow]

INTERFACES = ("wsgi", "asgi")
PROCESSES = 2
# The test views (/sync/sleep/, /async/sleep/), with or without the showcase.
SETTINGS = "tests.serving.settings"
SIDES = {"wsgi": "sync", "asgi": "async"}
# What each process logs once it serves: gunicorn's worker (deploy/gunicorn/common.py), uvicorn.
READY_LINES = {"wsgi": r"Worker ready \(pid: \d+\)", "asgi": r"Application startup complete\."}
START_TIMEOUT = 60.0
# supervisorctl status: "asgi:asgi-0   RUNNING   pid 1234, uptime 0:00:05".
STATUS_LINE = re.compile(r"^(\S+)\s+([A-Z]+)\s*(?:pid (\d+),)?")
# /proc/net/tcp's states.
TCP_LISTEN = "0A"
TCP_ESTABLISHED = "01"
REFUSED = "ConnectionRefusedError(111)"


def tcp_sockets(port: int) -> list[tuple[int, str, str]]:
    """Return (remote port, state, inode) of every IPv4 socket whose local port is `port`."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
        if int(local.split(":")[1], 16) == port:
            found.append((int(remote.split(":")[1], 16), state, inode))
    return found


def listening_inode(port: int) -> str:
    """Return the inode of THE listening socket on `port`; fail if there is not exactly one."""
    inodes = [inode for _, state, inode in tcp_sockets(port) if state == TCP_LISTEN]
    assert len(inodes) == 1, f"listening sockets on {port}: {inodes}"
    return inodes[0]


def holds(pid: int, inode: str) -> bool:
    """Return whether process `pid` has socket `inode` among its open descriptors."""
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) == f"socket:[{inode}]":
                    return True
    return False


def server_of(connection: http.client.HTTPConnection, port: int, pids: set[int]) -> set[int]:
    """Return which of `pids` holds the server's end of `connection` (an open one, to `port`)."""
    assert connection.sock is not None
    client_port = connection.sock.getsockname()[1]
    inodes = [
        inode
        for remote, state, inode in tcp_sockets(port)
        if remote == client_port and state == TCP_ESTABLISHED
    ]
    assert len(inodes) == 1, f"the server's end of :{client_port} -> :{port}: {inodes}"
    return {pid for pid in pids if holds(pid, inodes[0])}


@dataclass
class Supervisor:
    """supervisord started by deploy/supervisor/run.sh, its ports and its run directory."""

    process: subprocess.Popen[bytes]
    env: dict[str, str]
    run_dir: Path
    ports: dict[str, int]
    seen: set[int] = field(default_factory=set)

    def ctl(self, *args: str) -> str:
        """Run `run.sh ctl ARGS` against this supervisord; return its output."""
        done = subprocess.run(
            [str(up.SUPERVISOR_RUN), "ctl", *args],
            env=self.env,
            capture_output=True,
            timeout=30,
            check=False,
        )
        return done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")

    def status(self) -> dict[str, tuple[str, int | None]]:
        """Return {"asgi:asgi-0": (state, pid), ...} from supervisorctl status."""
        found = {}
        for line in self.ctl("status").splitlines():
            match = STATUS_LINE.match(line)
            if match and ":" in match[1]:
                found[match[1]] = (match[2], int(match[3]) if match[3] else None)
        return found

    def pids(self, interface: str) -> dict[str, int]:
        """Return {process name: PID} of the interface's processes, all RUNNING (else fail)."""
        status = self.status()
        names = [f"{interface}:{interface}-{number}" for number in range(PROCESSES)]
        assert all(status.get(name, ("",))[0] == "RUNNING" for name in names), status
        found = {name: status[name][1] for name in names}
        pids = {name: pid for name, pid in found.items() if pid is not None}
        self.seen.update(pids.values())
        return pids

    def serving_pids(self, interface: str) -> set[int]:
        """Return the PIDs that accept connections: uvicorn's processes, gunicorn's workers."""
        pids = set(self.pids(interface).values())
        if interface == "wsgi":
            pids = {worker for master in pids for worker in process_tree(master)}
        self.seen.update(pids)
        return pids

    def log(self, name: str = "supervisord") -> str:
        """Return a log of the run directory: supervisord's, or a process's ("asgi-0")."""
        path = self.run_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self) -> str:
        """Return every log, for assertion messages."""
        names = ["supervisord"] + [f"{i}-{n}" for i in INTERFACES for n in range(PROCESSES)]
        return "\n".join(f"--- {name}\n{self.log(name)[-3000:]}" for name in names)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Wait (bounded) until every process is RUNNING and has logged that it serves."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.logs()
            status = self.status()
            running = sum(state == "RUNNING" for state, _ in status.values())
            logged = all(
                re.search(READY_LINES[interface], self.log(f"{interface}-{number}"))
                for interface in INTERFACES
                for number in range(PROCESSES)
            )
            if running == len(INTERFACES) * PROCESSES and logged:
                return
            time.sleep(0.2)
        raise AssertionError(f"not every process serves within {timeout} s:\n{self.logs()}")

    def wait_replaced(self, name: str, old_pid: int, timeout: float = START_TIMEOUT) -> int:
        """Wait (bounded) until process `name` is RUNNING again with another PID; return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state, pid = self.status().get(name, ("", None))
            if state == "RUNNING" and pid is not None and pid != old_pid:
                self.seen.add(pid)
                return pid
            time.sleep(0.2)
        raise AssertionError(f"{name} was not restarted within {timeout} s:\n{self.logs()}")


@pytest.fixture(scope="module")
def var_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_supervisord()
    return prepare_var_dir(tmp_path_factory.mktemp("supervisor") / "var", collectstatic=False)


@contextlib.contextmanager
def supervisord(var_dir: Path, run_dir: Path) -> Iterator[Supervisor]:
    """Run supervisord through run.sh on free ports; stop it (and anything left) afterwards."""
    ports = dict(zip(("wsgi", "asgi"), free_ports(2), strict=True))
    env = merged_environment(
        {
            **dict.fromkeys(INHERITED_SETTINGS),
            "DJANGO_VAR_DIR": str(var_dir),
            "DJANGO_SETTINGS_MODULE": SETTINGS,
            "SUPERVISOR_RUN_DIR": str(run_dir),
            "WSGI_PORT": str(ports["wsgi"]),
            "ASGI_PORT": str(ports["asgi"]),
            "WEB_CONCURRENCY": str(PROCESSES),
        }
    )
    process = subprocess.Popen(
        [str(up.SUPERVISOR_RUN)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    supervisor = Supervisor(process, env, run_dir, ports)
    try:
        supervisor.wait_ready()
        for interface in INTERFACES:
            supervisor.serving_pids(interface)
        yield supervisor
    finally:
        supervisor.seen |= process_tree(process.pid)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pid in wait_gone(supervisor.seen, timeout=10):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def get(port: int, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """GET `path` on a new connection; return the status and the body."""
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_every_process_accepts_on_the_one_socket_supervisord_holds(
    var_dir: Path, tmp_path: Path
) -> None:
    with supervisord(var_dir, tmp_path / "run") as supervisor:
        for interface in INTERFACES:
            port = supervisor.ports[interface]
            inode = listening_inode(port)
            assert holds(supervisor.process.pid, inode), "supervisord holds the socket"
            masters = set(supervisor.pids(interface).values())
            serving = supervisor.serving_pids(interface)
            assert len(serving) == PROCESSES, (interface, serving)
            assert all(holds(pid, inode) for pid in masters | serving), interface

            # Each process in turn is the only one not stopped: it alone can accept, so the
            # request proves it serves this socket (a test of the socket, not of luck).
            served_by = set()
            for pid in sorted(serving):
                others = serving - {pid}
                for other in others:
                    os.kill(other, signal.SIGSTOP)
                try:
                    connection = http.client.HTTPConnection(HOST, port, timeout=10)
                    connection.request("GET", f"/{SIDES[interface]}/hello/")
                    response = connection.getresponse()
                    assert response.status == 200
                    response.read()
                    # Keep-alive: the connection stays open in the process that accepted it.
                    owners = server_of(connection, port, serving)
                    connection.close()
                finally:
                    for other in others:
                        os.kill(other, signal.SIGCONT)
                assert owners == {pid}, (interface, pid, owners)
                served_by |= owners
            assert served_by == serving


@pytest.mark.parametrize("interface", INTERFACES)
def test_a_killed_process_is_restarted_and_the_socket_refuses_nothing(
    var_dir: Path, tmp_path: Path, interface: str
) -> None:
    with supervisord(var_dir, tmp_path / "run") as supervisor:
        port = supervisor.ports[interface]
        inode = listening_inode(port)
        name = f"{interface}:{interface}-0"
        victim = supervisor.pids(interface)[name]
        # For WSGI the victim is a gunicorn master: its worker, orphaned, must go too.
        orphans = process_tree(victim)
        path = f"/{SIDES[interface]}/hello/"
        with BackgroundLoad(port, path, concurrency=4, max_seconds=90, timeout=10) as load:
            time.sleep(0.5)
            os.kill(victim, signal.SIGKILL)
            replacement = supervisor.wait_replaced(name, victim)
            time.sleep(0.5)
        result = load.result
        assert result.sent > 0
        assert REFUSED not in result.errors(), result.summary()
        # At most the requests the killed process had accepted are lost: one per client.
        assert len(result.failures()) <= load.concurrency, result.summary()
        assert not alive(victim)
        assert wait_gone(orphans) == set(), "the killed master's worker is gone"
        # The same socket, never closed and re-made: the replacement serves it too.
        assert listening_inode(port) == inode
        assert holds(replacement, inode)
        assert get(port, path)[0] == 200
        print(f"SUPERVISOR {interface} kill -9 of {name}: {result.summary()}")


def test_sigterm_to_supervisord_drains_the_requests_in_flight(
    var_dir: Path, tmp_path: Path
) -> None:
    with supervisord(var_dir, tmp_path / "run") as supervisor:
        answers: dict[str, tuple[int, bytes] | BaseException] = {}

        def slow(interface: str) -> None:
            path = f"/{SIDES[interface]}/sleep/?ms=3000"
            try:
                answers[interface] = get(supervisor.ports[interface], path, timeout=30)
            except BaseException as exc:
                answers[interface] = exc

        clients = [threading.Thread(target=slow, args=(i,), daemon=True) for i in INTERFACES]
        for client in clients:
            client.start()
        # Both requests reach their views (they sleep 3 s there) before the signal.
        time.sleep(1)
        supervisor.process.send_signal(signal.SIGTERM)
        for client in clients:
            client.join(timeout=40)
        assert supervisor.process.wait(timeout=40) == 0, supervisor.logs()
        for interface in INTERFACES:
            assert answers.get(interface) == (200, b'{"slept_ms": 3000}'), supervisor.logs()
        assert wait_gone(supervisor.seen) == set()
        for port in supervisor.ports.values():
            with pytest.raises(ConnectionRefusedError):
                get(port, "/healthz", timeout=5)


def test_the_asgi_program_has_the_limits_of_the_gunicorn_configs() -> None:
    """uvicorn's command line in asgi.conf cannot read deploy/gunicorn: its numbers are copies."""
    from deploy.gunicorn import asgi_uvicorn, common
    from deploy.workers import UvicornWorker

    command = (REPO_ROOT / "deploy" / "supervisor" / "asgi.conf").read_text()
    options = dict(re.findall(r"--([a-z-]+) (\d+)", command))
    assert "--ws-max-size %(ENV_WEBSOCKET_MAX_MESSAGE_BYTES)s" in command
    assert UvicornWorker.CONFIG_KWARGS["ws_per_message_deflate"] is False
    assert "--ws-per-message-deflate false" in command
    run_sh = (REPO_ROOT / "deploy" / "supervisor" / "run.sh").read_text()
    default = re.search(r"WEBSOCKET_MAX_MESSAGE_BYTES:-(\d+)", run_sh)
    assert default is not None
    assert int(default[1]) == common.WEBSOCKET_MAX_MESSAGE_BYTES
    assert int(options["limit-concurrency"]) == asgi_uvicorn.worker_connections
    assert int(options["timeout-keep-alive"]) == common.keepalive
    assert int(options["timeout-graceful-shutdown"]) == common.graceful_timeout
