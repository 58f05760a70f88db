"""The request ID of the request being served, for log records in both interfaces."""

from __future__ import annotations

import logging
from contextvars import ContextVar

# A ContextVar, not a thread-local: under ASGI one thread serves many requests, and
# sync_to_async copies the context into the thread it hops to, so sync code sees it too.
request_id_var: ContextVar[str] = ContextVar("request_id", default="-")


class RequestIDFilter(logging.Filter):
    """Put the current request ID on every record as `record.request_id`."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class DropTracebackFilter(logging.Filter):
    """Keep a record's message but drop its traceback.

    For `django.security`: Django logs every refused request (a bad Host, too many form
    fields, a body over the limit) there with the exception attached, so each hostile request
    would print ~40 lines and one client could flood the log. The message alone names the
    check and the request ID ties it to the access log line. A handler filter, because a
    logger's own filters do not apply to its children (django.security.DisallowedHost, ...).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info = None
        record.exc_text = None
        return True
