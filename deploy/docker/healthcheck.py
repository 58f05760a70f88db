#!/usr/bin/env python3
"""Probe the local server: exit 0 when PATH answers 200, else 1 with the reason on stderr.

Usage: python deploy/docker/healthcheck.py [PATH]   (PATH defaults to /healthz)

The address comes from the server's own environment (BIND, else PORT on 127.0.0.1, as
deploy/gunicorn/common.py binds), so the probe follows the server wherever it listens. The slim
image has neither curl nor wget: the standard library is enough, and Docker reads only the exit
status (0 healthy, 1 unhealthy).
"""

from __future__ import annotations

import http.client
import os
import socket
import sys

DEFAULT_PATH = "/healthz"
# The image's port, when neither BIND nor PORT is set.
DEFAULT_PORT = 8000
# Below Docker's HEALTHCHECK --timeout (3 s), so a hung server reads as a failure, not a kill.
TIMEOUT = float(os.environ.get("HEALTHCHECK_TIMEOUT", "2"))
# Wildcard listen addresses are reached through loopback.
WILDCARDS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}  # noqa: S104


class UnixHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection over a Unix socket, for BIND=unix:/path."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        """Connect to the Unix socket instead of a TCP address."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


def target_address(environ: dict[str, str]) -> str:
    """Return the first address the server binds, as gunicorn spells it."""
    bind = environ.get("BIND", "").strip()
    if bind:
        return bind.split(",")[0].strip()
    port = environ.get("PORT", "").strip() or str(DEFAULT_PORT)
    return f"127.0.0.1:{port}"


def connection_for(address: str) -> http.client.HTTPConnection:
    """Return a connection to `address` (host:port, [v6]:port or unix:/path)."""
    if address.startswith("unix:"):
        return UnixHTTPConnection(address.removeprefix("unix:"), TIMEOUT)
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"cannot probe BIND address {address!r}: expected host:port")
    host = host.strip("[]")
    return http.client.HTTPConnection(WILDCARDS.get(host, host), int(port), timeout=TIMEOUT)


def probe(path: str, environ: dict[str, str]) -> str | None:
    """Return None when the server answers `path` with 200, else why not."""
    address = target_address(environ)
    try:
        connection = connection_for(address)
        try:
            connection.request("GET", path, headers={"Host": "localhost"})
            response = connection.getresponse()
            body = response.read(512).decode("utf-8", "replace").strip()
        finally:
            connection.close()
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return f"{address}{path}: {type(exc).__name__}: {exc}"
    if response.status != 200:
        return f"{address}{path}: HTTP {response.status} {body}"
    return None


def main(argv: list[str]) -> int:
    """Probe the path in `argv` (or /healthz) and return the exit status."""
    if len(argv) > 1 or (argv and not argv[0].startswith("/")):
        print("usage: healthcheck.py [/path]", file=sys.stderr)
        return 1
    problem = probe(argv[0] if argv else DEFAULT_PATH, dict(os.environ))
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
