"""The gunicorn configs in deploy/gunicorn/: valid, complete, and driven by the environment."""

from __future__ import annotations

import re
import runpy
import subprocess
import time
from pathlib import Path

import pytest
from gunicorn import util
from gunicorn.workers.base import Worker

from deploy import nginx
from deploy.gunicorn import common
from lab.servers import (
    INHERITED_SETTINGS,
    MODES,
    REPO_ROOT,
    gunicorn_executable,
    interface_of_mode,
    merged_environment,
    mode_config,
    start_mode,
)

# A developer's shell may export these; each test states the ones it means.
CLEARED = dict.fromkeys(INHERITED_SETTINGS)
DEFAULT_PORTS = {"wsgi": 8001, "asgi": 8002}


def gunicorn(*args: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run gunicorn from the repo root with `env` over a clean environment."""
    return subprocess.run(
        [gunicorn_executable(), *args],
        cwd=REPO_ROOT,
        env=merged_environment({**CLEARED, "DJANGO_VAR_DIR": str(tmp_path), **env}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def printed_config(mode: str, tmp_path: Path, **env: str) -> dict[str, str]:
    """Return the settings `gunicorn --print-config` resolves for `mode` under `env`."""
    done = gunicorn("--print-config", "-c", str(mode_config(mode)), env=env, tmp_path=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    settings = {}
    for line in done.stdout.splitlines():
        name, sep, value = line.partition(" = ")
        if sep:
            settings[name.strip()] = value.strip()
    return settings


@pytest.mark.parametrize("mode", MODES)
def test_config_passes_check_config(mode: str, tmp_path: Path) -> None:
    done = gunicorn("--check-config", "-c", str(mode_config(mode)), env={}, tmp_path=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("mode", MODES)
def test_config_names_its_app_and_an_importable_worker_class(mode: str, tmp_path: Path) -> None:
    # --check-config loads the app but not the worker class: a typo there would pass it.
    settings = printed_config(mode, tmp_path)
    assert settings["wsgi_app"] == f"project.{interface_of_mode(mode)}:application"
    assert issubclass(util.load_class(settings["worker_class"]), Worker)


@pytest.mark.parametrize("mode", MODES)
def test_defaults_bind_loopback_on_the_interface_port(mode: str, tmp_path: Path) -> None:
    settings = printed_config(mode, tmp_path)
    assert settings["bind"] == f"['127.0.0.1:{DEFAULT_PORTS[interface_of_mode(mode)]}']"
    assert settings["forwarded_allow_ips"] == "['127.0.0.1']"
    assert settings["control_socket_disable"] == "True"


def test_environment_overrides_the_defaults(tmp_path: Path) -> None:
    socket_path = str(tmp_path / "wsgi.ctl")
    settings = printed_config(
        "wsgi_gthread",
        tmp_path,
        WEB_CONCURRENCY="3",
        GUNICORN_THREADS="5",
        PORT="9123",
        FORWARDED_ALLOW_IPS="10.1.2.3",
        GUNICORN_CONTROL_SOCKET=socket_path,
    )
    assert settings["workers"] == "3"
    assert settings["threads"] == "5"
    assert settings["bind"] == "['127.0.0.1:9123']"
    assert settings["forwarded_allow_ips"] == "['10.1.2.3']"
    assert (settings["control_socket"], settings["control_socket_disable"]) == (
        socket_path,
        "False",
    )


def test_bind_names_every_address_and_beats_port(tmp_path: Path) -> None:
    settings = printed_config(
        "asgi_uvicorn", tmp_path, BIND="0.0.0.0:9000, unix:/run/app.sock", PORT="9123"
    )
    assert settings["bind"] == "['0.0.0.0:9000', 'unix:/run/app.sock']"


def test_gunicorn_cmd_args_beat_the_file_and_its_environment(tmp_path: Path) -> None:
    settings = printed_config(
        "wsgi_sync",
        tmp_path,
        WEB_CONCURRENCY="3",
        GUNICORN_CMD_ARGS="--workers 5 --keep-alive 90 --max-requests 0",
    )
    assert (settings["workers"], settings["keepalive"], settings["max_requests"]) == (
        "5",
        "90",
        "0",
    )


@pytest.mark.parametrize("value", ["many", "0"])
def test_a_bad_number_is_refused_with_its_name(value: str, tmp_path: Path) -> None:
    done = gunicorn(
        "--check-config",
        "-c",
        str(mode_config("wsgi_gthread")),
        env={"GUNICORN_THREADS": value},
        tmp_path=tmp_path,
    )
    assert done.returncode != 0
    assert f"GUNICORN_THREADS={value!r}" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("target", ["local", "docker"])
def test_keepalive_outlasts_nginx_upstream_keepalive(target: str) -> None:
    # nginx must retire an idle upstream connection before the app does, or it may reuse
    # one the app is closing: a sporadic 502 (gunicorn #3038, #3323).
    config = nginx.render(target, {})
    upstreams = re.findall(r"upstream\s+\S+\s*\{([^}]*)\}", config)
    assert upstreams, config
    for block in upstreams:
        timeout = re.search(r"keepalive_timeout\s+(\d+)s;", block)
        assert timeout, block
        assert int(timeout[1]) < common.keepalive


def test_the_root_gunicorn_conf_sets_the_control_socket_only() -> None:
    # gunicorn loads ./gunicorn.conf.py by itself, for the used-by commands (`gunicorn
    # project.wsgi`, ...): anything more than the control socket would change what they do
    # without their users knowing.
    from gunicorn.config import KNOWN_SETTINGS

    names = {setting.name for setting in KNOWN_SETTINGS}
    root_config = runpy.run_path(str(REPO_ROOT / "gunicorn.conf.py"))
    assert {name for name in root_config if name in names} == {
        "control_socket",
        "control_socket_disable",
    }
    assert root_config["control_socket_disable"] is common.control_socket_disable


@pytest.mark.serving
def test_control_socket_is_off_by_default_and_private_when_named(tmp_path: Path) -> None:
    env = {**CLEARED, "DJANGO_VAR_DIR": str(tmp_path), "WEB_CONCURRENCY": "1"}
    first_socket = tmp_path / "first.ctl"
    second_socket = tmp_path / "second.ctl"
    with (
        start_mode("wsgi_sync", env=env, workdir=tmp_path / "default") as default,
        start_mode(
            "wsgi_sync",
            env={**env, "GUNICORN_CONTROL_SOCKET": str(first_socket)},
            workdir=tmp_path / "first",
        ) as first,
        start_mode(
            "wsgi_sync",
            env={**env, "GUNICORN_CONTROL_SOCKET": str(second_socket)},
            workdir=tmp_path / "second",
        ) as second,
    ):
        assert "Control socket listening" not in default.output()
        assert not list((tmp_path / "default").glob("*.ctl"))
        for server, path in ((first, first_socket), (second, second_socket)):
            # The socket is opened by a thread of the master: give it a moment (bounded).
            deadline = time.monotonic() + 10
            while not path.is_socket() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert path.is_socket(), server.tail()
            # The master logs the line just after it creates the socket file.
            listening = re.escape(f"Control socket listening at {path}")
            assert server.wait_for_output(listening, timeout=10), server.tail()
