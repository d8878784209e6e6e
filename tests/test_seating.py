"""Seat assignment in Redis, against a real Redis: the rules of rooms of 3 to 5, and no races."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from lobby.keys import LobbyKeys
from lobby.seating import Seat, Seating, SeatingRules


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    # Waits for a free connection instead of failing when hundreds of calls run at once.
    pool = aioredis.BlockingConnectionPool.from_url(redis_url, max_connections=32, timeout=10)
    client = aioredis.Redis(connection_pool=pool)
    yield client
    await client.aclose()
    await pool.aclose()


def seating(client: aioredis.Redis, **rules: int | bool) -> Seating:
    # A prefix of its own per test: no flushing, no interference between tests.
    return Seating(client, LobbyKeys(f"t{uuid.uuid4().hex[:8]}", "arena"), SeatingRules(**rules))  # type: ignore[arg-type]


async def test_the_first_player_opens_a_room_and_the_next_ones_fill_it(client: aioredis.Redis) -> None:
    lobby = seating(client, countdown_ms=10_000)
    first = await lobby.join("p1", 1000, new_room_id="r1", node_id="node-a")
    assert (first.outcome, first.room_id, first.players, first.state) == ("seated", "r1", 1, "waiting")
    second = await lobby.join("p2", 1001, new_room_id="r2", node_id="node-a")
    assert (second.room_id, second.players, second.state) == ("r1", 2, "waiting")
    third = await lobby.join("p3", 1002, new_room_id="r3", node_id="node-b")
    assert (third.room_id, third.state, third.countdown_ends_ms) == ("r1", "countdown", 11_002)
    room = await lobby.room("r1")
    assert room is not None
    assert (room.node, room.players, room.countdown_ends_ms) == ("node-a", ["p1", "p2", "p3"], 11_002)


async def test_the_fifth_player_starts_the_match_at_once_and_closes_the_room_to_newcomers(
        client: aioredis.Redis) -> None:
    lobby = seating(client)
    seats = [await lobby.join(f"p{i}", 1000 + i, new_room_id=f"r{i}", node_id="n") for i in range(5)]
    assert seats[-1].state == "running" and seats[-1].countdown_ends_ms is None
    assert await lobby.open_rooms() == []
    sixth = await lobby.join("p6", 2000, new_room_id="r-new", node_id="n")
    assert (sixth.room_id, sixth.players, sixth.state) == ("r-new", 1, "waiting")


async def test_a_waiting_player_goes_to_the_fullest_room_with_a_seat(client: aioredis.Redis) -> None:
    lobby = seating(client, backfill=True)
    for i in range(5):
        await lobby.join(f"a{i}", i, new_room_id="A", node_id="n")  # A fills and starts
    for i in range(2):
        await lobby.join(f"b{i}", 10 + i, new_room_id="B", node_id="n")  # B opens with 2
    await lobby.leave("a0")  # backfill: A (4 players) reopens
    assert await lobby.open_rooms() == [("A", 4), ("B", 2)]
    seat = await lobby.join("c", 20, new_room_id="C", node_id="n")
    assert (seat.room_id, seat.players, seat.state) == ("A", 5, "running")
    seat = await lobby.join("d", 21, new_room_id="D", node_id="n")
    assert (seat.room_id, seat.players, seat.state) == ("B", 3, "countdown")


async def test_joining_again_returns_the_same_seat(client: aioredis.Redis) -> None:
    lobby = seating(client)
    first = await lobby.join("p1", 1, new_room_id="r1", node_id="n")
    again = await lobby.join("p1", 2, new_room_id="r2", node_id="n")
    assert (again.outcome, again.room_id, again.players) == ("rejoined", "r1", 1)
    assert first.room_id == again.room_id
    room = await lobby.room("r1")
    assert room is not None and room.players == ["p1"]


async def test_no_open_room_and_no_new_room_offered_seats_nobody(client: aioredis.Redis) -> None:
    lobby = seating(client)
    seat = await lobby.join("p1", 1)
    assert seat.outcome == "no_room"
    assert await lobby.open_rooms() == []


async def test_leaving_below_the_minimum_stops_the_countdown_and_an_emptied_room_is_removed(
        client: aioredis.Redis) -> None:
    lobby = seating(client)
    for i in range(3):
        await lobby.join(f"p{i}", i, new_room_id="r", node_id="n")
    departure = await lobby.leave("p1")
    assert (departure.outcome, departure.players, departure.state) == ("left", 2, "waiting")
    room = await lobby.room("r")
    assert room is not None and room.countdown_ends_ms is None and room.players == ["p0", "p2"]
    assert (await lobby.leave("p1")).outcome == "not_seated"
    await lobby.leave("p0")
    assert (await lobby.leave("p2")).state == "closed"
    assert await lobby.room("r") is None and await lobby.open_rooms() == []
    assert await client.keys(f"{lobby.keys.base}:*") == []


async def test_a_room_starts_when_its_countdown_is_over_not_before(client: aioredis.Redis) -> None:
    lobby = seating(client, countdown_ms=5_000)
    for i in range(3):
        await lobby.join(f"p{i}", 1000, new_room_id="r", node_id="n")
    assert await lobby.start_if_due("r", 5_999) == "countdown"
    assert await lobby.start_if_due("r", 6_000) == "running"
    assert await lobby.open_rooms() == []
    assert await client.hget(lobby.keys.player("p0"), "status") == b"playing"
    assert await lobby.start_if_due("gone", 7_000) == "missing"


async def test_backfill_reopens_a_running_room_that_lost_a_player(client: aioredis.Redis) -> None:
    closed = seating(client)
    for i in range(5):
        await closed.join(f"p{i}", i, new_room_id="r", node_id="n")
    await closed.leave("p0")
    assert await closed.open_rooms() == []

    reopened = seating(client, backfill=True)
    for i in range(5):
        await reopened.join(f"p{i}", i, new_room_id="r", node_id="n")
    await reopened.leave("p0")
    assert await reopened.open_rooms() == [("r", 4)]
    late = await reopened.join("late", 99, new_room_id="other", node_id="n")
    assert (late.room_id, late.players, late.state) == ("r", 5, "running")
    assert await reopened.open_rooms() == []


async def test_hundreds_of_concurrent_joins_and_leaves_never_overfill_or_double_seat(
        client: aioredis.Redis) -> None:
    lobby = seating(client, countdown_ms=60_000)
    rng = random.Random(7)
    players = [f"p{i}" for i in range(300)]

    seen: list[Seat] = []

    async def churn(player: str) -> None:
        for step in range(4):
            seen.append(await lobby.join(player, step, new_room_id=f"room-{uuid.uuid4().hex[:8]}", node_id="n"))
            if rng.random() < 0.4:
                await lobby.leave(player)
            await asyncio.sleep(0)

    await asyncio.gather(*(churn(player) for player in players))
    # What the joins saw: no room beyond 5, and a room started (countdown 60 s: only by filling) at 5.
    assert max(seat.players for seat in seen) <= 5
    started = [seat for seat in seen if seat.outcome == "seated" and seat.state == "running"]
    assert started and all(seat.players == 5 for seat in started)

    seated: Counter[str] = Counter()
    room_ids = {key.decode().rsplit(":", 2)[-2] for key in await client.keys(f"{lobby.keys.base}:room:*:players")}
    open_rooms = dict(await lobby.open_rooms())
    for room_id in room_ids:
        room = await lobby.room(room_id)
        assert room is not None
        members = {member.decode() for member in await client.smembers(lobby.keys.room_players(room_id))}
        assert 1 <= len(members) <= 5
        assert sorted(room.players) == sorted(members) and len(room.players) == len(members)
        seated.update(members)
        if room.state == "running":
            assert room_id not in open_rooms and room.started_ms is not None
        else:
            assert room.state == ("countdown" if len(members) >= 3 else "waiting")
            assert open_rooms[room_id] == len(members)
        for member in members:
            assert await client.hget(lobby.keys.player(member), "room") == room_id.encode()
    assert all(count == 1 for count in seated.values()), "a player holds two seats"
    assert set(open_rooms) <= room_ids
    # Every key of this lobby has a TTL.
    for key in await client.keys(f"{lobby.keys.base}:*"):
        if key.decode() != lobby.keys.available:
            assert await client.ttl(key) > 0
