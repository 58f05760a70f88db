"""gunicorn config: WSGI on sync workers, one request per worker process at a time.

Run from the repo root: `gunicorn -c deploy/gunicorn/wsgi_sync.py`. The simplest and most
robust mode for short CPU-bound requests; a slow request or a slow client holds a whole
worker, and sync workers close the connection after every response (no keep-alive).
"""

# Every setting and hook in common.py (its __all__ names them all, found by gunicorn's own list):
# gunicorn reads a config file's module globals, so what this import binds IS this file's
# settings. Anything below it overrides common.py for this mode.
# ruff: noqa: F403
from deploy.gunicorn.common import *
from deploy.gunicorn.common import bind_from_env

# --- Server socket -------------------------------------------------------------------------------

# The WSGI port; BIND or PORT overrides it.
bind = bind_from_env(8001)

# --- Worker processes ----------------------------------------------------------------------------

# The WSGI callable, so `gunicorn -c this-file` needs no app argument.
wsgi_app = "project.wsgi:application"
# One request per process: concurrency is WEB_CONCURRENCY, nothing else.
worker_class = "sync"
