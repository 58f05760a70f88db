"""Build the images, run the compose stack on a real engine and check it as its users meet it.

Usage: python lab/docker/stack_check.py --docker CMD [--engine-pid PID]

CMD runs the Docker CLI (with the compose plugin): `docker`, or the wrapper lab/docker/run.sh
writes for the engine it brings up, whose dockerd is PID (its mount namespace holds the engine's
mounts and iptables binary). Everything is checked from outside, through the ports the stack
publishes on 127.0.0.1 (free ones, picked here) and through the engine's own reports: no
container is entered for anything but reading its PID 1's user and trying to write to its root.

Steps, each timed: `compose build`, `compose up --wait`, the checks, `compose stop`, `compose
down -v`, then what the stack left behind (nothing, or the run fails). The stack runs under its
own project name, so a user's `dualserve` stack on the same engine is left alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "compose.yaml"
README = REPO / "deploy" / "docker" / "README.md"
PROJECT = "dualserve-ci"
# The stack's /24; not compose.yaml's default, so a user's running stack cannot collide with it.
NET_PREFIX = os.environ.get("DUALSERVE_NET_PREFIX", "10.203.87")
# The published ports, by compose.yaml's variable names.
PORT_NAMES = (
    "NGINX_HYBRID_PORT",
    "NGINX_WSGI_PORT",
    "NGINX_ASGI_PORT",
    "WSGI_PORT",
    "ASGI_PORT",
    "UPSTREAM_PORT",
)
IMAGE = "dualserve:latest"
# The uv that wrote uv.lock (pyproject's required-version): `make install` puts it in .tools/.
UV_VERSION = tomllib.loads(COMPOSE_FILE.with_name("pyproject.toml").read_text(encoding="utf-8"))[
    "tool"
]["uv"]["required-version"].removeprefix("==")
APP_USER = "10001:10001"
APP_UID = 10001
NGINX_UID = 101
POSTGRES_UID = 999
# The official redis image's `redis` user (lab/docker/standins/redis keeps it).
REDIS_UID = 999
INTERFACE_HEADER = "X-Interface"
# Bounds, not benchmarks: a cold build downloads every dependency from PyPI.
BUILD_TIMEOUT = 900
UP_TIMEOUT = 240
COMMAND_TIMEOUT = 120
# An SSE stream of this shape lasts (events - 1) x interval; unbuffered, the first event
# arrives at once, buffered, all of them arrive at the end.
SSE_EVENTS = 4
SSE_INTERVAL_MS = 600
ONE_CONTAINER = f"{PROJECT}-one"


class CheckFailed(Exception):
    """A property of the stack does not hold."""


@dataclass
class Docker:
    """The Docker CLI, and compose for this project, with the stack's environment."""

    argv: list[str]
    env: dict[str, str]

    def run(
        self, *args: str, timeout: float = COMMAND_TIMEOUT, check: bool = True, stdin: str = ""
    ) -> subprocess.CompletedProcess[str]:
        """Run `docker ARGS`; on `check`, fail with its output when it exits non-zero."""
        result = subprocess.run(  # noqa: S603  (the Docker CLI the caller named, no shell)
            [*self.argv, *args],
            env=self.env,
            cwd=REPO,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise CheckFailed(
                f"docker {shlex.join(args)} exited {result.returncode}:\n"
                f"{result.stdout[-3000:]}{result.stderr[-3000:]}"
            )
        return result

    def compose(
        self, *args: str, timeout: float = COMMAND_TIMEOUT, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run `docker compose ARGS` on compose.yaml under this run's project name.

        `--env-file /dev/null`: a developer's .env next to compose.yaml must not change the run.
        """
        return self.run(
            "compose",
            "--project-name",
            PROJECT,
            "--project-directory",
            str(REPO),
            "--file",
            str(COMPOSE_FILE),
            "--env-file",
            "/dev/null",
            *args,
            timeout=timeout,
            check=check,
        )

    def lines(self, *args: str) -> list[str]:
        """Return the non-empty output lines of `docker ARGS`."""
        return [line for line in self.run(*args).stdout.splitlines() if line.strip()]


@dataclass
class Report:
    """Timings and check results, printed as they come."""

    timings: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @contextlib.contextmanager
    def timed(self, step: str) -> Iterator[None]:
        """Time `step`, also when it fails."""
        start = time.monotonic()
        try:
            yield
        finally:
            self.timings[step] = time.monotonic() - start
            print(f"docker-test: {step} took {self.timings[step]:.1f} s", flush=True)

    def check(self, name: str, function: Callable[[], str]) -> None:
        """Run one check, print its outcome, and keep going when it fails."""
        try:
            detail = function()
        except (CheckFailed, httpx.HTTPError, subprocess.TimeoutExpired) as exc:
            self.failures.append(name)
            print(f"FAIL {name}: {exc}", flush=True)
        else:
            print(f"ok   {name}: {detail}", flush=True)


def free_ports(count: int) -> list[int]:
    """Return `count` distinct ports free on 127.0.0.1 right now."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def port_is_free(port: int) -> bool:
    """Return whether nothing listens on `port` on 127.0.0.1 any more."""
    with socket.socket() as sock:
        # As a server binds: connections the stack closed may linger in TIME_WAIT on the port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def seconds(duration: str) -> float:
    """Return a Go duration as compose config prints it ("30s", "1m30s") in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"([0-9.]+)(h|ms|m|s)", duration)
    return sum(float(number) * units[unit] for number, unit in parts)


class Stack:
    """The compose stack of one run: its ports, its HTTP client and its checks."""

    def __init__(self, docker: Docker, engine_pid: int | None) -> None:
        self.docker = docker
        self.engine_pid = engine_pid
        self.ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES)), strict=True))
        self.env = {
            **docker.env,
            **{name: str(port) for name, port in self.ports.items()},
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
            "POSTGRES_PASSWORD": secrets.token_urlsafe(24),
            "DUALSERVE_NET_PREFIX": NET_PREFIX,
            "DUALSERVE_PUBLISH_HOST": "127.0.0.1",
            # buildx asks git for the commit; the engine root has no git, and it is not needed.
            "BUILDX_GIT_INFO": "false",
        }
        docker.env = self.env
        # Straight to loopback: no proxy from the environment.
        self.http = httpx.Client(timeout=10, trust_env=False)
        self.config: dict[str, Any] = {}

    def url(self, port_name: str, path: str) -> str:
        """Return the URL of `path` on a published port."""
        return f"http://127.0.0.1:{self.ports[port_name]}{path}"

    def containers(self) -> dict[str, dict[str, Any]]:
        """Return `compose ps --all` as {service: its JSON entry}."""
        output = self.docker.compose("ps", "--all", "--format", "json").stdout
        entries = [json.loads(line) for line in output.splitlines() if line.strip()]
        # Older compose versions print one JSON array instead of one object per line.
        if len(entries) == 1 and isinstance(entries[0], list):
            entries = entries[0]
        return {entry["Service"]: entry for entry in entries}

    def inspect(self, container: str) -> dict[str, Any]:
        """Return `docker inspect` of one container."""
        (info,) = json.loads(self.docker.run("inspect", container).stdout)
        assert isinstance(info, dict)
        return info

    # --- the checks ---------------------------------------------------------------------------

    def every_service_is_healthy(self) -> str:
        """Every long-running service is running and healthy; migrate exited 0."""
        containers = self.containers()
        services = set(self.config["services"])
        if set(containers) != services:
            raise CheckFailed(f"containers for {sorted(containers)}, services {sorted(services)}")
        states = {}
        for name, entry in containers.items():
            if name == "migrate":
                states[name] = f"{entry['State']} {entry.get('ExitCode')}"
                if (entry["State"], entry.get("ExitCode")) != ("exited", 0):
                    raise CheckFailed(f"migrate: {entry['State']}, exit {entry.get('ExitCode')}")
                continue
            states[name] = entry.get("Health", "")
            if (entry["State"], entry.get("Health")) != ("running", "healthy"):
                raise CheckFailed(f"{name}: {entry['State']}, health {entry.get('Health')!r}")
        return ", ".join(f"{name} {state}" for name, state in sorted(states.items()))

    def each_entry_reaches_the_interface_it_names(self) -> str:
        """nginx's three entries and the two direct ports answer from the right interface."""
        expected = [
            ("NGINX_HYBRID_PORT", "/sync/hello/", "wsgi"),
            ("NGINX_HYBRID_PORT", "/async/hello/", "asgi"),
            ("NGINX_WSGI_PORT", "/async/hello/", "wsgi"),
            ("NGINX_ASGI_PORT", "/sync/hello/", "asgi"),
            ("WSGI_PORT", "/sync/hello/", "wsgi"),
            ("ASGI_PORT", "/sync/hello/", "asgi"),
        ]
        seen = []
        for port_name, path, interface in expected:
            response = self.http.get(self.url(port_name, path))
            got = response.headers.get(INTERFACE_HEADER)
            if response.status_code != 200 or got != interface:
                raise CheckFailed(
                    f"{port_name} {path}: HTTP {response.status_code}, {INTERFACE_HEADER} {got!r}"
                    f" (expected 200, {interface!r})"
                )
            seen.append(f"{port_name} {path} -> {got}")
        upstream = self.http.get(self.url("UPSTREAM_PORT", "/"))
        if upstream.status_code != 200:
            raise CheckFailed(f"upstream: HTTP {upstream.status_code}")
        return "; ".join(seen)

    def sse_through_nginx_is_unbuffered(self) -> str:
        """The first event of each stream route arrives long before its stream ends."""
        query = f"?events={SSE_EVENTS}&interval={SSE_INTERVAL_MS}"
        stream_ms = (SSE_EVENTS - 1) * SSE_INTERVAL_MS
        results = []
        for port_name, path in (
            ("NGINX_HYBRID_PORT", "/async/stream/"),
            ("NGINX_HYBRID_PORT", "/sync/stream/"),
            ("NGINX_WSGI_PORT", "/sync/stream/"),
            ("NGINX_ASGI_PORT", "/async/stream/"),
        ):
            start = time.monotonic()
            first = None
            body = b""
            with self.http.stream("GET", self.url(port_name, path + query)) as response:
                for chunk in response.iter_raw():
                    if first is None and b"data:" in chunk:
                        first = time.monotonic() - start
                    body += chunk
            total = time.monotonic() - start
            events = body.count(b"data:")
            if response.status_code != 200 or events != SSE_EVENTS:
                raise CheckFailed(f"{path}: HTTP {response.status_code}, {events} events")
            # Unbuffered: the first event comes well before the stream's last interval begins.
            if first is None or first > (stream_ms - SSE_INTERVAL_MS) / 1000:
                raise CheckFailed(
                    f"{port_name} {path}: first event after {first} s of a {total:.2f} s stream"
                )
            results.append(f"{port_name} {path} first event {first:.2f} s of {total:.2f} s")
        return "; ".join(results)

    def static_files_come_from_nginx(self) -> str:
        """A hashed static file: from nginx (no app header), gzip, cached for a year."""
        index = self.http.get(self.url("NGINX_HYBRID_PORT", "/"))
        match = re.search(r'/static/[^"\']+\.[0-9a-f]{12}\.css', index.text)
        if index.status_code != 200 or match is None:
            raise CheckFailed(f"the index page (HTTP {index.status_code}) links no hashed CSS")
        path = match.group(0)
        response = self.http.get(
            self.url("NGINX_HYBRID_PORT", path), headers={"Accept-Encoding": "gzip"}
        )
        cache = response.headers.get("Cache-Control", "")
        encoding = response.headers.get("Content-Encoding")
        if response.status_code != 200:
            raise CheckFailed(f"{path}: HTTP {response.status_code}")
        if INTERFACE_HEADER in response.headers:
            raise CheckFailed(f"{path} came from the app, not from nginx")
        if encoding != "gzip" or "max-age=31536000" not in cache or "immutable" not in cache:
            raise CheckFailed(f"{path}: Content-Encoding {encoding!r}, Cache-Control {cache!r}")
        return f"{path}: gzip, {cache}"

    def a_write_through_wsgi_reads_back_through_asgi(self) -> str:
        """A POST through nginx to WSGI is read through nginx from ASGI, and is in PostgreSQL."""
        name = f"ci-{secrets.token_hex(4)}"
        created = self.http.post(
            self.url("NGINX_WSGI_PORT", "/sync/db/"), data={"name": name, "value": "42"}
        )
        if created.status_code != 201 or created.headers.get(INTERFACE_HEADER) != "wsgi":
            raise CheckFailed(f"POST /sync/db/: HTTP {created.status_code} {created.text[:200]}")
        item_id = created.json()["item"]["id"]
        read = self.http.get(self.url("NGINX_ASGI_PORT", f"/async/db/?id={item_id}"))
        if read.status_code != 200 or read.headers.get(INTERFACE_HEADER) != "asgi":
            raise CheckFailed(f"GET /async/db/: HTTP {read.status_code} {read.text[:200]}")
        if read.json()["item"]["name"] != name:
            raise CheckFailed(f"ASGI read {read.json()['item']}, WSGI wrote {name!r}")
        in_db = self.docker.compose(
            "exec",
            "-T",
            "db",
            "psql",
            "--username",
            "dualserve",
            "--dbname",
            "dualserve",
            "--tuples-only",
            "--no-align",
            "--command",
            f"SELECT name FROM showcase_item WHERE id = {int(item_id)}",  # noqa: S608  (an int)
        ).stdout.strip()
        if in_db != name:
            raise CheckFailed(f"PostgreSQL has {in_db!r} for item {item_id}, expected {name!r}")
        return f"item {item_id} {name!r}: written by WSGI, read by ASGI, row in PostgreSQL"

    # showcase:begin
    def an_event_published_through_wsgi_reaches_live_clients(self) -> str:
        """POST /sync/publish/ on nginx's WSGI entry; a WebSocket client on the ASGI entry and
        an SSE client on the hybrid entry both receive the event, through the redis service."""
        from websockets.sync.client import connect
        from websockets.typing import Origin

        asgi = f"127.0.0.1:{self.ports['NGINX_ASGI_PORT']}"
        publish = self.url("NGINX_WSGI_PORT", "/sync/publish/")
        live = self.url("NGINX_HYBRID_PORT", "/async/live/")
        with (
            connect(f"ws://{asgi}/ws/live/", origin=Origin(f"http://{asgi}"), proxy=None) as feed,
            httpx.Client(timeout=10, trust_env=False) as client,
            client.stream("GET", live, headers={"Accept": "text/event-stream"}) as stream,
        ):
            lines = stream.iter_lines()
            # The stream is subscribed once its first line (retry:) has come.
            if not next(lines).startswith("retry: "):
                raise CheckFailed(f"{live}: no retry: line first")
            client.get(publish)
            token = client.cookies.get("csrftoken") or ""
            answer = client.post(publish, json={"text": "compose"}, headers={"X-CSRFToken": token})
            if answer.status_code != 202:
                raise CheckFailed(f"POST {publish}: HTTP {answer.status_code} {answer.text[:200]}")
            event = answer.json()["event"]
            got_ws = json.loads(feed.recv(10))
            data = next(line for line in lines if line.startswith("data: "))
            got_sse = json.loads(data.removeprefix("data: "))
        if got_ws != event or got_sse != event:
            raise CheckFailed(f"published {event}, WebSocket got {got_ws}, SSE got {got_sse}")
        return f"event {event['id'][:8]} from {event['source']} reached both clients"

    # showcase:end

    def containers_run_unprivileged_on_read_only_roots(self) -> str:
        """Each server (PID 1) runs as its image's user, and no root filesystem is writable."""
        containers = self.containers()
        expected_uid = {"nginx": NGINX_UID, "db": POSTGRES_UID, "redis": REDIS_UID}
        results = []
        for name, entry in sorted(containers.items()):
            info = self.inspect(entry["Name"])
            if not info["HostConfig"]["ReadonlyRootfs"]:
                raise CheckFailed(f"{name}: the root filesystem is writable")
            if name == "migrate":
                if info["Config"]["User"] != APP_USER:
                    raise CheckFailed(f"migrate ran as {info['Config']['User']!r}")
                continue
            status = self.docker.compose("exec", "-T", name, "cat", "/proc/1/status").stdout
            uid = int(re.search(r"^Uid:\s+(\d+)", status, re.MULTILINE).group(1))  # type: ignore[union-attr]
            if uid != expected_uid.get(name, APP_UID):
                raise CheckFailed(f"{name}: PID 1 runs as uid {uid}")
            # A write to the root filesystem: refused even where the user could write.
            probe = self.docker.compose(
                "exec", "-T", "--user", "0", name, "touch", "/probe", check=False
            )
            if probe.returncode == 0 or "Read-only file system" not in probe.stderr:
                raise CheckFailed(f"{name}: writing /probe as root gave {probe.stderr!r}")
            results.append(f"{name} uid {uid}")
        return ", ".join(results) + "; every root read-only"

    def the_documented_one_container_command_works(self) -> str:
        """deploy/docker/README.md's `docker run --read-only ... DJANGO_MIGRATE=true` serves."""
        argv = readme_run_command()
        port = free_ports(1)[0]
        run = []
        for arg in argv[1:]:
            if re.fullmatch(r"127\.0\.0\.1:\d+:(\d+)", arg):
                arg = re.sub(r"^127\.0\.0\.1:\d+:", f"127.0.0.1:{port}:", arg)
            elif arg == "DJANGO_SECRET_KEY=...":
                arg = f"DJANGO_SECRET_KEY={self.env['DJANGO_SECRET_KEY']}"
            # Kept until its exit status is read; removed (with its volume) afterwards.
            if arg != "--rm":
                run.append(arg)
        if argv[:2] != ["docker", "run"] or run[-1] != "dualserve":
            raise CheckFailed(f"unexpected command in the README: {shlex.join(argv)}")
        # The image compose built under its own name.
        self.docker.run("run", "--detach", "--name", ONE_CONTAINER, *run[1:-1], "dualserve:latest")
        try:
            deadline = time.monotonic() + 90
            status = 0
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.TransportError):
                    response = self.http.get(f"http://127.0.0.1:{port}/readyz")
                    status = response.status_code
                    if status == 200:
                        break
                if self.inspect(ONE_CONTAINER)["State"]["Status"] != "running":
                    break
                time.sleep(0.5)
            if status != 200:
                logs = self.docker.run("logs", "--tail", "30", ONE_CONTAINER, check=False)
                raise CheckFailed(f"/readyz answered {status}:\n{logs.stdout}{logs.stderr}")
            hello = self.http.get(f"http://127.0.0.1:{port}/sync/hello/")
            interface = hello.headers.get(INTERFACE_HEADER)
            if hello.status_code != 200 or interface != "asgi":
                raise CheckFailed(f"/sync/hello/: HTTP {hello.status_code}, {interface!r}")
            self.docker.run("stop", ONE_CONTAINER)
            exit_code = self.inspect(ONE_CONTAINER)["State"]["ExitCode"]
            if exit_code != 0:
                raise CheckFailed(f"the container exited {exit_code} on docker stop")
        finally:
            self.docker.run("rm", "--force", "--volumes", ONE_CONTAINER, check=False)
        return "migrated into its /app/var volume, served ASGI on a read-only root, exit 0 on stop"

    def the_image_holds_only_the_runtime(self) -> str:
        """The app image's venv holds exactly the lock's runtime packages; /app has no tooling."""
        script = (
            "import importlib.metadata as m, json, os, platform; print(json.dumps("
            "[sorted(d.metadata['Name'] for d in m.distributions()), sorted(os.listdir('/app')),"
            " platform.python_version()]))"
        )
        run = self.docker.run("run", "--rm", "--entrypoint", "python", IMAGE, "-c", script)
        installed, listed, image_python = json.loads(run.stdout)
        # What `uv sync --locked --no-default-groups` installs: the lock without dev and lab.
        uv = REPO / ".tools" / f"uv-{UV_VERSION}" / "bin" / "uv"
        export = ["export", "--frozen", "--no-default-groups", "--no-emit-project", "--no-hashes"]
        exported = subprocess.run(  # noqa: S603  (the pinned uv, fixed arguments)
            [str(uv), *export, "--format", "requirements-txt", "--quiet"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            timeout=COMMAND_TIMEOUT,
        ).stdout
        # Each line `name==version ; marker`, evaluated for the image's Python: some markers
        # name a patch release (redis needs async-timeout below 3.11.3), where a stand-in's
        # Python differs from the host's. Platform and implementation: the host's, Linux CPython.
        versions = {
            "python_full_version": image_python,
            "python_version": ".".join(image_python.split(".")[:2]),
        }
        expected = {
            package_name(requirement.name)
            for line in exported.splitlines()
            if line and not line.startswith(("#", " "))
            for requirement in [Requirement(line)]
            if requirement.marker is None or requirement.marker.evaluate(versions)
        }
        found = {package_name(name) for name in installed}
        if found != expected:
            raise CheckFailed(
                f"image packages differ from the lock's runtime: extra {sorted(found - expected)},"
                f" missing {sorted(expected - found)}"
            )
        tooling = sorted(set(listed) & {"lab", "tests", "docs", ".tools", "Makefile", "uv.lock"})
        if tooling:
            raise CheckFailed(f"/app holds tooling: {tooling}")
        return f"{len(found)} packages, the lock's runtime set; /app: {' '.join(listed)}"

    # --- stop and down ----------------------------------------------------------------------

    def stop(self, report: Report) -> None:
        """`compose stop`: each container ends within its grace period, with exit status 0."""
        grace = {
            name: seconds(str(service.get("stop_grace_period", "10s")))
            for name, service in self.config["services"].items()
        }
        names = {entry["Name"]: name for name, entry in self.containers().items()}
        since = time.time()
        with report.timed("stop"):
            self.docker.compose("stop", timeout=max(grace.values()) * len(grace) + 30)
        until = time.time() + 1
        events = [
            json.loads(line)
            for line in self.docker.lines(
                "events",
                "--since",
                f"{since:.3f}",
                "--until",
                f"{until:.3f}",
                "--filter",
                "type=container",
                "--filter",
                f"label=com.docker.compose.project={PROJECT}",
                "--format",
                "{{json .}}",
            )
        ]

        def stopping() -> str:
            signalled: dict[str, float] = {}
            died: dict[str, tuple[float, str]] = {}
            for event in events:
                container = event["Actor"]["Attributes"].get("name", "")
                at = event["timeNano"] / 1e9
                if event["Action"] == "kill":
                    signalled.setdefault(container, at)
                elif event["Action"] == "die":
                    died[container] = (at, event["Actor"]["Attributes"].get("exitCode", "?"))
            results = []
            for container, service in sorted(names.items(), key=lambda item: item[1]):
                if service == "migrate":
                    continue
                if container not in signalled or container not in died:
                    raise CheckFailed(
                        f"{service}: no stop signal or no exit in the engine's events"
                    )
                took = died[container][0] - signalled[container]
                code = died[container][1]
                if code != "0" or took >= grace[service]:
                    raise CheckFailed(
                        f"{service}: exit {code} after {took:.1f} s (grace {grace[service]:.0f} s)"
                    )
                results.append(f"{service} {took:.1f} s")
            return "exit 0 within the grace period: " + ", ".join(results)

        report.check("compose stop ends every container cleanly", stopping)

    def down(self, report: Report, volumes_before: set[str]) -> None:
        """`compose down -v`, then nothing of the stack is left on the engine or the machine."""
        with report.timed("down"):
            self.docker.compose("down", "--volumes", "--remove-orphans")
        report.check("nothing is left behind", lambda: self.leftovers(volumes_before))

    def leftovers(self, volumes_before: set[str]) -> str:
        """Return what was checked; fail on any container, network, volume, mount, rule, port."""
        label = f"label=com.docker.compose.project={PROJECT}"
        left = {
            "containers": self.docker.lines("ps", "--all", "--quiet", "--filter", label),
            "networks": self.docker.lines("network", "ls", "--quiet", "--filter", label),
            "volumes": sorted(set(self.docker.lines("volume", "ls", "--quiet")) - volumes_before),
            "ports": [str(p) for p in self.ports.values() if not port_is_free(p)],
        }
        checked = ["containers", "networks", "volumes", "ports"]
        if shutil.which("ip"):
            # The network's bridge on this machine (a stale one would shadow the next run's).
            addresses = subprocess.run(
                ["ip", "-o", "-4", "addr", "show"],  # noqa: S607
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout
            left["bridges"] = [
                line.split()[1] for line in addresses.splitlines() if f" {NET_PREFIX}." in line
            ]
            checked.append("bridges")
        if self.engine_pid is not None:
            mountinfo = Path(f"/proc/{self.engine_pid}/mountinfo").read_text()
            left["mounts"] = [
                line.split()[4]
                for line in mountinfo.splitlines()
                if "/var/lib/docker/" in line.split()[4] or "/run/docker/netns/" in line
            ]
            # The engine's own iptables binary, from inside its namespace.
            save = ["nsenter", f"--target={self.engine_pid}", "--mount", "--root", "iptables-save"]
            rules = subprocess.run(  # noqa: S603  (a fixed argv, no shell)
                save,
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout
            ports = "|".join(str(p) for p in self.ports.values())
            left["iptables rules"] = [
                line
                for line in rules.splitlines()
                if NET_PREFIX in line or re.search(rf"\b({ports})\b", line)
            ]
            checked += ["mounts", "iptables rules"]
        found = {kind: items for kind, items in left.items() if items}
        if found:
            raise CheckFailed(f"left behind: {found}")
        return "no " + ", ".join(checked)


def readme_run_command() -> list[str]:
    """Return the `docker run` command of the README's one-container section, as words."""
    text = README.read_text(encoding="utf-8")
    match = re.search(r"^docker run .*?[^\\]$", text, re.MULTILINE | re.DOTALL)
    if match is None:
        raise CheckFailed(f"no `docker run` command in {README}")
    return shlex.split(match.group(0).replace("\\\n", " "))


def package_name(name: str) -> str:
    """Return a distribution name normalised as PyPI compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def images(docker: Docker) -> dict[str, str]:
    """Return {repository:tag: image ID} of the engine's tagged images."""
    listed = docker.lines("images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}")
    return dict(line.split() for line in listed if not line.startswith("<none>"))


def main(argv: list[str] | None = None) -> int:
    """Run the whole check; return 0 when every check passed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docker", default="docker", help="the command that runs the Docker CLI")
    parser.add_argument("--engine-pid", type=int, help="dockerd's PID, when run.sh started it")
    args = parser.parse_args(argv)

    docker = Docker(shlex.split(args.docker), dict(os.environ))
    stack = Stack(docker, args.engine_pid)
    report = Report()
    stack.config = json.loads(stack.docker.compose("config", "--format", "json").stdout)
    ports = ", ".join(f"{name}={port}" for name, port in stack.ports.items())
    print(f"docker-test: project {PROJECT}, ports on 127.0.0.1: {ports}", flush=True)
    volumes_before = set(docker.lines("volume", "ls", "--quiet"))
    tagged_before = images(docker)
    dangling_before = set(docker.lines("images", "--quiet", "--filter", "dangling=true"))
    downed = False
    try:
        with report.timed("build"):
            output = stack.docker.compose("build", timeout=BUILD_TIMEOUT)
        built = stack.docker.compose("config", "--images").stdout.split()

        def built_once() -> str:
            # Each image built once: a second build of one tag would leave the first dangling
            # (only a previous run's image, replaced now, may have become dangling).
            dangling = set(docker.lines("images", "--quiet", "--filter", "dangling=true"))
            replaced = {i for i in tagged_before.values() if i not in images(docker).values()}
            new = dangling - dangling_before - {i[:12] for i in replaced} - replaced
            tags = images(docker)
            missing = [
                name for name in ("dualserve:latest", "dualserve-nginx:latest") if name not in tags
            ]
            if new or missing:
                raise CheckFailed(f"dangling after the build: {sorted(new)}; missing {missing}")
            return f"{len(set(built))} images for {len(built)} services, no dangling image"

        report.check("compose build builds each image once", built_once)
        del output
        with report.timed("up"):
            up = stack.docker.compose(
                "up",
                "--detach",
                "--wait",
                "--wait-timeout",
                str(UP_TIMEOUT),
                timeout=UP_TIMEOUT + 60,
                check=False,
            )
        if up.returncode != 0:
            print(up.stdout[-3000:] + up.stderr[-3000:], file=sys.stderr)
            print(stack.docker.compose("ps", "--all", check=False).stdout, file=sys.stderr)
            logs = stack.docker.compose("logs", "--tail", "40", check=False)
            print(logs.stdout[-6000:], file=sys.stderr)
            raise CheckFailed(f"compose up --wait exited {up.returncode}")
        with report.timed("checks"):
            report.check("every service is healthy", stack.every_service_is_healthy)
            report.check(
                "each entry reaches the interface it names",
                stack.each_entry_reaches_the_interface_it_names,
            )
            report.check("SSE through nginx is unbuffered", stack.sse_through_nginx_is_unbuffered)
            report.check("static files come from nginx", stack.static_files_come_from_nginx)
            report.check(
                "a write through WSGI reads back through ASGI",
                stack.a_write_through_wsgi_reads_back_through_asgi,
            )
            # showcase:begin
            report.check(
                "an event published through WSGI reaches live clients",
                stack.an_event_published_through_wsgi_reaches_live_clients,
            )
            # showcase:end
            report.check(
                "containers run unprivileged on read-only roots",
                stack.containers_run_unprivileged_on_read_only_roots,
            )
            report.check("the image holds only the runtime", stack.the_image_holds_only_the_runtime)
            report.check(
                "the README's one-container command works",
                stack.the_documented_one_container_command_works,
            )
        stack.stop(report)
        stack.down(report, volumes_before)
        downed = True
    except CheckFailed as exc:
        report.failures.append(str(exc).splitlines()[0])
        print(f"FAIL {exc}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        report.failures.append("interrupted")
        print("docker-test: interrupted: taking the stack down", file=sys.stderr, flush=True)
    finally:
        if not downed:
            # Failure or Ctrl-C: leave nothing running, whatever state the stack is in.
            docker.run("rm", "--force", "--volumes", ONE_CONTAINER, check=False, timeout=60)
            stack.docker.compose(
                "down",
                "--volumes",
                "--remove-orphans",
                "--timeout",
                "10",
                check=False,
                timeout=180,
            )
        stack.http.close()
    steps = ", ".join(f"{step} {took:.1f} s" for step, took in report.timings.items())
    print(f"docker-test: timings: {steps}", flush=True)
    if report.failures:
        print(f"docker-test: FAILED: {'; '.join(report.failures)}", flush=True)
        return 1
    print("docker-test: every check passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
