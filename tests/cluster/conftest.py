"""Fixtures of the cluster tests: one real Redis and one real PostgreSQL for the whole session
(they take a second or two to start), each test starting from empty ones (`redis`: FLUSHALL;
`postgres`: every tcpulse table dropped)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster.parts import Postgres, Redis, have_postgres, have_redis

needs_redis = pytest.mark.skipif(not have_redis(), reason="redis-server not installed (bash scripts/setup.sh)")
needs_postgres = pytest.mark.skipif(not have_postgres(), reason="PostgreSQL not installed (bash scripts/setup.sh)")


@pytest.fixture(scope="session")
def _redis_server() -> Iterator[Redis]:
    if not have_redis():
        pytest.skip("redis-server not installed (bash scripts/setup.sh)")
    r = Redis().start()
    yield r
    r.close()


@pytest.fixture(scope="session")
def _postgres_server() -> Iterator[Postgres]:
    if not have_postgres():
        pytest.skip("PostgreSQL not installed (bash scripts/setup.sh)")
    pg = Postgres().start()
    yield pg
    pg.close()


@pytest.fixture
def redis(_redis_server: Redis) -> Iterator[Redis]:
    """The session's Redis, emptied before and after the test (and started again if a test
    stopped it)."""
    import subprocess
    if _redis_server.proc is None or _redis_server.proc.poll() is not None:
        _redis_server.start()
    subprocess.run(["redis-cli", "-p", str(_redis_server.port), "FLUSHALL"], check=True, capture_output=True)
    yield _redis_server
    if _redis_server.proc is None or _redis_server.proc.poll() is not None:
        _redis_server.start()
    subprocess.run(["redis-cli", "-p", str(_redis_server.port), "FLUSHALL"], check=True, capture_output=True)


@pytest.fixture
def postgres(_postgres_server: Postgres) -> Iterator[Postgres]:
    """The session's PostgreSQL with no tcpulse table in it (started again if a test stopped it)."""
    if _postgres_server.proc is None or _postgres_server.proc.poll() is not None:
        _postgres_server.start()
    _postgres_server.reset()
    yield _postgres_server
    if _postgres_server.proc is None or _postgres_server.proc.poll() is not None:
        _postgres_server.start()
    _postgres_server.reset()
