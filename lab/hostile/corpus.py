"""The hostile-request corpus: case files, their metadata block and the payload templates.

A case file is `lab/hostile/corpus/NNN-name.http`: `key: value` lines, a line `---`, then
the request exactly as it goes on the wire. With `crlf: yes` (the default) every LF of the
payload is sent as CRLF, so a file stays readable; `crlf: no` keeps the bytes as written (the
bare-LF cases). Placeholders `{{...}}` are expanded after that, so `{{lf}}` is a bare LF even in
a CRLF file:

==========================  ==============================================================
``{{host}}``                the Host value the replay uses (``--host-header``, localhost)
``{{smuggle}}``             a path unique to this run and case, which must never be served
``{{repeat:TEXT:N}}``       TEXT N times (TEXT without ``:`` or braces)
``{{hex:0d0a00}}``          raw bytes
``{{cr}}`` ``{{lf}}``       a bare CR, a bare LF
``{{files:N}}``             N multipart file parts, boundary ``hostile``, closed
``{{headers:N:SIZE}}``      N header fields ``X-Hostile-<n>`` of SIZE bytes each
``{{body-length}}``         the length of everything after the head's blank line
==========================  ==============================================================

Metadata keys: `about` (one line, required), `expect` (the answers that are right, any of:
a status such as 400, a class such as 4xx, `closed`, `timeout`), `why` (required when 2xx or
5xx is expected: why that is the right answer), `refute` (text the answer must not contain),
`gap` (servers known to accept the case when reached directly, which nginx must catch), `crlf`,
`half-close` (shut the sending side after the payload: a client that stops early),
`timeout` (seconds to wait for an answer), `smuggle` (yes when the payload hides a request
for `{{smuggle}}`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
FILE_RE = re.compile(r"(?P<id>[0-9]{3})-(?P<name>[a-z0-9][a-z0-9-]*)\.http")
PLACEHOLDER_RE = re.compile(rb"\{\{([a-z-]+)((?::[^:{}]*)*)\}\}")
STATUS_RE = re.compile(r"[1-5]([0-9]{2}|xx)")
OUTCOME_WORDS = frozenset({"closed", "timeout"})
# The servers a `gap` may name: the ones the replay recognises by their Server header.
SERVERS = frozenset({"gunicorn", "gunicorn-asgi", "uvicorn"})
KEYS = frozenset(
    {"about", "expect", "why", "refute", "gap", "crlf", "half-close", "timeout", "smuggle"}
)
MULTIPART_BOUNDARY = "hostile"
# A generous bound on a generated payload: the corpus tests limits, not the replaying machine.
MAX_EXPANDED_BYTES = 8 * 1024 * 1024
DEFAULT_TIMEOUT = 2.0
HEAD_ENDS = (b"\r\n\r\n", b"\n\n")


class CaseError(ValueError):
    """A case file cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class Case:
    """One hostile request and what a correct server stack answers to it."""

    id: str
    name: str
    about: str
    expect: tuple[str, ...]
    template: bytes
    why: str = ""
    refute: str = ""
    crlf: bool = True
    half_close: bool = False
    timeout: float = DEFAULT_TIMEOUT
    smuggle: bool = False
    gap: frozenset[str] = frozenset()
    source: Path | None = field(default=None, compare=False)

    @property
    def label(self) -> str:
        """Return `NNN-name`, the case's file name without its suffix."""
        return f"{self.id}-{self.name}"

    def smuggle_path(self, tag: str) -> str:
        """Return the path the case's hidden request asks for, unique to `tag` and the case."""
        return f"/smuggled-{tag}-{self.id}/"

    def payload(self, host: str = "localhost", tag: str = "run") -> bytes:
        """Return the bytes to send: line endings applied, placeholders expanded."""
        raw = self.template.replace(b"\n", b"\r\n") if self.crlf else self.template
        return expand(raw, {"host": host.encode("ascii"), "smuggle": self.smuggle_path(tag)})

    def accepts(self, status: int | None, outcome: str) -> bool:
        """Return whether an answer (a status, or the outcome closed/timeout) is expected."""
        if status is None:
            return outcome in self.expect
        code = str(status)
        return code in self.expect or f"{code[0]}xx" in self.expect


