"""nginx in front: the rendered configs pass `nginx -t`, and real nginx in front of real servers
routes, streams, serves static files and overwrites the forwarded headers."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from deploy import nginx
from lab import servers, template
from lab.stack import (
    ENTRIES,
    ENTRY_PORT_NAMES,
    Stack,
    start_nginx,
    start_stack,
)
from tests.support import require_nginx

# Every serving mode runs behind nginx in one of the two stacks.
MODE_PAIRS = [("wsgi_gthread", "asgi_uvicorn"), ("wsgi_sync", "asgi_gunicorn")]
# The stack's servers answer tests.serving's views, with or without the showcase.
SERVING_SETTINGS = {"DJANGO_SETTINGS_MODULE": "tests.serving.settings"}
FORGED_CLIENT_IP = "203.0.113.9"
NGINX_REQUEST_ID = re.compile(r"[0-9a-f]{32}")


def write_config(directory: Path, target: nginx.Target, env: dict[str, str]) -> Path:
    """Render the config for `target` into `directory`/nginx.conf and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "nginx.conf"
    config.write_text(nginx.render(target, env), encoding="utf-8")
    return config


def nginx_ports() -> dict[str, str]:
    """Return three free ports for the nginx entries, as environment values."""
    names = ENTRY_PORT_NAMES.values()
    return {
        name: str(port) for name, port in zip(names, servers.free_ports(len(names)), strict=True)
    }


