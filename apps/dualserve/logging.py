"""The request ID of the request being served, for log records in both interfaces."""

from __future__ import annotations

import logging
from contextvars import ContextVar

# A ContextVar, not a thread-local: under ASGI one thread serves many requests, and
# sync_to_async copies the context into the thread it hops to, so sync code sees it too.
request_id_var: ContextVar[str] = ContextVar("request_id", default="-")
# Where RequestContextMiddleware also keeps the ID, in request.META: a key no client can set
# (clients only make HTTP_* keys), read when the context no longer holds it.
REQUEST_ID_META_KEY = "dualserve.request_id"
NO_REQUEST_ID = "-"


class RequestIDFilter(logging.Filter):
    """Put the request ID on every record as `record.request_id`.

    From the context while a request is served; else from the record's request: Django logs
    a 4xx/5xx answer ("Not Found: ...", on `django.request`) after the middleware returned
    and the context was reset, with the request attached to the record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = request_id_var.get()
        if request_id == NO_REQUEST_ID:
            meta = getattr(getattr(record, "request", None), "META", None)
            if isinstance(meta, dict):
                request_id = meta.get(REQUEST_ID_META_KEY, NO_REQUEST_ID)
        record.request_id = request_id
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
