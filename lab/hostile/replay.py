"""Send one case over a raw socket, read what comes back, and say who answered and if it is right.

No HTTP library on the client side: a library would fix or refuse the very bytes under test.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import time
from dataclasses import dataclass, field

from deploy.workers import HEAD_OVER_LIMITS
from lab.hostile.corpus import Case

# The layers an answer can come from.
NGINX = "nginx"
GUNICORN = "gunicorn"
# Only as a front (the server parsing the requests): gunicorn's native asgi worker.
GUNICORN_ASGI = "gunicorn-asgi"
UVICORN = "uvicorn"
APP = "app"
NOBODY = "-"
UNKNOWN = "unknown"

READ_BYTES = 65536
# After a whole response, how long to keep listening for a second one (a request the server
# found inside the first one's body: smuggling).
LINGER = 0.3
STATUS_LINE_RE = re.compile(rb"HTTP/1\.[01] ([0-9]{3})[^\r\n]*\r?\n")
CHUNK_SIZE_RE = re.compile(rb"([0-9A-Fa-f]+)[^\r\n]*\r\n")
CANARY_PATH = "/sync/hello/"
# The whole body of uvicorn's answer to a request its parser refuses (h11 and httptools), and
# of the template's UvicornWorker to a head over gunicorn's limits.
UVICORN_REFUSAL = "Invalid HTTP request received."
# What the replay sends in the canary: a plain request any correct stack serves with 200.
CANARY_TEMPLATE = "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"


@dataclass
class Response:
    """One HTTP response parsed off the wire."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        """Return the body decoded leniently, for matching and messages."""
        return self.body.decode("utf-8", errors="replace")


@dataclass
class Answer:
    """Everything a case's connection produced."""

    raw: bytes
    responses: list[Response]
    outcome: str  # "answered", "closed" (nothing, then EOF or reset) or "timeout"
    seconds: float

    @property
    def first(self) -> Response | None:
        """Return the first response, if any."""
        return self.responses[0] if self.responses else None

    @property
    def status(self) -> int | None:
        """Return the first response's status, if any."""
        return self.first.status if self.first else None

    def summary(self) -> str:
        """Return the status, or closed/timeout."""
        return str(self.status) if self.status is not None else self.outcome


@dataclass
class Result:
    """A case replayed: the answer, the layer that gave it, the verdict and its reasons."""

    case: Case
    answer: Answer
    layer: str
    problems: list[str] = field(default_factory=list)
    canary: int | str | None = None
    # What went wrong but is a known gap of the server answering (case `gap`): reported, not failed.
    gaps: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Return whether every expectation held."""
        return not self.problems

    def as_dict(self) -> dict[str, object]:
        """Return the result as JSON-ready data."""
        return {
            "id": self.case.id,
            "name": self.case.name,
            "about": self.case.about,
            "expect": list(self.case.expect),
            "answer": self.answer.summary(),
            "layer": self.layer,
            "responses": len(self.answer.responses),
            "seconds": round(self.answer.seconds, 3),
            "canary": self.canary,
            "passed": self.passed,
            "problems": self.problems,
            "known_gap": self.gaps,
        }


def is_loopback(host: str) -> bool:
    """Return whether `host` names only loopback addresses."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def split_head(data: bytes) -> tuple[int, dict[str, str], int] | None:
    """Return (status, headers, offset of the body) when `data` holds a whole head."""
    match = STATUS_LINE_RE.match(data)
    if not match:
        return None
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    headers: dict[str, str] = {}
    for line in data[match.end() : end].split(b"\r\n"):
        name, _, value = line.partition(b":")
        key = name.strip().decode("latin-1").lower()
        text = value.strip().decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return int(match.group(1)), headers, end + 4


def chunked_length(data: bytes) -> int | None:
    """Return how many bytes of `data` a whole chunked body takes, or None if incomplete."""
    position = 0
    while True:
        match = CHUNK_SIZE_RE.match(data, position)
        if not match:
            return None
        size = int(match.group(1), 16)
        position = match.end()
        if size == 0:
            end = data.find(b"\r\n\r\n", position - 2)
            return end + 4 if end >= 0 else None
        position += size + 2
        if position > len(data):
            return None


def parse_responses(data: bytes, closed: bool) -> tuple[list[Response], bool]:
    """Return the responses in `data`, and whether the last one is complete."""
    responses: list[Response] = []
    position = 0
    while position < len(data):
        head = split_head(data[position:])
        if head is None:
            return responses, False
        status, headers, offset = head
        body_start = position + offset
        if "chunked" in headers.get("transfer-encoding", "").lower():
            length = chunked_length(data[body_start:])
            if length is None:
                return responses, False
            body = data[body_start : body_start + length]
        elif "content-length" in headers and headers["content-length"].isdigit():
            length = int(headers["content-length"])
            if len(data) - body_start < length:
                return responses, False
            body = data[body_start : body_start + length]
        elif status in (204, 304) or 100 <= status < 200:
            length, body = 0, b""
        else:
            # Delimited by the connection's end.
            if not closed:
                return responses, False
            length, body = len(data) - body_start, data[body_start:]
        responses.append(Response(status, headers, body))
        position = body_start + length
    return responses, True


