"""WebSocket routes, as project/urls.py is for HTTP: served under ASGI only (project.asgi)."""

from django.urls import (
    URLPattern,
    URLResolver,
    # showcase:begin
    path,
    # showcase:end
)

# showcase:begin
from apps.dualserve.websocket import include

# showcase:end

# Channels' routing: path() and re_path() to consumers (`Consumer.as_asgi()`), an app's own
# routes with include(). A path that no route matches is refused (apps.dualserve.websocket).
websocket_urlpatterns: list[URLPattern | URLResolver] = []
# showcase:begin
websocket_urlpatterns += [path("", include("apps.showcase.routing"))]
# showcase:end
