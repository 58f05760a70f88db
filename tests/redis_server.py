"""A private redis-server for the tests that need a real channel layer across processes.

    with running_redis(tmp_path) as url:        # redis://127.0.0.1:<free port>/0
        start_stack(..., server_env={"REDIS_URL": url})

It listens on a free loopback port, saves nothing, and is stopped by its PID.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from lab import servers

REDIS_INSTALL_HINT = (
    "redis-server is not installed: install it with `sudo apt-get install redis-server`."
)
START_TIMEOUT = 10.0


def require_redis_server() -> str:
    """Return the redis-server binary; without one, fail under CI=true and skip elsewhere."""
    binary = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/sbin:/usr/bin")
    if binary is None:
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(f"CI=true and {REDIS_INSTALL_HINT}")
        pytest.skip(REDIS_INSTALL_HINT)
    return binary


@contextlib.contextmanager
def running_redis(directory: Path) -> Iterator[str]:
    """Run redis-server on a free loopback port, its log in `directory`; yield its URL."""
    binary = require_redis_server()
    port = servers.free_port()
    argv = [binary, "--port", str(port), "--bind", servers.HOST, "--dir", str(directory)]
    argv += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
    log_path = directory / "redis.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        client = redis.Redis(host=servers.HOST, port=port, socket_timeout=2)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log_text = log_path.read_text(errors="replace")
                    raise AssertionError(f"redis-server did not start:\n{log_text}") from None
                time.sleep(0.05)
        client.close()
        yield f"redis://{servers.HOST}:{port}/0"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
