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
