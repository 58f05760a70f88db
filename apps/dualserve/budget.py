"""How many PostgreSQL connections a deployment can hold at once, and whether the server has room.

The rule (docs/connections.md has it with worked examples):

- A worker process holds at most one connection per thread that can run Django's sync code at
  the same time: 1 on a sync worker, `threads` on gthread. Under ASGI the template's handler
  (apps.dualserve.asgi) runs every in-flight request on a thread of its own, so only the
  worker's concurrency limit (`worker_connections`) bounds them, plus asgiref's one
  process-wide thread for thread-sensitive work outside any request.
- With psycopg's pool (`OPTIONS["pool"]`) every connection of the process comes from the pool:
  at most `max_size`, at least the `min_size` it keeps open, never more than the threads above
  can take out at once.
- A server runs `workers` such processes per replica; a deployment runs `replicas` of each
  server, plus one-off `manage.py` processes (the migrate job) and headroom for people and
  tools (psql, a backup, a monitoring agent).
- PostgreSQL admits `max_connections` minus the slots it keeps for superusers
  (`superuser_reserved_connections`, and `reserved_connections` on 16+).

Plain numbers in, plain numbers out: no Django, no gunicorn, no database here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# asgiref runs thread-sensitive work that is outside every request (no ThreadSensitiveContext)
# on one thread per process (SyncToAsync.single_thread_executor); it can hold a connection too.
PROCESS_WIDE_THREADS = 1

# PostgreSQL's own defaults, for when the server is not asked and no figure is given.
DEFAULT_MAX_CONNECTIONS = 100
DEFAULT_SUPERUSER_RESERVED = 3

# psql, a backup, a monitoring agent: sessions that are not the application's.
DEFAULT_HEADROOM = 3


@dataclass(frozen=True)
class Pool:
    """psycopg's pool as Django is configured with it: `OPTIONS["pool"]`."""

    min_size: int
    max_size: int


@dataclass(frozen=True)
class Server:
    """One gunicorn server (a serving mode) as it would start, with its database settings.

    `asgi`: the worker serves ASGI, where each in-flight request gets a thread of its own.
    `threads` counts for WSGI workers only, `worker_connections` for ASGI workers only.
    `pool` is None when Django opens connections itself (CONN_MAX_AGE).
    """

    name: str
    asgi: bool
    workers: int
    threads: int
    worker_connections: int
    pool: Pool | None


def threads_per_process(server: Server) -> int:
    """Return how many threads of one worker process can hold a connection at the same time."""
    if server.asgi:
        return server.worker_connections + PROCESS_WIDE_THREADS
    return server.threads


def per_process(server: Server) -> int:
    """Return the most connections one worker process of `server` holds at once."""
    threads = threads_per_process(server)
    if server.pool is None:
        return threads
    return max(server.pool.min_size, min(server.pool.max_size, threads))


def bounded_by(server: Server) -> str:
    """Return what sets `per_process(server)`, in the words of its setting."""
    threads = threads_per_process(server)
    if server.asgi:
        held_by = f"{server.worker_connections} worker_connections + {PROCESS_WIDE_THREADS} thread"
    elif threads == 1:
        held_by = "1 thread"
    else:
        held_by = f"{threads} threads"
    if server.pool is None:
        return f"{held_by}, no pool"
    if server.pool.max_size <= threads:
        return f"pool max_size {server.pool.max_size}"
    if server.pool.min_size > threads:
        return f"pool min_size {server.pool.min_size}"
    return f"{held_by} (pool max_size {server.pool.max_size})"


def per_replica(server: Server) -> int:
    """Return the connections one replica of `server` holds at most: all its workers'."""
    return server.workers * per_process(server)


def per_job(pool: Pool | None) -> int:
    """Return the connections one `manage.py` process holds: one thread, plus the pool's floor."""
    if pool is None:
        return 1
    return max(pool.min_size, min(pool.max_size, 1))


@dataclass(frozen=True)
class Limit:
    """What the PostgreSQL server admits for ordinary roles, and where the figures came from."""

    max_connections: int
    reserved: int
    source: str

    @property
    def available(self) -> int:
        """Return the connections left for roles that are not superusers."""
        return self.max_connections - self.reserved


@dataclass(frozen=True)
class Budget:
    """The connections a whole deployment holds at its peak."""

    servers: tuple[Server, ...]
    replicas: int
    jobs: int
    per_job: int
    headroom: int

    @property
    def per_replica(self) -> int:
        """Return one replica's connections: every server it runs."""
        return sum(per_replica(server) for server in self.servers)

    @property
    def total(self) -> int:
        """Return every replica's, job's and person's connections together."""
        return self.replicas * self.per_replica + self.jobs * self.per_job + self.headroom

    def over(self, limit: Limit) -> int:
        """Return by how many connections the budget exceeds `limit` (0 or less: it fits)."""
        return self.total - limit.available


def budget(
    servers: Sequence[Server],
    *,
    replicas: int,
    jobs: int = 1,
    job_pool: Pool | None = None,
    headroom: int = DEFAULT_HEADROOM,
) -> Budget:
    """Return the peak connections of `replicas` replicas of `servers` on one database."""
    for name, value in (("replicas", replicas), ("jobs", jobs), ("headroom", headroom)):
        if value < 0:
            raise ValueError(f"{name} must be 0 or more, not {value}.")
    return Budget(tuple(servers), replicas, jobs, per_job(job_pool), headroom)
