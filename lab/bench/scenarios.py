"""What the benchmark sends: the showcase endpoints, the user's URLs and TOML scenario files.

A showcase endpoint names a mirrored pair: WSGI modes get `/sync/<kind>/`, ASGI modes
`/async/<kind>/`, each the twin written for its interface. A user's URL (`--url PATH`) or a
scenario from a file is sent as it is to every mode. A scenario file holds tables such as::

    [[scenario]]
    name = "login"              # optional: defaults to the path
    method = "POST"             # optional: GET
    path = "/accounts/login/"   # required, starts with /
    headers = { Content-Type = "application/x-www-form-urlencoded" }
    body = "username=a&password=b"
    status = 200                # optional: the status every answer must have (200)
    concurrency = [10, 100]     # optional: the run's --concurrency otherwise
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.bench.wrk import Request

NAME_RE = re.compile(r"[A-Za-z0-9/][A-Za-z0-9_.:/=?&%+-]{0,80}")
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
MAX_BODY = 1024 * 1024
MAX_CONCURRENCY = 10_000
# A header name as RFC 9110 allows it (a token); values: visible ASCII and spaces.
HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}")
HEADER_VALUE_RE = re.compile(r"[\x20-\x7e]{0,4000}")


class ScenarioError(ValueError):
    """A scenario cannot be run as given; the message says which and why."""


@dataclass(frozen=True)
class Scenario:
    """One load to send to every mode.

    `paths` maps an interface ("wsgi", "asgi") to the path sent there; "*" serves both.
    `wait_ms` is the time each request waits by design (sleep, upstream): with it, Little's
    law gives the most a run can serve, connections / wait. `workers` overrides the run's
    worker count for this scenario (None: the run's).
    """

    name: str
    paths: Mapping[str, str]
    method: str = "GET"
    headers: Mapping[str, str] = field(default_factory=dict)
    body: str = ""
    status: int = 200
    concurrency: tuple[int, ...] = ()
    wait_ms: int = 0
    builtin: bool = False

    def path_for(self, interface: str) -> str:
        """Return the path this scenario sends to a server of `interface`."""
        return self.paths.get(interface) or self.paths["*"]

    def request(self, interface: str) -> Request:
        """Return the request wrk sends to a server of `interface`."""
        return Request(self.method, self.path_for(interface), dict(self.headers), self.body)


def twin(
    kind: str, query: str = "", *, concurrency: tuple[int, ...] = (), wait_ms: int = 0
) -> Scenario:
    """Return the showcase scenario for `/sync|async/<kind>/` plus `query`."""
    return Scenario(
        name=kind,
        paths={"wsgi": f"/sync/{kind}/{query}", "asgi": f"/async/{kind}/{query}"},
        concurrency=concurrency,
        wait_ms=wait_ms,
        builtin=True,
    )


# The showcase endpoints the benchmark knows, with the concurrency levels of a default run.
# "stream" is not a wrk scenario: it selects the long-lived SSE runs (lab.bench.sse).
SLEEP_MS = 50
UPSTREAM_MS = 50
CPU_N = 20_000
BUILTIN: dict[str, Scenario] = {
    "hello": twin("hello", concurrency=(10, 100)),
    "json": twin("json", concurrency=(100,)),
    "db": twin("db", concurrency=(100,)),
    "cpu": twin("cpu", f"?n={CPU_N}", concurrency=(100,)),
    "sleep": twin("sleep", f"?ms={SLEEP_MS}", concurrency=(100, 500), wait_ms=SLEEP_MS),
    "upstream": twin("upstream", f"?ms={UPSTREAM_MS}", concurrency=(500,), wait_ms=UPSTREAM_MS),
}
STREAM = "stream"
ENDPOINT_NAMES = (*BUILTIN, STREAM)


def from_url(path: str) -> Scenario:
    """Return the scenario of `--url PATH`: GET `path` on every mode, expecting 200."""
    return Scenario(name=path, paths={"*": checked_path(path)})


def checked_path(path: str) -> str:
    """Return `path` when it is an absolute path a request line can carry."""
    if not path.startswith("/") or any(ch.isspace() or not ch.isprintable() for ch in path):
        raise ScenarioError(f"{path!r} is not a URL path: start with / and use no spaces")
    if len(path) > 2000:
        raise ScenarioError(f"path of {len(path)} characters is too long (2000 at most)")
    return path


def load_file(path: Path) -> list[Scenario]:
    """Return the scenarios of a TOML file (see the module docstring for its shape)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario file {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path} is not valid TOML: {exc}") from None
    tables = data.get("scenario")
    if not isinstance(tables, list) or not tables:
        raise ScenarioError(f"{path}: expected one or more [[scenario]] tables")
    unknown = set(data) - {"scenario"}
    if unknown:
        raise ScenarioError(f"{path}: unknown top-level keys {sorted(unknown)}")
    scenarios = [from_table(table, f"{path} scenario {n}") for n, table in enumerate(tables, 1)]
    names = [scenario.name for scenario in scenarios]
    if len(set(names)) != len(names):
        raise ScenarioError(f"{path}: scenario names must differ, got {names}")
    return scenarios


SCENARIO_KEYS = {"name", "method", "path", "headers", "body", "status", "concurrency"}


def from_table(table: Any, where: str) -> Scenario:
    """Return one scenario from its TOML table; `where` prefixes error messages."""
    if not isinstance(table, dict):
        raise ScenarioError(f"{where}: expected a table")
    unknown = set(table) - SCENARIO_KEYS
    if unknown:
        raise ScenarioError(
            f"{where}: unknown keys {sorted(unknown)} (use {sorted(SCENARIO_KEYS)})"
        )
    path = table.get("path")
    if not isinstance(path, str):
        raise ScenarioError(f"{where}: `path` is required and must be a string")
    try:
        path = checked_path(path)
    except ScenarioError as exc:
        raise ScenarioError(f"{where}: {exc}") from None
    name = table.get("name", path)
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ScenarioError(f"{where}: name {name!r} must be 1-81 letters, digits or /_.:=?&%+-")
    method = table.get("method", "GET")
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise ScenarioError(f"{where}: method {method!r} is not one of {', '.join(METHODS)}")
    headers = table.get("headers", {})
    if not isinstance(headers, dict) or not all(
        isinstance(k, str)
        and isinstance(v, str)
        and HEADER_NAME_RE.fullmatch(k)
        and HEADER_VALUE_RE.fullmatch(v)
        for k, v in headers.items()
    ):
        raise ScenarioError(f"{where}: headers must map header names to printable ASCII strings")
    body = table.get("body", "")
    if not isinstance(body, str) or len(body.encode()) > MAX_BODY:
        raise ScenarioError(f"{where}: body must be a string of at most {MAX_BODY} bytes")
    status = table.get("status", 200)
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise ScenarioError(f"{where}: status must be an HTTP status code (100-599)")
    return Scenario(
        name=name,
        paths={"*": path},
        method=method.upper(),
        headers=headers,
        body=body,
        status=status,
        concurrency=concurrency_levels(table.get("concurrency", []), where),
    )


def concurrency_levels(raw: Any, where: str) -> tuple[int, ...]:
    """Return a list of connection counts, each 1 to MAX_CONCURRENCY."""
    if not isinstance(raw, list) or not all(
        isinstance(level, int) and not isinstance(level, bool) and 1 <= level <= MAX_CONCURRENCY
        for level in raw
    ):
        raise ScenarioError(f"{where}: concurrency must be a list of integers 1-{MAX_CONCURRENCY}")
    return tuple(raw)


def parse_levels(text: str) -> tuple[int, ...]:
    """Return the levels of a comma-separated --concurrency value."""
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ScenarioError(f"--concurrency {text!r}: expected numbers such as 10,100") from None
    return concurrency_levels(levels, "--concurrency") if levels else ()


def parse_endpoints(text: str) -> list[str]:
    """Return the showcase endpoint names of a comma-separated --endpoints value ("": none)."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in ENDPOINT_NAMES]
    if unknown:
        raise ScenarioError(
            f"--endpoints {text!r}: unknown {unknown}; choose from {', '.join(ENDPOINT_NAMES)}"
        )
    return names


def names(scenarios: Sequence[Scenario]) -> list[str]:
    """Return the scenarios' names, in order."""
    return [scenario.name for scenario in scenarios]