def multipart_files(count: int) -> bytes:
    """Return `count` small file parts and the closing boundary, CRLF-framed."""
    part = (
        f"--{MULTIPART_BOUNDARY}\r\n"
        'Content-Disposition: form-data; name="f"; filename="f.txt"\r\n'
        "Content-Type: text/plain\r\n\r\nx\r\n"
    ).encode()
    return part * count + f"--{MULTIPART_BOUNDARY}--\r\n".encode()


def whole_number(text: str, what: str) -> int:
    """Return `text` as a non-negative integer; raise CaseError naming `what`."""
    if not text.isascii() or not text.isdigit():
        raise CaseError(f"{what} must be a whole number, got {text!r}")
    return int(text)


def expand_one(name: str, args: list[str], values: Mapping[str, bytes | str]) -> bytes:
    """Return the bytes one placeholder stands for (body-length is resolved later)."""
    if name in {"host", "smuggle"} and not args:
        value = values[name]
        return value.encode("ascii") if isinstance(value, str) else value
    if name == "cr" and not args:
        return b"\r"
    if name == "lf" and not args:
        return b"\n"
    if name == "repeat" and len(args) == 2:
        count = whole_number(args[1], "repeat's count")
        if len(args[0]) * count > MAX_EXPANDED_BYTES:
            raise CaseError(f"repeat expands beyond {MAX_EXPANDED_BYTES} bytes")
        return args[0].encode("latin-1") * count
    if name == "hex" and len(args) == 1:
        try:
            return bytes.fromhex(args[0])
        except ValueError:
            raise CaseError(f"hex placeholder holds no hex bytes: {args[0]!r}") from None
    if name == "files" and len(args) == 1:
        return multipart_files(whole_number(args[0], "files' count"))
    if name == "headers" and len(args) == 2:
        count = whole_number(args[0], "headers' count")
        size = whole_number(args[1], "headers' size")
        if count * (size + 20) > MAX_EXPANDED_BYTES:
            raise CaseError(f"headers expand beyond {MAX_EXPANDED_BYTES} bytes")
        return b"".join(b"X-Hostile-%d: %s\r\n" % (n, b"a" * size) for n in range(count))
    raise CaseError(f"unknown placeholder {{{{{':'.join([name, *args])}}}}}")


def expand(raw: bytes, values: Mapping[str, bytes | str]) -> bytes:
    """Return `raw` with every placeholder expanded, `{{body-length}}` last."""
    pieces: list[bytes] = []
    position = 0
    for match in PLACEHOLDER_RE.finditer(raw):
        pieces.append(raw[position : match.start()])
        name = match.group(1).decode("ascii")
        args = [arg.decode("latin-1") for arg in match.group(2).split(b":")[1:]]
        pieces.append(match.group(0) if name == "body-length" else expand_one(name, args, values))
        position = match.end()
    pieces.append(raw[position:])
    expanded = b"".join(pieces)
    if len(expanded) > MAX_EXPANDED_BYTES:
        raise CaseError(f"payload expands beyond {MAX_EXPANDED_BYTES} bytes")
    marker = b"{{body-length}}"
    if marker in expanded:
        ends = [(expanded.find(end), end) for end in HEAD_ENDS if end in expanded]
        if not ends:
            raise CaseError("{{body-length}} needs a blank line that ends the head")
        start, end = min(ends)
        head, body = expanded[:start], expanded[start + len(end) :]
        expanded = head.replace(marker, str(len(body)).encode()) + end + body
    return expanded


def flag(value: str, key: str) -> bool:
    """Return a yes/no metadata value as a bool; raise CaseError otherwise."""
    if value not in {"yes", "no"}:
        raise CaseError(f"{key} must be yes or no, got {value!r}")
    return value == "yes"