def raw_exchange(port: int, request: bytes, timeout: float = 15.0) -> bytes:
    """Send raw bytes to 127.0.0.1:`port`; return all that comes back before the server closes."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        while chunk := sock.recv(65536):
            received += chunk
    return received


def server_routes(text: str, port: int) -> dict[str, str]:
    """Return each location of the server block listening on `port` (not the catch-all default
    server) and where it sends requests: an upstream, `$hybrid_backend`, or "" (served here)."""
    for block in text.split("\n    server {\n")[1:]:
        body = block.split("\n    }\n", 1)[0]
        if re.search(rf"^        listen \S+:{port};$", body, re.MULTILINE):
            locations = re.findall(
                r"^        location (\S+) \{\n(.*?)^        \}", body, re.M | re.S
            )
            return {
                path: next(iter(re.findall(r"proxy_pass http://(\S+);", inside)), "")
                for path, inside in locations
            }
    raise AssertionError(f"no server listens on port {port}")


def without_the_showcase(directory: Path) -> ModuleType:
    """Return deploy.nginx as a project generated without the showcase has it: this module and
    its template with every showcase block stripped (lab.template's own stripping), loaded from
    `directory`, where the module finds its template."""
    for relative in ("deploy/nginx.py", "nginx/nginx.conf.template"):
        text = (nginx.BASE_DIR / relative).read_text(encoding="utf-8")
        stripped = directory / relative
        stripped.parent.mkdir(parents=True, exist_ok=True)
        stripped.write_text(template.strip_blocks(text, relative), encoding="utf-8")
    spec = importlib.util.spec_from_file_location(
        "generated_deploy_nginx", directory / "deploy" / "nginx.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- The rendered configs ------------------------------------------------------------------------


def test_local_config_passes_nginx_t(tmp_path: Path) -> None:
    binary = require_nginx()
    config = write_config(tmp_path, "local", {"NGINX_RUN_DIR": str(tmp_path)})
    checked = nginx.check(binary, config)
    assert checked.returncode == 0, checked.stderr


def test_docker_config_passes_nginx_t_with_its_services_on_loopback(tmp_path: Path) -> None:
    """nginx resolves upstream names when it loads a config, and no `wsgi`/`asgi` host exists
    outside compose: point them at loopback and prove that is the only change."""
    binary = require_nginx()
    as_shipped = nginx.render("docker", {}).splitlines()
    overrides = {"WSGI_UPSTREAM": "127.0.0.1:8001", "ASGI_UPSTREAM": "127.0.0.1:8002"}
    config = write_config(tmp_path, "docker", overrides)
    resolvable = config.read_text(encoding="utf-8").splitlines()

    changed = [(a, b) for a, b in zip(as_shipped, resolvable, strict=True) if a != b]
    assert [(a.strip(), b.strip()) for a, b in changed] == [
        ("server wsgi:8001;", "server 127.0.0.1:8001;"),
        ("server asgi:8002;", "server 127.0.0.1:8002;"),
    ]
    checked = nginx.check(binary, config)
    assert checked.returncode == 0, checked.stderr


def test_docker_config_listens_everywhere_and_keeps_state_in_tmp() -> None:
    text = nginx.render("docker", {"DJANGO_STATIC_ROOT": "/app/static"})
    assert "listen 0.0.0.0:8000 default_server;" in text
    assert "pid /tmp/nginx.pid;" in text
    assert "alias /app/static/;" in text
    assert "access_log /dev/stdout dualserve;" in text
    # The image runs nginx as a non-root user: a `user` line would only draw a warning.
    assert not re.search(r"^user ", text, re.MULTILINE)


def test_local_config_defaults_to_loopback_and_the_documented_ports() -> None:
    text = nginx.render("local", {"NGINX_USER": "nobody"})
    for port in (8000, 8080, 8081):
        assert f"listen 127.0.0.1:{port};" in text
    assert "server 127.0.0.1:8001;" in text
    assert "server 127.0.0.1:8002;" in text
    assert "keepalive_timeout 60s;" in text


def test_server_names_follow_allowed_hosts() -> None:
    text = nginx.render("local", {"DJANGO_ALLOWED_HOSTS": "example.com,.example.org,[::1]"})
    assert text.count("server_name example.com .example.org [::1];") == 3


def test_user_directive_names_the_static_files_owner_under_root(tmp_path: Path) -> None:
    text = nginx.render("local", {"DJANGO_STATIC_ROOT": str(tmp_path / "static")})
    if os.geteuid() == 0:
        user, group = nginx.owner_of(str(tmp_path))
        assert f"\nuser {user} {group};\n" in text
    else:
        assert not re.search(r"^user ", text, re.MULTILINE)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"NGINX_HYBRID_PORT": "80a"}, "NGINX_HYBRID_PORT='80a' is not a port number"),
        ({"WSGI_PORT": "70000"}, "WSGI_PORT='70000' is not a port number"),
        ({"NGINX_WSGI_PORT": "8000"}, "must differ"),
        ({"DJANGO_ALLOWED_HOSTS": "*"}, "list the host names"),
        ({"NGINX_SERVER_NAMES": "a.example; include /etc/passwd"}, "NGINX_SERVER_NAMES="),
        ({"WSGI_UPSTREAM": "wsgi:8001; }"}, "WSGI_UPSTREAM="),
        ({"DJANGO_STATIC_ROOT": "relative/static"}, "DJANGO_STATIC_ROOT="),
        ({"DJANGO_STATIC_ROOT": "/srv/my static"}, "DJANGO_STATIC_ROOT="),
        ({"NGINX_CLIENT_HEADER_TIMEOUT": "soon"}, "NGINX_CLIENT_HEADER_TIMEOUT="),
        ({"NGINX_USER": "www-data; daemon on"}, "NGINX_USER="),
        # Each prefix becomes `location <prefix> {`: nothing nginx would read as syntax.
        ({"NGINX_ASGI_PREFIXES": "/a/;"}, "NGINX_ASGI_PREFIXES: '/a/;' is not a path prefix"),
        ({"NGINX_ASGI_PREFIXES": "/a/ {"}, "NGINX_ASGI_PREFIXES: '/a/ {' is not a path prefix"),
        ({"NGINX_ASGI_PREFIXES": "/my blog/"}, "'/my blog/' is not a path prefix"),
        ({"NGINX_ASGI_PREFIXES": "blog/"}, "'blog/' is not a path prefix"),
        ({"NGINX_ASGI_PREFIXES": "/blog"}, "'/blog' is not a path prefix"),
        ({"NGINX_ASGI_PREFIXES": "/blog/,/$uri/"}, "'/$uri/' is not a path prefix"),
        ({"NGINX_ASGI_PREFIXES": "/a/#/"}, "'/a/#/' is not a path prefix"),
        ({"NGINX_ASGI_PREFIXES": "/a//b/"}, "'/a//b/' is not a path prefix"),
        ({"NGINX_ASGI_PREFIXES": "/a/../b/"}, "'/a/../b/' is not a path prefix"),
        ({"NGINX_ASGI_PREFIXES": "/"}, "'/' would send every path to ASGI"),
        ({"NGINX_ASGI_PREFIXES": "/static/"}, "'/static/' cannot be listed: nginx serves"),
    ],
)
def test_render_refuses_bad_values_naming_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(nginx.ConfigError, match=re.escape(message)):
        nginx.render("local", env)


def test_asgi_prefixes_become_hybrid_locations_to_asgi(tmp_path: Path) -> None:
    binary = require_nginx()
    env = {
        "NGINX_RUN_DIR": str(tmp_path),
        # Spaces around items, a repeat and an empty item are tolerated.
        "NGINX_ASGI_PREFIXES": " /blog/, /api/live/,,/blog/,/v1.0/~me/",
    }
    config = write_config(tmp_path, "local", env)
    text = config.read_text(encoding="utf-8")
    hybrid = server_routes(text, 8000)
    for prefix in ("/blog/", "/api/live/", "/v1.0/~me/"):
        assert hybrid[prefix] == "asgi"
    assert hybrid["/"] == "$hybrid_backend"
    assert text.count("location /blog/ {") == 1
    # Only the hybrid entry routes by prefix: the others send everything to their server.
    assert server_routes(text, 8080) == {"/static/": "", "/": "wsgi"}
    assert server_routes(text, 8081) == {"/static/": "", "/": "asgi"}
    checked = nginx.check(binary, config)
    assert checked.returncode == 0, checked.stderr


def test_without_the_showcase_the_hybrid_entry_routes_no_prefix(tmp_path: Path) -> None:
    """A generated project loses the showcase's blocks: its default list is empty, and the
    hybrid entry keeps only the Accept rule (`location /`) besides the static files."""
    binary = require_nginx()
    generated = without_the_showcase(tmp_path / "project")
    assert generated.ASGI_PREFIX_DEFAULTS == ()
    env = {"NGINX_RUN_DIR": str(tmp_path)}
    config = tmp_path / "nginx.conf"
    config.write_text(generated.render("local", env), encoding="utf-8")
    text = config.read_text(encoding="utf-8")
    assert server_routes(text, 8000) == {"/static/": "", "/": "$hybrid_backend"}
    assert "showcase:" not in text
    checked = nginx.check(binary, config)
    assert checked.returncode == 0, checked.stderr
    # Listing a prefix still works there.
    listed = generated.render("local", {**env, "NGINX_ASGI_PREFIXES": "/blog/"})
    assert server_routes(listed, 8000)["/blog/"] == "asgi"


def test_cli_writes_the_config_and_reports_bad_values(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "nginx.conf"
    command = [sys.executable, "-m", "deploy.nginx", "--target", "docker", "--out", str(out)]
    env = {**os.environ, "NGINX_ASGI_PORT": "9081"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "listen 0.0.0.0:9081;" in out.read_text(encoding="utf-8")

    env["NGINX_ASGI_PORT"] = "port"
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "NGINX_ASGI_PORT='port' is not a port number" in done.stderr


# --- The proxy contract, seen by an upstream that echoes what it receives -------------------------


class EchoHandler(http.server.BaseHTTPRequestHandler):
    """Answer every request with what arrived: request line, headers, body digest, peer port."""

    protocol_version = "HTTP/1.1"

    def echo(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        payload = json.dumps(
            {
                "request_line": self.requestline,
                "headers": [[name.lower(), value] for name, value in self.headers.items()],
                "peer_port": self.client_address[1],
                "size": len(body),
                "sha256": hashlib.sha256(body).hexdigest(),
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = echo
    do_POST = echo

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output quiet."""


class EchoServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False


@dataclass
class EchoProxy:
    """nginx whose WSGI and ASGI upstreams are both one echo server."""

    ports: dict[str, int]

    def url(self, entry: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[entry]}{path}"


@contextlib.contextmanager
def running_echo_proxy(directory: Path, **extra: str) -> Iterator[EchoProxy]:
    """Run nginx in front of an echo server, with `extra` deploy.nginx values."""
    binary = require_nginx()
    echo = EchoServer(("127.0.0.1", 0), EchoHandler)
    thread = threading.Thread(target=echo.serve_forever, name="echo-upstream", daemon=True)
    thread.start()
    upstream = f"127.0.0.1:{echo.server_address[1]}"
    ports = nginx_ports()
    env = {**ports, "WSGI_UPSTREAM": upstream, "ASGI_UPSTREAM": upstream, **extra}
    env["NGINX_RUN_DIR"] = str(directory)
    try:
        config = write_config(directory, "local", env)
        proxy = start_nginx(binary, config, int(ports["NGINX_HYBRID_PORT"]))
        try:
            yield EchoProxy({entry: int(ports[name]) for entry, name in ENTRY_PORT_NAMES.items()})
        finally:
            proxy.stop(timeout=10)
    finally:
        echo.shutdown()
        echo.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def echo_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EchoProxy]:
    with running_echo_proxy(tmp_path_factory.mktemp("echo-nginx")) as proxy:
        yield proxy