def exchange(
    host: str,
    port: int,
    payload: bytes,
    timeout: float,
    half_close: bool = False,
    linger: float = 0.0,
) -> Answer:
    """Send `payload` on a new connection; read until it closes, or the answer is whole.

    After a whole answer, keep listening `linger` seconds for another one.
    """
    started = time.monotonic()
    received = b""
    deadline = started + timeout
    complete_at: float | None = None
    outcome = "timeout"
    with socket.create_connection((host, port), timeout=timeout) as sock:
        try:
            sock.sendall(payload)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            # The server may refuse early and close while the rest is still being sent
            # (nginx on an oversized head): what it said is still worth reading.
            pass
        while True:
            now = time.monotonic()
            limit = min(deadline, complete_at + linger) if complete_at is not None else deadline
            if now >= limit:
                break
            sock.settimeout(limit - now)
            try:
                chunk = sock.recv(READ_BYTES)
            except TimeoutError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                outcome = "closed"
                break
            received += chunk
            _, complete = parse_responses(received, closed=False)
            if complete and complete_at is None:
                complete_at = time.monotonic()
    responses, _ = parse_responses(received, closed=outcome == "closed")
    if responses:
        outcome = "answered"
    return Answer(received, responses, outcome, time.monotonic() - started)


def classify(answer: Answer) -> str:
    """Return the layer that wrote the first response (nginx, gunicorn, uvicorn, app)."""
    response = answer.first
    if response is None:
        return NOBODY
    headers = response.headers
    text = response.text
    # RequestContextMiddleware (apps/dualserve/middleware.py) stamps every answer of the app; nginx
    # passes the header on, so this goes before nginx's own marks.
    if "x-request-id" in headers or "x-interface" in headers:
        return APP
    # nginx's own error pages; its Server header is on every proxied answer too, so it proves
    # nothing on its own.
    if "<center>nginx</center>" in text:
        return NGINX
    # Django's ASGI handler answers a request it cannot build before any middleware runs.
    if re.fullmatch(r"<h1>[A-Za-z ]+ \([0-9]{3}\)</h1>", text.strip()):
        return APP
    server = headers.get("server", "").lower()
    # gunicorn's WSGI workers (util.write_error): an HTML page, no Server header. Its messages
    # ("Invalid HTTP request line: ...") look like uvicorn's, so this goes first.
    if server.startswith(GUNICORN) or "<h1><p>" in text:
        return GUNICORN
    if server.startswith(UVICORN) or text.strip() in {UVICORN_REFUSAL, HEAD_OVER_LIMITS}:
        return UVICORN
    # gunicorn's asgi worker (_send_error_response): a plain-text message. nginx's own pages
    # are HTML and carry its mark, so plain text behind nginx came from the server too.
    if headers.get("content-type", "").startswith("text/plain"):
        return GUNICORN
    if server.startswith(NGINX):
        return NGINX
    return UNKNOWN


def judge(case: Case, answer: Answer, layer: str) -> list[str]:
    """Return what is wrong with `answer` to `case` (nothing when it is right)."""
    problems = []
    outcome = "closed" if answer.outcome == "answered" and not answer.responses else answer.outcome
    if not case.accepts(answer.status, outcome):
        problems.append(f"answered {answer.summary()}, expected {' or '.join(case.expect)}")
    for response in answer.responses:
        if response.status >= 500 and layer == APP:
            problems.append(f"the app answered {response.status}")
        if "Traceback" in response.text:
            problems.append("a traceback in the answer")
        if case.refute and case.refute in response.text:
            problems.append(f"the answer contains {case.refute!r}")
    if case.smuggle and len(answer.responses) > 1:
        problems.append(f"{len(answer.responses)} responses: the hidden request was served")
    return problems


def front_server(
    host: str, port: int, host_header: str = "localhost", path: str = CANARY_PATH
) -> str:
    """Return the server that parses requests on host:port, read off the canary's answer.

    nginx (server_tokens off still says "nginx"), uvicorn, gunicorn's asgi worker, or gunicorn
    (its WSGI workers): each names itself in the Server header of every answer.
    """
    request = CANARY_TEMPLATE.format(path=path, host=host_header).encode("ascii")
    answer = exchange(host, port, request, 10.0)
    server = answer.first.headers.get("server", "").lower() if answer.first else ""
    if server.startswith("gunicorn/asgi"):
        return GUNICORN_ASGI
    for name in (NGINX, UVICORN, GUNICORN):
        if server.startswith(name):
            return name
    return UNKNOWN


def canary(
    host: str, port: int, host_header: str, path: str = CANARY_PATH, timeout: float = 10.0
) -> int | str:
    """Return the status of a plain GET on a fresh connection (closed/timeout when none)."""
    request = CANARY_TEMPLATE.format(path=path, host=host_header).encode("ascii")
    try:
        answer = exchange(host, port, request, timeout)
    except OSError as exc:
        return f"error: {exc}"
    return answer.status if answer.status is not None else answer.outcome


def replay(
    case: Case,
    host: str,
    port: int,
    *,
    host_header: str = "localhost",
    tag: str = "run",
    with_canary: bool = True,
    canary_path: str = CANARY_PATH,
    front: str = UNKNOWN,
) -> Result:
    """Replay `case` against host:port and judge the answer; then send the canary.

    `front` names the server that parses the requests (see front_server): where the case lists
    it as a known gap, what is wrong is recorded in `gaps` instead of failing the case.
    """
    payload = case.payload(host_header, tag)
    # Only a case that hides a request waits for a second answer after the first.
    linger = LINGER if case.smuggle else 0.0
    try:
        answer = exchange(host, port, payload, case.timeout, case.half_close, linger)
    except OSError as exc:
        answer = Answer(b"", [], f"connect failed: {exc}", 0.0)
    layer = classify(answer)
    result = Result(case, answer, layer, judge(case, answer, layer))
    if result.problems and front in case.gap:
        result.gaps, result.problems = result.problems, []
    if with_canary:
        # A refused request may leave the server busy for a moment (a sync worker finishing a
        # close): the canary asks once, on a fresh connection, with a generous timeout.
        result.canary = canary(host, port, host_header, canary_path)
        if result.canary != 200:
            result.problems.append(f"canary after the case got {result.canary}, not 200")
    return result
