"""lab.servers: start a server on a free port, report its failures, stop it by PID."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lab.servers import (
    WORKER_READY,
    Server,
    ServerError,
    free_port,
    free_ports,
    gunicorn_executable,
    interface_of_mode,
    mode_config,
    start,
    start_mode,
)

ENV = {"WEB_CONCURRENCY": "2", "GUNICORN_CMD_ARGS": None, "DATABASE_URL": None}


def children_of(pid: int) -> list[int]:
    """Return the PIDs whose parent is `pid`."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # The command name in parentheses may hold spaces: split after it.
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                children.append(int(entry.name))
    return children


def is_alive(pid: int) -> bool:
    """Return whether `pid` runs (a zombie waiting for its reaper does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll `condition()` until it is true or `timeout` s pass; return its last value."""
    deadline = time.monotonic() + timeout
    while not (result := condition()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return result


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))


def test_free_ports_are_distinct_and_can_all_be_bound_at_once() -> None:
    ports = free_ports(50)
    assert len(set(ports)) == 50
    with contextlib.ExitStack() as listeners:
        for port in ports:
            listeners.enter_context(socket.socket()).bind(("127.0.0.1", port))


def test_unknown_mode_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="unknown serving mode 'wsgi_turbo'"):
        mode_config("wsgi_turbo")
    assert interface_of_mode("asgi_gunicorn") == "asgi"


@pytest.mark.serving
def test_a_server_that_cannot_start_is_reported_with_its_output(tmp_path: Path) -> None:
    env = {**ENV, "DJANGO_VAR_DIR": str(tmp_path)}
    with pytest.raises(ServerError, match=r"No module named 'project\.nowhere'"):
        start([gunicorn_executable(), "project.nowhere"], env=env, workdir=tmp_path, timeout=20)


@pytest.mark.serving
def test_stop_ends_master_and_workers_and_keeps_the_output(tmp_path: Path) -> None:
    with start_mode(
        "wsgi_sync", env={**ENV, "DJANGO_VAR_DIR": str(tmp_path)}, workdir=tmp_path
    ) as server:
        assert server.wait_workers_ready(), server.tail()
        workers = children_of(server.pid)
        assert len(workers) == 2
        assert server.stop() == 0
        assert not any(is_alive(pid) for pid in [server.pid, *workers])
        assert "Shutting down: Master" in server.output()
        assert server.log_path.parent == tmp_path


@pytest.mark.serving
def test_stop_ends_the_workers_of_a_master_that_died(tmp_path: Path) -> None:
    # A sync worker checks its parent as it enters its accept loop, then every timeout / 2 s
    # (300 s here): one still booting when the master dies leaves by itself (CI caught that
    # once), which would prove nothing about stop(). So the master dies once both workers are
    # ready and have had a moment to reach their long wait.
    env = {**ENV, "DJANGO_VAR_DIR": str(tmp_path), "GUNICORN_CMD_ARGS": "--timeout 600"}
    with start_mode("wsgi_sync", env=env, workdir=tmp_path) as server:
        assert server.wait_workers_ready(), server.tail()
        workers = children_of(server.pid)
        assert len(workers) == 2
        time.sleep(1)
        os.kill(server.pid, signal.SIGKILL)  # a master killed from outside leaves its workers
        assert wait_for(lambda: not server.running())
        assert all(is_alive(pid) for pid in workers)
        assert server.stop() == -signal.SIGKILL
        assert wait_for(lambda: not any(is_alive(pid) for pid in workers))


@pytest.mark.serving
def test_server_is_a_context_manager(tmp_path: Path) -> None:
    with start_mode(
        "asgi_gunicorn", env={**ENV, "DJANGO_VAR_DIR": str(tmp_path)}, workdir=tmp_path
    ) as server:
        assert isinstance(server, Server)
        assert server.running()
        assert server.base_url == f"http://127.0.0.1:{server.port}"
        assert server.mode == "asgi_gunicorn"
    assert not server.running()


@pytest.mark.serving
@pytest.mark.parametrize("workers", [1, 3])
def test_wait_workers_ready_waits_for_every_worker(tmp_path: Path, workers: int) -> None:
    env = {**ENV, "DJANGO_VAR_DIR": str(tmp_path), "WEB_CONCURRENCY": str(workers)}
    with start_mode("wsgi_gthread", env=env, workdir=tmp_path) as server:
        assert server.wait_workers_ready(), server.tail()
        ready = {int(pid) for pid in re.findall(WORKER_READY, server.output())}
        assert ready == set(children_of(server.pid))
        assert len(ready) == workers


def test_wait_workers_ready_gives_up_when_the_server_exits(tmp_path: Path) -> None:
    # A process that never logs its workers ready: the wait ends when it exits, not at timeout.
    log_path = tmp_path / "server.log"
    argv = [sys.executable, "-c", "import time; time.sleep(1)"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    with Server(argv, process, free_port(), log_path) as sleeper:
        started = time.monotonic()
        assert not sleeper.wait_workers_ready(timeout=60)
        assert time.monotonic() - started < 30
