"""The systemd units in deploy/systemd/: valid, hardened, in step with the project, and their
commands serve on a socket handed over the way systemd's socket activation hands it."""

from __future__ import annotations

import importlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import pytest
from gunicorn.config import Config

from deploy import nginx
from deploy.gunicorn import common
from lab import up
from lab.servers import (
    HOST,
    INHERITED_SETTINGS,
    MODES,
    REPO_ROOT,
    WORKER_READY,
    Server,
    interface_of_mode,
    merged_environment,
    mode_config,
)
from lab.stack import prepare_var_dir

UNIT_DIR = REPO_ROOT / "deploy" / "systemd"
INTERFACES = ("wsgi", "asgi")
INTERFACE_MODES = {
    interface: tuple(mode for mode in MODES if interface_of_mode(mode) == interface)
    for interface in INTERFACES
}
# Where the units expect the project and its virtualenv: here, this checkout and the virtualenv
# running the tests. Longest first, so the venv is not mapped as a part of the checkout.
INSTALL_DIR = "/srv/dualserve"
INSTALL_PATHS = ((f"{INSTALL_DIR}/.venv", sys.prefix), (INSTALL_DIR, str(REPO_ROOT)))
# What the sockets' listening addresses must be: loopback, on the port nginx proxies to.
PORT_NAMES = {"wsgi": "WSGI_PORT", "asgi": "ASGI_PORT"}
# Exposure systemd-analyze security still calls "OK" (tenths: 1.9); the units score 1.4 on
# systemd 252. Dropping a part of the sandbox that matters crosses it.
EXPOSURE_THRESHOLD = 19
ANALYZE_HINT = (
    "systemd-analyze is not installed: install Debian's `systemd` package "
    "(`sudo apt-get install systemd`)."
)
# Become the service with the listening socket as fd 3 (SD_LISTEN_FDS_START, the first one
# systemd passes) and LISTEN_PID naming the service's own process, as systemd sets them in the
# child it forks, before exec.
ACTIVATE = """\
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[2], sys.argv[2:])
"""

Unit = dict[str, dict[str, list[str]]]


def require_systemd_analyze() -> str:
    """Return systemd-analyze; without it, fail under CI=true and skip elsewhere."""
    binary = shutil.which("systemd-analyze")
    if binary is None:
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(f"CI=true and {ANALYZE_HINT}")
        pytest.skip(ANALYZE_HINT)
    return binary


def parse_unit(text: str) -> Unit:
    """Return a unit file's sections, each directive with every value it is given, in order."""
    sections: Unit = {}
    current: dict[str, list[str]] | None = None
    lines = iter(text.splitlines())
    for raw in lines:
        line = raw.strip()
        while line.endswith("\\"):
            line = line[:-1] + " " + next(lines, "").strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"a directive outside any section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not a directive: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def load_unit(name: str) -> Unit:
    """Return deploy/systemd/`name`, parsed."""
    return parse_unit((UNIT_DIR / name).read_text(encoding="utf-8"))


def one(unit: Unit, section: str, key: str) -> str:
    """Return the single value of `key` in `section`; fail when it is missing or repeated."""
    values = unit.get(section, {}).get(key, [])
    assert len(values) == 1, f"[{section}] {key}= is set {len(values)} times"
    return values[0]


def installed_here(value: str) -> str:
    """Return `value` with the units' install paths replaced by this checkout and its venv."""
    for installed, here in INSTALL_PATHS:
        value = value.replace(installed, here)
    return value


def unit_environment(unit: Unit, state_dir: Path) -> dict[str, str]:
    """Return the service's Environment= assignments, %S (the state directory root) expanded."""
    environment = {}
    for line in unit["Service"].get("Environment", []):
        for assignment in shlex.split(line):
            name, _, value = assignment.partition("=")
            unknown = set(re.findall(r"%(.)", value.replace("%%", ""))) - {"S"}
            assert not unknown, f"specifiers the test cannot expand: {unknown}"
            environment[name] = value.replace("%S", str(state_dir)).replace("%%", "%")
    return environment


def command(unit: Unit, key: str, environment: Mapping[str, str]) -> list[str]:
    """Return the argv of Exec`key`= as systemd runs it: ${NAME} and $NAME from `environment`."""
    words = shlex.split(one(unit, "Service", key))

    def substitute(word: str) -> str:
        return re.sub(r"\$\{(\w+)\}", lambda match: environment[match[1]], word)

    argv = []
    for word in words:
        whole = re.fullmatch(r"\$(\w+)", word)
        # systemd splits a lone $NAME at white space; ${NAME} stays one word.
        argv.extend(environment[whole[1]].split() if whole else [substitute(word)])
    return [installed_here(word) for word in argv]


