"""A small timestamping HTTP client for the fault runs: every request's outcome, in 100 ms buckets.

Not a load generator (wrk measures throughput): a few threads on the client host, each on a
keep-alive connection to the balancer, recording when each request started and ended, its
status or error, which app host answered, and what an error response looked like. Bounded in
time and in count; faults are injected from the caller's thread at set offsets meanwhile.
"""

from __future__ import annotations

import http.client
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lab.cluster import netns

BUCKET_S = 0.1
# Recovered: this many buckets in a row without a failure, each at half the pre-fault rate.
STEADY_BUCKETS = 5
STEADY_SHARE = 0.5


@dataclass(frozen=True)
class Outcome:
    """One request: offsets in seconds from the start of the run; status 0 = no answer."""

    path: str
    start: float
    end: float
    status: int
    upstream: str = ""
    error: str = ""
    retry_after: str = ""
    traceback: bool = False
    body: str = ""
    name: str = ""

    @property
    def ok(self) -> bool:
        """Return whether the request was answered with a 2xx."""
        return 200 <= self.status < 300


@dataclass
class Run:
    """The outcomes of one load run and the offsets at which events happened."""

    outcomes: list[Outcome] = field(default_factory=list)
    events: dict[str, float] = field(default_factory=dict)
    duration_s: float = 0.0


def run_load(
    namespace: str,
    address: str,
    port: int,
    paths: Sequence[str],
    *,
    method: str = "GET",
    concurrency: int = 8,
    duration_s: float = 10.0,
    max_requests: int = 100_000,
    timeout_s: float = 15.0,
    events: Sequence[tuple[float, str, Callable[[], Any]]] = (),
) -> Run:
    """Send requests from `namespace` for `duration_s` (at most `max_requests`); run `events`.

    Each event (offset s, name, action) runs on this thread at its offset; the offset at
    which its action returned is recorded as "<name>_done". A POST sends a form with a
    unique `name` field, recorded with its outcome.
    """
    run = Run()
    lock = threading.Lock()
    stop = threading.Event()
    sent = [0]
    origin = time.monotonic()
    deadline = origin + duration_s

    def take_turn() -> bool:
        with lock:
            if sent[0] >= max_requests or stop.is_set() or time.monotonic() >= deadline:
                return False
            sent[0] += 1
            return True

    def worker(index: int) -> None:
        netns.enter(namespace)
        connection: http.client.HTTPConnection | None = None
        turn = index
        while take_turn():
            path = paths[turn % len(paths)]
            turn += 1
            name = f"cluster-{uuid.uuid4().hex}" if method == "POST" else ""
            started = time.monotonic() - origin
            if connection is None:
                connection = http.client.HTTPConnection(address, port, timeout=timeout_s)
            try:
                outcome = exchange(connection, method, path, name, started, origin)
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                connection = None
                outcome = Outcome(
                    path, started, time.monotonic() - origin, 0, error=type(exc).__name__, name=name
                )
            with lock:
                run.outcomes.append(outcome)
        if connection is not None:
            connection.close()

    threads = [
        threading.Thread(target=worker, args=(index,), name=f"probe-{index}", daemon=True)
        for index in range(concurrency)
    ]
    for thread in threads:
        thread.start()
    try:
        for offset, name, action in sorted(events, key=lambda event: event[0]):
            time.sleep(max(0.0, origin + offset - time.monotonic()))
            run.events[name] = time.monotonic() - origin
            action()
            run.events[f"{name}_done"] = time.monotonic() - origin
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()) + timeout_s + 5)
    finally:
        stop.set()
    run.duration_s = time.monotonic() - origin
    run.outcomes.sort(key=lambda outcome: outcome.start)
    return run


def exchange(
    connection: http.client.HTTPConnection,
    method: str,
    path: str,
    name: str,
    started: float,
    origin: float,
) -> Outcome:
    """Send one request on `connection`; return its outcome (errors raise)."""
    if method == "POST":
        connection.request(
            method,
            path,
            body=f"name={name}".encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
    else:
        connection.request(method, path)
    response = connection.getresponse()
    body = response.read()
    ok = 200 <= response.status < 300
    return Outcome(
        path,
        started,
        time.monotonic() - origin,
        response.status,
        upstream=(response.getheader("X-Upstream") or "").split(",")[-1].strip(),
        retry_after=response.getheader("Retry-After") or "",
        traceback=b"Traceback" in body,
        body="" if ok else body[:160].decode("utf-8", errors="replace"),
        name=name,
    )


def buckets(run: Run, width: float = BUCKET_S) -> list[dict[str, float]]:
    """Return completions per `width` s: ok and failed, by the time each request ended."""
    count = int(run.duration_s / width) + 1
    table = [{"t": round(index * width, 3), "ok": 0, "failed": 0} for index in range(count)]
    for outcome in run.outcomes:
        index = min(int(outcome.end / width), count - 1)
        table[index]["ok" if outcome.ok else "failed"] += 1
    return table


def analyse(run: Run, fault: str, back: str | None = None) -> dict[str, Any]:
    """Return the failure and recovery figures around event `fault`.

    `back` names the event after which the service may return (PostgreSQL accepting again);
    recovery is counted from it, else from the fault. Recovered: the first moment from which
    STEADY_BUCKETS buckets in a row carry no failure and at least STEADY_SHARE of the rate
    before the fault.
    """
    table = buckets(run)
    fault_at = run.events[fault]
    since = run.events[back] if back else fault_at
    before = [row["ok"] for row in table if 0.5 <= row["t"] < fault_at - BUCKET_S]
    baseline = sum(before) / len(before) if before else 0.0
    after = [row for row in table if row["t"] >= since]
    recovered_at = None
    for index in range(len(after) - STEADY_BUCKETS + 1):
        window = after[index : index + STEADY_BUCKETS]
        if all(row["failed"] == 0 and row["ok"] >= STEADY_SHARE * baseline for row in window):
            recovered_at = window[0]["t"]
            break
    stall = longest = 0
    for row in (row for row in table if row["t"] >= fault_at):
        stall = stall + 1 if row["ok"] == 0 else 0
        longest = max(longest, stall)
    failed = [outcome for outcome in run.outcomes if not outcome.ok]
    in_flight = [o for o in run.outcomes if o.start <= fault_at <= o.end]
    return {
        "requests": len(run.outcomes),
        "ok": len(run.outcomes) - len(failed),
        "failed": len(failed),
        "failed_by_status": status_counts(failed),
        "failed_after_fault": sum(outcome.end >= fault_at for outcome in failed),
        "baseline_ok_per_100ms": round(baseline, 1),
        "recovered_after_s": None if recovered_at is None else round(recovered_at - since, 2),
        "longest_stall_s": round(longest * BUCKET_S, 2),
        "in_flight_at_fault": len(in_flight),
        "in_flight_max_latency_s": round(max((o.end - o.start for o in in_flight), default=0), 3),
        "upstreams_before": dict(Counter(o.upstream for o in run.outcomes if o.end < fault_at)),
        "upstreams_after": dict(
            Counter(o.upstream for o in run.outcomes if o.start > fault_at + 1.0 and o.ok)
        ),
        "events": {name: round(offset, 3) for name, offset in run.events.items()},
        "duration_s": round(run.duration_s, 2),
    }


def status_counts(outcomes: Sequence[Outcome]) -> dict[str, int]:
    """Return how many outcomes had each status ("no answer: <error>" for status 0)."""
    counts = Counter(
        str(outcome.status) if outcome.status else f"no answer: {outcome.error}"
        for outcome in outcomes
    )
    return dict(sorted(counts.items()))
