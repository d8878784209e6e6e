"""What Postgres keeps for recovery, against a real Postgres and Redis: a running room's positions and progress
restore the same room, newer progress is never overwritten by older, a result clears them, the live matches of
nodes that are gone are found, a new match supersedes a room's stale waiting one, `match_moved` renames a live
match's host, and a node takes over the writes another left in its Redis spill, each exactly once."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, cast

import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis
from websockets.protocol import State

from game.arena import DEFINITION as ARENA
from game.arena import ArenaGame
from persistence.recovery import beat, heartbeat_ages, live_matches_elsewhere, stored_matches
from persistence.writebehind import Write, WriteBehind, spill_key
from server.cluster.postgres_recovery import room_document
from server.net.auth import Identity
from server.net.connection import GameConnection
from server.rooms.catalog import hosted
from server.rooms.lifecycle import RoomPhase
from server.rooms.room import Room
from tests.serverkit import node_settings

T0_MS = 1_795_400_000_000
log = logging.getLogger("tests.recovery_store")


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def queue(migrated: str, redis: aioredis.Redis, prefix: str) -> AsyncIterator[WriteBehind]:
    """A running queue on a migrated database of its own."""
    writes = WriteBehind(migrated, redis, spill_key(prefix, "node-live"))
    task = running(writes)
    try:
        yield writes
    finally:
        await stop(task, writes)


def running(queue: WriteBehind) -> asyncio.Task[None]:
    return asyncio.get_running_loop().create_task(queue.run())


async def stop(task: asyncio.Task[None], queue: WriteBehind) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await queue.close()


async def settled(queue: WriteBehind, *durable: asyncio.Future[None], timeout: float = 20) -> None:
    """Until the given writes are durable and the queue has written everything it holds."""
    await asyncio.wait_for(asyncio.gather(*durable), timeout)
    assert await queue.drain(timeout), "the queue did not drain"


async def fetch(url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def match_row(url: str, match_id: str) -> asyncpg.Record:
    rows = await fetch(url, "SELECT room_id, node, state, version, started_at, ended_at, end_reason FROM matches "
                            "WHERE id = $1", uuid.UUID(match_id))
    assert rows, f"no match {match_id}"
    return rows[0]


def base(match_id: str, room: str, *, node: str = "node-old", created_ms: int = T0_MS) -> Write:
    return {"match": match_id, "room": room, "mode": "arena", "node": node, "created_ms": created_ms}


def opened(match_id: str, room: str, **fields: Any) -> Write:
    return {"op": "match_opened", **base(match_id, room, **fields)}


def started(match_id: str, room: str, **fields: Any) -> Write:
    return {"op": "match_started", **base(match_id, room, **fields), "started_ms": T0_MS + 1_000}


def moved(match_id: str, room: str, node: str) -> Write:
    return {"op": "match_moved", **base(match_id, room, node=node)}


def result(match_id: str, room: str, players: list[tuple[str, str]] | None = None, *, cancelled: bool = False,
           **fields: Any) -> Write:
    return {"op": "match_result", **base(match_id, room, **fields), "started_ms": T0_MS + 1_000,
            "ended_ms": T0_MS + 60_000, "reason": "cancelled" if cancelled else "kills", "cancelled": cancelled,
            "players": [{"id": pid, "name": name, "order": i + 1, "joined_ms": T0_MS, "rank": i + 1, "kills": 1,
                         "deaths": 0, "score": 100} for i, (pid, name) in enumerate(players or [])]}


def positions(match_id: str, room: str, players: list[tuple[str, str]], *, clock_ms: int, x: float,
              tick: int = 0) -> Write:
    """A positions write as a room makes it (`Room._record_positions`): every player's game state at `clock_ms`,
    and the match's progress."""
    states = [{"pid": pid, "x": x + pid, "y": 50.0, "hp": 90, "kills": pid, "deaths": 0, "score": 10 * pid,
               "alive": True, "in_match": True, "respawn_us": 0} for pid in range(1, len(players) + 1)]
    return {"op": "positions", **base(match_id, room), "clock_ms": clock_ms, "taken_ms": T0_MS + clock_ms,
            "tick": tick, "roster": sorted(player for player, _ in players),
            "game": {"v": 1, "started": True, "now_us": clock_ms * 1000},
            "players": [{"id": player, "name": name, "pid": state["pid"], "joined_ms": T0_MS, "x": state["x"],
                         "y": state["y"], "hp": state["hp"], "kills": state["kills"], "deaths": state["deaths"],
                         "score": state["score"], "state": state}
                        for (player, name), state in zip(players, states, strict=True)]}


