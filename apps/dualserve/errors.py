"""Django's 500 handler, with one exception: a database that cannot be reached is a 503.

A lost database (PostgreSQL restarting, a failover, the pool timing out) is not a bug in the
request: it is the service being briefly unavailable, and clients and proxies act on the
difference. A 503 with Retry-After tells them to come back shortly; a 500 says the request
itself failed. Django calls `handler500` for every uncaught exception, from a view or from a
middleware (the session middleware's query included), in both interfaces, while the exception
is being handled: `sys.exc_info()` names it. The exception is still logged as usual
(django.request, with its traceback); the client gets a short plain-text body either way.
"""

from __future__ import annotations

import sys

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse
from django.views import defaults

# Seconds a client should wait before trying again: about what a PostgreSQL restart or a
# managed failover takes to accept connections again, short enough for a person to retry.
RETRY_AFTER_S = 5

# What Django raises when the database is unreachable: a refused or dropped connection, a pool
# that timed out waiting for one (psycopg's PoolTimeout arrives as OperationalError), a
# connection closed under a request. An error in a query itself (IntegrityError, ProgrammingError)
# is a bug: it stays a 500.
UNAVAILABLE = (OperationalError, InterfaceError)


def database_unavailable(exception: BaseException | None) -> bool:
    """Whether `exception` (or what caused it) says the database cannot be reached."""
    while exception is not None:
        if isinstance(exception, UNAVAILABLE):
            return True
        exception = exception.__cause__
    return False


def server_error(request: HttpRequest) -> HttpResponse:
    """`handler500`: a 503 with Retry-After when the database is down, else Django's 500."""
    if database_unavailable(sys.exc_info()[1]):
        response = HttpResponse(
            "Service unavailable: the database cannot be reached. Try again shortly.\n",
            status=503,
            content_type="text/plain; charset=utf-8",
        )
        response["Retry-After"] = str(RETRY_AFTER_S)
        return response
    return defaults.server_error(request)
