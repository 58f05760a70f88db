"""ASGI entry point: `gunicorn project.asgi:application -k uvicorn_worker.UvicornWorker`."""

import os

# Read by settings.py before Django configures itself (CONN_MAX_AGE depends on it).
os.environ["DJANGO_INTERFACE"] = "asgi"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

from channels.routing import ProtocolTypeRouter

from apps.dualserve.asgi import get_asgi_application
from apps.dualserve.websocket import get_websocket_application

# Sets Django up first: the WebSocket routes may import models. It answers lifespan itself.
django_application = get_asgi_application()

application = ProtocolTypeRouter(
    {
        "http": django_application,
        "lifespan": django_application,
        "websocket": get_websocket_application("project.routing"),
    }
)
