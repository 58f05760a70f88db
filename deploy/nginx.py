"""Render nginx/nginx.conf.template for the local stack or for Docker.

`python -m deploy.nginx --target local|docker [--out PATH]`; `render(target, env)` from Python.
Standard library only: the Docker build and `make up` call it before anything else is set up.
Every value comes from `env` (the environment variables of the same names), is validated, and
falls back to the target's default:

=================================  ===================================  =======================
variable                           local                                docker
=================================  ===================================  =======================
NGINX_HYBRID_PORT                  8000                                 8000
NGINX_WSGI_PORT                    8080                                 8080
NGINX_ASGI_PORT                    8081                                 8081
WSGI_PORT / ASGI_PORT              8001 / 8002                          8001 / 8002
WSGI_UPSTREAM / ASGI_UPSTREAM      127.0.0.1:$WSGI_PORT, ...:$ASGI_PORT wsgi:$WSGI_PORT, asgi:...
NGINX_LISTEN_HOST                  127.0.0.1                            0.0.0.0
NGINX_RUN_DIR (pid, temp files)    $DJANGO_VAR_DIR/nginx (./var/nginx)  /tmp
DJANGO_STATIC_ROOT                 $DJANGO_VAR_DIR/static (./var/...)   /app/var/static
NGINX_ACCESS_LOG                   $NGINX_RUN_DIR/access.log            /dev/stdout
NGINX_SERVER_NAMES                 DJANGO_ALLOWED_HOSTS, else localhost 127.0.0.1
NGINX_USER                         the owner of STATIC_ROOT when run    (the image's default)
                                   as root, else none
=================================  ===================================  =======================

Routing on the hybrid entry, same for both: NGINX_ASGI_PREFIXES, comma-separated path prefixes
whose requests go to ASGI (the project's async views); every other request goes to WSGI, except
WebSocket handshakes (`Upgrade: websocket`) and those asking for an event stream (`Accept:
text/event-stream`), which go to ASGI whatever their path. Each prefix starts and ends with "/"
(`/blog/` covers /blog/1/ but not /blogroll/), with letters, digits and . _ ~ - between the
slashes. Unset or blank, the template's default applies: the showcase's /async/ while the
project has the showcase, none without it. A list replaces the default, so a project that keeps
the showcase lists /async/ too:

    NGINX_ASGI_PREFIXES=/blog/,/api/live/ make up

The Docker image renders its config at build time: there the value is a build argument
(`docker build --build-arg NGINX_ASGI_PREFIXES=/blog/,/api/live/ --target nginx .`, or the nginx
service's build args in compose.yaml), and a change needs a rebuild.

WebSockets: the hybrid and ASGI entries tunnel a handshake to ASGI (`Upgrade` and `Connection:
upgrade` passed on; other requests keep the upstream connection alive); the WSGI entry answers it
400 itself, since WSGI cannot hold a WebSocket.

Tuning, same for both: NGINX_WORKER_PROCESSES (auto), NGINX_WORKER_CONNECTIONS (1024),
NGINX_CLIENT_MAX_BODY_SIZE (64m), NGINX_CLIENT_HEADER_TIMEOUT (10s), NGINX_CLIENT_BODY_TIMEOUT
(30s), NGINX_SEND_TIMEOUT (30s), NGINX_PROXY_READ_TIMEOUT (60s, streams included: a stream
sends an event or a heartbeat more often than that), NGINX_LARGE_CLIENT_HEADER_BUFFERS (4 8k),
NGINX_UPSTREAM_KEEPALIVE (32), NGINX_UPSTREAM_KEEPALIVE_TIMEOUT (60s), NGINX_MIME_TYPES
(/etc/nginx/mime.types).
NGINX_TRUSTED_PROXIES (none): comma-separated addresses or networks of a proxy in front of nginx
(a load balancer that ends TLS); from them only, nginx takes the client address from
X-Forwarded-For and the scheme from X-Forwarded-Proto.
NGINX_BINARY names the nginx executable when it is not found on PATH or in /usr/sbin.
"""

from __future__ import annotations

import argparse
import grp
import ipaddress
import os
import pwd
import re
import shutil
import string
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, get_args

Target = Literal["local", "docker"]
TARGETS: tuple[str, ...] = get_args(Target)

BASE_DIR = Path(__file__).resolve().parent.parent
TEMPLATE = BASE_DIR / "nginx" / "nginx.conf.template"
INSTALL_HINT = (
    "nginx is not installed: install it with `sudo apt-get install nginx` (Debian/Ubuntu)."
)

