"""What stands around the servers under test: nginx in front (the showcase's upstream behind).

Both run on the load generator's CPUs, not the server's: on a small machine they would
otherwise take CPU from the server and measure the sharing, not the proxy hop or the wait.
The report says where each ran.
"""

from __future__ import annotations

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
    env = {
        name: str(servers.free_port()) for name in nginx.PORT_DEFAULTS if name.startswith("NGINX_")
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
