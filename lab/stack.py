"""A whole local stack: a WSGI and an ASGI server with nginx in front, on free loopback ports.

Used by the tests that go through nginx (routing, hostile input, slow clients, faults)::

    var_dir = prepare_var_dir(tmp / "var")           # migrated SQLite + collected static files
    with start_stack("wsgi_gthread", "asgi_uvicorn", var_dir, tmp / "stack") as stack:
        httpx.get(stack.url("hybrid", "/readyz"))

Every process is started and stopped by lab.servers (by PID, SIGTERM first), nginx last
in and first out, so no request reaches a server that is already stopping.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from deploy import nginx
from lab import manage, servers

# nginx's three entries, and the variable deploy.nginx reads each port from.
ENTRY_PORT_NAMES = {
    "hybrid": "NGINX_HYBRID_PORT",
    "wsgi": "NGINX_WSGI_PORT",
    "asgi": "NGINX_ASGI_PORT",
}
ENTRIES = tuple(ENTRY_PORT_NAMES)


class StackError(RuntimeError):
    """The stack cannot be prepared or started; the message says why."""


def prepare_var_dir(directory: Path, *, collectstatic: bool = True) -> Path:
    """Migrate a fresh SQLite database in `directory` (and collect static files); return it."""
    directory.mkdir(parents=True, exist_ok=True)
    env = {
        **dict.fromkeys(servers.INHERITED_SETTINGS),
        "DJANGO_VAR_DIR": str(directory),
        "DJANGO_STATIC_ROOT": None,
    }
    steps = [["migrate", "--noinput", "--verbosity", "0"]]
    if collectstatic:
        steps.append(["collectstatic", "--noinput", "--verbosity", "0"])
    for step in steps:
        manage.run_checked(step, env, error=StackError)
    return directory


def nginx_config_path(values: Mapping[str, str]) -> Path:
    """Return where the local nginx config for `values` goes: nginx.conf in nginx's run dir."""
    return Path(nginx.run_dir("local", values)) / "nginx.conf"


def write_nginx_config(
    binary: str, values: Mapping[str, str], *, error: type[Exception] = StackError
) -> tuple[Path, str]:
    """Render nginx's local config from `values`, write it, check it with `nginx -t`.

    Returns the config's path (nginx_config_path) and its text. Raises `error`, the caller's
    own exception, when a value cannot be rendered or nginx rejects the result: said before
    nginx starts, not as a server that never answers.
    """
    try:
        text = nginx.render("local", values)
        config = nginx_config_path(values)
    except nginx.ConfigError as exc:
        raise error(f"cannot render nginx's config: {exc}") from exc
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(text, encoding="utf-8")
    checked = nginx.check(binary, config)
    if checked.returncode != 0:
        raise error(f"nginx -t rejected {config}:\n{checked.stderr}")
    return config, text


def start_nginx(binary: str, config: Path, port: int, timeout: float = 30.0) -> servers.Server:
    """Run nginx in the foreground on `config`; return once `port` answers /healthz."""
    argv = nginx.nginx_command(binary, config, "-g", "daemon off;")
    log_path = config.parent / "nginx.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(  # noqa: S603  (the nginx binary and our rendered config)
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = servers.Server(argv, process, port, log_path)
    try:
        server.wait_healthy(timeout=timeout)
    except BaseException:
        server.stop(timeout=5)
        raise
    return server


@dataclass
class Stack:
    """The running stack: both servers, nginx, its entry ports and its rendered config."""

    wsgi_mode: str
    asgi_mode: str
    wsgi: servers.Server
    asgi: servers.Server
    nginx: servers.Server
    ports: dict[str, int]
    config: Path
    var_dir: Path
    static_root: Path = field(init=False)

    def __post_init__(self) -> None:
        self.static_root = self.var_dir / "static"

    def url(self, entry: str, path: str) -> str:
        """Return the URL of `path` through nginx's `entry` (hybrid, wsgi or asgi)."""
        return f"http://{servers.HOST}:{self.ports[entry]}{path}"

    def server(self, interface: str) -> servers.Server:
        """Return the app server behind an interface ("wsgi" or "asgi")."""
        return {"wsgi": self.wsgi, "asgi": self.asgi}[interface]


@contextlib.contextmanager
def start_stack(
    wsgi_mode: str,
    asgi_mode: str,
    var_dir: Path,
    directory: Path,
    *,
    server_env: Mapping[str, str | None] | None = None,
    nginx_env: Mapping[str, str] | None = None,
    asgi_app: str | None = None,
) -> Iterator[Stack]:
    """Start `wsgi_mode` and `asgi_mode` on `var_dir`'s state, nginx in front; stop all after.

    `server_env` is applied on top of a cleaned environment (a developer's exported
    WEB_CONCURRENCY or DATABASE_URL does not leak in); `nginx_env` overrides deploy.nginx's
    values (NGINX_CLIENT_HEADER_TIMEOUT=2s, ...). `asgi_app` serves another ASGI application
    than project.asgi on the ASGI mode's config (gunicorn's APP_MODULE, e.g. a test's
    "module:factory()"). Without an nginx binary, StackError says how to install one.
    """
    binary = nginx.nginx_binary(os.environ)
    if binary is None:
        raise StackError(nginx.INSTALL_HINT)
    env: dict[str, str | None] = {
        **dict.fromkeys(servers.INHERITED_SETTINGS),
        "DJANGO_VAR_DIR": str(var_dir),
        "DJANGO_STATIC_ROOT": None,
        **(server_env or {}),
    }
    with contextlib.ExitStack() as cleanup:
        wsgi = servers.start_mode(wsgi_mode, env=env, workdir=directory / "wsgi")
        cleanup.callback(wsgi.stop)
        asgi = servers.start_mode(
            asgi_mode,
            env=env,
            workdir=directory / "asgi",
            extra_args=[asgi_app] if asgi_app else (),
        )
        cleanup.callback(asgi.stop)
        # Every worker up before the first request: a stack half booted serves requests late
        # and on a busy machine can miss a test's timeout.
        for server in (wsgi, asgi):
            if not server.wait_workers_ready():
                raise StackError(f"the workers of {server.mode} did not all boot:\n{server.tail()}")
        names = ENTRY_PORT_NAMES.values()
        ports = {
            name: str(port)
            for name, port in zip(names, servers.free_ports(len(names)), strict=True)
        }
        run_dir = directory / "nginx"
        values = {
            **ports,
            "WSGI_UPSTREAM": f"{servers.HOST}:{wsgi.port}",
            "ASGI_UPSTREAM": f"{servers.HOST}:{asgi.port}",
            "DJANGO_VAR_DIR": str(var_dir),
            "NGINX_RUN_DIR": str(run_dir),
            **(nginx_env or {}),
        }
        config, _ = write_nginx_config(binary, values)
        front = start_nginx(binary, config, int(ports["NGINX_HYBRID_PORT"]))
        cleanup.callback(front.stop, 10)
        yield Stack(
            wsgi_mode=wsgi_mode,
            asgi_mode=asgi_mode,
            wsgi=wsgi,
            asgi=asgi,
            nginx=front,
            ports={entry: int(ports[name]) for entry, name in ENTRY_PORT_NAMES.items()},
            config=config,
            var_dir=var_dir,
        )