def echoed(response: httpx.Response) -> dict[str, Any]:
    """Return the echo server's report, headers as a name -> list of values mapping."""
    assert response.status_code == 200, response.text
    report: dict[str, Any] = response.json()
    headers: dict[str, list[str]] = {}
    for name, value in report["headers"]:
        headers.setdefault(name, []).append(value)
    report["headers"] = headers
    return report


@pytest.mark.serving
@pytest.mark.parametrize("entry", ENTRIES)
def test_forwarded_headers_are_nginx_own_whatever_the_client_sends(
    echo_proxy: EchoProxy, entry: str
) -> None:
    forged = {
        "X-Forwarded-For": FORGED_CLIENT_IP,
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Port": "443",
        "X-Forwarded-Ssl": "on",
        "X-Forwarded-Protocol": "ssl",
        "Forwarded": f"for={FORGED_CLIENT_IP};proto=https",
        "X-Real-IP": FORGED_CLIENT_IP,
        "X-Request-ID": "chosen-by-the-client",
        "X_Forwarded_Proto": "https",
    }
    report = echoed(httpx.get(echo_proxy.url(entry, "/anything/"), headers=forged))
    headers = report["headers"]
    port = str(echo_proxy.ports[entry])

    assert headers["x-forwarded-for"] == ["127.0.0.1"]
    assert headers["x-real-ip"] == ["127.0.0.1"]
    assert headers["x-forwarded-proto"] == ["http"]
    assert headers["x-forwarded-host"] == [f"127.0.0.1:{port}"]
    assert headers["x-forwarded-port"] == [port]
    assert headers["host"] == [f"127.0.0.1:{port}"]
    assert len(headers["x-request-id"]) == 1
    assert NGINX_REQUEST_ID.fullmatch(headers["x-request-id"][0])
    for dropped in ("x-forwarded-ssl", "x-forwarded-protocol", "forwarded", "x_forwarded_proto"):
        assert dropped not in headers