# The nginx ports, then the app servers' own ports (the showcase upstream is not behind nginx).
PORT_DEFAULTS = {
    "NGINX_HYBRID_PORT": 8000,
    "NGINX_WSGI_PORT": 8080,
    "NGINX_ASGI_PORT": 8081,
    "WSGI_PORT": 8001,
    "ASGI_PORT": 8002,
}

# Slow clients, bodies and streams.
TUNING_DEFAULTS = {
    "NGINX_WORKER_PROCESSES": "auto",
    "NGINX_WORKER_CONNECTIONS": "1024",
    # showcase:begin
    # The showcase's /upload/ views accept up to 64 MiB (SHOWCASE_UPLOAD_MAX_BYTES).
    # showcase:end
    "NGINX_CLIENT_MAX_BODY_SIZE": "64m",
    "NGINX_CLIENT_HEADER_TIMEOUT": "10s",
    "NGINX_CLIENT_BODY_TIMEOUT": "30s",
    "NGINX_SEND_TIMEOUT": "30s",
    # Counted from one read to the next, for every response, streams included: an event stream
    # stays open as long as it sends something (an event, or a ": heartbeat" comment line) more
    # often than this. A longer timeout for streams would keep a hung view's connection as long.
    # showcase:begin
    # The showcase's longest gap between two events is 10 s (apps/showcase/params.py).
    # showcase:end
    "NGINX_PROXY_READ_TIMEOUT": "60s",
    # A request line or header line over 8k is refused here (414/400), at or below gunicorn's
    # limit_request_line/_field_size (8190): whatever gunicorn would refuse never reaches it,
    # and uvicorn (httptools has no limit) gets the same bounds. The head as a whole stays
    # under 4 x 8k (gunicorn has no limit on the whole head). Measured: tests/reliability.
    "NGINX_LARGE_CLIENT_HEADER_BUFFERS": "4 8k",
    "NGINX_UPSTREAM_KEEPALIVE": "32",
    # Below the app servers' keep-alive (75 s, deploy/gunicorn/common.py).
    "NGINX_UPSTREAM_KEEPALIVE_TIMEOUT": "60s",
    "NGINX_MIME_TYPES": "/etc/nginx/mime.types",
}

DURATION_RE = re.compile(r"[0-9]{1,6}(ms|s|m|h)?")
SIZE_RE = re.compile(r"[0-9]{1,9}[kKmMgG]?")
BUFFERS_RE = re.compile(r"[0-9]{1,3} [0-9]{1,6}[kK]?")
COUNT_RE = re.compile(r"[0-9]{1,6}")
# Host names, *.wildcards, .suffixes (the same meaning in nginx and ALLOWED_HOSTS), IPv6 literals.
SERVER_NAME_RE = re.compile(
    r"(\*\.|\.)?[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]+\]"
)
UPSTREAM_RE = re.compile(r"([A-Za-z0-9][A-Za-z0-9.-]*|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}")
LISTEN_HOST_RE = re.compile(r"[0-9.]+|\[[0-9A-Fa-f:.]+\]|\*")
USER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
# Absolute, and nothing nginx's parser would read as syntax (spaces, quotes, ; { } $ #).
PATH_RE = re.compile(r"/[A-Za-z0-9._+@%=,/-]*")
# A URL path prefix for a `location`: non-empty segments of unreserved characters, each closed
# by "/". Nothing else: no space, quote, ; { } $ # that nginx would parse, no % (locations match
# the decoded path), no regex or `=` modifier (a prefix never starts with one).
PREFIX_RE = re.compile(r"(/[A-Za-z0-9._~-]+)+/")

# NGINX_ASGI_PREFIXES when unset: a project's async views, by path prefix. Without the showcase
# there are none, and only event streams go to ASGI until the project lists its own.
ASGI_PREFIX_DEFAULTS: tuple[str, ...] = ()
# showcase:begin
# Every /async/ view of the showcase, its event stream included, and its WebSockets under /ws/
# (nginx sends any handshake to ASGI anyway; the prefix is for proxies that route by path
# alone, such as deploy/k8s's Ingress); its sync twins under /sync/ stay on WSGI.
ASGI_PREFIX_DEFAULTS = ("/async/", "/ws/")
# showcase:end

# Prefixes the hybrid server has a location of its own for: listed again, nginx would refuse
# the config (duplicate location), so they are refused here with the reason.
HYBRID_OWN_PREFIXES = {
    "/static/": "nginx serves the static files itself",
    # showcase:begin
    "/sync/stream/": "the showcase's sync stream stays on WSGI",
    # showcase:end
}


