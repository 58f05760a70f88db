"""ASGI entry point: `gunicorn project.asgi:application -k uvicorn_worker.UvicornWorker`."""

import os

# Read by settings.py before Django configures itself (CONN_MAX_AGE depends on it).
os.environ["DJANGO_INTERFACE"] = "asgi"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

from apps.dualserve.asgi import get_asgi_application

application = get_asgi_application()