def some_players(n: int = 3) -> list[tuple[str, str]]:
    return [(str(uuid.uuid4()), f"p{i}") for i in range(n)]


# -- a room restored from what Postgres kept -------------------------------------------------------------------


def gone_connection() -> GameConnection:
    """A game connection that has closed: the room seats its player and sends it nothing."""
    return cast(GameConnection, SimpleNamespace(protocol=SimpleNamespace(state=State.CLOSED)))


def play(room: Room, ticks: int, now: float) -> float:
    """Every player closes in on the next one and fires at them, tick after tick (wandering a little once
    within range); the time after the last tick."""
    rng = random.Random(5)
    dt = 0.015
    game = cast(ArenaGame, room.game)
    for tick in range(1, ticks + 1):
        spots = {entry["p"]: (entry["x"], entry["y"]) for entry in game.players_state()}
        pids = sorted(spots)
        for k, pid in enumerate(pids):
            x, y = spots[pid]
            tx, ty = spots[pids[(k + 1) % len(pids)]]
            angle = math.atan2(ty - y, tx - x)
            if math.hypot(tx - x, ty - y) > 250:
                game.set_input(pid, tick, math.cos(angle), math.sin(angle))
            else:
                game.set_input(pid, tick, rng.uniform(-1, 1), rng.uniform(-1, 1))
            game.fire(pid, tick, angle)
        now += dt
        room.tick(now)
    return now