class ConfigError(ValueError):
    """An environment value cannot go into the nginx config; the message says which and why."""


class ConfigTemplate(string.Template):
    """`%{NAME}` placeholders: nginx's own variables are written `$name`."""

    delimiter = "%"
    idpattern = r"(?!)"  # never matches: only the braced form is a placeholder
    braceidpattern = r"[A-Z][A-Z0-9_]*"
    flags = re.RegexFlag(0)  # case-sensitive


def value(env: Mapping[str, str], name: str, default: str) -> str:
    """Return env[name] stripped, or `default` when unset or blank."""
    raw = env.get(name, "").strip()
    return raw or default


def checked(name: str, raw: str, pattern: re.Pattern[str], expected: str) -> str:
    """Return `raw` when it fully matches `pattern`; raise ConfigError naming `name`."""
    if not pattern.fullmatch(raw):
        raise ConfigError(f"{name}={raw!r} is not valid: expected {expected}.")
    return raw


def port(env: Mapping[str, str], name: str) -> int:
    """Return the port variable `name`, validated, or its default."""
    raw = value(env, name, str(PORT_DEFAULTS[name]))
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 65535:
        raise ConfigError(f"{name}={raw!r} is not a port number (1-65535).")
    return int(raw)


def ports(env: Mapping[str, str]) -> dict[str, int]:
    """Return every port by variable name; the nginx ports must all differ."""
    chosen = {name: port(env, name) for name in PORT_DEFAULTS}
    nginx_ports = [chosen[name] for name in PORT_DEFAULTS if name.startswith("NGINX_")]
    if len(set(nginx_ports)) != len(nginx_ports):
        raise ConfigError(
            "NGINX_HYBRID_PORT, NGINX_WSGI_PORT and NGINX_ASGI_PORT must differ, got "
            + ", ".join(map(str, nginx_ports))
            + "."
        )
    return chosen


def absolute_path(name: str, raw: str) -> str:
    """Return `raw` as a normalised absolute path nginx can parse; raise ConfigError."""
    path = os.path.normpath(raw)
    return checked(name, path, PATH_RE, "an absolute path without spaces, quotes or ;{}$#")


def var_dir(env: Mapping[str, str]) -> Path:
    """Return the local state directory, as project/settings.py chooses it."""
    return Path(value(env, "DJANGO_VAR_DIR", str(BASE_DIR / "var"))).absolute()


def run_dir(target: Target, env: Mapping[str, str]) -> str:
    """Return the directory for nginx's pid and temporary files."""
    default = "/tmp" if target == "docker" else str(var_dir(env) / "nginx")  # noqa: S108
    return absolute_path("NGINX_RUN_DIR", value(env, "NGINX_RUN_DIR", default))


def static_root(target: Target, env: Mapping[str, str]) -> str:
    """Return STATIC_ROOT as settings.py computes it from the same variables."""
    if target == "docker" and not env.get("DJANGO_VAR_DIR", "").strip():
        default = "/app/var/static"
    else:
        default = str(var_dir(env) / "static")
    return absolute_path("DJANGO_STATIC_ROOT", value(env, "DJANGO_STATIC_ROOT", default))


def server_names(env: Mapping[str, str]) -> str:
    """Return the server_name list: NGINX_SERVER_NAMES, else DJANGO_ALLOWED_HOSTS."""
    source = "NGINX_SERVER_NAMES" if env.get("NGINX_SERVER_NAMES", "").strip() else ""
    if not source and env.get("DJANGO_ALLOWED_HOSTS", "").strip():
        source = "DJANGO_ALLOWED_HOSTS"
    raw = env[source] if source else "localhost 127.0.0.1"
    names = [name for name in re.split(r"[\s,]+", raw) if name]
    for name in names:
        if name == "*":
            raise ConfigError(
                f"{source}='*': nginx rejects unknown Host headers, so list the host names."
            )
        checked(source or "NGINX_SERVER_NAMES", name, SERVER_NAME_RE, "host names")
    return " ".join(names)


