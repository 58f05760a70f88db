"""The WebSocket side of project.asgi: Channels' origin check, session and user, then routes.

`get_websocket_application("project.routing")` builds what project.asgi serves for the
`websocket` scope from the `websocket_urlpatterns` of a URLconf-like module, outermost first:

- `AllowedHostsOriginValidator`: a handshake whose Origin is not one of ALLOWED_HOSTS is
  refused (HTTP 403) before anything else runs. Browsers send cookies with a cross-site
  WebSocket handshake and never preflight it, so without this check any page could open a
  socket with the visitor's session (cross-site WebSocket hijacking).
- `AuthMiddlewareStack`: scope["session"] and scope["user"] from the session cookie, as
  Django's middlewares give a request.
- the routes, then a catch-all that refuses a path no route matches (403) instead of letting
  URLRouter raise, which every server logs as an application error with a traceback.

Only ASGI serves WebSockets: WSGI has no way to hold a connection open, and nginx's WSGI entry
refuses an upgrade itself (nginx/nginx.conf.template).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from channels.auth import AuthMiddlewareStack  # type: ignore[import-untyped]
from channels.generic.websocket import AsyncWebsocketConsumer  # type: ignore[import-untyped]
from channels.routing import URLRouter  # type: ignore[import-untyped]
from channels.security.websocket import (  # type: ignore[import-untyped]
    AllowedHostsOriginValidator,
)
from django.urls import re_path


class NoRouteConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]  # untyped base (no py.typed)
    """Refuse the handshake: no route serves this path (the client sees HTTP 403)."""

    async def connect(self) -> None:
        await self.close()


def include(module: str) -> Any:
    """Return a router over the `websocket_urlpatterns` of `module`, a dotted module path.

    Django's `include("app.urls")` for WebSocket routes (Channels' URLRouter takes no include):
    the project's routing names an app's routes by string, as project.urls does, so it holds
    no import of the app. Use it under a prefix: `path("chat/", include("apps.chat.routing"))`.
    """
    return URLRouter(import_module(module).websocket_urlpatterns)


def get_websocket_application(urlconf: str) -> Any:
    """Return the ASGI application for the `websocket` scope: origin check, session, routes.

    `urlconf` names the module whose `websocket_urlpatterns` are served. Call it once Django is
    set up: the routes may import models, and the origin check reads ALLOWED_HOSTS here.
    """
    routes = import_module(urlconf).websocket_urlpatterns
    router = URLRouter([*routes, re_path(r"", NoRouteConsumer.as_asgi())])
    return AllowedHostsOriginValidator(AuthMiddlewareStack(router))
