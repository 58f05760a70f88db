"""Settings every serving mode shares; each deploy/gunicorn/<mode>.py takes them all (`import *`).

Override without editing a file, weakest first: gunicorn's own environment variables
(WEB_CONCURRENCY, FORWARDED_ALLOW_IPS), the variables read below (BIND, PORT, GUNICORN_THREADS,
GUNICORN_CONTROL_SOCKET), GUNICORN_CMD_ARGS (beats this file), the command line (beats all).
"""

from __future__ import annotations

import gc
import os
from typing import Any

from gunicorn.config import KNOWN_SETTINGS


def env_int(name: str, default: int) -> int:
    """Return the integer environment variable `name`, or `default` when unset or empty."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise SystemExit(f"{name}={value!r} is not an integer.") from None
    if number < 1:
        raise SystemExit(f"{name}={value!r} must be 1 or more.")
    return number


def bind_from_env(default_port: int) -> list[str]:
    """Return the addresses to bind: BIND (comma-separated), else 127.0.0.1:PORT."""
    bind = os.environ.get("BIND", "").strip()
    if bind:
        return [address.strip() for address in bind.split(",") if address.strip()]
    # Loopback, unlike gunicorn's own PORT default (0.0.0.0:$PORT): nginx is the public face,
    # and a container sets BIND=0.0.0.0:<port> explicitly.
    return [f"127.0.0.1:{env_int('PORT', default_port)}"]


# --- Server socket -------------------------------------------------------------------------------

# Connections the kernel queues while every worker is busy (capped by net.core.somaxconn).
backlog = 2048

# --- Worker processes ----------------------------------------------------------------------------

# gunicorn's own variable, read here so this file never overrides it; the default is fixed
# because cpu_count() sees the host's cores inside a container (gunicorn #2028).
workers = env_int("WEB_CONCURRENCY", 2)
# Recycle a worker after this many requests, bounding slow leaks; 0 turns it off (benchmarks).
max_requests = 10_000
# Up to this many extra requests per worker, so the workers do not all restart at once.
max_requests_jitter = 1_000

# --- Timeouts ------------------------------------------------------------------------------------

# A worker silent this long is killed: the ceiling for one sync request's duration.
timeout = 30
# After SIGTERM, workers get this long to finish in-flight requests before SIGKILL; keep
# Docker's stop_grace_period and Kubernetes' terminationGracePeriodSeconds above it.
graceful_timeout = 20
# Idle keep-alive seconds: LONGER than nginx's upstream keepalive_timeout (60 s), so nginx
# retires idle connections first and never reuses one the app is closing (gunicorn #3038).
keepalive = 75

# --- Request limits (gunicorn's parsers; httptools under UvicornWorker has none: nginx guards) ---

# Longest request line gunicorn allows (its maximum); above it gunicorn answers 414.
limit_request_line = 8190
# Most header fields per request; above it gunicorn answers 431.
limit_request_fields = 100
# Longest header field (name and value); above it gunicorn answers 431.
limit_request_field_size = 8190
# Largest WebSocket message a worker holds before the application sees it (ASGI hands over whole
# messages): 1 MiB instead of the servers' 16 MiB, so a frame that announces more is refused
# (1009) on its head, before its payload is read. The asgi worker reads it; UvicornWorker
# (deploy/workers.py) hands it to uvicorn as ws_max_size. WEBSOCKET_MAX_MESSAGE_BYTES overrides
# it (0: no limit). An application's own limits stay below it (the showcase's consumers: 64 KiB).
WEBSOCKET_MAX_MESSAGE_BYTES = 1024 * 1024  # also deploy/supervisor/run.sh's default
websocket_max_message_size = env_int("WEBSOCKET_MAX_MESSAGE_BYTES", WEBSOCKET_MAX_MESSAGE_BYTES)

# --- Proxy ---------------------------------------------------------------------------------------

# Trust X-Forwarded-* only from the local nginx; a container sets FORWARDED_ALLOW_IPS to its
# proxy's network (gunicorn reads the same variable when no file sets this).
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")

# --- Logging -------------------------------------------------------------------------------------

# Access log to stdout, errors to stderr: the process manager or container runtime keeps them.
# GUNICORN_ACCESS_LOG names a file instead, or "off" behind nginx, whose access log carries the
# same request ID: the line costs a worker 60-100 us of CPU a request, queued or not.
_access_log = os.environ.get("GUNICORN_ACCESS_LOG", "").strip()
accesslog = None if _access_log.lower() == "off" else (_access_log or "-")
errorlog = "-"
# Access lines formatted and written in batches by a thread of each worker (deploy/accesslog.py).
logger_class = "deploy.accesslog.QueuedAccessLogger"
# gunicorn's messages; Django's own logging is configured in project/settings.py.
loglevel = "info"
# Combined log format plus the duration in ms and the request ID the app echoes (X-Request-ID).
access_log_format = (
    '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(M)sms %({x-request-id}o)s'
)

# --- Server mechanics ----------------------------------------------------------------------------

# Worker heartbeat files on tmpfs: no disk stalls, and fine on a read-only root filesystem.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: S108
# gunicorn 25.1+ opens a control socket at ONE per-user path by default: a second server
# unlinks the first one's socket, and a read-only home cannot hold it. Off unless
# GUNICORN_CONTROL_SOCKET names a path, which must then be unique per server and writable.
control_socket = os.environ.get("GUNICORN_CONTROL_SOCKET", "").strip() or "gunicorn.ctl"
control_socket_disable = not os.environ.get("GUNICORN_CONTROL_SOCKET", "").strip()

# --- Server hooks --------------------------------------------------------------------------------


def post_worker_init(worker: Any) -> None:
    """Freeze what start-up allocated out of the garbage collector's reach; log the boot.

    Django, its apps and the URLconf leave a few hundred thousand long-lived objects, and
    every full collection walks all of them while the worker serves nothing: under ASGI that
    pause delays every open request and event stream at once. gc.freeze() (Python 3.7+)
    moves them to a permanent generation that collections skip; requests still get their
    garbage collected as before.
    """
    gc.collect()
    gc.freeze()
    worker.log.info(
        "Worker ready (pid: %s) with %d objects frozen", worker.pid, gc.get_freeze_count()
    )


def when_ready(server: Any) -> None:
    """Log the serving mode once the master listens: one line that says what runs."""
    cfg = server.cfg
    server.log.info(
        "dualserve ready: app=%s worker_class=%s workers=%d threads=%d "
        "worker_connections=%d keepalive=%ds graceful_timeout=%ds on %s",
        cfg.wsgi_app,
        cfg.worker_class_str,
        cfg.workers,
        cfg.threads,
        cfg.worker_connections,
        cfg.keepalive,
        cfg.graceful_timeout,
        # The sockets in use: an inherited one (systemd's LISTEN_FDS, GUNICORN_FD) replaces `bind`.
        ", ".join(str(listener) for listener in server.LISTENERS) or ", ".join(cfg.bind),
    )


# --- What `from deploy.gunicorn.common import *` gives a mode file --------------------------------

# Every gunicorn setting and hook this file defines, found by name in gunicorn's own list: a
# setting added above reaches every mode, with no list of names to keep up to date. The helpers
# (env_int, bind_from_env) are not settings; a mode file that uses one imports it by name.
__all__ = sorted(setting.name for setting in KNOWN_SETTINGS if setting.name in globals())
