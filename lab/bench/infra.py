"""What stands around the servers under test: nginx in front (the showcase's upstream behind),
Redis beside them for the fan-out (the channel layer's pub/sub).

Both run on the load generator's CPUs, not the server's: on a small machine they would
otherwise take CPU from the server and measure the sharing, not the proxy hop or the wait.
The report says where each ran.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from deploy import nginx
from lab import servers
from lab.bench.contenders import launch, pinned
from lab.stack import write_nginx_config

# The nginx entry that forwards everything to one interface (nginx/nginx.conf.template).
ENTRY_PORT = {"wsgi": "NGINX_WSGI_PORT", "asgi": "NGINX_ASGI_PORT"}


class InfraError(RuntimeError):
    """nginx or the upstream cannot start; the message says why."""


def nginx_env(
    upstream: servers.Server, interface: str, run_dir: Path, workers: int
) -> dict[str, str]:
    """Return the deploy.nginx values for a front to `upstream`, on free ports."""
    names = [name for name in nginx.PORT_DEFAULTS if name.startswith("NGINX_")]
    env = {
        name: str(port) for name, port in zip(names, servers.free_ports(len(names)), strict=True)
    }
    env.update(
        {
            f"{interface.upper()}_UPSTREAM": f"{servers.HOST}:{upstream.port}",
            # The other interface's upstream is never used; it must only parse.
            f"{'ASGI' if interface == 'wsgi' else 'WSGI'}_UPSTREAM": f"{servers.HOST}:9",
            "NGINX_RUN_DIR": str(run_dir),
            "NGINX_WORKER_PROCESSES": str(workers),
            "NGINX_SERVER_NAMES": "127.0.0.1 localhost",
            "DJANGO_STATIC_ROOT": str(run_dir / "static"),
        }
    )
    return env


# showcase:begin
def start_upstream(
    workdir: Path,
    cpus: tuple[int, ...],
    on_spawn: Callable[[servers.Server], object] | None = None,
) -> servers.Server:
    """Start the showcase upstream (`python -m apps.showcase.upstream`) on a free port."""
    # Imported here, in the block a project without the showcase drops whole.
    import sys

    def argv_for_port(port: int) -> tuple[list[str], dict[str, str | None]]:
        argv = [sys.executable, "-m", "apps.showcase.upstream", "--host", servers.HOST]
        return pinned([*argv, "--port", str(port)], cpus), {}

    return launch(
        argv_for_port,
        env={},
        workdir=workdir,
        health_path="/?ms=0",
        timeout=30.0,
        on_spawn=on_spawn,
    )


# showcase:end
def start_nginx(
    upstream: servers.Server,
    interface: str,
    workdir: Path,
    cpus: tuple[int, ...],
    on_spawn: Callable[[servers.Server], object] | None = None,
) -> tuple[servers.Server, str]:
    """Start nginx in front of `upstream`; return it and the rendered config's text."""
    binary = nginx.nginx_binary()
    if binary is None:
        raise InfraError(nginx.INSTALL_HINT)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "static").mkdir(exist_ok=True)
    holder: dict[str, str] = {}

    def argv_for_port(port: int) -> tuple[list[str], dict[str, str | None]]:
        env = nginx_env(upstream, interface, workdir, max(1, len(cpus)))
        env[ENTRY_PORT[interface]] = str(port)
        # In its run dir, `workdir`: nginx.conf, written and checked with `nginx -t`.
        config, holder["config"] = write_nginx_config(binary, env, error=InfraError)
        return pinned(nginx.nginx_command(binary, config, "-g", "daemon off;"), cpus), {}

    server = launch(argv_for_port, env={}, workdir=workdir, timeout=30.0, on_spawn=on_spawn)
    return server, holder["config"]


REDIS_INSTALL_HINT = (
    "redis-server is not installed: `sudo apt-get install redis-server` (the fan-out needs it), "
    "or leave out --fanout"
)
REDIS_START_TIMEOUT_S = 15.0


def redis_binary() -> str | None:
    """Return redis-server's path, or None."""
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )


def redis_answers(port: int) -> bool:
    """Return whether a Redis on 127.0.0.1:`port` answers PING."""
    try:
        with socket.create_connection((servers.HOST, port), timeout=1.0) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(
    workdir: Path,
    cpus: tuple[int, ...],
    on_spawn: Callable[[servers.Server], object] | None = None,
) -> servers.Server:
    """Start a private redis-server on a free loopback port: no persistence, stopped by PID."""
    binary = redis_binary()
    if binary is None:
        raise InfraError(REDIS_INSTALL_HINT)
    workdir.mkdir(parents=True, exist_ok=True)
    port = servers.free_port()
    # Nothing written to disk (no RDB snapshots, no append-only file): a scratch bus.
    argv = pinned(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            servers.HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--daemonize",
            "no",
        ],
        cpus,
    )
    log_path = workdir / "redis.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(  # noqa: S603  (argv built here)
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = servers.Server(argv, process, port, log_path)
    if on_spawn is not None:
        on_spawn(server)
    deadline = time.monotonic() + REDIS_START_TIMEOUT_S
    while time.monotonic() < deadline and server.running():
        if redis_answers(port):
            return server
        time.sleep(0.1)
    raise InfraError(f"redis-server did not answer on port {port}:\n{server.tail()}")
