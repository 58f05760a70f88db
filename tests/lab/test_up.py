"""`make up`'s launcher (lab/up.py), run for real on free ports in a temporary state dir."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lab import servers, up
from tests.support import require_nginx

# Each port the launcher opens, and a path it answers 200 on whatever URLs the project has.
PORT_PATHS = {
    "NGINX_HYBRID_PORT": "/readyz",
    "NGINX_WSGI_PORT": "/readyz",
    "NGINX_ASGI_PORT": "/readyz",
    "WSGI_PORT": "/readyz",
    "ASGI_PORT": "/readyz",
    # showcase:begin
    "UPSTREAM_PORT": "/?ms=0",
    # showcase:end
}
PORT_NAMES = tuple(PORT_PATHS)
TABLE_LINE = re.compile(r"^  (http://127\.0\.0\.1:([0-9]+)/)  (.+)$")
# Migrating and collecting static files into an empty dir, then starting four servers.
START_TIMEOUT = 180.0


class Launcher:
    """lab/up.py in its own session, as a terminal runs it; its output collected by line."""

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lab.up"],
            cwd=servers.REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, name="up-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        pending = b""
        while chunk := os.read(fd, 65536):
            *complete, pending = (pending + chunk).split(b"\n")
            # One extend per read (atomic under the GIL): up writes its URL table in one write,
            # so wait_for_table() sees the banner and its rows together, never the banner alone.
            self.lines.extend([line.decode(errors="replace") for line in complete])
        if pending:
            self.lines.append(pending.decode(errors="replace"))

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_table(self, timeout: float = START_TIMEOUT) -> dict[int, str]:
        """Return {port: description} from the printed table; fail on exit or timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = list(self.lines)
            if up.READY_BANNER in lines:
                rows = lines[lines.index(up.READY_BANNER) + 1 :]
                table = {}
                for row in rows:
                    match = TABLE_LINE.match(row)
                    if match:
                        table[int(match[2])] = match[3]
                return table
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"no URL table (exit code {self.process.poll()}):\n{self.output()}")

    def stop(self) -> None:
        """Last resort in a finally block: SIGKILL the launcher's session, then reap it."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self._reader.join(10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def require_supervisord() -> str:
    """Return supervisord's path; without it, fail under CI=true and skip elsewhere."""
    binary = up.supervisord_binary()
    if binary is None:
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(f"CI=true and {up.SUPERVISOR_INSTALL_HINT}")
        pytest.skip(up.SUPERVISOR_INSTALL_HINT)
    return binary


