"""The gunicorn configs in deploy/gunicorn/: valid, complete, and driven by the environment."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gunicorn import util
from gunicorn.app.base import Application
from gunicorn.config import KNOWN_SETTINGS, Config
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
SETTING_NAMES = {setting.name for setting in KNOWN_SETTINGS}
# The gunicorn settings and hooks common.py defines, read from the module itself, not from the
# __all__ it exports them by: that is what the tests below check.
COMMON_SETTINGS = sorted(name for name in vars(common) if name in SETTING_NAMES)


class FileConfig(Application):
    """gunicorn's own loader on one config file, as `gunicorn -c <file>` runs it, and no app."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.namespace: dict[str, object] = {}
        super().__init__()

    def load_config(self) -> None:
        # The file alone: neither the command line nor GUNICORN_CMD_ARGS is read.
        self.namespace = self.load_config_from_file(str(self.path))

    def load(self) -> None:
        raise NotImplementedError("only the configuration is loaded")


def loaded(path: Path, monkeypatch: pytest.MonkeyPatch) -> FileConfig:
    """Return `path` loaded by gunicorn's loader, under an environment without overrides."""
    for name in INHERITED_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    # The loader registers the file as sys.modules["__config__"]: removed again after the test.
    monkeypatch.delitem(sys.modules, "__config__", raising=False)
    return FileConfig(path)


def as_gunicorn_keeps(name: str, value: object) -> object:
    """Return `value` as gunicorn stores setting `name` once validated (a str bind: a list)."""
    reference = Config()
    reference.set(name, value)
    return reference.settings[name].get()


def statements_setting(path: Path) -> dict[str, ast.stmt]:
    """Return the gunicorn settings a config file assigns or defines itself, with where."""
    found: dict[str, ast.stmt] = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign):
            names = [target.id for target in node.targets if isinstance(target, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names = [node.target.id]
        elif isinstance(node, ast.FunctionDef):
            names = [node.name]
        else:
            continue
        found.update({name: node for name in names if name in SETTING_NAMES})
    return found


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


def test_common_defines_the_shared_settings_and_exports_every_one() -> None:
    assert {"keepalive", "workers", "post_worker_init", "when_ready"} <= set(COMMON_SETTINGS)
    # Settings only: the helpers stay in common.py (a mode imports the ones it uses by name).
    assert sorted(common.__all__) == COMMON_SETTINGS


@pytest.mark.parametrize("mode", MODES)
def test_every_common_setting_reaches_the_mode_through_gunicorns_loader(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A setting added to common.py and missing from a mode fails here, whichever it is.
    config = loaded(mode_config(mode), monkeypatch)
    own = statements_setting(mode_config(mode))
    for name in COMMON_SETTINGS:
        if name in own:
            continue  # the mode's own value: the next test
        assert name in config.namespace, f"{mode} does not get {name} from common.py"
        # common's very object, not an equal default that gunicorn would have used anyway.
        assert config.namespace[name] is getattr(common, name), name
        expected = as_gunicorn_keeps(name, getattr(common, name))
        assert config.cfg.settings[name].get() == expected, name


@pytest.mark.parametrize("mode", MODES)
def test_a_modes_own_settings_come_after_common_and_win(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = mode_config(mode)
    body = ast.parse(path.read_text(encoding="utf-8")).body
    # Past the docstring, common's settings first: whatever the file sets after them wins.
    first = body[1] if isinstance(body[0], ast.Expr) else body[0]
    assert isinstance(first, ast.ImportFrom), ast.dump(first)
    assert (first.module, [alias.name for alias in first.names]) == (common.__name__, ["*"])
    own = statements_setting(path)
    assert {"bind", "wsgi_app", "worker_class"} <= set(own)
    config = loaded(path, monkeypatch)
    for name in own:
        assert own[name].lineno > first.lineno, name
        assert config.cfg.settings[name].get() == as_gunicorn_keeps(name, config.namespace[name])


def test_a_setting_a_mode_file_sets_again_beats_commons(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No mode overrides a shared setting today; one that does, as the modes are written, wins.
    path = tmp_path / "mode.py"
    path.write_text(
        "from deploy.gunicorn.common import *  # noqa: F403\n\nkeepalive = 5\ntimeout = 120\n",
        encoding="utf-8",
    )
    config = loaded(path, monkeypatch).cfg
    assert (config.keepalive, config.timeout) == (5, 120)
    assert (common.keepalive, common.timeout) != (5, 120)
    assert config.backlog == common.backlog


def test_the_root_gunicorn_conf_sets_every_control_socket_setting_and_nothing_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # gunicorn loads ./gunicorn.conf.py by itself, for the used-by commands (`gunicorn
    # project.wsgi`, ...): anything more than the control socket would change what they do
    # without their users knowing, and a control socket setting added to common.py
    # (control_socket_mode, ...) but not imported there would leave them on gunicorn's default.
    control = {name for name in COMMON_SETTINGS if name.startswith("control_socket")}
    assert {"control_socket", "control_socket_disable"} <= control
    root = loaded(REPO_ROOT / "gunicorn.conf.py", monkeypatch)
    assert {name for name in root.namespace if name in SETTING_NAMES} == control
    for name in control:
        assert root.namespace[name] is getattr(common, name), name
        assert root.cfg.settings[name].get() == as_gunicorn_keeps(name, getattr(common, name))


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
