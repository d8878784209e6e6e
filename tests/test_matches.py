"""Match rows in a real Postgres: the state table, optimistic locking, and two writers racing on one match."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from persistence.matches import (
    MatchRow,
    MatchTransitionError,
    VersionConflict,
    change_match,
    create_match,
    get_match,
    write_match,
)
from persistence.migrate import migrate

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@pytest.fixture
async def pool(fresh_database: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(fresh_database, min_size=2, max_size=4) as pool:
        async with pool.acquire() as conn:
            await migrate(conn)
        yield pool


async def new_match(pool: asyncpg.Pool, room_id: str = "room-1") -> MatchRow:
    async with pool.acquire() as conn:
        return await create_match(conn, match_id=uuid.uuid4(), room_id=room_id, mode="arena", node="n1",
                                  created_at=T0)


def start(row: MatchRow) -> MatchRow:
    return row.moved_to("running", started_at=T0)


async def test_a_match_is_created_waiting_at_version_1_and_each_write_bumps_the_version(pool: asyncpg.Pool) -> None:
    row = await new_match(pool)
    assert (row.state, row.version, row.node) == ("waiting", 1, "n1")
    async with pool.acquire() as conn:
        running = await change_match(conn, row.id, start)
        assert running is not None and (running.state, running.version, running.started_at) == ("running", 2, T0)
        assert await get_match(conn, row.id) == running


async def test_a_write_under_an_old_version_changes_nothing(pool: asyncpg.Pool) -> None:
    row = await new_match(pool)
    async with pool.acquire() as conn:
        assert await write_match(conn, row, start(row)) is not None
        assert await write_match(conn, row, row.moved_to("cancelled")) is None  # version 1 is gone
        stored = await get_match(conn, row.id)
    assert stored is not None and (stored.state, stored.version) == ("running", 2)


def test_the_state_table_refuses_moves_it_does_not_list() -> None:
    row = MatchRow(uuid.uuid4(), "r", "arena", "n1", "cancelled", 3, T0, None, None, None)
    with pytest.raises(MatchTransitionError):
        row.moved_to("running")
    with pytest.raises(MatchTransitionError):
        MatchRow(uuid.uuid4(), "r", "arena", "n1", "waiting", 1, T0, None, None, None).moved_to("finished")


class RivalAfterEachRead:
    """A connection on which another node writes the match right after each of our reads."""

    def __init__(self, conn: asyncpg.Connection, rival: asyncpg.Connection, match_id: uuid.UUID) -> None:
        self._conn = conn
        self._rival = rival
        self._match_id = match_id

    async def fetchrow(self, query: str, *args: object) -> asyncpg.Record | None:
        record = await self._conn.fetchrow(query, *args)
        if query.startswith("SELECT"):
            await change_match(self._rival, self._match_id, claimed_by_next_node)
        return record


def claimed_by_next_node(read: MatchRow) -> MatchRow:
    return read.moved_to(read.state, node=f"n{read.version + 1}")


def finished(read: MatchRow) -> MatchRow:
    return read.moved_to("finished", ended_at=T0, end_reason="kill_target")


async def test_two_writers_from_one_read_one_wins_and_the_other_lands_on_top(pool: asyncpg.Pool) -> None:
    """A node claiming the match (a new host) and the old host finishing it, both from the same read: exactly
    one write lands; the other, tried again through `change_match`, is applied to what the winner wrote."""
    row = await new_match(pool)
    async with pool.acquire() as conn:
        await change_match(conn, row.id, start)
    async with pool.acquire() as claimer, pool.acquire() as finisher:
        read_c, read_f = await asyncio.gather(get_match(claimer, row.id), get_match(finisher, row.id))
        assert read_c is not None and read_f is not None and read_c.version == read_f.version == 2
        won = await asyncio.gather(write_match(claimer, read_c, claimed_by_next_node(read_c)),
                                   write_match(finisher, read_f, finished(read_f)))
        assert sum(result is not None for result in won) == 1
        if won[0] is None:
            await change_match(claimer, row.id, claimed_by_next_node)
        else:
            await change_match(finisher, row.id, finished)
        final = await get_match(claimer, row.id)
    assert final is not None and final.version == 4
    assert (final.state, final.end_reason) == ("finished", "kill_target") and final.node in ("n3", "n4")


async def test_many_writers_at_once_each_change_lands_exactly_once(pool: asyncpg.Pool) -> None:
    row = await new_match(pool)

    async def writer(tag: str) -> None:
        def add_tag(read: MatchRow) -> MatchRow:
            return read.moved_to(read.state, end_reason=f"{read.end_reason or ''}[{tag}]")

        async with pool.acquire() as conn:
            assert await change_match(conn, row.id, add_tag, attempts=100) is not None

    tags = [f"w{i}" for i in range(16)]
    await asyncio.gather(*(writer(tag) for tag in tags))
    async with pool.acquire() as conn:
        final = await get_match(conn, row.id)
    assert final is not None and final.version == 1 + len(tags)
    assert final.end_reason is not None and sorted(final.end_reason.strip("[]").split("][")) == sorted(tags)


async def test_a_change_that_no_longer_applies_is_given_up_with_a_logged_reason(
        pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "tickroom.persistence.matches")
    row = await new_match(pool)
    async with pool.acquire() as conn:
        cancelled = await change_match(conn, row.id, lambda read: read.moved_to("cancelled", ended_at=T0))
        assert cancelled is not None
        assert await change_match(conn, row.id, start) is None  # a cancelled match cannot start
        assert await get_match(conn, row.id) == cancelled
    assert "cannot go from cancelled to running" in caplog.text


async def test_a_writer_that_always_loses_gives_up_with_version_conflict(pool: asyncpg.Pool) -> None:
    row = await new_match(pool)
    async with pool.acquire() as conn, pool.acquire() as rival:
        meddled = RivalAfterEachRead(conn, rival, row.id)
        with pytest.raises(VersionConflict):
            await change_match(meddled, row.id, start, attempts=3)  # type: ignore[arg-type]
        stored = await get_match(conn, row.id)
    assert stored is not None and stored.version == 4 and stored.state == "waiting"  # three rival writes


async def test_one_room_id_has_one_live_match_at_a_time(pool: asyncpg.Pool) -> None:
    first = await new_match(pool, "dev-room")
    with pytest.raises(asyncpg.UniqueViolationError):
        await new_match(pool, "dev-room")
    async with pool.acquire() as conn:
        await change_match(conn, first.id, lambda read: read.moved_to("cancelled", ended_at=T0))
    again = await new_match(pool, "dev-room")  # the room's earlier match is over
    assert again.id != first.id
