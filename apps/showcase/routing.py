"""The showcase's WebSocket routes, included by project/routing.py."""

from django.urls import URLPattern, path

from apps.showcase import consumers

websocket_urlpatterns: list[URLPattern] = [
    path("ws/echo/", consumers.EchoConsumer.as_asgi(), name="ws_echo"),
    path("ws/live/", consumers.LiveConsumer.as_asgi(), name="ws_live"),
    path("ws/private/", consumers.PrivateConsumer.as_asgi(), name="ws_private"),
]
