"""gunicorn config: ASGI on uvicorn workers (uvloop + httptools) managed by gunicorn.

Run from the repo root: `gunicorn -c deploy/gunicorn/asgi_uvicorn.py`. The worker class is the
project's subclass of uvicorn_worker.UvicornWorker (deploy/workers.py), which passes on what the
stock class drops: lifespan "on", worker_connections, graceful_timeout, and this access log format.
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

# The ASGI port; BIND or PORT overrides it.
bind = bind_from_env(8002)

# --- Worker processes ----------------------------------------------------------------------------

# The ASGI callable (it answers the lifespan scope itself; Django does not).
wsgi_app = "project.asgi:application"
# uvicorn's event loop and HTTP parser in each gunicorn worker process.
worker_class = "deploy.workers.UvicornWorker"
# Concurrent connections per worker, handed to uvicorn's limit_concurrency: above it, 503.
# uvicorn counts the new connection itself, so N admits N - 1 (1000 held 999 SSE streams,
# measured by the benchmark); 2048 leaves room for 1,000 streams plus ordinary requests.
worker_connections = 2048