def mode_variable(interface: str) -> str:
    """Return the variable naming the serving mode of the `interface` service, as `make up`
    and compose name it (WSGI_MODE, ASGI_MODE)."""
    (variable,) = (
        name for name, modes in up.MODES.items() if set(modes) == set(INTERFACE_MODES[interface])
    )
    return variable


def seconds(value: str) -> int:
    """Return a systemd time span in seconds (the forms the units use: 30, 30s, 1min)."""
    match = re.fullmatch(r"(\d+)\s*(s|sec|min)?", value)
    assert match, f"a time span this test does not read: {value}"
    return int(match[1]) * (60 if match[2] == "min" else 1)


def installed_copies(directory: Path) -> list[Path]:
    """Copy the units into `directory` with the install paths of this checkout; return them."""
    directory.mkdir(parents=True, exist_ok=True)
    copies = []
    for source in sorted(UNIT_DIR.glob("dualserve-*")):
        copy = directory / source.name
        copy.write_text(installed_here(source.read_text(encoding="utf-8")), encoding="utf-8")
        copies.append(copy)
    return copies


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    """Run systemd-analyze with `args`; return what it did."""
    return subprocess.run(
        [require_systemd_analyze(), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def complaints(done: subprocess.CompletedProcess[str]) -> list[str]:
    """Return what systemd-analyze said about our units (it names the file or the unit)."""
    output = (done.stdout + done.stderr).splitlines()
    return [line for line in output if "dualserve-" in line]


# --- The units as systemd reads them ----------------------------------------------------------


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    copies = installed_copies(tmp_path)
    assert {copy.name for copy in copies} == {
        f"dualserve-{interface}.{kind}"
        for interface in INTERFACES
        for kind in ("socket", "service")
    }
    done = analyze("verify", *map(str, copies))
    assert done.returncode == 0, done.stdout + done.stderr
    assert complaints(done) == []


@pytest.mark.parametrize(
    ("name", "line", "typo", "said"),
    [
        (
            "dualserve-wsgi.service",
            "PrivateTmp=yes",
            "PrivateTemp=yes",
            "Unknown key 'PrivateTemp'",
        ),
        ("dualserve-asgi.service", "KillMode=mixed", "KillMode=mixd", "mixd"),
        ("dualserve-asgi.socket", "Backlog=2048", "Backlog=2O48", "2O48"),
    ],
)
def test_verify_reports_a_typo(name: str, line: str, typo: str, said: str, tmp_path: Path) -> None:
    # systemd ignores a directive it cannot read, with a warning and a zero exit status: the
    # check above must read the warnings too, or a misspelt hardening line would pass.
    copies = installed_copies(tmp_path)
    unit = tmp_path / name
    text = unit.read_text(encoding="utf-8")
    assert f"\n{line}\n" in text
    unit.write_text(text.replace(f"\n{line}\n", f"\n{typo}\n"), encoding="utf-8")
    done = analyze("verify", *map(str, copies))
    assert any(said in complaint for complaint in complaints(done)), done.stdout + done.stderr


@pytest.mark.parametrize("interface", INTERFACES)
def test_service_sandbox_stays_ok_for_systemd_analyze_security(
    interface: str, tmp_path: Path
) -> None:
    copies = {copy.name: copy for copy in installed_copies(tmp_path)}
    service = copies[f"dualserve-{interface}.service"]
    done = analyze("security", "--offline=yes", f"--threshold={EXPOSURE_THRESHOLD}", str(service))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr


# --- In step with the rest of the project ------------------------------------------------------


def test_there_is_a_socket_and_a_service_for_each_interface_of_the_modes() -> None:
    assert {interface_of_mode(mode) for mode in MODES} == set(INTERFACES)
    for interface in INTERFACES:
        assert (UNIT_DIR / f"dualserve-{interface}.socket").is_file()
        assert (UNIT_DIR / f"dualserve-{interface}.service").is_file()


@pytest.mark.parametrize("interface", INTERFACES)
def test_socket_listens_where_nginx_proxies_with_the_servers_backlog(interface: str) -> None:
    unit = load_unit(f"dualserve-{interface}.socket")
    port = nginx.PORT_DEFAULTS[PORT_NAMES[interface]]
    assert unit["Socket"]["ListenStream"] == [f"{HOST}:{port}"]
    # gunicorn accepts on the one socket; it never calls listen() again on an inherited one.
    assert one(unit, "Socket", "Accept") == "no"
    assert int(one(unit, "Socket", "Backlog")) == common.backlog


@pytest.mark.parametrize("interface", INTERFACES)
def test_service_stops_gracefully_within_its_timeout(interface: str) -> None:
    unit = load_unit(f"dualserve-{interface}.service")
    # The master alone gets the signal and stops its workers after graceful_timeout at most;
    # systemd's SIGKILL must come later than that.
    assert one(unit, "Service", "KillMode") == "mixed"
    assert one(unit, "Service", "KillSignal") == "SIGTERM"
    assert seconds(one(unit, "Service", "TimeoutStopSec")) > common.graceful_timeout
    assert one(unit, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"


@pytest.mark.parametrize("interface", INTERFACES)
def test_service_runs_the_default_mode_of_make_up_and_compose(interface: str) -> None:
    unit = load_unit(f"dualserve-{interface}.service")
    variable = mode_variable(interface)
    default = unit_environment(unit, Path("/var/lib"))[variable]
    assert default == up.DEFAULT_MODES[variable]
    assert interface_of_mode(default) == interface


@pytest.mark.parametrize("interface", INTERFACES)
def test_service_runs_any_mode_of_its_interface_from_the_install(interface: str) -> None:
    unit = load_unit(f"dualserve-{interface}.service")
    environment = unit_environment(unit, Path("/var/lib"))
    assert f"dualserve-{interface}.socket" in one(unit, "Unit", "Requires").split()
    assert one(unit, "Service", "WorkingDirectory") == INSTALL_DIR
    assert one(unit, "Service", "Type") == "notify"
    gunicorn = str(Path(sys.prefix) / "bin" / "gunicorn")
    for mode in INTERFACE_MODES[interface]:
        argv = command(unit, "ExecStart", {**environment, mode_variable(interface): mode})
        assert argv == [gunicorn, "--config", str(mode_config(mode))]


@pytest.mark.parametrize("interface", INTERFACES)
def test_service_keeps_its_database_in_its_state_directory(interface: str) -> None:
    unit = load_unit(f"dualserve-{interface}.service")
    state = one(unit, "Service", "StateDirectory")
    assert unit_environment(unit, Path("/var/lib"))["DJANGO_VAR_DIR"] == f"/var/lib/{state}"
    assert one(unit, "Service", "ProtectSystem") == "strict"


@pytest.mark.parametrize("interface", INTERFACES)
def test_service_may_open_a_descriptor_for_every_connection(interface: str) -> None:
    unit = load_unit(f"dualserve-{interface}.service")
    default = Config().worker_connections
    largest = max(
        getattr(importlib.import_module(f"deploy.gunicorn.{mode}"), "worker_connections", default)
        for mode in INTERFACE_MODES[interface]
    )
    assert int(one(unit, "Service", "LimitNOFILE")) > largest


# --- The units' commands, socket-activated outside systemd ---------------------------------------


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a state directory root (systemd's %S) whose dualserve/ holds a migrated SQLite."""
    root = tmp_path_factory.mktemp("state")
    state = one(load_unit("dualserve-wsgi.service"), "Service", "StateDirectory")
    prepare_var_dir(root / state, collectstatic=False)
    return root


def listening_socket(unit: Unit) -> socket.socket:
    """Return a socket listening on a free loopback port, set up as the socket unit says."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if unit["Socket"].get("NoDelay") == ["true"]:
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listener.bind((HOST, 0))
    listener.listen(int(one(unit, "Socket", "Backlog")))
    return listener


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """Yield a datagram socket standing for systemd's $NOTIFY_SOCKET, and its address."""
    name = f"dualserve-test-{uuid.uuid4().hex}"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(f"\0{name}")
    receiver.settimeout(10.0)
    with receiver:
        yield receiver, f"@{name}"


def activate(
    interface: str,
    mode: str,
    listener: socket.socket,
    state_dir: Path,
    notify_address: str,
    workdir: Path,
) -> Server:
    """Start the service's ExecStart on `listener` as systemd would; return once it answers."""
    service = load_unit(f"dualserve-{interface}.service")
    # The environment file sets the mode, as an administrator would.
    environment = {**unit_environment(service, state_dir), mode_variable(interface): mode}
    argv = command(service, "ExecStart", environment)
    fd = listener.fileno()
    env = merged_environment(
        {
            **dict.fromkeys(INHERITED_SETTINGS),
            **environment,
            "XDG_RUNTIME_DIR": str(workdir),
            "LISTEN_FDS": "1",
            # The socket unit's name: what systemd passes without a FileDescriptorName=.
            "LISTEN_FDNAMES": f"dualserve-{interface}.socket",
            "NOTIFY_SOCKET": notify_address,
        }
    )
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"{interface}-{mode}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-c", ACTIVATE, str(fd), *argv],
            cwd=installed_here(one(service, "Service", "WorkingDirectory")),
            env=env,
            pass_fds=(fd,),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(argv, process, listener.getsockname()[1], log_path, mode)
    try:
        server.wait_healthy(timeout=60.0, path="/readyz")
    except BaseException:
        server.stop(timeout=5.0)
        raise
    return server


def interface_header(server: Server) -> str:
    """Return the X-Interface header of a page that goes through the whole middleware stack."""
    response = httpx.get(server.base_url + "/admin/login/", timeout=10.0)
    assert response.status_code == 200, response.text[:500]
    return str(response.headers.get("X-Interface", ""))


def alive(pid: int) -> bool:
    """Return whether a process with `pid` exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def worker_pids(server: Server) -> set[int]:
    """Return the PIDs of every worker that logged it was ready, so far."""
    return {int(pid) for pid in re.findall(WORKER_READY, server.output())}


def wait_gone(pids: set[int], timeout: float) -> set[int]:
    """Wait up to `timeout` s for `pids` to exit; return those still running."""
    deadline = time.monotonic() + timeout
    while (left := {pid for pid in pids if alive(pid)}) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


@pytest.mark.serving
@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_service_serves_on_the_socket_it_is_handed_reloads_and_stops_cleanly(
    mode: str,
    state_dir: Path,
    notify_socket: tuple[socket.socket, str],
    tmp_path: Path,
) -> None:
    interface = interface_of_mode(mode)
    service = load_unit(f"dualserve-{interface}.service")
    receiver, address = notify_socket
    with listening_socket(load_unit(f"dualserve-{interface}.socket")) as listener:
        server = activate(interface, mode, listener, state_dir, address, tmp_path)
        try:
            # Type=notify: the master says it is ready once it listens.
            assert b"READY=1" in receiver.recv(4096).split(b"\n")
            assert f"Listening at: http://{HOST}:{server.port} " in server.output()
            assert server.wait_workers_ready(), server.tail()
            assert interface_header(server) == interface

            # ExecReload: new workers on the same socket, the old ones gone.
            old_workers = worker_pids(server)
            reload = command(service, "ExecReload", {"MAINPID": str(server.pid)})
            subprocess.run(reload, check=True, timeout=10)
            assert server.wait_for_output(WORKER_READY, count=2 * len(old_workers)), server.tail()
            assert wait_gone(old_workers, timeout=common.graceful_timeout) == set()
            assert interface_header(server) == interface

            # KillSignal to the main process (KillMode=mixed): out within TimeoutStopSec, with
            # every worker stopped by the master, none left for systemd's SIGKILL.
            workers = worker_pids(server) - old_workers
            kill_signal = signal.Signals[one(service, "Service", "KillSignal")]
            server.send_signal(kill_signal)
            timeout = seconds(one(service, "Service", "TimeoutStopSec"))
            assert server.wait_exit(timeout), server.tail()
            assert wait_gone(workers, timeout=1.0) == set(), server.tail()
            assert server.stop() == 0, server.tail()
            assert "SIGKILL" not in server.output()
        finally:
            server.stop(timeout=5.0)


@pytest.mark.serving
@pytest.mark.slow
@pytest.mark.parametrize("interface", INTERFACES)
def test_a_connection_made_while_the_service_is_down_is_served_when_it_starts(
    interface: str,
    state_dir: Path,
    notify_socket: tuple[socket.socket, str],
    tmp_path: Path,
) -> None:
    # What socket activation is for: the socket outlives the server, so a connection that
    # arrives between a stop and the next start waits in the backlog instead of being refused.
    service = load_unit(f"dualserve-{interface}.service")
    mode = unit_environment(service, state_dir)[mode_variable(interface)]
    _, address = notify_socket
    with listening_socket(load_unit(f"dualserve-{interface}.socket")) as listener:
        first = activate(interface, mode, listener, state_dir, address, tmp_path / "first")
        assert first.stop() == 0, first.tail()
        port = listener.getsockname()[1]
        with socket.create_connection((HOST, port), timeout=60.0) as client:
            request = f"GET /admin/login/ HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
            client.sendall(request.encode())
            second = activate(interface, mode, listener, state_dir, address, tmp_path / "second")
            try:
                answer = b""
                while chunk := client.recv(65536):
                    answer += chunk
            finally:
                second.stop(timeout=5.0)
        head = answer.partition(b"\r\n\r\n")[0].decode("latin-1").lower()
        assert head.startswith("http/1.1 200"), head
        assert f"\r\nx-interface: {interface}\r\n" in head + "\r\n"
