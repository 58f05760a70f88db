"""Fixtures for the serving tests: a private database and upstream, real servers per mode."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lab import manage
from lab.servers import (
    INHERITED_SETTINGS,
    MODES,
    Server,
    gunicorn_executable,
    start,
    start_mode,
)

Env = dict[str, str | None]

# The commands the README tells users to type, run verbatim from the repo root with no config:
# name -> (argv after "gunicorn", the interface it serves).
USED_BY_COMMANDS = {
    "wsgi": (["project.wsgi"], "wsgi"),
    "uvicorn_worker": (
        ["project.asgi:application", "-k", "uvicorn_worker.UvicornWorker"],
        "asgi",
    ),
    # Deprecated since uvicorn 0.30 (it warns on import) but users still type it.
    "uvicorn.workers": (
        ["project.asgi:application", "-k", "uvicorn.workers.UvicornWorker"],
        "asgi",
    ),
}


@pytest.fixture(scope="session")
def serving_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """Return the environment of every test server: a migrated temp SQLite (and the showcase's
    upstream, live).

    The servers never touch the developer's var/db.sqlite3.
    """
    env: Env = dict.fromkeys(INHERITED_SETTINGS)
    env["DJANGO_VAR_DIR"] = str(tmp_path_factory.mktemp("var"))
    env["WEB_CONCURRENCY"] = "1"
    manage.run_checked(["migrate", "--noinput", "--verbosity", "0"], env)
    # Named, not `with ... as`: without the showcase nothing enters it (and `as` would be unused).
    services = contextlib.ExitStack()
    with services:
        # showcase:begin
        from apps.showcase.upstream import start_in_thread

        env["SHOWCASE_UPSTREAM_URL"] = services.enter_context(start_in_thread()).url
        # showcase:end
        yield env


@pytest.fixture(scope="session", params=MODES)
def mode_server(
    request: pytest.FixtureRequest, serving_env: Env, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """Return a running server per serving mode (one at a time; shared by the session)."""
    mode: str = request.param
    with start_mode(mode, env=serving_env, workdir=tmp_path_factory.mktemp(mode)) as server:
        yield server


@pytest.fixture(scope="session")
def shared_runtime_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return the XDG_RUNTIME_DIR the used-by commands share, as typed in one session."""
    return tmp_path_factory.mktemp("runtime")


@pytest.fixture(scope="session")
def used_by_servers(
    serving_env: Env, shared_runtime_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Server]]:
    """Return the used-by commands running side by side, by name.

    The address comes from GUNICORN_CMD_ARGS (`--bind 127.0.0.1:<port>`), so the command line
    stays verbatim and nothing listens on 0.0.0.0 (gunicorn's own default when PORT is set).
    They share one XDG_RUNTIME_DIR, where gunicorn puts its default control socket.
    """
    env = {**serving_env, "XDG_RUNTIME_DIR": str(shared_runtime_dir)}
    servers: dict[str, Server] = {}
    try:
        for name, (args, _interface) in USED_BY_COMMANDS.items():
            servers[name] = start(
                [gunicorn_executable(), *args],
                env=env,
                workdir=tmp_path_factory.mktemp(name.replace(".", "_")),
            )
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def client_for(server: Server, timeout: float = 30.0) -> httpx.Client:
    """Return an HTTP client for `server` that ignores the developer's proxy settings."""
    return httpx.Client(base_url=server.base_url, timeout=timeout, trust_env=False)
