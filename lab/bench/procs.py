"""Memory and CPU of a process tree, read from /proc (Linux; no psutil).

A gunicorn server is a master and its forked workers (granian: a master and Rust-spawned
workers), so every figure is taken over the whole tree under the PID the harness started.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

PROC = Path("/proc")
# Clock ticks per second, the unit of utime/stime in /proc/<pid>/stat.
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
KIB = 1024


def children(pid: int) -> list[int]:
    """Return the direct children of `pid` (every thread's children file, then a /proc scan)."""
    found: set[int] = set()
    task_dir = PROC / str(pid) / "task"
    try:
        for task in task_dir.iterdir():
            text = (task / "children").read_text()
            found.update(int(child) for child in text.split())
    except OSError:
        # No children files (kernel without CONFIG_PROC_CHILDREN) or the process is gone.
        found.update(child for child, parent in parents().items() if parent == pid)
    return sorted(found)


def parents() -> dict[int, int]:
    """Return {pid: parent pid} for every process visible in /proc."""
    table = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            stat = read_stat(int(entry.name))
            if stat is not None:
                table[int(entry.name)] = stat[0]
    return table


def tree(pid: int) -> list[int]:
    """Return `pid` and all its descendants (bounded: a tree deeper than 8 is not a server)."""
    result = [pid]
    level = [pid]
    for _ in range(8):
        level = [child for parent in level for child in children(parent)]
        if not level:
            break
        result.extend(level)
    return result


def start_time(pid: int) -> int | None:
    """Return when `pid` started (ticks since boot), None when it is gone or a zombie.

    With the PID, it names one process: a PID reused by a newer one has another start time.
    """
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


@dataclass(frozen=True)
class Descendants:
    """The processes under a root at one moment, each named by PID and start time."""

    started: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, pid: int) -> Descendants:
        """Return the descendants of `pid` now (the root itself is not one)."""
        found = []
        for child in tree(pid)[1:]:
            when = start_time(child)
            if when is not None:
                found.append((child, when))
        return cls(tuple(found))

    def alive(self, timeout: float = 0.0) -> list[int]:
        """Return those still running after waiting up to `timeout` s for them to end."""
        deadline = time.monotonic() + timeout
        while True:
            left = [pid for pid, when in self.started if start_time(pid) == when]
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.1)


def read_stat(pid: int) -> tuple[int, int] | None:
    """Return (parent pid, utime + stime in ticks) of `pid`, or None when it is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[11]) + int(fields[12])


def status_field(pid: int, name: str) -> int:
    """Return the first number of a /proc/<pid>/status field, 0 when absent or gone."""
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return 0


def rss_bytes(pid: int) -> int:
    """Return the resident set size of `pid` (VmRSS), 0 when it is gone or a kernel thread."""
    return status_field(pid, "VmRSS") * KIB


def threads(pid: int) -> int:
    """Return how many threads `pid` runs, 0 when it is gone."""
    return status_field(pid, "Threads")


def sockets(pid: int) -> int:
    """Return how many sockets `pid` holds open (connections, listeners, Redis), 0 when gone."""
    try:
        fds = list((PROC / str(pid) / "fd").iterdir())
    except OSError:
        return 0
    count = 0
    for fd in fds:
        with contextlib.suppress(OSError):
            count += os.readlink(fd).startswith("socket:")
    return count


def cpu_seconds(pids: list[int]) -> float:
    """Return the CPU time (user + system) the processes `pids` have used so far."""
    ticks = 0
    for pid in pids:
        stat = read_stat(pid)
        if stat is not None:
            ticks += stat[1]
    return ticks / CLOCK_TICKS


def cpus_busy_seconds(cpus: tuple[int, ...]) -> float:
    """Return the time `cpus` have spent busy (anything but idle and iowait) since boot."""
    wanted = {f"cpu{cpu}" for cpu in cpus}
    busy = 0
    try:
        lines = (PROC / "stat").read_text().splitlines()
    except OSError:
        return 0.0
    for line in lines:
        name, *values = line.split()
        if name in wanted:
            # user nice system idle iowait irq softirq steal ...: all but idle and iowait.
            ticks = [int(value) for value in values[:8]]
            busy += sum(ticks) - ticks[3] - ticks[4]
    return busy / CLOCK_TICKS


@dataclass
class Snapshot:
    """Memory of a process tree at one moment: the root's RSS and each descendant's."""

    root_rss: int
    worker_rss: dict[int, int]
    worker_threads: dict[int, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Return the RSS summed over the root and its workers."""
        return self.root_rss + sum(self.worker_rss.values())

    @property
    def max_worker(self) -> int:
        """Return the largest worker's RSS (the root's own when it has no workers)."""
        return max(self.worker_rss.values(), default=self.root_rss)


def snapshot(pid: int) -> Snapshot:
    """Return the memory of the tree under `pid` now."""
    pids = tree(pid)
    return Snapshot(
        rss_bytes(pid),
        {child: rss_bytes(child) for child in pids[1:]},
        {child: threads(child) for child in pids[1:]},
    )


@dataclass
class Usage:
    """What a tree used while a Sampler ran: CPU seconds, wall seconds, peak memory."""

    cpu_s: float = 0.0
    wall_s: float = 0.0
    peak_total_rss: int = 0
    peak_worker_rss: int = 0
    workers: int = 0
    peak_worker_threads: int = 0
    samples: int = 0
    cpus: int = 0
    cpus_busy_s: float = 0.0

    @property
    def cpu_percent(self) -> float:
        """Return the CPU used as a percentage of one core (200 = two cores busy)."""
        return 100.0 * self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def foreign_percent(self) -> float:
        """Return how much of the tree's CPUs other processes used, in % of those CPUs."""
        if not self.cpus or self.wall_s <= 0:
            return 0.0
        return 100.0 * max(0.0, self.cpus_busy_s - self.cpu_s) / (self.wall_s * self.cpus)


@dataclass
class Sampler:
    """Sample a tree's memory every `interval` s in a thread; CPU from the start and end.

    Use as a context manager around the load; read `usage` afterwards.
    """

    pid: int
    cpus: tuple[int, ...] = ()
    interval: float = 0.25
    usage: Usage = field(default_factory=Usage)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _cpu0: float = 0.0
    _busy0: float = 0.0
    _t0: float = 0.0

    def __enter__(self) -> Sampler:
        self._t0 = time.monotonic()
        self._cpu0 = cpu_seconds(tree(self.pid))
        self._busy0 = cpus_busy_seconds(self.cpus)
        self._take()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._take()
        # Workers that exited during the run took their CPU time with them: the figure is
        # a lower bound then (the harness turns worker recycling off, so it should not).
        self.usage.cpu_s = max(0.0, cpu_seconds(tree(self.pid)) - self._cpu0)
        self.usage.wall_s = time.monotonic() - self._t0
        # The tree is pinned to `cpus`: what else ran there is everyone else's.
        self.usage.cpus = len(self.cpus)
        self.usage.cpus_busy_s = cpus_busy_seconds(self.cpus) - self._busy0

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._take()

    def _take(self) -> None:
        shot = snapshot(self.pid)
        self.usage.samples += 1
        self.usage.peak_total_rss = max(self.usage.peak_total_rss, shot.total)
        self.usage.peak_worker_rss = max(self.usage.peak_worker_rss, shot.max_worker)
        self.usage.workers = max(self.usage.workers, len(shot.worker_rss))
        self.usage.peak_worker_threads = max(
            self.usage.peak_worker_threads, max(shot.worker_threads.values(), default=0)
        )
