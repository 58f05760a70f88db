"""ASGI entry point: `gunicorn project.asgi:application -k uvicorn_worker.UvicornWorker`."""

import os

from django.core.asgi import get_asgi_application

# Read by settings.py before Django configures itself (CONN_MAX_AGE depends on it).
os.environ["DJANGO_INTERFACE"] = "asgi"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

django_application = get_asgi_application()

from apps.core.asgi import LifespanApp  # noqa: E402  (needs the app registry ready)

application = LifespanApp(django_application)
