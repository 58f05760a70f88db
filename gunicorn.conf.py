"""gunicorn's defaults for the commands typed at the repository root, without a config file.

gunicorn reads ./gunicorn.conf.py when no --config is given: `gunicorn project.wsgi` and
`gunicorn project.asgi:application -k uvicorn_worker.UvicornWorker` started side by side from
here would otherwise share gunicorn's ONE per-user control socket (the second unlinks the
first's). The serving modes' own configs (deploy/gunicorn/) set the same, and much more.
"""

# The settings' one definition, with the reason, is in deploy/gunicorn/common.py. Every
# control_socket* setting there belongs here too (tests/deploy/test_gunicorn.py fails otherwise);
# the rest must not: these commands keep gunicorn's other defaults.
from deploy.gunicorn.common import control_socket, control_socket_disable  # noqa: F401
