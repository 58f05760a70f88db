"""gunicorn config: ASGI on gunicorn's native asyncio worker (`-k asgi`, stable since 25.1).

Run from the repo root: `gunicorn -c deploy/gunicorn/asgi_gunicorn.py`. No uvicorn involved:
gunicorn's own protocol, lifespan and access log. It parses HTTP in pure Python unless the
optional C parser is installed (`gunicorn[fast]`, used automatically when present).
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
# gunicorn's native ASGI worker; `threads` has no effect on it (it warns when set above 1).
worker_class = "asgi"
# Concurrent connections per worker: the asgi worker's concurrency limit.
worker_connections = 1000
# asyncio, not uvloop: under gunicorn 27 a uvloop worker loses a SIGTERM that arrives while
# it is still loading the app, so the master waits graceful_timeout and SIGKILLs it (stop
# measured here: 20 s with uvloop, 1.4 s with asyncio, 2 workers stopped right after start).
# Django's own per-request cost dwarfs the loop's (no consistent req/s gap measured).
asgi_loop = "asyncio"
# "on": a start-up that fails stops the server instead of serving without lifespan.
asgi_lifespan = "on"
# The C parser (gunicorn[fast]) when installed, else the pure-Python one.
http_parser = "auto"
