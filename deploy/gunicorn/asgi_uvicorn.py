"""gunicorn config: ASGI on uvicorn workers (uvloop + httptools) managed by gunicorn.

Run from the repo root: `gunicorn -c deploy/gunicorn/asgi_uvicorn.py`. The worker class is the
project's subclass of uvicorn_worker.UvicornWorker (deploy/workers.py), which passes on what the
stock class drops: lifespan "on", worker_connections, graceful_timeout, and this access log format.
"""

# Every setting and hook in common.py (its __all__ names them all, found by gunicorn's own list):
# gunicorn reads a config file's module globals, so what this import binds IS this file's
# settings. Anything below it overrides common.py for this mode.
# ruff: noqa: F403
from deploy.gunicorn.common import *
from deploy.gunicorn.common import bind_from_env

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
