"""Shared fixtures: one private Redis and one private Postgres for the whole test session (each pytest-xdist
worker is a session of its own, so each worker has its own pair).

They run on free ports from a temporary directory and die with the session, so fault tests can kill them
without touching anyone's data. TEST_REDIS_URL / TEST_DATABASE_URL point the suite at servers of your own.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from persistence.migrate import migrate_url
from server.ops.embedded import LocalPostgres, LocalRedis
from tests.clusterkit import Cluster


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """Keeps each phase's report on the test (`item.rep_call`...), for fixtures that save artifacts on failure."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@dataclass(frozen=True)
class ExternalServer:
    """A server given by URL: usable, but not ours to kill or restart."""

    url: str

    def _not_ours(self) -> None:
        pytest.skip(f"fault injection needs a private server, not the one at {self.url}")

    def stop(self) -> None:
        self._not_ours()

    def kill(self) -> None:
        self._not_ours()

    def restart(self) -> None:
        self._not_ours()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis | ExternalServer]:
    if url := os.environ.get("TEST_REDIS_URL"):
        yield ExternalServer(url)
        return
    with LocalRedis.start(tmp_path_factory.mktemp("redis"), persist=False, prefer="system") as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[LocalPostgres | ExternalServer]:
    if url := os.environ.get("TEST_DATABASE_URL"):
        yield ExternalServer(url)
        return
    # Not under pytest's own temporary root: as root, Postgres runs as another user who needs to reach its
    # data directory, and every pytest session that starts makes that root private again (mode 0700), which
    # would pull the directory from under a server of another test run on the same machine.
    with tempfile.TemporaryDirectory(prefix="tickroom-test-postgres-") as data_dir, \
            LocalPostgres.start(Path(data_dir), fast=True, prefer="system") as server:
        yield server


@pytest.fixture(scope="session")
def redis_url(redis_server: LocalRedis | ExternalServer) -> str:
    return redis_server.url


@pytest.fixture(scope="session")
def database_url(postgres_server: LocalPostgres | ExternalServer) -> str:
    return postgres_server.url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client of the session's Redis (bytes replies)."""
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A client with text replies that waits for a free connection instead of failing when many calls run at
    once (a module may define its own `client`)."""
    pool = aioredis.BlockingConnectionPool.from_url(redis_url, max_connections=32, timeout=10,
                                                    decode_responses=True)
    client = aioredis.Redis(connection_pool=pool)
    yield client
    await client.aclose()
    await pool.aclose()


@pytest.fixture
async def migrated(fresh_database: str) -> str:
    """A database of its own with the schema applied."""
    await migrate_url(fresh_database)
    return fresh_database


@pytest.fixture
async def fresh_database(database_url: str) -> AsyncIterator[str]:
    """A database of its own for each test, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = database_url.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
def private_postgres() -> Iterator[LocalPostgres]:
    """A Postgres of this test's own, to stop and start again."""
    with tempfile.TemporaryDirectory(prefix="tickroom-test-pg-down-") as data_dir, \
            LocalPostgres.start(Path(data_dir), fast=True, prefer="system") as server:
        yield server


@pytest.fixture
def cluster_of(tmp_path: Path, redis_url: str, fresh_database: str) -> Iterator[Callable[..., Cluster]]:
    """Makes the test's nodes (used as `async with`): one deployment (lobby prefix and database) of its own, of
    every node id asked for; kills whatever they left running, whatever happened."""
    made: list[Cluster] = []

    def make(prefix: str, node_ids: tuple[str, ...], *extra_args: str) -> Cluster:
        cluster = Cluster(tmp_path, redis_url, fresh_database, prefix, node_ids, extra_args)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.kill_leftovers()
