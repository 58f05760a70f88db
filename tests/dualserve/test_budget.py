"""apps.dualserve.budget: the connections a deployment holds at its peak, from its settings."""

from __future__ import annotations

from django.test import SimpleTestCase

from apps.dualserve.budget import (
    PROCESS_WIDE_THREADS,
    Limit,
    Pool,
    Server,
    bounded_by,
    budget,
    per_job,
    per_process,
    per_replica,
    threads_per_process,
)


def wsgi(threads: int, pool: Pool | None = None, workers: int = 2) -> Server:
    """Return a WSGI server: a sync worker at threads=1, gthread above."""
    return Server("wsgi", False, workers, threads, worker_connections=1000, pool=pool)


def asgi(worker_connections: int, pool: Pool | None = None, workers: int = 2) -> Server:
    """Return an ASGI server; gunicorn's `threads` setting has no effect on its workers."""
    return Server(
        "asgi", True, workers, threads=1, worker_connections=worker_connections, pool=pool
    )


class PerProcessTests(SimpleTestCase):
    def test_without_a_pool_every_thread_may_hold_one(self) -> None:
        for threads in (1, 4, 8, 32):
            with self.subTest(threads=threads):
                self.assertEqual(per_process(wsgi(threads)), threads)

    def test_a_pool_smaller_than_the_threads_bounds_them(self) -> None:
        for threads, max_size in ((8, 4), (32, 8), (4, 4)):
            with self.subTest(threads=threads, max_size=max_size):
                server = wsgi(threads, Pool(min_size=1, max_size=max_size))
                self.assertEqual(per_process(server), max_size)
                self.assertEqual(bounded_by(server), f"pool max_size {max_size}")

    def test_a_pool_larger_than_the_threads_never_fills(self) -> None:
        # A sync worker with a pool sized for gthread (the settings' default): one connection.
        for threads, max_size in ((1, 8), (4, 16)):
            with self.subTest(threads=threads, max_size=max_size):
                server = wsgi(threads, Pool(min_size=1, max_size=max_size))
                self.assertEqual(per_process(server), threads)
                self.assertIn(f"pool max_size {max_size}", bounded_by(server))

    def test_the_pool_keeps_its_min_size_open_even_for_fewer_threads(self) -> None:
        min_size = 3
        server = wsgi(1, Pool(min_size=min_size, max_size=8))
        self.assertEqual(per_process(server), min_size)
        self.assertEqual(bounded_by(server), f"pool min_size {min_size}")

    def test_asgi_without_a_pool_counts_every_request_in_flight_and_asgirefs_thread(self) -> None:
        for worker_connections in (10, 1000, 2048):
            with self.subTest(worker_connections=worker_connections):
                server = asgi(worker_connections)
                expected = worker_connections + PROCESS_WIDE_THREADS
                self.assertEqual(threads_per_process(server), expected)
                self.assertEqual(per_process(server), expected)
                self.assertIn(f"{worker_connections} worker_connections", bounded_by(server))

    def test_asgi_with_a_pool_holds_its_max_size(self) -> None:
        for max_size in (4, 8, 64):
            with self.subTest(max_size=max_size):
                self.assertEqual(per_process(asgi(1000, Pool(1, max_size))), max_size)

    def test_asgi_ignores_gunicorns_threads(self) -> None:
        server = asgi(50)
        many_threads = Server(server.name, True, server.workers, 16, 50, None)
        self.assertEqual(per_process(many_threads), per_process(server))


class DeploymentTests(SimpleTestCase):
    def test_a_replica_holds_every_workers_connections(self) -> None:
        for workers, threads in ((1, 1), (2, 8), (5, 3)):
            with self.subTest(workers=workers, threads=threads):
                self.assertEqual(per_replica(wsgi(threads, workers=workers)), workers * threads)

    def test_the_total_adds_replicas_jobs_and_headroom(self) -> None:
        gthread = wsgi(4, workers=3)
        uvicorn = asgi(2048, Pool(1, 5), workers=2)
        job_pool = Pool(min_size=2, max_size=4)
        for replicas, jobs, headroom in ((1, 1, 3), (3, 2, 0), (0, 0, 5)):
            with self.subTest(replicas=replicas, jobs=jobs, headroom=headroom):
                result = budget(
                    [gthread, uvicorn],
                    replicas=replicas,
                    jobs=jobs,
                    job_pool=job_pool,
                    headroom=headroom,
                )
                one_replica = 3 * 4 + 2 * 5
                self.assertEqual(result.per_replica, one_replica)
                expected = replicas * one_replica + jobs * job_pool.min_size + headroom
                self.assertEqual(result.total, expected)

    def test_a_manage_py_job_holds_one_connection_or_its_pools_floor(self) -> None:
        self.assertEqual(per_job(None), 1)
        self.assertEqual(per_job(Pool(min_size=0, max_size=8)), 1)
        self.assertEqual(per_job(Pool(min_size=1, max_size=8)), 1)
        self.assertEqual(per_job(Pool(min_size=4, max_size=8)), 4)

    def test_negative_counts_are_refused(self) -> None:
        for name in ("replicas", "jobs", "headroom"):
            with self.subTest(name=name), self.assertRaisesRegex(ValueError, name):
                budget([wsgi(1)], **{"replicas": 1, name: -1})


class LimitTests(SimpleTestCase):
    def test_the_reserved_slots_are_not_the_applications(self) -> None:
        limit = Limit(max_connections=100, reserved=3, source="test")
        self.assertEqual(limit.available, 100 - 3)

    def test_over_is_the_excess_and_zero_at_an_exact_fit(self) -> None:
        result = budget([wsgi(8, workers=2)], replicas=3, jobs=1, headroom=2)
        reserved = 3
        exact = Limit(result.total + reserved, reserved, "test")
        self.assertEqual(result.over(exact), 0)
        smaller = Limit(result.total + reserved - 5, reserved, "test")
        self.assertEqual(result.over(smaller), 5)
        self.assertLess(result.over(Limit(1000, reserved, "test")), 0)
