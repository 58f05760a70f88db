"""gunicorn config: WSGI on sync workers, one request per worker process at a time.

Run from the repo root: `gunicorn -c deploy/gunicorn/wsgi_sync.py`. The simplest and most
robust mode for short CPU-bound requests; a slow request or a slow client holds a whole
worker, and sync workers close the connection after every response (no keep-alive).
"""

# Shared by every mode (one comment per setting in common.py). gunicorn reads a config
# file's module globals, so these imported names ARE this file's settings, not unused imports.
# ruff: noqa: F401
from deploy.gunicorn.common import (
    access_log_format,
    accesslog,
    backlog,
    bind_from_env,
    control_socket,
    control_socket_disable,
    errorlog,
    forwarded_allow_ips,
    graceful_timeout,
    keepalive,
    limit_request_field_size,
    limit_request_fields,
    limit_request_line,
    loglevel,
    max_requests,
    max_requests_jitter,
    post_worker_init,
    timeout,
    when_ready,
    worker_tmp_dir,
    workers,
)

# --- Server socket -------------------------------------------------------------------------------

# The WSGI port; BIND or PORT overrides it.
bind = bind_from_env(8001)

# --- Worker processes ----------------------------------------------------------------------------

# The WSGI callable, so `gunicorn -c this-file` needs no app argument.
wsgi_app = "project.wsgi:application"
# One request per process: concurrency is WEB_CONCURRENCY, nothing else.
worker_class = "sync"
