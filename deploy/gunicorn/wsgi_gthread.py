"""gunicorn config: WSGI on gthread workers, a pool of threads per worker process.

Run from the repo root: `gunicorn -c deploy/gunicorn/wsgi_gthread.py`. Sync Django code with
I/O waits (database, HTTP calls) overlaps them across threads; keep-alive connections are parked
in the worker's poller, not in a thread. CPU-bound work still shares one GIL per process.
"""

# Every setting and hook in common.py (its __all__ names them all, found by gunicorn's own list):
# gunicorn reads a config file's module globals, so what this import binds IS this file's
# settings. Anything below it overrides common.py for this mode.
# ruff: noqa: F403
from deploy.gunicorn.common import *
from deploy.gunicorn.common import bind_from_env, env_int

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
