"""gunicorn's access log, formatted and written by a thread: a request only queues its values.

`QueuedAccessLogger` is a gunicorn `logger_class`. Its `access()` appends the values gunicorn's
atoms are made of (response, request headers, environ, duration, the time) to a queue; every
FLUSH_INTERVAL a thread of the worker process turns what is queued into lines with gunicorn's
own atoms and format (`access_log_format`) and writes them with one write. Lines keep their
order (one queue, written under one lock); what is queued at a graceful stop is written before
the process exits (atexit, which every gunicorn worker reaches after SIGTERM, SIGINT, SIGQUIT or
max_requests). A worker killed with SIGKILL loses up to FLUSH_INTERVAL of lines.

The thread runs in the worker, under the GIL: formatting costs the same CPU, only later and in
batches. What is saved is the logging call and one write per request. Measured served (one
worker, `python -m lab.profile_handlers --served`), the line cost an ASGI request about 97 us
of CPU through gunicorn's Logger and 59 us queued; a WSGI sync request 68 and 36 us. Behind
nginx, whose access log carries the same request ID, GUNICORN_ACCESS_LOG=off saves all of it.
"""

from __future__ import annotations

import atexit
import collections
import datetime
import logging
import os
import threading
import time
import traceback
import weakref
from typing import Any

from gunicorn import glogging

# Seconds between two batches: how late a line may reach the log.
FLUSH_INTERVAL = 0.1
# Lines a worker may have waiting: past it, the request that queues one writes the batch
# itself, as gunicorn's own write would block on a lagging stdout (no unbounded memory).
MAX_PENDING = 10_000
# Seconds an exiting worker waits for the writer to finish its batch.
FLUSH_TIMEOUT = 5.0
# gunicorn's %(t)s (Apache's common log format), taken when the request ended.
TIME_FORMAT = "[%d/%b/%Y:%H:%M:%S %z]"

Entry = tuple[Any, Any, Any, datetime.timedelta, float]


class QueuedAccessLogger(glogging.Logger):  # type: ignore[misc]  # untyped base (no py.typed)
    """gunicorn's Logger, with access lines formatted and written by a thread of each worker."""

    def __init__(self, cfg: Any) -> None:
        self._forget_writer()
        # gunicorn's master makes this logger, then forks the workers; only the forking thread
        # survives a fork, so each worker starts a writer (and takes locks) of its own.
        this = weakref.ref(self)

        def forget_in_child() -> None:
            log = this()
            if log is not None:
                log._forget_writer()

        os.register_at_fork(after_in_child=forget_in_child)
        super().__init__(cfg)

    def _forget_writer(self) -> None:
        # deque.append and popleft are atomic: a request takes no lock and wakes no thread.
        self._pending: collections.deque[Entry] = collections.deque()
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None

    def access(self, resp: Any, req: Any, environ: Any, request_time: datetime.timedelta) -> None:
        """Queue one request's access line; the writer formats and writes it."""
        if not self.access_log_enabled:
            return
        if self._writer is None:
            self._start_writer()
        self._pending.append((resp, req, environ, request_time, time.time()))
        if len(self._pending) >= MAX_PENDING:
            self.flush()

    def flush(self) -> None:
        """Format and write every queued line, in order."""
        with self._write_lock:
            entries = []
            while self._pending:
                entries.append(self._pending.popleft())
            lines = [line for line in map(self._format, entries) if line is not None]
            if lines:
                self._write(lines)

    def close(self) -> None:
        """Stop the writer and write what is still queued (at exit; safe to call twice)."""
        if self._writer is None:
            return
        self._stop.set()
        self._writer.join(FLUSH_TIMEOUT)
        self.flush()

    def _start_writer(self) -> None:
        with self._write_lock:
            if self._writer is not None:
                return  # another thread of the worker (gthread) started it meanwhile
            writer = threading.Thread(
                target=self._write_batches, name="gunicorn-access-log", daemon=True
            )
            writer.start()
            self._writer = writer
            # Daemon, so it never holds the exit up; atexit runs before daemon threads stop.
            atexit.register(self.close)

    def _write_batches(self) -> None:
        while not self._stop.wait(FLUSH_INTERVAL):
            self.flush()

    def _format(self, entry: Entry) -> str | None:
        """Return the access line of `entry` as gunicorn's access() would have written it."""
        resp, req, environ, request_time, ended = entry
        try:
            atoms = self.atoms(resp, req, environ, request_time)
            atoms["t"] = time.strftime(TIME_FORMAT, time.localtime(ended))
            line: str = self.cfg.access_log_format % self.atoms_wrapper_class(atoms)
        except Exception:
            self.error(traceback.format_exc())
            return None
        return line

    def _write(self, lines: list[str]) -> None:
        # gunicorn's own handlers (accesslog = "-" or a file) format "%(message)s": one write.
        handlers = self.access_log.handlers
        ours = [h for h in handlers if isinstance(h, logging.StreamHandler) and is_gunicorns(h)]
        if ours:
            text = "".join(f"{line}\n" for line in lines)
        for handler in ours:
            # The handler's lock: gunicorn swaps its stream under it on SIGUSR1.
            handler.acquire()
            try:
                handler.stream.write(text)
                handler.stream.flush()
            except Exception:
                record = {"msg": "%d access lines", "args": (len(lines),)}
                handler.handleError(logging.makeLogRecord(record))
            finally:
                handler.release()
        # Any other handler (syslog, logconfig's, a test's capture): one record a line.
        others = [h for h in handlers if h not in ours]
        for line in lines if others else ():
            record = self.access_log.makeRecord(
                self.access_log.name, logging.INFO, __name__, 0, "%s", (line,), None
            )
            for handler in others:
                if record.levelno >= handler.level:
                    handler.handle(record)


def is_gunicorns(handler: logging.Handler) -> bool:
    """Return whether gunicorn's Logger.setup() made `handler` (accesslog, errorlog, syslog)."""
    return bool(getattr(handler, "_gunicorn", False))