async def test_a_running_room_restored_from_postgres_has_the_same_game_seats_and_match(
        queue: WriteBehind, migrated: str) -> None:
    settings = node_settings()
    wall = [T0_MS]
    players = some_players(3)
    arena = hosted(ARENA, settings)
    room = Room("kept-room", arena, ArenaGame(random.Random(3)), settings, 0.0, log,
                roster=frozenset(player for player, _ in players), node_id="node-old", recorder=queue.submit,
                wall_ms=lambda: wall[0])
    for k, (player, name) in enumerate(players):
        wall[0] += 100
        room.join(Identity(player, name), gone_connection(), 0.01 * k)
    assert room.phase is RoomPhase.RUNNING  # the whole roster is in
    play(room, 800, 1.0)
    assert room.phase is RoomPhase.RUNNING
    wall[0] += 12_000
    raw = room.snapshot(wall[0], record_positions=True)
    assert raw is not None
    original = orjson.loads(raw)
    assert sum(entry["score"] for entry in original["game"]["players"]) > 0  # the match had hits
    await settled(queue)

    match_id = uuid.UUID(room.match_id)
    conn = await asyncpg.connect(migrated)
    try:
        by_id = await stored_matches(conn, match_ids=[match_id])
        by_room = await stored_matches(conn, room_ids=["kept-room"], mode="arena")
        assert await stored_matches(conn, room_ids=["kept-room"], mode="other") == {}
    finally:
        await conn.close()
    assert set(by_id) == {match_id} and by_room == by_id
    stored = by_id[match_id]
    assert (stored.room_id, stored.tick, stored.match_clock_ms) == ("kept-room", room.tick_no, room.game.clock_ms)

    document = orjson.loads(orjson.dumps(room_document(stored)))  # as a snapshot travels: through JSON
    restored = Room.restored(document, arena, ArenaGame(random.Random(99)), settings, 0.0, log, node_id="node-new")
    assert (restored.room_ms, room.room_ms) == (room.room_ms, 800 * 15)
    game = restored.game.snapshot()
    assert game == original["game"]

    def kept(snapshot: dict[str, Any]) -> list[tuple[Any, ...]]:
        return [(p["pid"], p["x"], p["y"], p["hp"], p["kills"], p["deaths"], p["score"]) for p in snapshot["players"]]

    assert kept(game) == kept(original["game"]) and len(kept(game)) == 3
    assert restored.game.clock_ms == room.game.clock_ms > 0
    assert (restored.match_id, restored.room_id, restored.mode, restored.roster, restored.tick_no) == (
        room.match_id, "kept-room", "arena", room.roster, room.tick_no)
    assert (restored.created_ms, restored.started_ms, restored.restored_from) == (
        room.created_ms, room.started_ms, wall[0])
    again = restored.snapshot(wall[0])
    assert again is not None
    restored_seats = orjson.loads(again)["seats"]

    def seats(entries: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [(s["pid"], s["id"], s["name"], s["joined_ms"]) for s in entries]

    assert seats(restored_seats) == seats(original["seats"])
    assert [s["id"] for s in original["seats"]] == [player for player, _ in players]
    assert orjson.loads(again)["roster"] == original["roster"]


async def test_positions_written_before_migration_003_are_not_offered_for_a_restore(
        queue: WriteBehind, migrated: str) -> None:
    match_id, players = str(uuid.uuid4()), some_players(2)
    old = positions(match_id, "old-room", players, clock_ms=5_000, x=10.0)
    for entry in old["players"]:
        del entry["pid"], entry["state"]
    await settled(queue, queue.submit(started(match_id, "old-room")), queue.submit(old))
    conn = await asyncpg.connect(migrated)
    try:
        assert await stored_matches(conn, match_ids=[uuid.UUID(match_id)]) == {}
    finally:
        await conn.close()


# -- the positions and progress writes -------------------------------------------------------------------------


async def test_an_older_positions_write_never_overwrites_newer_progress(queue: WriteBehind, migrated: str) -> None:
    match_id, players = str(uuid.uuid4()), some_players(3)
    await settled(queue, queue.submit(started(match_id, "prog")),
                  queue.submit(positions(match_id, "prog", players, clock_ms=5_000, x=500.0, tick=333)),
                  queue.submit(positions(match_id, "prog", players, clock_ms=3_000, x=300.0, tick=200)))
    progress = await fetch(migrated, "SELECT tick, match_clock_ms, game FROM match_progress WHERE match_id = $1",
                           uuid.UUID(match_id))
    assert [(row["tick"], row["match_clock_ms"], orjson.loads(row["game"])["now_us"]) for row in progress] == [
        (333, 5_000, 5_000_000)]
    kept = await fetch(migrated, "SELECT pid, x, match_clock_ms, state FROM player_positions WHERE match_id = $1 "
                                 "ORDER BY pid", uuid.UUID(match_id))
    assert [(row["pid"], row["x"], row["match_clock_ms"], orjson.loads(row["state"])["x"]) for row in kept] == [
        (pid, 500.0 + pid, 5_000, 500.0 + pid) for pid in (1, 2, 3)]

    conn = await asyncpg.connect(migrated)
    try:
        stored = (await stored_matches(conn, match_ids=[uuid.UUID(match_id)]))[uuid.UUID(match_id)]
    finally:
        await conn.close()
    assert (stored.tick, stored.match_clock_ms, stored.game["now_us"]) == (333, 5_000, 5_000_000)
    assert [seat.state["x"] for seat in stored.seats] == [501.0, 502.0, 503.0]
    assert [(seat.pid, seat.player_id, seat.name) for seat in stored.seats] == [
        (k + 1, player, name) for k, (player, name) in enumerate(players)]


async def test_a_result_deletes_the_matchs_positions_and_progress(queue: WriteBehind, migrated: str) -> None:
    match_id, players = str(uuid.uuid4()), some_players(3)
    await settled(queue, queue.submit(started(match_id, "done")),
                  queue.submit(positions(match_id, "done", players, clock_ms=5_000, x=1.0, tick=10)))
    key = uuid.UUID(match_id)
    count_positions = "SELECT count(*) AS n FROM player_positions WHERE match_id = $1"
    count_progress = "SELECT count(*) AS n FROM match_progress WHERE match_id = $1"
    assert (await fetch(migrated, count_positions, key))[0]["n"] == 3
    assert (await fetch(migrated, count_progress, key))[0]["n"] == 1

    await settled(queue, queue.submit(result(match_id, "done", players)))
    assert (await fetch(migrated, count_positions, key))[0]["n"] == 0
    assert (await fetch(migrated, count_progress, key))[0]["n"] == 0
    # A positions write that arrives after the result (a stalled host's) brings nothing back.
    await settled(queue, queue.submit(positions(match_id, "done", players, clock_ms=9_000, x=2.0, tick=20)))
    assert (await fetch(migrated, count_positions, key))[0]["n"] == 0
    assert (await fetch(migrated, count_progress, key))[0]["n"] == 0
    assert (await match_row(migrated, match_id))["state"] == "finished"


# -- live matches of nodes that are gone -----------------------------------------------------------------------


async def test_live_matches_elsewhere_lists_the_waiting_and_running_matches_of_nodes_not_live(
        queue: WriteBehind, migrated: str) -> None:
    ids = {name: str(uuid.uuid4()) for name in ("gone-waiting", "gone-running", "gone-finished", "gone-cancelled",
                                                "live-waiting", "live-running")}
    writes = [
        opened(ids["gone-waiting"], "a", node="gone-1", created_ms=T0_MS + 1),
        started(ids["gone-running"], "b", node="gone-2", created_ms=T0_MS + 2),
        result(ids["gone-finished"], "c", some_players(), node="gone-1", created_ms=T0_MS + 3),
        opened(ids["gone-cancelled"], "d", node="gone-1", created_ms=T0_MS + 4),
        result(ids["gone-cancelled"], "d", cancelled=True, node="gone-1", created_ms=T0_MS + 4),
        opened(ids["live-waiting"], "e", node="live-1", created_ms=T0_MS + 5),
        started(ids["live-running"], "f", node="live-2", created_ms=T0_MS + 6),
    ]
    await settled(queue, *(queue.submit(write) for write in writes))
    conn = await asyncpg.connect(migrated)
    try:
        elsewhere = await live_matches_elsewhere(conn, {"live-1", "live-2"})
        everyone_gone = await live_matches_elsewhere(conn, [])
    finally:
        await conn.close()
    assert [(str(m.id), m.room_id, m.mode, m.node, m.state) for m in elsewhere] == [
        (ids["gone-waiting"], "a", "arena", "gone-1", "waiting"),
        (ids["gone-running"], "b", "arena", "gone-2", "running")]
    assert [str(m.id) for m in everyone_gone] == [ids[name] for name in (
        "gone-waiting", "gone-running", "live-waiting", "live-running")]


# -- a match that supersedes a stale waiting one ---------------------------------------------------------------


async def test_a_new_match_of_a_room_cancels_its_earlier_waiting_match_as_superseded(
        queue: WriteBehind, migrated: str) -> None:
    earlier, newer = str(uuid.uuid4()), str(uuid.uuid4())
    await settled(queue, queue.submit(opened(earlier, "moved-room", node="node-dead", created_ms=T0_MS)))
    await settled(queue, queue.submit(opened(newer, "moved-room", node="node-new", created_ms=T0_MS + 5_000)))
    old = await match_row(migrated, earlier)
    assert (old["room_id"], old["node"], old["state"], old["end_reason"]) == (
        "moved-room", "node-dead", "cancelled", "superseded")
    assert old["ended_at"] is not None
    new = await match_row(migrated, newer)
    assert (new["room_id"], new["node"], new["state"], new["version"]) == ("moved-room", "node-new", "waiting", 1)
    rooms = await fetch(migrated, "SELECT id FROM matches WHERE room_id = 'moved-room'")
    assert {str(row["id"]) for row in rooms} == {earlier, newer}


async def test_a_late_write_of_an_older_match_does_not_supersede_the_rooms_newer_match(
        queue: WriteBehind, migrated: str) -> None:
    """A dead node's writes can reach Postgres after the room's new host opened its match (they waited in the dead
    node's spill through an outage, and the taking-over node's worker came second). The older match must not
    cancel the newer one: the newer match's result would then be dropped as 'recorded before'."""
    earlier, newer, players = str(uuid.uuid4()), str(uuid.uuid4()), some_players()
    await settled(queue, queue.submit(opened(newer, "moved-room", node="node-new", created_ms=T0_MS + 5_000)))
    late = queue.submit(opened(earlier, "moved-room", node="node-dead", created_ms=T0_MS))
    await asyncio.wait_for(asyncio.gather(late, return_exceptions=True), 20)  # refused or set aside: either is fine
    assert (await match_row(migrated, newer))["state"] == "waiting"
    await settled(queue, queue.submit(started(newer, "moved-room", node="node-new", created_ms=T0_MS + 5_000)),
                  queue.submit(result(newer, "moved-room", players, node="node-new", created_ms=T0_MS + 5_000)))
    assert (await match_row(migrated, newer))["state"] == "finished"
    lines = await fetch(migrated, "SELECT player_id FROM match_players WHERE match_id = $1", uuid.UUID(newer))
    assert len(lines) == 3


# -- match_moved -----------------------------------------------------------------------------------------------


async def test_match_moved_renames_the_host_of_a_running_match_and_not_of_a_finished_one(
        queue: WriteBehind, migrated: str) -> None:
    live, over = str(uuid.uuid4()), str(uuid.uuid4())
    await settled(queue, queue.submit(started(live, "live-room", node="node-old")),
                  queue.submit(result(over, "over-room", some_players(), node="node-old")))
    live_before, over_before = await match_row(migrated, live), await match_row(migrated, over)
    await settled(queue, queue.submit(moved(live, "live-room", "node-new")),
                  queue.submit(moved(over, "over-room", "node-new")))
    live_after, over_after = await match_row(migrated, live), await match_row(migrated, over)
    assert (live_after["node"], live_after["state"], live_after["version"]) == (
        "node-new", "running", live_before["version"] + 1)
    assert live_after["started_at"] == live_before["started_at"]
    assert dict(over_after) == dict(over_before) and over_after["node"] == "node-old"


# -- taking over another node's spill --------------------------------------------------------------------------


async def test_a_node_takes_over_the_writes_another_left_in_its_spill_and_writes_them_in_order_once(
        migrated: str, redis: aioredis.Redis, prefix: str) -> None:
    dead_spill = spill_key(prefix, "node-dead")
    match_id, players = str(uuid.uuid4()), some_players()
    # The batch the dead node was writing when it died, then what waited behind it. Their effect shows their
    # order: each match change bumps the version, and a change out of order is refused or does nothing.
    inflight = [opened(match_id, "spilled", node="node-dead"), started(match_id, "spilled", node="node-dead")]
    spilled = [positions(match_id, "spilled", players, clock_ms=1_000, x=10.0, tick=60),
               moved(match_id, "spilled", "node-b"), moved(match_id, "spilled", "node-c"),
               result(match_id, "spilled", players, node="node-dead")]
    await redis.rpush(f"{dead_spill}:inflight", *(orjson.dumps(write) for write in inflight))
    await redis.rpush(dead_spill, *(orjson.dumps(write) for write in spilled))
    own = opened(str(uuid.uuid4()), "ours", node="node-live")
    writes = WriteBehind(migrated, redis, spill_key(prefix, "node-live"))
    await redis.rpush(writes.spill_key, orjson.dumps(own))  # this node's own spilled write, older than theirs

    assert await writes.take_over(dead_spill) == 6
    assert [orjson.loads(raw) for raw in await redis.lrange(writes.spill_key, 0, -1)] == [own, *inflight, *spilled]
    assert await redis.exists(dead_spill, f"{dead_spill}:inflight") == 0
    assert await writes.take_over(dead_spill) == 0  # nothing left: a second take-over moves nothing

    task = running(writes)
    try:
        await settled(writes)
        assert writes.written == 7  # each write committed once: no replay
    finally:
        await stop(task, writes)
    row = await match_row(migrated, match_id)
    # opened (1), started (2), moved twice (3, 4), finished (5): in that order, each once.
    assert (row["state"], row["node"], row["version"], row["end_reason"]) == ("finished", "node-c", 5, "kills")
    lines = await fetch(migrated, "SELECT join_order FROM match_players WHERE match_id = $1 ORDER BY join_order",
                        uuid.UUID(match_id))
    assert [line["join_order"] for line in lines] == [1, 2, 3]
    assert await fetch(migrated, "SELECT 1 FROM player_positions WHERE match_id = $1", uuid.UUID(match_id)) == []
    assert (await match_row(migrated, own["match"]))["state"] == "waiting"
    assert await redis.exists(writes.spill_key, writes.inflight_key, writes.dead_key) == 0


async def test_two_nodes_taking_over_one_spill_at_once_move_every_write_exactly_once(
        migrated: str, redis: aioredis.Redis, prefix: str) -> None:
    dead_spill = spill_key(prefix, "node-dead")
    writes = [opened(str(uuid.uuid4()), f"room-{i}", node="node-dead", created_ms=T0_MS + i) for i in range(3_150)]
    raw = [orjson.dumps(write) for write in writes]
    await redis.rpush(f"{dead_spill}:inflight", *raw[:150])
    for start in range(150, len(raw), 1_000):
        await redis.rpush(dead_spill, *raw[start:start + 1_000])
    first = WriteBehind(migrated, redis, spill_key(prefix, "node-b"))
    second = WriteBehind(migrated, redis, spill_key(prefix, "node-c"))

    # Two connections open before the race, so that neither starts late for having to connect.
    await asyncio.gather(*(redis.ping() for _ in range(2)))
    moved_counts = await asyncio.gather(first.take_over(dead_spill), second.take_over(dead_spill))
    assert sum(moved_counts) == len(writes)
    assert await redis.exists(dead_spill, f"{dead_spill}:inflight") == 0
    index = {match["match"]: k for k, match in enumerate(writes)}
    spills = [[orjson.loads(item)["match"] for item in await redis.lrange(queue.spill_key, 0, -1)]
              for queue in (first, second)]
    assert [len(spill) for spill in spills] == list(moved_counts)
    assert Counter(spills[0] + spills[1]) == Counter(list(index))  # every write in exactly one of them
    for spill in spills:  # each in the dead node's order
        assert [index[match] for match in spill] == sorted(index[match] for match in spill)

    tasks = [running(first), running(second)]
    try:
        await asyncio.wait_for(asyncio.gather(first.drain(60), second.drain(60)), 90)
    finally:
        for task, queue in zip(tasks, (first, second), strict=True):
            await stop(task, queue)
    assert first.written + second.written == len(writes)
    rows = await fetch(migrated, "SELECT count(*) AS n, count(DISTINCT id) AS d FROM matches WHERE node = 'node-dead'")
    assert (rows[0]["n"], rows[0]["d"]) == (len(writes), len(writes))
    assert await redis.exists(first.spill_key, second.spill_key, first.inflight_key, second.inflight_key) == 0


async def test_heartbeats_in_postgres_tell_how_long_each_node_has_been_silent(migrated: str) -> None:
    conn = await asyncpg.connect(migrated)
    try:
        await beat(conn, "alive")
        await conn.execute("INSERT INTO node_heartbeats (node, seen_at) VALUES ('gone', now() - interval '30 s')")
        ages = await heartbeat_ages(conn, ["alive", "gone", "never"])
        assert set(ages) == {"alive", "gone"} and ages["alive"] < 5 and 29 < ages["gone"] < 60
        await beat(conn, "gone")  # it beats again
        assert (await heartbeat_ages(conn, ["gone"]))["gone"] < 5
    finally:
        await conn.close()


async def test_a_schema_older_than_the_heartbeats_reads_as_no_heartbeat_at_all(fresh_database: str) -> None:
    conn = await asyncpg.connect(fresh_database)  # never migrated: no node_heartbeats table
    try:
        assert await heartbeat_ages(conn, ["a", "b"]) == {}
    finally:
        await conn.close()
