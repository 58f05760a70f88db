"""Fixtures shared by the test packages that run the whole stack (deploy, reliability), and
a private Redis for those that need a channel layer across processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from lab.stack import prepare_var_dir
from tests.redis_server import running_redis


@pytest.fixture(scope="module")
def var_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a state directory with a migrated database and collected static files.

    Module-scoped: the servers of one test module share it, and no two modules do.
    """
    return prepare_var_dir(tmp_path_factory.mktemp("var"))


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Run a private redis-server for the module (tests/redis_server.py); yield its URL."""
    with running_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """Yield a client of the module's Redis, to look at subscriptions."""
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    yield client
    client.close()
