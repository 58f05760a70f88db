"""Query and form parameters of the showcase views: parsed and bounded once, for both twins.

Every parser raises ParamError with a message naming the parameter, what it accepts and what it
got; the views turn that into a 400 JSON answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from django.conf import settings

# Digits only (an optional sign), short enough that int() stays cheap whatever the client sends.
INTEGER_RE = re.compile(r"[+-]?[0-9]{1,12}")

#: Body size above which /upload/ answers 413; SHOWCASE_UPLOAD_MAX_BYTES overrides it.
UPLOAD_MAX_BYTES = 64 * 1024 * 1024
#: Longest stream the stream views agree to send (events x interval).
STREAM_MAX_MS = 60_000
ITEM_NAME_MAX_LENGTH = 100


class ParamError(ValueError):
    """The request's input is refused; `status` is the HTTP answer (400, or 413 for size)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class IntParam:
    """An integer query parameter with a default and inclusive bounds."""

    name: str
    default: int
    low: int
    high: int

    def parse(self, query: Mapping[str, str]) -> int:
        """Return the parameter's value from `query`, or the default when absent."""
        raw = query.get(self.name)
        if raw is None:
            return self.default
        if not INTEGER_RE.fullmatch(raw):
            raise ParamError(f"{self.name} must be an integer, got {raw[:40]!r}")
        value = int(raw)
        if not self.low <= value <= self.high:
            raise ParamError(f"{self.name} must be between {self.low} and {self.high}, got {value}")
        return value


SLEEP_MS = IntParam("ms", default=100, low=0, high=10_000)
UPSTREAM_MS = IntParam("ms", default=100, low=0, high=10_000)
CPU_N = IntParam("n", default=100_000, low=0, high=5_000_000)
STREAM_EVENTS = IntParam("events", default=5, low=1, high=1_000)
STREAM_INTERVAL = IntParam("interval", default=200, low=0, high=10_000)
ITEM_ID = IntParam("id", default=1, low=1, high=2**63 - 1)
ITEM_VALUE = IntParam("value", default=0, low=-(2**31), high=2**31 - 1)


def sleep_ms(query: Mapping[str, str]) -> int:
    """Return `ms` for the sleep views."""
    return SLEEP_MS.parse(query)


def upstream_ms(query: Mapping[str, str]) -> int:
    """Return `ms` for the upstream views."""
    return UPSTREAM_MS.parse(query)


def cpu_n(query: Mapping[str, str]) -> int:
    """Return `n` for the cpu views."""
    return CPU_N.parse(query)


def stream(query: Mapping[str, str]) -> tuple[int, int]:
    """Return (events, interval in ms) for the stream views, the whole stream bounded."""
    events = STREAM_EVENTS.parse(query)
    interval = STREAM_INTERVAL.parse(query)
    # The first event goes out at once, then one per interval.
    if (events - 1) * interval > STREAM_MAX_MS:
        raise ParamError(
            f"events x interval must stay within {STREAM_MAX_MS} ms, "
            f"got {events - 1} x {interval} ms"
        )
    return events, interval


def item_id(query: Mapping[str, str]) -> int | None:
    """Return the `id` to read, or None when the client asks for any item."""
    if query.get("id") is None:
        return None
    return ITEM_ID.parse(query)


def item_name(name: str) -> str:
    """Return `name` when it can name an item."""
    if not name or len(name) > ITEM_NAME_MAX_LENGTH or not name.isprintable():
        raise ParamError(
            f"name must be 1 to {ITEM_NAME_MAX_LENGTH} printable characters, got {name[:40]!r}"
        )
    return name


def new_item(data: Mapping[str, str]) -> tuple[str, int]:
    """Return (name, value) for an item to create, from the POST form (both optional)."""
    return item_name(data.get("name", "posted")), ITEM_VALUE.parse(data)


def json_object(body: bytes) -> dict[str, object]:
    """Return the JSON object in `body`; refuse anything else with a message saying why."""
    try:
        data = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ParamError(f"JSON body is not UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ParamError(f"JSON body is malformed: {exc.msg} at character {exc.pos}") from None
    except RecursionError:
        # The C decoder recurses once per nesting level: a body of 100,000 "[" exhausts it.
        raise ParamError("JSON body is nested too deeply") from None
    except ValueError as exc:
        # Integers longer than sys.get_int_max_str_digits() (4,300 by default).
        raise ParamError(f"JSON body is refused: {str(exc)[:80]}") from None
    if not isinstance(data, dict):
        raise ParamError(f"JSON body must be an object, got {type(data).__name__}")
    return data


def new_item_json(body: bytes) -> tuple[str, int]:
    """Return (name, value) for an item to create, from a JSON object (both optional)."""
    data = json_object(body)
    name = data.get("name", "posted")
    if not isinstance(name, str):
        raise ParamError(f"name must be a string, got {type(name).__name__}")
    value = data.get("value", 0)
    # bool is an int subclass: true must not pass as 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParamError(f"value must be an integer, got {type(value).__name__}")
    if not ITEM_VALUE.low <= value <= ITEM_VALUE.high:
        raise ParamError(
            f"value must be between {ITEM_VALUE.low} and {ITEM_VALUE.high}, got {value}"
        )
    return item_name(name), value


def is_json(meta: Mapping[str, object]) -> bool:
    """Return whether the request declares a JSON body (application/json, any parameters)."""
    content_type = str(meta.get("CONTENT_TYPE", ""))
    return content_type.split(";", 1)[0].strip().lower() == "application/json"


def complete_body(meta: Mapping[str, object], received: int) -> None:
    """Refuse a body shorter than its Content-Length: the client stopped sending early.

    gunicorn's WSGI workers end a body at the client's EOF without an error (its LengthReader
    returns what it has), so a form cut short would otherwise be taken as whole.
    """
    raw = meta.get("CONTENT_LENGTH")
    if isinstance(raw, str) and raw.isascii() and raw.isdigit() and received < int(raw):
        raise ParamError(f"body ended after {received} of {int(raw)} bytes")


def upload_max_bytes() -> int:
    """Return the largest body /upload/ accepts."""
    limit: int = getattr(settings, "SHOWCASE_UPLOAD_MAX_BYTES", UPLOAD_MAX_BYTES)
    return limit


def declared_length(meta: Mapping[str, object], limit: int) -> int | None:
    """Return the request's Content-Length (None when absent); refuse one above `limit`."""
    raw = meta.get("CONTENT_LENGTH")
    if raw in (None, ""):
        return None
    if not isinstance(raw, str) or not raw.isascii() or not raw.isdigit():
        raise ParamError(f"Content-Length must be a number of bytes, got {str(raw)[:40]!r}")
    length = int(raw)
    if length > limit:
        raise ParamError(f"body of {length} bytes is over the limit of {limit} bytes", 413)
    return length
