"""The WebSocket side of project.asgi: an origin check, the session and user, then the routes.

`get_websocket_application("project.routing")` builds what project.asgi serves for the
`websocket` scope from the `websocket_urlpatterns` of a URLconf-like module, outermost first:

- the origin check: a handshake whose Origin is not one of ALLOWED_HOSTS (Channels'
  AllowedHostsOriginValidator rules) is refused with HTTP 403 before anything else runs.
  Browsers send cookies with a cross-site WebSocket handshake and never preflight it, so
  without this any page could open a socket with the visitor's session (cross-site WebSocket
  hijacking). A client that sends no Origin (not a browser) is refused too, as by Channels.
- Channels' `AuthMiddlewareStack`: scope["session"] and scope["user"] from the session cookie,
  as Django's middlewares give a request.
- the routes, then a catch-all that refuses a path no route matches (403) instead of letting
  URLRouter raise, which every server logs as an application error with a traceback.

Refusals go through `refuse`, a plain ASGI callable, not through a Channels consumer (Channels'
own WebsocketDenier is one): every consumer subscribes to the channel layer before it reads the
handshake. With channels-redis 4.3 on redis-py 8, a subscription cancelled within a few
milliseconds of its start ignores the cancellation: the refused connection's task then lives on
until redis-py's 5 s socket timeout and ends with a TimeoutError traceback in the server log,
a cost any client could make a server pay at will, one cheap handshake at a time.

Only ASGI serves WebSockets: WSGI has no way to hold a connection open, and nginx's WSGI entry
refuses an upgrade itself (nginx/nginx.conf.template).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from importlib import import_module
from typing import Any, cast
from urllib.parse import ParseResult, urlparse

from channels.auth import AuthMiddlewareStack
from channels.routing import URLRouter
from channels.security.websocket import (
    AllowedHostsOriginValidator,
)
from django.urls import re_path

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
    """Refuse a WebSocket handshake: the server answers HTTP 403."""
    await receive()  # websocket.connect
    await send({"type": "websocket.close"})


def origin_of(scope: Scope) -> ParseResult | None:
    """Return the handshake's Origin header, parsed as Channels' validator parses it."""
    origins = [value for name, value in scope.get("headers", []) if name == b"origin"]
    return urlparse(origins[-1].decode("latin-1")) if origins else None


class OriginCheck:
    """Pass on handshakes from the site's own origins; refuse the others with `refuse`.

    The origins allowed are Channels' AllowedHostsOriginValidator's: ALLOWED_HOSTS (read when
    this is built), or localhost with DEBUG on and ALLOWED_HOSTS empty.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.validator = AllowedHostsOriginValidator(app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.validator.valid_origin(origin_of(scope)):
            await self.app(scope, receive, send)
        else:
            await refuse(scope, receive, send)


def include(module: str) -> Any:
    """Return a router over the `websocket_urlpatterns` of `module`, a dotted module path.

    Django's `include("app.urls")` for WebSocket routes (Channels' URLRouter takes no include):
    the project's routing names an app's routes by string, as project.urls does, so it holds
    no import of the app. Use it under a prefix: `path("chat/", include("apps.chat.routing"))`.
    """
    return URLRouter(import_module(module).websocket_urlpatterns)


def get_websocket_application(urlconf: str) -> OriginCheck:
    """Return the ASGI application for the `websocket` scope: origin check, session, routes.

    `urlconf` names the module whose `websocket_urlpatterns` are served. Call it once Django is
    set up: the routes may import models, and the origin check reads ALLOWED_HOSTS here.
    """
    routes = import_module(urlconf).websocket_urlpatterns
    # Channels' router calls an ASGI app where Django's calls a view: django-stubs knows views.
    router = URLRouter([*routes, re_path(r"", cast(Any, refuse))])
    return OriginCheck(AuthMiddlewareStack(router))