@pytest.mark.serving
def test_a_trusted_proxy_in_front_passes_on_the_client_address_and_scheme(
    tmp_path: Path,
) -> None:
    claims = {"X-Forwarded-For": f"198.51.100.7, {FORGED_CLIENT_IP}", "X-Forwarded-Proto": "https"}
    with running_echo_proxy(tmp_path, NGINX_TRUSTED_PROXIES="127.0.0.1") as proxy:
        url = proxy.url("hybrid", "/anything/")
        # From the trusted address (the load balancer): its view of the client and scheme.
        trusted = echoed(httpx.get(url, headers=claims))["headers"]
        # From any other address (127.0.0.2 is loopback too): nginx's own view, as before.
        transport = httpx.HTTPTransport(local_address="127.0.0.2")
        with httpx.Client(transport=transport) as client:
            other = echoed(client.get(url, headers=claims))["headers"]
    # real_ip_recursive: the rightmost address not itself trusted is the client.
    assert trusted["x-forwarded-for"] == [FORGED_CLIENT_IP]
    assert trusted["x-real-ip"] == [FORGED_CLIENT_IP]
    assert trusted["x-forwarded-proto"] == ["https"]
    assert other["x-forwarded-for"] == ["127.0.0.2"]
    assert other["x-forwarded-proto"] == ["http"]


def test_trusted_proxies_are_rendered_only_when_set() -> None:
    base = {"NGINX_RUN_DIR": "/tmp/dualserve-nginx"}
    assert "set_real_ip_from" not in nginx.render("local", base)
    text = nginx.render("local", {**base, "NGINX_TRUSTED_PROXIES": "10.0.0.0/8, 192.0.2.1"})
    assert "set_real_ip_from 10.0.0.0/8;" in text
    assert "set_real_ip_from 192.0.2.1/32;" in text
    with pytest.raises(nginx.ConfigError, match=r"NGINX_TRUSTED_PROXIES: 'lb\.example'"):
        nginx.render("local", {**base, "NGINX_TRUSTED_PROXIES": "lb.example"})


@pytest.mark.serving
@pytest.mark.parametrize("entry", ENTRIES)
def test_upstream_connections_are_kept_alive_over_http11(echo_proxy: EchoProxy, entry: str) -> None:
    """Also through the hybrid entry's `proxy_pass http://$hybrid_backend`: a variable naming
    an upstream block keeps that block's keepalive pool."""
    # One client connection, so one nginx worker (each worker keeps its own upstream pool).
    with httpx.Client() as client:
        reports = [echoed(client.get(echo_proxy.url(entry, f"/n/{n}/"))) for n in range(3)]
    assert {report["request_line"].rsplit(" ", 1)[1] for report in reports} == {"HTTP/1.1"}
    # One upstream connection served all three: nginx's keepalive pool, not one per request.
    assert len({report["peer_port"] for report in reports}) == 1
    # proxy_set_header Connection "": no "close" that would end the upstream connection.
    assert all("connection" not in report["headers"] for report in reports)


@pytest.mark.serving
def test_chunked_body_reaches_upstream_whole_with_a_content_length(echo_proxy: EchoProxy) -> None:
    body = os.urandom(3 * 1024 * 1024)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 256 * 1024):
            yield body[start : start + 256 * 1024]

    response = httpx.post(echo_proxy.url("wsgi", "/upload/"), content=chunks(), timeout=60)
    report = echoed(response)
    assert report["headers"]["content-length"] == [str(len(body))]
    assert "transfer-encoding" not in report["headers"]
    assert (report["size"], report["sha256"]) == (len(body), hashlib.sha256(body).hexdigest())


# --- Real servers behind nginx --------------------------------------------------------------------