def process_tree(root: int) -> set[int]:
    """Return the PIDs of every live descendant of `root`, read from /proc."""
    children: dict[int, list[int]] = defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children[int(fields[1])].append(int(stat.parent.name))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children[todo.pop()]:
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    """Return whether `pid` exists and is not a zombie waiting to be reaped."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


def command_of(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""


def wait_gone(pids: set[int], timeout: float = 10.0) -> set[int]:
    """Wait (bounded) for every PID to end; return those still alive."""
    deadline = time.monotonic() + timeout
    left = {pid for pid in pids if alive(pid)}
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = {pid for pid in left if alive(pid)}
    return left


def kill_leftovers(pids: set[int]) -> None:
    """SIGKILL what the launcher started and failed to stop, so one failure leaks nothing."""
    for pid in pids:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def launcher_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DJANGO_STATIC_ROOT", None)
    env.pop("NGINX_RUN_DIR", None)
    for name in ("PROCESS_MANAGER", "SUPERVISOR_RUN_DIR", "ASGI_MODE", "WSGI_MODE"):
        env.pop(name, None)
    for name in ("REDIS_URL", "REDIS_SERVER_BINARY"):
        env.pop(name, None)
    names = (*PORT_NAMES, "REDIS_PORT")
    env.update(
        {name: str(port) for name, port in zip(names, servers.free_ports(len(names)), strict=True)}
    )
    env.update({"DJANGO_VAR_DIR": str(tmp_path / "var"), "UP_TIMEOUT": "90"})
    return env


@contextlib.contextmanager
def launched(env: dict[str, str]) -> Iterator[tuple[Launcher, set[int]]]:
    """Run the launcher; on the way out, end whatever it left (the set the test fills)."""
    launcher = Launcher(env)
    started: set[int] = set()
    try:
        yield launcher, started
    finally:
        started |= process_tree(launcher.process.pid)
        launcher.stop()
        kill_leftovers(started)


@pytest.mark.serving
@pytest.mark.slow
def test_up_serves_every_port_and_ctrl_c_stops_every_process(
    launcher_env: dict[str, str],
) -> None:
    require_nginx()
    with launched(launcher_env) as (launcher, started):
        table = launcher.wait_for_table()
        ports = {int(launcher_env[name]) for name in PORT_NAMES}
        assert set(table) == ports, launcher.output()

        for name, path in PORT_PATHS.items():
            response = httpx.get(f"http://127.0.0.1:{launcher_env[name]}{path}", timeout=10)
            assert response.status_code == 200, (name, response.text)
        for name, interface in (("NGINX_WSGI_PORT", "wsgi"), ("NGINX_ASGI_PORT", "asgi")):
            response = httpx.get(f"http://127.0.0.1:{launcher_env[name]}/async/hello/")
            assert response.headers["x-interface"] == interface
        # The event bus: a local redis-server (this machine has one), in the table.
        redis_url = f"redis://127.0.0.1:{launcher_env['REDIS_PORT']}"
        assert up.answers(redis_url)
        assert f"  {redis_url}  Redis: the event bus" in launcher.output()
        # showcase:begin
        assert_the_bus_delivers(launcher_env)
        # showcase:end

        started |= process_tree(launcher.process.pid)
        commands = " | ".join(command_of(pid) for pid in started)
        assert f"redis-server 127.0.0.1:{launcher_env['REDIS_PORT']}" in commands
        assert "nginx: master process" in commands
        assert "nginx: worker process" in commands
        assert commands.count("deploy/gunicorn/") >= 2  # both masters (workers fork from them)

        # Ctrl-C in a terminal signals the foreground process group: the launcher's session.
        os.killpg(launcher.process.pid, signal.SIGINT)
        assert launcher.process.wait(timeout=60) == 0, launcher.output()
        assert wait_gone(started) == set(), launcher.output()
        for port in ports:
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"http://127.0.0.1:{port}/", timeout=5)


@pytest.mark.serving
@pytest.mark.slow
def test_up_without_nginx_says_how_to_install_it_and_serves_the_direct_ports(
    launcher_env: dict[str, str], tmp_path: Path
) -> None:
    launcher_env["NGINX_BINARY"] = str(tmp_path / "no-nginx-here")
    with launched(launcher_env) as (launcher, started):
        table = launcher.wait_for_table()
        direct = [name for name in PORT_NAMES if not name.startswith("NGINX_")]
        assert set(table) == {int(launcher_env[name]) for name in direct}, launcher.output()
        assert "sudo apt-get install nginx" in launcher.output()
        for name in direct:
            url = f"http://127.0.0.1:{launcher_env[name]}{PORT_PATHS[name]}"
            assert httpx.get(url, timeout=10).status_code == 200

        started |= process_tree(launcher.process.pid)
        # SIGTERM (a service manager, `kill`) to the launcher alone stops the stack as well.
        launcher.process.terminate()
        assert launcher.process.wait(timeout=60) == 0, launcher.output()
        assert wait_gone(started) == set(), launcher.output()


@pytest.mark.serving
@pytest.mark.slow
def test_up_under_supervisor_serves_every_port_and_ctrl_c_stops_every_process(
    launcher_env: dict[str, str],
) -> None:
    require_nginx()
    require_supervisord()
    launcher_env.update({"PROCESS_MANAGER": "supervisor", "WEB_CONCURRENCY": "2"})
    with launched(launcher_env) as (launcher, started):
        table = launcher.wait_for_table()
        ports = {int(launcher_env[name]) for name in PORT_NAMES}
        assert set(table) == ports, launcher.output()
        assert "under supervisord" in table[int(launcher_env["ASGI_PORT"])]

        for name, path in PORT_PATHS.items():
            response = httpx.get(f"http://127.0.0.1:{launcher_env[name]}{path}", timeout=10)
            assert response.status_code == 200, (name, response.text)
        for name, interface in (("NGINX_WSGI_PORT", "wsgi"), ("NGINX_ASGI_PORT", "asgi")):
            response = httpx.get(f"http://127.0.0.1:{launcher_env[name]}/async/hello/")
            assert response.headers["x-interface"] == interface

        started |= process_tree(launcher.process.pid)
        commands = [command_of(pid) for pid in started]
        assert any("supervisord" in command for command in commands)
        # Two uvicorn processes and two gunicorn masters, each on the socket supervisord holds.
        assert sum("--fd 0" in command for command in commands) == 2, commands
        assert sum("--bind fd://0" in command for command in commands) >= 2, commands
        assert any("nginx: master process" in command for command in commands)
        assert any("redis-server" in command for command in commands)
        # showcase:begin
        assert_the_bus_delivers(launcher_env)
        # showcase:end

        os.killpg(launcher.process.pid, signal.SIGINT)
        assert launcher.process.wait(timeout=90) == 0, launcher.output()
        assert wait_gone(started) == set(), launcher.output()
        for port in ports:
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"http://127.0.0.1:{port}/", timeout=5)


# showcase:begin
def assert_the_bus_delivers(env: dict[str, str]) -> None:
    """POST to /sync/publish/ through nginx's WSGI entry; assert a WebSocket client on the ASGI
    entry and an SSE client on the hybrid entry both receive the event."""
    import json

    from websockets.sync.client import connect
    from websockets.typing import Origin

    asgi = f"127.0.0.1:{env['NGINX_ASGI_PORT']}"
    hybrid = f"http://127.0.0.1:{env['NGINX_HYBRID_PORT']}/async/live/"
    with (
        connect(f"ws://{asgi}/ws/live/", origin=Origin(f"http://{asgi}"), proxy=None) as feed,
        httpx.Client(timeout=10, trust_env=False) as client,
        client.stream("GET", hybrid, headers={"Accept": "text/event-stream"}) as stream,
    ):
        lines = stream.iter_lines()
        # Subscribed once the first line (retry:) has come.
        assert next(lines).startswith("retry: ")
        publish = f"http://127.0.0.1:{env['NGINX_WSGI_PORT']}/sync/publish/"
        client.get(publish)
        token = client.cookies["csrftoken"]
        answer = client.post(publish, json={"text": "up"}, headers={"X-CSRFToken": token})
        assert answer.status_code == 202, answer.text
        event = answer.json()["event"]
        assert event["source"] == "sync view (wsgi)"
        assert json.loads(feed.recv(10)) == event
        data = next(line for line in lines if line.startswith("data: "))
        assert json.loads(data.removeprefix("data: ")) == event


def test_without_the_showcase_app_up_runs_no_upstream(monkeypatch: pytest.MonkeyPatch) -> None:
    # A project that deleted apps/showcase by hand, its lines still here: the stack is the
    # servers and nginx alone (the upstream would die at once: no module apps.showcase).
    assert "upstream" in [service.name for service in up.services({}, None)]
    monkeypatch.setattr(up, "showcase_present", lambda: False)
    assert [service.name for service in up.services({}, "nginx")] == [
        "wsgi",
        "asgi",
        "nginx",
        "",
        "",
    ]
    assert "SHOWCASE_UPSTREAM_URL" not in up.child_environment({"UPSTREAM_PORT": "x"})


# showcase:end
def run_launcher(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the launcher to completion (it must refuse to start), bounded."""
    return subprocess.run(
        [sys.executable, "-m", "lab.up"],
        cwd=servers.REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "WSGI_MODE",
            "asgi_uvicorn",
            "WSGI_MODE='asgi_uvicorn' is not a serving mode for WSGI: use one of wsgi_sync",
        ),
        ("ASGI_MODE", "uvicorn", "ASGI_MODE='uvicorn' is not a serving mode for ASGI"),
        # showcase:begin
        ("UPSTREAM_PORT", "x", "UPSTREAM_PORT='x' is not a port number"),
        # showcase:end
        ("REDIS_PORT", "0", "REDIS_PORT='0' is not a port number"),
        ("UP_TIMEOUT", "0", "UP_TIMEOUT='0' must be between 1 and 600 seconds"),
        ("PROCESS_MANAGER", "systemd", "PROCESS_MANAGER='systemd': use one of honcho, supervisor"),
        ("NGINX_ASGI_PORT", "-1", "NGINX_ASGI_PORT='-1' is not a port number"),
    ],
)
def test_up_refuses_bad_settings_before_touching_anything(
    launcher_env: dict[str, str], name: str, value: str, message: str
) -> None:
    launcher_env[name] = value
    done = run_launcher(launcher_env)
    assert done.returncode == 2
    assert message in done.stderr
    # Refused before migrating: the state dir holds no database.
    assert not (Path(launcher_env["DJANGO_VAR_DIR"]) / "db.sqlite3").exists()