def owner_of(path: str) -> tuple[str, str]:
    """Return (user, group) owning `path`, or its nearest existing parent."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    info = probe.stat()
    return pwd.getpwuid(info.st_uid).pw_name, grp.getgrgid(info.st_gid).gr_name


def user_directive(target: Target, env: Mapping[str, str], static: str) -> str:
    """Return the `user` line, or "" when the workers keep the master's user.

    A root master drops its workers to `nobody` by default, who often cannot read a checkout
    (a home directory, pytest's 0700 temp dirs): locally they run as the owner of the files
    they serve, never with more rights than that user already has.
    """
    chosen = env.get("NGINX_USER", "").strip()
    if chosen:
        names = chosen.split()
        if len(names) > 2:
            raise ConfigError(f"NGINX_USER={chosen!r}: expected 'user' or 'user group'.")
        for name in names:
            checked("NGINX_USER", name, USER_RE, "a user name, optionally a group name")
        return f"user {' '.join(names)};"
    if target == "local" and os.geteuid() == 0:
        user, group = owner_of(static)
        return f"user {user} {group};"
    return ""


def access_log(target: Target, env: Mapping[str, str], run: str) -> str:
    """Return the access_log arguments: a path with the project's format, or `off`."""
    default = "/dev/stdout" if target == "docker" else f"{run}/access.log"
    raw = value(env, "NGINX_ACCESS_LOG", default)
    if raw == "off":
        return "off"
    path = absolute_path("NGINX_ACCESS_LOG", raw)
    if path.startswith("/dev/"):
        return f"{path} dualserve"
    # Buffered writes: a benchmark at thousands of requests a second is not a log benchmark.
    return f"{path} dualserve buffer=64k flush=1s"


def trusted_proxies(env: Mapping[str, str]) -> list[str]:
    """Return NGINX_TRUSTED_PROXIES as networks nginx accepts; raise ConfigError."""
    raw = env.get("NGINX_TRUSTED_PROXIES", "")
    networks = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        try:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ConfigError(
                f"NGINX_TRUSTED_PROXIES: {item!r} is not an IP address or network."
            ) from None
    return networks


def asgi_prefixes(env: Mapping[str, str]) -> list[str]:
    """Return NGINX_ASGI_PREFIXES (else the default) as checked, distinct path prefixes."""
    raw = env.get("NGINX_ASGI_PREFIXES", "")
    items = [part.strip() for part in raw.split(",")] if raw.strip() else ASGI_PREFIX_DEFAULTS
    prefixes: list[str] = []
    for item in items:
        if not item or item in prefixes:
            continue
        segments = item.strip("/").split("/")
        if item == "/":
            raise ConfigError(
                "NGINX_ASGI_PREFIXES: '/' would send every path to ASGI: that is the ASGI entry "
                "(NGINX_ASGI_PORT)."
            )
        if not PREFIX_RE.fullmatch(item) or "." in segments or ".." in segments:
            raise ConfigError(
                f"NGINX_ASGI_PREFIXES: {item!r} is not a path prefix: expected one that starts "
                "and ends with '/', such as /blog/ or /api/live/, with letters, digits and "
                ". _ ~ - between the slashes."
            )
        if item in HYBRID_OWN_PREFIXES:
            raise ConfigError(
                f"NGINX_ASGI_PREFIXES: {item!r} cannot be listed: {HYBRID_OWN_PREFIXES[item]}."
            )
        prefixes.append(item)
    return prefixes


def asgi_prefix_locations(prefixes: Sequence[str]) -> str:
    """Return the hybrid server's locations that send `prefixes` to the ASGI upstream."""
    if not prefixes:
        return "        # (no prefix: NGINX_ASGI_PREFIXES lists none)"
    return "\n\n".join(
        f"        location {prefix} {{\n            proxy_pass http://asgi;\n        }}"
        for prefix in prefixes
    )


def proxy_trust_lines(networks: Sequence[str]) -> tuple[str, str]:
    """Return the realip directives and the geo entries for the trusted proxies."""
    if not networks:
        return "    # (no trusted proxy)", "        # (no trusted proxy)"
    real_ip = [f"    set_real_ip_from {network};" for network in networks]
    real_ip += ["    real_ip_header X-Forwarded-For;", "    real_ip_recursive on;"]
    geo = [f"        {network} 1;" for network in networks]
    return "\n".join(real_ip), "\n".join(geo)


def values(target: Target, env: Mapping[str, str]) -> dict[str, str]:
    """Return every placeholder of the template for `target`, validated."""
    if target not in TARGETS:
        raise ConfigError(f"target {target!r} is unknown: use one of {', '.join(TARGETS)}.")
    chosen_ports = ports(env)
    upstream_host = {"local": "127.0.0.1", "docker": None}[target]
    upstreams = {}
    for kind in ("WSGI", "ASGI"):
        host = upstream_host or kind.lower()
        default = f"{host}:{chosen_ports[f'{kind}_PORT']}"
        name = f"{kind}_UPSTREAM"
        upstreams[name] = checked(name, value(env, name, default), UPSTREAM_RE, "host:port")
    listen_default = "0.0.0.0" if target == "docker" else "127.0.0.1"  # noqa: S104
    run = run_dir(target, env)
    static = static_root(target, env)
    tuning = {
        name.removeprefix("NGINX_"): value(env, name, d) for name, d in TUNING_DEFAULTS.items()
    }
    for name in (
        "CLIENT_HEADER_TIMEOUT",
        "CLIENT_BODY_TIMEOUT",
        "SEND_TIMEOUT",
        "PROXY_READ_TIMEOUT",
        "UPSTREAM_KEEPALIVE_TIMEOUT",
    ):
        checked(f"NGINX_{name}", tuning[name], DURATION_RE, "a duration such as 30s or 500ms")
    checked(
        "NGINX_CLIENT_MAX_BODY_SIZE", tuning["CLIENT_MAX_BODY_SIZE"], SIZE_RE, "a size such as 64m"
    )
    checked(
        "NGINX_LARGE_CLIENT_HEADER_BUFFERS",
        tuning["LARGE_CLIENT_HEADER_BUFFERS"],
        BUFFERS_RE,
        "a number and a size such as '4 8k'",
    )
    for name in ("WORKER_CONNECTIONS", "UPSTREAM_KEEPALIVE"):
        checked(f"NGINX_{name}", tuning[name], COUNT_RE, "a whole number")
    if tuning["WORKER_PROCESSES"] != "auto":
        checked("NGINX_WORKER_PROCESSES", tuning["WORKER_PROCESSES"], COUNT_RE, "auto or a number")
    tuning["MIME_TYPES"] = absolute_path("NGINX_MIME_TYPES", tuning["MIME_TYPES"])
    real_ip, trusted = proxy_trust_lines(trusted_proxies(env))
    return {
        **{name: str(number) for name, number in chosen_ports.items()},
        **upstreams,
        **tuning,
        "LISTEN_HOST": checked(
            "NGINX_LISTEN_HOST",
            value(env, "NGINX_LISTEN_HOST", listen_default),
            LISTEN_HOST_RE,
            "an IP address",
        ),
        "RUN_DIR": run,
        "STATIC_ROOT": static,
        "ACCESS_LOG": access_log(target, env, run),
        "SERVER_NAMES": server_names(env),
        "USER_DIRECTIVE": user_directive(target, env, static),
        "REAL_IP_DIRECTIVES": real_ip,
        "TRUSTED_PROXY_ENTRIES": trusted,
        "ASGI_PREFIX_LOCATIONS": asgi_prefix_locations(asgi_prefixes(env)),
    }


def render(target: Target, env: Mapping[str, str]) -> str:
    """Return the nginx config for `target`, values taken from `env`; raise ConfigError."""
    template = ConfigTemplate(TEMPLATE.read_text(encoding="utf-8"))
    return template.substitute(values(target, env))


def nginx_binary(env: Mapping[str, str] | None = None) -> str | None:
    """Return the nginx executable (NGINX_BINARY, else looked up), or None when there is none.

    Debian installs nginx in /usr/sbin, which is not on a normal user's PATH.
    """
    chosen = (env or {}).get("NGINX_BINARY", "").strip()
    if chosen:
        return shutil.which(chosen)
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def nginx_command(binary: str, config: Path, *extra: str) -> list[str]:
    """Return the command that runs nginx with `config`, paths relative to the config's dir.

    `-e stderr` keeps nginx from opening its compiled-in error log (e.g.
    /var/log/nginx/error.log, not writable by a normal user) before it reads the config.
    """
    return [binary, "-e", "stderr", "-p", str(config.parent), "-c", str(config), *extra]


def check(binary: str, config: Path) -> subprocess.CompletedProcess[str]:
    """Run `nginx -t` on `config` and return the finished process (output in stderr)."""
    return subprocess.run(  # noqa: S603  (our own binary and arguments, no shell)
        nginx_command(binary, config, "-t", "-q"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Render the config from the environment to --out (default: standard output)."""
    parser = argparse.ArgumentParser(
        prog="python -m deploy.nginx",
        description="Render nginx/nginx.conf.template for the local stack or for Docker.",
    )
    parser.add_argument("--target", choices=TARGETS, required=True)
    parser.add_argument("--out", type=Path, help="file to write (default: standard output)")
    args = parser.parse_args(argv)
    target: Target = args.target
    try:
        text = render(target, os.environ)
    except ConfigError as exc:
        print(f"deploy.nginx: {exc}", file=sys.stderr)
        return 2
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