@pytest.fixture(scope="module", params=MODE_PAIRS, ids="+".join)
def stack(
    request: pytest.FixtureRequest, var_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    require_nginx()
    wsgi_mode, asgi_mode = request.param
    with start_stack(
        wsgi_mode,
        asgi_mode,
        var_dir,
        tmp_path_factory.mktemp("stack"),
        server_env=SERVING_SETTINGS,
        nginx_env={
            # Short, so the slow-client test ends quickly.
            "NGINX_CLIENT_HEADER_TIMEOUT": "2s",
            # Listed, not the default: the default has /async/ only with the showcase.
            "NGINX_ASGI_PREFIXES": "/async/",
        },
    ) as running:
        yield running


@pytest.mark.serving
@pytest.mark.parametrize("entry", ["wsgi", "asgi"])
@pytest.mark.parametrize("path", ["/", "/sync/hello/", "/async/hello/", "/sync/json/"])
def test_single_interface_entries_send_everything_to_their_server(
    stack: Stack, entry: str, path: str
) -> None:
    response = httpx.get(stack.url(entry, path))
    assert response.status_code == 200, response.text
    assert response.headers["x-interface"] == entry


@pytest.mark.serving
@pytest.mark.parametrize(
    ("path", "accept", "interface"),
    [
        ("/async/hello/", "*/*", "asgi"),
        ("/async/stream/?events=1&interval=0", "text/event-stream", "asgi"),
        ("/sync/hello/", "*/*", "wsgi"),
        # showcase:begin
        # The showcase's sync stream stays on WSGI with the sync views, despite its Accept
        # header (deploy.nginx's HYBRID_OWN_PREFIXES).
        ("/sync/stream/?events=1&interval=0", "text/event-stream", "wsgi"),
        # showcase:end
        ("/", "text/html", "wsgi"),
        ("/", "text/event-stream", "asgi"),
    ],
)
def test_hybrid_sends_waiting_and_streams_to_asgi_and_the_rest_to_wsgi(
    stack: Stack, path: str, accept: str, interface: str
) -> None:
    response = httpx.get(stack.url("hybrid", path), headers={"Accept": accept})
    assert response.status_code == 200, response.text
    assert response.headers["x-interface"] == interface


@contextlib.contextmanager
def another_front(
    stack: Stack,
    directory: Path,
    render: Callable[[nginx.Target, Mapping[str, str]], str] = nginx.render,
    **extra: str,
) -> Iterator[int]:
    """Run a second nginx in front of the stack's servers, its config from `render` with
    `extra` values; yield its hybrid port."""
    binary = require_nginx()
    ports = nginx_ports()
    env = {
        **ports,
        "WSGI_UPSTREAM": f"127.0.0.1:{stack.wsgi.port}",
        "ASGI_UPSTREAM": f"127.0.0.1:{stack.asgi.port}",
        "DJANGO_VAR_DIR": str(stack.var_dir),
        "NGINX_RUN_DIR": str(directory),
        **extra,
    }
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "nginx.conf"
    config.write_text(render("local", env), encoding="utf-8")
    hybrid_port = int(ports["NGINX_HYBRID_PORT"])
    proxy = start_nginx(binary, config, hybrid_port)
    try:
        yield hybrid_port
    finally:
        proxy.stop(timeout=10)


def interfaces(port: int, requests: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """Return which server answered each (path, Accept) request on 127.0.0.1:`port`."""
    answered = {}
    for path, accept in requests:
        response = httpx.get(f"http://127.0.0.1:{port}{path}", headers={"Accept": accept})
        # A 404 too: Django's answer carries X-Interface whether or not a view matched.
        answered[path, accept] = response.headers.get("x-interface", str(response.status_code))
    return answered


@pytest.mark.serving
def test_hybrid_sends_the_listed_prefixes_to_asgi_and_the_rest_to_wsgi(
    stack: Stack, tmp_path: Path
) -> None:
    """A project's own async views: listed, they reach ASGI; the list replaces the default."""
    expected = {
        ("/blog/1/", "text/html"): "asgi",
        ("/api/live/scores/", "*/*"): "asgi",
        ("/api/other/", "*/*"): "wsgi",
        # A prefix is a path prefix, not a string prefix.
        ("/blogroll/", "text/html"): "wsgi",
        ("/async/hello/", "*/*"): "wsgi",
        ("/no/such/page/", "text/event-stream"): "asgi",
    }
    with another_front(stack, tmp_path, NGINX_ASGI_PREFIXES="/blog/,/api/live/") as port:
        assert interfaces(port, list(expected)) == expected


@pytest.mark.serving
def test_without_the_showcase_only_event_streams_go_to_asgi(stack: Stack, tmp_path: Path) -> None:
    """The config of a project generated without the showcase, in front of real servers: no
    path goes to ASGI by its prefix, an EventSource's request still does."""
    generated = without_the_showcase(tmp_path / "project")
    expected = {
        ("/async/hello/", "*/*"): "wsgi",
        ("/sync/hello/", "*/*"): "wsgi",
        ("/", "text/html"): "wsgi",
        ("/", "text/event-stream"): "asgi",
        ("/sync/stream/?events=1&interval=0", "text/event-stream"): "asgi",
    }
    with another_front(stack, tmp_path / "nginx", generated.render) as port:
        assert interfaces(port, list(expected)) == expected


EVENT_NUMBER = re.compile(rb'"event":([0-9]+),')
# The server waits 1 s between two events, so 2 s from the first to the last.
STREAM_QUERY = "?events=3&interval=1000"
STREAM_SPREAD = 2.0


def event_arrivals(url: str) -> dict[int, float]:
    """Read an event stream; return when each event number arrived (monotonic seconds)."""
    arrivals: dict[int, float] = {}
    seen = b""
    with (
        httpx.Client(timeout=30) as client,
        client.stream("GET", url, headers={"Accept": "text/event-stream"}) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for chunk in response.iter_bytes():
            now = time.monotonic()
            seen += chunk
            for number in EVENT_NUMBER.findall(seen):
                arrivals.setdefault(int(number), now)
    return arrivals


@pytest.mark.serving
@pytest.mark.slow
@pytest.mark.parametrize(
    ("entry", "path"),
    [
        ("hybrid", "/async/stream/"),
        ("hybrid", "/sync/stream/"),
        ("wsgi", "/sync/stream/"),
        ("asgi", "/async/stream/"),
        # A sync iterator too: apps.dualserve.asgi sends its chunks as they are produced, where
        # Django's own handler sends them all at once (the control: tests/serving/test_streaming).
        ("asgi", "/sync/stream/"),
    ],
)
def test_events_go_through_nginx_as_they_are_sent(stack: Stack, entry: str, path: str) -> None:
    """Passed on as sent, the last event arrives the server's 2 s after the first (a loaded
    machine only widens the gap, so half of it is the bound); held back, they arrive together.
    Measured on nginx 1.22: gzip on event streams with buffering on holds the whole stream."""
    arrivals = event_arrivals(stack.url(entry, path + STREAM_QUERY))
    assert sorted(arrivals) == [1, 2, 3]
    assert arrivals[3] - arrivals[1] >= STREAM_SPREAD / 2


def manifest_entry_with_gzip(static_root: Path) -> tuple[str, str]:
    """Return (name, hashed name) of a collected CSS file that has a .gz variant."""
    manifest = json.loads((static_root / "staticfiles.json").read_text(encoding="utf-8"))
    for name, hashed in sorted(manifest["paths"].items()):
        if name.endswith(".css") and (static_root / f"{hashed}.gz").is_file():
            return name, hashed
    raise AssertionError(f"collectstatic wrote no .css with a .gz variant in {static_root}")


@pytest.mark.serving
@pytest.mark.parametrize("entry", ENTRIES)
def test_hashed_static_files_are_immutable_precompressed_and_revalidate(
    stack: Stack, entry: str
) -> None:
    _, hashed = manifest_entry_with_gzip(stack.static_root)
    url = stack.url(entry, f"/static/{hashed}")
    response = httpx.get(url, headers={"Accept-Encoding": "gzip"})

    assert response.status_code == 200
    assert "x-interface" not in response.headers  # nginx answered, not Django
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert response.headers["content-encoding"] == "gzip"
    assert "Accept-Encoding" in response.headers["vary"]
    # The bytes of the .gz file collectstatic wrote (nginx compresses nothing itself).
    gz_file = stack.static_root / f"{hashed}.gz"
    assert int(response.headers["content-length"]) == gz_file.stat().st_size
    assert response.content == (stack.static_root / hashed).read_bytes()

    etag = response.headers["etag"]
    again = httpx.get(url, headers={"Accept-Encoding": "gzip", "If-None-Match": etag})
    assert again.status_code == 304


@pytest.mark.serving
@pytest.mark.parametrize("entry", ENTRIES)
def test_unhashed_static_names_are_cached_briefly(stack: Stack, entry: str) -> None:
    name, _ = manifest_entry_with_gzip(stack.static_root)
    response = httpx.get(stack.url(entry, f"/static/{name}"), headers={"Accept-Encoding": ""})
    assert response.status_code == 200
    assert response.headers["cache-control"] == "public, max-age=60"
    assert "content-encoding" not in response.headers
    assert response.content == (stack.static_root / name).read_bytes()


@pytest.mark.serving
def test_missing_static_file_is_answered_by_nginx(stack: Stack) -> None:
    response = httpx.get(stack.url("hybrid", "/static/no/such.css"))
    assert response.status_code == 404
    assert "x-interface" not in response.headers


SECURITY_HEADERS = (
    "x-content-type-options",
    "referrer-policy",
    "x-frame-options",
    "content-security-policy",
)


def header_values(response: httpx.Response) -> dict[str, list[str]]:
    """Return every value of each security header, repeated ones included."""
    return {name: response.headers.get_list(name) for name in SECURITY_HEADERS}


def raw_response(answer: bytes) -> httpx.Response:
    """Return the status and headers of a raw HTTP/1.1 answer as an httpx.Response."""
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = [tuple(line.split(": ", 1)) for line in head[1:]]
    return httpx.Response(int(head[0].split()[1]), headers=headers)


@pytest.mark.serving
@pytest.mark.parametrize("what", ["static file", "missing static file", "body too large"])
def test_what_nginx_answers_itself_carries_the_security_headers(stack: Stack, what: str) -> None:
    name, _ = manifest_entry_with_gzip(stack.static_root)
    url = stack.url("hybrid", f"/static/{name}")
    if what == "missing static file":
        response = httpx.get(stack.url("hybrid", "/static/no/such.css"))
    elif what == "body too large":  # client_max_body_size is 64m: the declared length is enough
        request = (
            b"POST /sync/upload/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + f"Content-Length: {65 * 1024 * 1024}\r\n\r\n".encode()
        )
        response = raw_response(raw_exchange(stack.ports["hybrid"], request))
        assert response.status_code == 413
    else:
        response = httpx.get(url)
    assert "x-interface" not in response.headers  # nginx answered, not Django
    assert header_values(response) == {
        "x-content-type-options": ["nosniff"],
        "referrer-policy": ["same-origin"],
        "x-frame-options": ["DENY"],
        "content-security-policy": [
            "default-src 'none'; style-src 'self'; img-src 'self'; frame-ancestors 'none'"
        ],
    }


@pytest.mark.serving
@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("path", ["/", "/sync/hello/", "/async/hello/", "/no/such/page/"])
def test_djangos_security_headers_pass_through_once_and_unchanged(
    stack: Stack, entry: str, path: str
) -> None:
    direct = httpx.get(stack.server("wsgi" if entry == "wsgi" else "asgi").base_url + path)
    proxied = httpx.get(stack.url(entry, path))
    assert proxied.headers["x-interface"]  # Django answered
    assert "cache-control" not in proxied.headers
    values = header_values(proxied)
    assert all(len(found) == 1 for found in values.values()), values
    if entry != "hybrid":  # the hybrid entry may send "/" to the other server: same values
        assert values == header_values(direct)


@pytest.fixture(scope="module")
def upload_body() -> bytes:
    return os.urandom(6 * 1024 * 1024)


@pytest.mark.serving
@pytest.mark.slow
@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("path", ["/sync/upload/", "/async/upload/"])
def test_chunked_upload_arrives_whole_through_nginx(
    stack: Stack, upload_body: bytes, entry: str, path: str
) -> None:
    def chunks() -> Iterator[bytes]:
        for start in range(0, len(upload_body), 256 * 1024):
            yield upload_body[start : start + 256 * 1024]

    response = httpx.post(stack.url(entry, path), content=chunks(), timeout=60)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "size": len(upload_body),
        "sha256": hashlib.sha256(upload_body).hexdigest(),
    }


FORGED_SCHEME = {
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Ssl": "on",
    "X-Forwarded-Protocol": "ssl",
    "Forwarded": "proto=https",
}


# tests.serving's views that answer what Django sees of the client: address, scheme, host.
CLIENT_VIEWS = ["/sync/client/", "/async/client/"]


def client_seen(response: httpx.Response) -> dict[str, str]:
    """Return the client's address, scheme and host as Django saw them (REMOTE_ADDR, ...)."""
    assert response.status_code == 200, response.text
    seen: dict[str, str] = response.json()
    return seen


@pytest.mark.serving
@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("path", CLIENT_VIEWS)
def test_django_sees_nginx_scheme_not_the_client_claim(stack: Stack, entry: str, path: str) -> None:
    seen = client_seen(httpx.get(stack.url(entry, path), headers=FORGED_SCHEME))
    assert (seen["scheme"], seen["host"]) == ("http", f"127.0.0.1:{stack.ports[entry]}")


@pytest.mark.serving
@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
@pytest.mark.parametrize("path", CLIENT_VIEWS)
def test_direct_servers_trust_the_scheme_header_from_loopback(
    stack: Stack, interface: str, path: str
) -> None:
    """The control for the test above: the claim does reach Django when nginx is bypassed."""
    server = stack.server(interface)
    response = httpx.get(server.base_url + path, headers={"X-Forwarded-Proto": "https"})
    assert client_seen(response)["scheme"] == "https"


def access_line(server: servers.Server, marker: str) -> str:
    """Return the server's access-log line for the request carrying `marker` (bounded wait)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in server.output().splitlines():
            if marker in line:
                return line
        time.sleep(0.1)
    raise AssertionError(f"no access-log line with {marker} in:\n{server.tail()}")


# Whether the ASGI server replaces the client address (REMOTE_ADDR in Django) with
# X-Forwarded-For from a trusted peer: uvicorn does (proxy_headers); gunicorn's asgi worker
# applies forwarded_allow_ips to the scheme headers only and keeps the peer's address.
TAKES_FORWARDED_FOR = {"asgi_uvicorn": True, "asgi_gunicorn": False}


@pytest.mark.serving
def test_asgi_server_sees_nginx_client_address_not_a_forged_one(stack: Stack) -> None:
    via_nginx, direct = uuid.uuid4().hex, uuid.uuid4().hex
    forged = {"X-Forwarded-For": FORGED_CLIENT_IP}
    httpx.get(stack.url("asgi", f"/async/hello/?probe={via_nginx}"), headers=forged)
    httpx.get(f"{stack.asgi.base_url}/async/hello/?probe={direct}", headers=forged)
    assert access_line(stack.asgi, via_nginx).startswith("127.0.0.1 ")
    # The control: bypassing nginx, a server that reads X-Forwarded-For takes the forged address.
    expected = FORGED_CLIENT_IP if TAKES_FORWARDED_FOR[stack.asgi_mode] else "127.0.0.1"
    assert access_line(stack.asgi, direct).startswith(f"{expected} ")


@pytest.mark.serving
@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("path", CLIENT_VIEWS)
def test_django_sees_the_client_address_nginx_saw(stack: Stack, entry: str, path: str) -> None:
    forged = {"X-Forwarded-For": FORGED_CLIENT_IP}
    response = httpx.get(stack.url(entry, path), headers=forged)
    assert client_seen(response)["address"] == "127.0.0.1"


@pytest.mark.serving
@pytest.mark.parametrize("path", CLIENT_VIEWS)
def test_django_takes_a_forged_address_only_when_nginx_is_bypassed(stack: Stack, path: str) -> None:
    """The control for the test above, at the Django level."""
    forged = {"X-Forwarded-For": FORGED_CLIENT_IP}
    response = httpx.get(stack.asgi.base_url + path, headers=forged)
    expected = FORGED_CLIENT_IP if TAKES_FORWARDED_FOR[stack.asgi_mode] else "127.0.0.1"
    assert client_seen(response)["address"] == expected


@pytest.mark.serving
@pytest.mark.parametrize("entry", ENTRIES)
def test_request_id_is_nginx_own(stack: Stack, entry: str) -> None:
    headers = {"X-Request-ID": "chosen-by-the-client"}
    response = httpx.get(stack.url(entry, "/sync/hello/"), headers=headers)
    assert NGINX_REQUEST_ID.fullmatch(response.headers["x-request-id"])
    direct = httpx.get(f"{stack.wsgi.base_url}/sync/hello/", headers=headers)
    assert direct.headers["x-request-id"] == "chosen-by-the-client"


@pytest.mark.serving
@pytest.mark.parametrize("entry", ENTRIES)
def test_unknown_host_is_closed_unanswered(stack: Stack, entry: str) -> None:
    port = stack.ports[entry]
    request = b"GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
    assert raw_exchange(port, request % b"evil.example") == b""
    assert raw_exchange(port, request % b"localhost").startswith(b"HTTP/1.1 200 ")


@pytest.mark.serving
@pytest.mark.parametrize(
    ("entry", "interface"), [("hybrid", "wsgi"), ("wsgi", "wsgi"), ("asgi", "asgi")]
)
@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_probes_answer_for_any_host(stack: Stack, entry: str, interface: str, path: str) -> None:
    """Probes address a container by IP, so their Host is no server_name; the probe goes to
    the server behind the entry (its access log has the request)."""
    marker = uuid.uuid4().hex
    url = stack.url(entry, f"{path}?probe={marker}")
    response = httpx.get(url, headers={"Host": "10.1.2.3"})
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok"}
    access_line(stack.wsgi if interface == "wsgi" else stack.asgi, marker)


@pytest.mark.serving
@pytest.mark.parametrize("entry", ENTRIES)
def test_oversized_header_is_refused_before_the_app(stack: Stack, entry: str) -> None:
    """httptools (uvicorn) has no header-size limit: nginx is the guard."""
    response = httpx.get(
        stack.url(entry, "/async/hello/"), headers={"Cookie": "big=" + "x" * 64 * 1024}
    )
    assert response.status_code == 400
    assert "x-interface" not in response.headers


@pytest.mark.serving
def test_slow_client_is_cut_off_by_nginx(stack: Stack) -> None:
    """A client that never finishes its headers holds nothing of the app, and nginx closes it
    after client_header_timeout (2 s in this stack) rather than waiting for ever."""
    partial = b"GET /sync/hello/ HTTP/1.1\r\nHost: localhost\r\nX-Slow: "
    received = raw_exchange(stack.ports["hybrid"], partial, timeout=20)
    # nginx closes the connection without an answer (it logs a 408).
    assert received == b""
