"""gunicorn config: WSGI on gthread workers, a pool of threads per worker process.

Run from the repo root: `gunicorn -c deploy/gunicorn/wsgi_gthread.py`. Sync Django code with
I/O waits (database, HTTP calls) overlaps them across threads; keep-alive connections are parked
in the worker's poller, not in a thread. CPU-bound work still shares one GIL per process.
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
    env_int,
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
# gunicorn's gthread worker (a thread pool per process; requests beyond it wait in the
# worker's queue), minus its Ctrl-C/SIGQUIT deadlock: see deploy/workers.py.
worker_class = "deploy.workers.ThreadWorker"
# Threads per worker (GUNICORN_THREADS): concurrent requests = workers x threads; each thread
# keeps its own database connection (CONN_MAX_AGE) when they are persistent.
threads = env_int("GUNICORN_THREADS", 8)
# Open client connections per worker, busy or idle in keep-alive.
worker_connections = 1000
