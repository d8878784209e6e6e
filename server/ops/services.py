"""Redis and Postgres for a node: the configured servers, or embedded ones started as child processes.

With REDIS_URL or DATABASE_URL unset, `tickroom serve` starts a real server for each missing one under
the data directory and stops it on exit. Either way both are checked and the schema migrated at start.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from contextlib import AsyncExitStack

import asyncpg
import redis.asyncio as aioredis

from persistence.migrate import migrate_url
from server.ops.settings import Settings

log = logging.getLogger("tickroom.services")


async def connect_services(settings: Settings, stack: AsyncExitStack, *, migrate: bool = True) -> Settings:
    """Make sure Redis and Postgres are there; return settings with both URLs filled in."""
    from server.ops.embedded import LocalPostgres, LocalRedis

    data_dir = settings.data_dir.resolve()
    if not settings.redis_url:
        redis_server = await asyncio.to_thread(LocalRedis.start, data_dir / "redis", persist=True)
        stack.callback(redis_server.stop)
        log.warning("REDIS_URL is not set: running an EMBEDDED Redis at %s (data in %s)",
                    redis_server.url, data_dir / "redis")
        settings = dataclasses.replace(settings, redis_url=redis_server.url)
    if not settings.database_url:
        pg_server = await asyncio.to_thread(LocalPostgres.start, data_dir / "postgres", fast=False)
        stack.callback(pg_server.stop)
        log.warning("DATABASE_URL is not set: running an EMBEDDED Postgres at %s (data in %s)",
                    pg_server.url, data_dir / "postgres")
        settings = dataclasses.replace(settings, database_url=pg_server.url)

    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        await client.ping()
    finally:
        await client.aclose()
    conn = await asyncpg.connect(settings.database_url)
    try:
        version = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    log.info("Redis and Postgres %s reachable", version)
    if migrate:
        applied = await migrate_url(settings.database_url)
        log.info("schema: %d migration(s) applied", len(applied))
    return settings