def test_up_names_a_port_already_in_use(launcher_env: dict[str, str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        launcher_env["ASGI_PORT"] = str(busy.getsockname()[1])
        done = run_launcher(launcher_env)
    assert done.returncode == 2
    assert f"port {launcher_env['ASGI_PORT']} (ASGI server direct" in done.stderr


def test_up_under_supervisor_refuses_an_asgi_mode_it_cannot_run(
    launcher_env: dict[str, str],
) -> None:
    launcher_env.update({"PROCESS_MANAGER": "supervisor", "ASGI_MODE": "asgi_gunicorn"})
    done = run_launcher(launcher_env)
    assert done.returncode == 2
    assert "ASGI_MODE='asgi_gunicorn' does not apply under PROCESS_MANAGER" in done.stderr
    assert not (Path(launcher_env["DJANGO_VAR_DIR"]) / "db.sqlite3").exists()


def test_without_redis_the_bus_is_in_memory_in_one_asgi_worker(tmp_path: Path) -> None:
    env = {"REDIS_SERVER_BINARY": str(tmp_path / "no-redis-here")}
    assert up.local_redis(env) is None
    stack = {service.name: service for service in up.services(up.child_environment(env), None)}
    assert "redis" not in stack
    assert stack["asgi"].env == {"WEB_CONCURRENCY": "1"}
    assert "ONE worker: no Redis, the event bus is in memory" in stack["asgi"].description
    assert stack["wsgi"].env == {}


def test_with_redis_server_the_stack_runs_one_and_both_servers_use_it() -> None:
    binary = "/usr/bin/redis-server"
    env = up.child_environment({"REDIS_PORT": "8123"}, binary)
    assert env["REDIS_URL"] == "redis://127.0.0.1:8123/0"
    stack = up.services(env, None, binary)
    assert stack[0].name == "redis"
    assert stack[0].command[:3] == [binary, "--port", "8123"]
    assert stack[0].health_url == "redis://127.0.0.1:8123"
    assert all(service.env == {} for service in stack)


def test_a_redis_url_from_the_environment_is_used_as_it_is() -> None:
    env = {"REDIS_URL": "redis://redis.internal:6379/3"}
    assert up.local_redis(env) is None
    assert up.child_environment(env)["REDIS_URL"] == env["REDIS_URL"]
    stack = up.services(up.child_environment(env), None)
    assert "redis" not in [service.name for service in stack]
    assert all(service.env == {} for service in stack)


def test_under_supervisor_without_redis_up_refuses(launcher_env: dict[str, str]) -> None:
    launcher_env.update(
        {"PROCESS_MANAGER": "supervisor", "REDIS_SERVER_BINARY": "/nonexistent/redis-server"}
    )
    done = run_launcher(launcher_env)
    if up.supervisord_binary() is None:
        assert "supervisord is not installed" in done.stderr
        return
    assert done.returncode == 2
    assert "an in-memory event bus would split" in done.stderr
    assert not (Path(launcher_env["DJANGO_VAR_DIR"]) / "db.sqlite3").exists()
