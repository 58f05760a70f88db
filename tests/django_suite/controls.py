"""Deliberately broken replacements: the runner must report what they break.

Imported only by the runner's child process, after django.setup().
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.middleware import security


class SecurityMiddlewareWithoutNosniff(security.SecurityMiddleware):
    """Django's SecurityMiddleware that forgets `X-Content-Type-Options: nosniff`."""

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        response = super().process_response(request, response)
        response.headers.pop("X-Content-Type-Options", None)
        return response
