"""project.asgi answers the lifespan scope: no server warns about it, in any lifespan setting.

Stock Django raises on a lifespan scope: uvicorn then logs "ASGI 'lifespan' protocol appears
unsupported." (lifespan auto) or fails to start (on), gunicorn's `-k asgi` logs "ASGI lifespan
not supported by app" at DEBUG. The negative controls start Django's stock ASGI application
(gunicorn calls the factory `django.core.asgi:get_asgi_application()`) to prove these checks
see the difference.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lab.servers import Server, gunicorn_executable, start, start_mode
from tests.serving.conftest import Env, client_for

pytestmark = [pytest.mark.serving, pytest.mark.slow]

UVICORN_STARTED = "Application startup complete."
GUNICORN_ASGI_STARTED = "ASGI lifespan startup complete"
LIFESPAN_TROUBLE = re.compile(r"lifespan.*(unsupported|not supported|fail|error)", re.IGNORECASE)


def assert_quiet_lifespan(server: Server, started_line: str) -> None:
    """Assert that the server ran the lifespan start-up and logged no lifespan trouble."""
    with client_for(server) as client:
        assert client.get("/admin/login/").status_code == 200
    output = server.output()
    assert started_line in output, output
    assert not LIFESPAN_TROUBLE.search(output), output
    assert "Traceback" not in output, output


@pytest.mark.parametrize("name", ["uvicorn_worker", "uvicorn.workers"])
def test_used_by_uvicorn_workers_run_lifespan_auto_quietly(
    name: str, used_by_servers: dict[str, Server]
) -> None:
    assert_quiet_lifespan(used_by_servers[name], UVICORN_STARTED)


def test_asgi_uvicorn_mode_runs_lifespan_on(serving_env: Env, tmp_path: Path) -> None:
    with start_mode("asgi_uvicorn", env=serving_env, workdir=tmp_path) as server:
        assert_quiet_lifespan(server, UVICORN_STARTED)


def test_asgi_gunicorn_mode_runs_lifespan_on(serving_env: Env, tmp_path: Path) -> None:
    env: Env = {**serving_env, "GUNICORN_CMD_ARGS": "--log-level debug"}
    with start_mode("asgi_gunicorn", env=env, workdir=tmp_path) as server:
        assert_quiet_lifespan(server, GUNICORN_ASGI_STARTED)


@pytest.mark.parametrize(
    ("worker", "options", "complaint"),
    [
        ("uvicorn_worker.UvicornWorker", "", "ASGI 'lifespan' protocol appears unsupported."),
        ("asgi", "--log-level debug", "ASGI lifespan not supported by app"),
    ],
)
def test_bare_django_application_would_complain(
    worker: str, options: str, complaint: str, serving_env: Env, tmp_path: Path
) -> None:
    env: Env = {
        **serving_env,
        "GUNICORN_CMD_ARGS": options,
        "DJANGO_SETTINGS_MODULE": "project.settings",
    }
    argv = [gunicorn_executable(), "django.core.asgi:get_asgi_application()", "-k", worker]
    with start(argv, env=env, workdir=tmp_path) as server:
        with client_for(server) as client:
            assert client.get("/admin/login/").status_code == 200
        assert complaint in server.output()
        assert LIFESPAN_TROUBLE.search(server.output())
