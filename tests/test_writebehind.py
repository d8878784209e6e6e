"""The write-behind queue against real Postgres and Redis: writes land in order and exactly once, wait out a
Postgres that is down, spill to Redis past the memory limit, and set aside a write Postgres refuses."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis

from persistence.migrate import migrate_url
from persistence.writebehind import Write, WriteBehind, WriteRefused
from server.ops.embedded import LocalPostgres

T0_MS = 1_795_400_000_000


def result_write(match_id: str, players: list[tuple[str, str]], *, room: str = "room-1") -> Write:
    return {"op": "match_result", "match": match_id, "room": room, "mode": "arena", "node": "n1",
            "created_ms": T0_MS, "started_ms": T0_MS + 1_000, "ended_ms": T0_MS + 60_000, "reason": "kills",
            "players": [{"id": pid, "name": name, "order": i + 1, "joined_ms": T0_MS, "rank": i + 1,
                         "kills": 3 - i, "deaths": i, "score": 300 - 100 * i} for i, (pid, name) in enumerate(players)]}


def some_players(n: int = 3) -> list[tuple[str, str]]:
    return [(str(uuid.uuid4()), f"p{i}") for i in range(n)]


@pytest.fixture
async def queue(migrated: str, redis: aioredis.Redis) -> AsyncIterator[WriteBehind]:
    """A running queue on a migrated database of its own."""
    writes = WriteBehind(migrated, redis, f"t:{uuid.uuid4().hex}:spill")
    task = await running(writes)
    try:
        yield writes
    finally:
        await stop(task, writes)


async def running(queue: WriteBehind) -> asyncio.Task[None]:
    return asyncio.get_running_loop().create_task(queue.run())


async def stop(task: asyncio.Task[None], queue: WriteBehind) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await queue.close()


async def results_of(database_url: str, match_id: str) -> tuple[asyncpg.Record | None, list[asyncpg.Record]]:
    conn = await asyncpg.connect(database_url)
    try:
        match = await conn.fetchrow("SELECT state, version, end_reason FROM matches WHERE id = $1",
                                    uuid.UUID(match_id))
        lines = await conn.fetch("SELECT player_id, join_order, rank, kills, score FROM match_players "
                                 "WHERE match_id = $1 ORDER BY join_order", uuid.UUID(match_id))
        return match, lines
    finally:
        await conn.close()


async def test_a_match_opened_started_and_finished_lands_with_its_result(queue: WriteBehind, migrated: str) -> None:
    match_id, players = str(uuid.uuid4()), some_players()
    base = {"match": match_id, "room": "room-1", "mode": "arena", "node": "n1", "created_ms": T0_MS}
    queue.submit({"op": "match_opened", **base})
    queue.submit({"op": "match_started", **base, "started_ms": T0_MS + 1_000})
    await asyncio.wait_for(queue.submit(result_write(match_id, players)), 10)
    match, lines = await results_of(migrated, match_id)
    assert match is not None and (match["state"], match["version"], match["end_reason"]) == ("finished", 3, "kills")
    assert [(str(r["player_id"]), r["rank"], r["kills"]) for r in lines] == [
        (pid, i + 1, 3 - i) for i, (pid, _) in enumerate(players)]


async def test_a_result_written_twice_lands_exactly_once(queue: WriteBehind, migrated: str) -> None:
    match_id, players = str(uuid.uuid4()), some_players()
    write = result_write(match_id, players)
    await asyncio.wait_for(asyncio.gather(queue.submit(write), queue.submit(write)), 10)
    match, lines = await results_of(migrated, match_id)
    # Created waiting (1), moved to running and finished in one change (2); the replay changed nothing.
    assert match is not None and (match["state"], match["version"]) == ("finished", 2)
    assert len(lines) == 3


async def test_results_wait_for_a_postgres_that_is_down_and_land_exactly_once_when_it_is_back(
        private_postgres: LocalPostgres, redis: aioredis.Redis) -> None:
    await migrate_url(private_postgres.url)
    queue = WriteBehind(private_postgres.url, redis, f"t:{uuid.uuid4().hex}:spill")
    task = await running(queue)
    try:
        private_postgres.stop()
        matches = [(str(uuid.uuid4()), some_players()) for _ in range(5)]
        durable = [queue.submit(result_write(mid, players, room=f"r{i}")) for i, (mid, players) in enumerate(matches)]
        await asyncio.sleep(1.0)
        assert not any(f.done() for f in durable)  # not durable: Postgres is down, and memory is not full
        assert queue.retries > 0
        private_postgres.restart()
        await asyncio.wait_for(asyncio.gather(*durable), 20)
        assert await queue.drain(5)
        for mid, players in matches:
            match, lines = await results_of(private_postgres.url, mid)
            assert match is not None and match["state"] == "finished" and len(lines) == len(players)
    finally:
        await stop(task, queue)


async def test_past_the_memory_limit_the_oldest_writes_spill_to_redis_and_land_in_order(
        private_postgres: LocalPostgres, redis: aioredis.Redis) -> None:
    await migrate_url(private_postgres.url)
    spill = f"t:{uuid.uuid4().hex}:spill"
    queue = WriteBehind(private_postgres.url, redis, spill, memory_limit=5, batch=4)
    task = await running(queue)
    try:
        private_postgres.stop()
        match_id, players = str(uuid.uuid4()), some_players(1)
        base: dict[str, Any] = {"op": "positions", "match": match_id, "room": "room-9", "mode": "arena",
                                "node": "n1", "created_ms": T0_MS}
        writes = [{**base, "clock_ms": 1000 * i, "taken_ms": T0_MS + 1000 * i,
                   "players": [{"id": players[0][0], "name": "p0", "x": float(i), "y": 1.0, "hp": 100, "kills": i,
                                "deaths": 0, "score": 10 * i}]} for i in range(20)]
        durable = [queue.submit(write) for write in writes]
        deadline = time.monotonic() + 10
        while sum(f.done() for f in durable) < 15:
            assert time.monotonic() < deadline, "the oldest writes never reached the spill"
            await asyncio.sleep(0.05)
        assert all(f.done() for f in durable[:15]) and not any(f.done() for f in durable[15:])
        # The worker may have taken the first spilled batch in flight already (Postgres is down: it waits there).
        spilled = [orjson.loads(raw)["clock_ms"]
                   for raw in [*await redis.lrange(f"{spill}:inflight", 0, -1), *await redis.lrange(spill, 0, -1)]]
        assert spilled == [1000 * i for i in range(15)]
        private_postgres.restart()
        await asyncio.wait_for(asyncio.gather(*durable), 20)
        assert await queue.drain(10)
        assert await redis.exists(spill, f"{spill}:inflight") == 0
        conn = await asyncpg.connect(private_postgres.url)
        try:
            row = await conn.fetchrow("SELECT x, kills, match_clock_ms FROM player_positions WHERE match_id = $1",
                                      uuid.UUID(match_id))
        finally:
            await conn.close()
        assert row is not None and (row["x"], row["kills"], row["match_clock_ms"]) == (19.0, 19, 19_000)
    finally:
        await stop(task, queue)


async def test_a_write_postgres_refuses_is_set_aside_and_the_rest_of_its_batch_lands(
        queue: WriteBehind, migrated: str, redis: aioredis.Redis) -> None:
    good = [(str(uuid.uuid4()), some_players()) for _ in range(2)]
    bad_id = str(uuid.uuid4())
    bad = result_write(bad_id, [(str(uuid.uuid4()), "x" * 40)])  # names are 1-32 characters
    durable = [queue.submit(result_write(good[0][0], good[0][1], room="g0")), queue.submit(bad),
               queue.submit(result_write(good[1][0], good[1][1], room="g1"))]
    outcomes = await asyncio.wait_for(asyncio.gather(*durable, return_exceptions=True), 10)
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], WriteRefused)  # never announced as saved
    for mid, _ in good:
        match, lines = await results_of(migrated, mid)
        assert match is not None and match["state"] == "finished" and len(lines) == 3
    assert (await results_of(migrated, bad_id))[0] is None
    dead = [orjson.loads(raw) for raw in await redis.lrange(queue.dead_key, 0, -1)]
    assert [entry["write"]["match"] for entry in dead] == [bad_id] and "name" in dead[0]["error"]


async def test_an_older_position_never_overwrites_a_newer_one(queue: WriteBehind, migrated: str) -> None:
    match_id, pid = str(uuid.uuid4()), str(uuid.uuid4())

    def at(clock_ms: int, x: float) -> Write:
        return {"op": "positions", "match": match_id, "room": "room-p", "mode": "arena", "node": "n1",
                "created_ms": T0_MS, "clock_ms": clock_ms, "taken_ms": T0_MS + clock_ms,
                "players": [{"id": pid, "name": "p", "x": x, "y": 0.0, "hp": 90, "kills": 0, "deaths": 0,
                             "score": 0}]}

    await asyncio.wait_for(asyncio.gather(queue.submit(at(5_000, 50.0)), queue.submit(at(3_000, 30.0))), 10)
    conn = await asyncpg.connect(migrated)
    try:
        x = await conn.fetchval("SELECT x FROM player_positions WHERE match_id = $1", uuid.UUID(match_id))
    finally:
        await conn.close()
    assert x == 50.0


async def test_a_write_that_fails_in_our_own_code_is_set_aside_and_the_queue_goes_on(
        queue: WriteBehind, migrated: str, redis: aioredis.Redis) -> None:
    bad = {"op": "positions", "match": "not-a-uuid", "room": "r", "mode": "arena", "node": "n1", "created_ms": T0_MS,
           "clock_ms": 0, "taken_ms": T0_MS, "players": []}
    with pytest.raises(WriteRefused):
        await asyncio.wait_for(queue.submit(bad), 10)
    match_id = str(uuid.uuid4())
    await asyncio.wait_for(queue.submit(result_write(match_id, some_players())), 10)  # the worker is alive
    match, _ = await results_of(migrated, match_id)
    assert match is not None and match["state"] == "finished"
    assert [orjson.loads(raw)["write"]["match"] for raw in await redis.lrange(queue.dead_key, 0, -1)] == ["not-a-uuid"]


async def test_a_restored_matchs_event_log_keeps_each_event_of_the_timeline_that_went_on_once(
        queue: WriteBehind, migrated: str) -> None:
    match_id = str(uuid.uuid4())
    base = {"match": match_id, "room": "dice-1", "mode": "dice", "node": "n1", "created_ms": T0_MS}

    def event(seq: int, epoch: int, value: int) -> Write:
        return {**base, "op": "match_event", "seq": seq, "epoch": epoch, "body": {"kind": "roll", "value": value}}

    for seq in (1, 2, 3):  # the first host recorded three rolls, then crashed; its snapshot had counted one
        await queue.submit(event(seq, 0, 10 + seq))
    await queue.submit({**base, "op": "events_rewound", "after": 1, "epoch": 1, "node": "n2"})
    await queue.submit(event(2, 1, 22))  # the restored match rolls again from number 2
    # Late writes of the crashed host's timeline (a replay, a stalled node's queue) change nothing now.
    await queue.submit(event(3, 0, 99))
    await queue.submit(event(4, 0, 99))
    await queue.submit(event(2, 0, 99))
    await queue.submit(event(3, 1, 23))
    await queue.submit({**base, "op": "events_rewound", "after": 1, "epoch": 1, "node": "n2"})  # replayed: no harm
    last = queue.submit(event(4, 1, 24))
    await asyncio.wait_for(last, 10)
    conn = await asyncpg.connect(migrated)
    try:
        rows = await conn.fetch("SELECT seq, epoch, body FROM match_events WHERE match_id = $1 ORDER BY seq",
                                uuid.UUID(match_id))
    finally:
        await conn.close()
    assert [(row["seq"], row["epoch"], orjson.loads(row["body"])["value"]) for row in rows] == [
        (1, 0, 11), (2, 1, 22), (3, 1, 23), (4, 1, 24)]
