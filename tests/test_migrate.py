"""Schema migrations against a real Postgres: applied once, recorded, safe to run twice or at once."""

from __future__ import annotations

import asyncio

import asyncpg

from persistence.migrate import discover, migrate_url


async def test_migrations_apply_once_and_a_second_run_finds_nothing_to_do(fresh_database: str) -> None:
    first = await migrate_url(fresh_database)
    assert [m.version for m in first] == [m.version for m in discover()]
    assert await migrate_url(fresh_database) == []
    conn = await asyncpg.connect(fresh_database)
    try:
        recorded = [row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations ORDER BY 1")]
        assert recorded == [m.version for m in discover()]
        assert await conn.fetchval("SELECT count(*) FROM players") == 0
    finally:
        await conn.close()


async def test_nodes_migrating_at_once_apply_each_migration_exactly_once(fresh_database: str) -> None:
    results = await asyncio.gather(*(migrate_url(fresh_database) for _ in range(4)))
    applied = [m.version for result in results for m in result]
    assert sorted(applied) == [m.version for m in discover()]