def parse_expect(text: str) -> tuple[str, ...]:
    """Return the expected answers, validated."""
    tokens = tuple(text.split())
    if not tokens:
        raise CaseError("expect names no answer")
    for token in tokens:
        if token not in OUTCOME_WORDS and not STATUS_RE.fullmatch(token):
            raise CaseError(f"expect: {token!r} is not a status, a class (4xx), closed or timeout")
    return tokens


def parse_case(data: bytes, filename: str, source: Path | None = None) -> Case:
    """Return the case held by `data`, the content of a file called `filename`."""
    match = FILE_RE.fullmatch(filename)
    if not match:
        raise CaseError(f"{filename}: case files are named NNN-name.http (lower case, digits, -)")
    head, separator, template = data.partition(b"\n---\n")
    if not separator:
        raise CaseError(f"{filename}: no line '---' between the metadata and the request")
    meta: dict[str, str] = {}
    for number, line in enumerate(head.decode("utf-8").splitlines(), start=1):
        key, colon, value = line.partition(":")
        key = key.strip()
        if not colon or key not in KEYS:
            raise CaseError(f"{filename}:{number}: expected one of {sorted(KEYS)}, got {line!r}")
        if key in meta:
            raise CaseError(f"{filename}:{number}: {key} is given twice")
        meta[key] = value.strip()
    try:
        if not meta.get("about"):
            raise CaseError("about is required")
        expect = parse_expect(meta.get("expect", ""))
        needs_why = any(token[0] in "25" for token in expect if token not in OUTCOME_WORDS)
        if needs_why and not meta.get("why"):
            raise CaseError("a 2xx or 5xx answer is expected: say why in `why`")
        smuggle = flag(meta.get("smuggle", "no"), "smuggle")
        if smuggle and b"{{smuggle}}" not in template:
            raise CaseError("smuggle: yes, but the request holds no {{smuggle}} path")
        gap = frozenset(meta.get("gap", "").split())
        if unknown := sorted(gap - SERVERS):
            raise CaseError(f"gap names unknown servers {unknown}: use {sorted(SERVERS)}")
        timeout = float(meta.get("timeout", DEFAULT_TIMEOUT))
        if not 0 < timeout <= 30:
            raise CaseError(f"timeout must be above 0 and at most 30 s, got {timeout}")
        case = Case(
            id=match.group("id"),
            name=match.group("name"),
            about=meta["about"],
            expect=expect,
            template=template,
            why=meta.get("why", ""),
            refute=meta.get("refute", ""),
            crlf=flag(meta.get("crlf", "yes"), "crlf"),
            half_close=flag(meta.get("half-close", "no"), "half-close"),
            timeout=timeout,
            smuggle=smuggle,
            gap=gap,
            source=source,
        )
        case.payload()  # every placeholder must expand
    except (CaseError, ValueError) as exc:
        raise CaseError(f"{filename}: {exc}") from None
    return case


def load_corpus(directory: Path = CORPUS_DIR) -> list[Case]:
    """Return every case of `directory`, in file-name order; ids must be unique."""
    cases = [
        parse_case(path.read_bytes(), path.name, path) for path in sorted(directory.glob("*.http"))
    ]
    seen: dict[str, str] = {}
    for case in cases:
        if case.id in seen:
            raise CaseError(f"{case.label}: id {case.id} is also used by {seen[case.id]}")
        seen[case.id] = case.label
    return cases


def select(cases: Iterable[Case], wanted: Iterable[str]) -> list[Case]:
    """Return the cases whose id, name or label is in `wanted` (all when it is empty)."""
    chosen = set(wanted)
    if not chosen:
        return list(cases)
    picked = [c for c in cases if {c.id, c.name, c.label} & chosen]
    known = {key for c in picked for key in (c.id, c.name, c.label)}
    if missing := sorted(chosen - known):
        raise CaseError(f"no such case: {', '.join(missing)}")
    return picked
