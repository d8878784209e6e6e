"""Numbered SQL migrations applied once each, recorded in `schema_migrations`, under an advisory lock.

Several nodes may start at once: the first to take the lock applies what is missing, the others then
find nothing left to do.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

log = logging.getLogger("tickroom.migrate")

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# pg_advisory_lock key: "tickroom" as a 64-bit integer, shared by every node of a deployment.
LOCK_KEY = int.from_bytes(b"tickroom", "big") & 0x7FFF_FFFF_FFFF_FFFF
_FILE_NAME = re.compile(r"(\d{3})_([a-z0-9_]+)\.sql")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


class MigrationError(RuntimeError):
    pass


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.fullmatch(path.name)
        if match is None:
            raise MigrationError(f"migration file {path.name} is not named NNN_name.sql")
        migrations.append(Migration(int(match[1]), match[2], path.read_text()))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version number in {directory}")
    return migrations


async def migrate(conn: asyncpg.Connection, directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Apply every migration not yet recorded; return those applied now (empty when up to date)."""
    pending_all = discover(directory)
    await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        applied = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        done = []
        for migration in pending_all:
            if migration.version in applied:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                                   migration.version, migration.name)
            log.info("applied migration %03d_%s", migration.version, migration.name)
            done.append(migration)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)


async def migrate_url(database_url: str) -> list[Migration]:
    conn = await asyncpg.connect(database_url)
    try:
        return await migrate(conn)
    finally:
        await conn.close()


async def schema_version(conn: asyncpg.Connection) -> int:
    """The newest migration applied (0 for a database never migrated)."""
    if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
        return 0
    version: int = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
    return version
