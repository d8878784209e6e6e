"""Seat assignment in Redis, against a real Redis: rooms of 3 to 5, rejoin and takeover, backfill, the expiry
of rooms, the sweep after a dead node, and hundreds of players on several nodes at once without a race."""

from __future__ import annotations

import asyncio
import random
import re
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis

from lobby.keys import LobbyKeys
from lobby.seating import Member, Outcome, RoomRecord, RoomView, Seating, SeatingRules
from tests.clusterkit import Dump
from tests.clusterkit import dump as dump_prefix

# Time is injected: every test passes its own clock readings, starting here.
T = 1_000_000


def seating(client: aioredis.Redis, **rules: Any) -> Seating:
    # A prefix of its own per test: no flushing, no interference between tests.
    return Seating(client, LobbyKeys(f"t{uuid.uuid4().hex[:8]}", "arena"), SeatingRules(**rules))


def name_of(player: str) -> str:
    return f"name-{player}"


def lobby_conn(player: str) -> str:
    return f"lobby-{player}"


async def join(lobby: Seating, player: str, now_ms: int, *, room: str = "", node: str = "node-a", conn: str = "",
               takeover: str = "") -> Outcome:
    """Join through a lobby connection on `node` (by default `lobby-<player>`), offering `room` as a new room
    hosted on that same node."""
    return await lobby.join(player, name_of(player), now_ms, conn_id=conn or lobby_conn(player), conn_node=node,
                            new_room_id=room, new_room_node=node if room else "", takeover=takeover)


async def fill(lobby: Seating, room: str, players: Sequence[str], now_ms: int, *, node: str = "node-a",
               step_ms: int = 0) -> list[Outcome]:
    """Join `players` one after the other (the k-th at now_ms + k * step_ms), each offering `room` on `node`."""
    return [await join(lobby, player, now_ms + k * step_ms, room=room, node=node)
            for k, player in enumerate(players)]


def view_of(outcome: Outcome) -> RoomView:
    assert outcome.view is not None, outcome
    return outcome.view


async def record_of(lobby: Seating, room_id: str) -> RoomRecord:
    record = await lobby.room(room_id)
    assert record is not None, f"room {room_id} does not exist"
    return record


def members(*players: str) -> tuple[Member, ...]:
    return tuple(Member(player, name_of(player)) for player in players)


async def queue(lobby: Seating) -> list[tuple[str, int]]:
    """The waiting players, first in line first, with the time they began to wait."""
    entries: list[Any] = await lobby.client.zrange(lobby.keys.queue, 0, -1, withscores=True)
    return [(str(player), int(score)) for player, score in entries]


async def members_of(lobby: Seating, key: str) -> set[str]:
    found: set[Any] = await lobby.client.smembers(key)
    return {str(member) for member in found}


async def expire_shadow(lobby: Seating, room_id: str) -> None:
    """What Redis does when nobody refreshed the room for its whole TTL."""
    await lobby.client.delete(lobby.keys.room_shadow(room_id))


# -- reading a whole lobby back --------------------------------------------------------------------------------


async def dump(lobby: Seating) -> Dump:
    """Every key of this test's lobby, with its TTL."""
    return await dump_prefix(lobby.client, lobby.keys.base)


def check_lobby(lobby: Seating, state: Dump, started: dict[str, int]) -> None:
    """Every invariant of a lobby without backfill, read from Redis alone. `started` holds the rooms seen to
    start, with their player count at that moment."""
    keys, values = lobby.keys, state.values
    base = keys.base
    room_hash = re.compile(re.escape(f"{base}:room:") + r"([^:]+)$")
    player_hash = re.compile(re.escape(f"{base}:player:") + r"([^:]+)$")
    room_part = re.compile(re.escape(f"{base}:room:") + r"([^:]+):(players|ttl)$")
    node_set = re.compile(re.escape(f"{base}:node:") + r"([^:]+):(rooms|conns)$")
    rooms = {m[1]: value for key, value in values.items() if (m := room_hash.match(key))}
    players = {m[1]: value for key, value in values.items() if (m := player_hash.match(key))}

    # Keys without a TTL are the index sets only, every member of an index exists, and no part of a room
    # outlives its hash.
    for key, ttl in state.ttls.items():
        if ttl == -1:
            assert key in (keys.available, keys.queue, keys.rooms) or node_set.match(key), f"{key} has no TTL"
        if m := room_part.match(key):
            assert m[1] in rooms, f"{key} outlives its room"
    assert set(values.get(keys.rooms, ())) == set(rooms)
    assert set(values.get(keys.queue, {})) <= set(players)
    for key, value in values.items():
        if (m := node_set.match(key)) and m[2] == "rooms":
            assert all(rooms.get(room_id, {}).get("node") == m[1] for room_id in value), key
        elif m:
            assert all(players.get(player, {}).get("conn_node") == m[1] for player in value), key

    seated: Counter[str] = Counter()
    open_rooms: dict[str, int] = {}
    for room_id, room in rooms.items():
        roster = [entry["id"] for entry in orjson.loads(room["players"])]
        inside = values.get(keys.room_players(room_id), set())
        assert sorted(roster) == sorted(inside) and len(set(roster)) == len(roster), room_id
        assert len(inside) <= 5, f"{room_id} holds {len(inside)} players"
        assert room_id in values.get(keys.node_rooms(room["node"]), set())
        assert state.ttls[keys.room_shadow(room_id)] > 0
        seated.update(inside)
        if room["state"] == "running":
            assert started.get(room_id, 0) >= 3, f"{room_id} runs but was not seen to start with 3 or more"
            assert room.get("started_ms") and "countdown_ends_ms" not in room
        else:
            assert 1 <= len(inside) and room["state"] == ("countdown" if len(inside) >= 3 else "waiting"), room_id
            assert ("countdown_ends_ms" in room) == (room["state"] == "countdown")
            open_rooms[room_id] = len(inside)
        for player in inside:
            placement = players[player]
            assert (placement["room"], placement["node"]) == (room_id, room["node"])
            assert placement["status"] == ("playing" if room["state"] == "running" else "waiting")
            assert {"id": player, "name": placement["name"]} in orjson.loads(room["players"])
    assert all(count == 1 for count in seated.values()), "a player holds two seats"
    assert {room_id: int(count) for room_id, count in values.get(keys.available, {}).items()} == open_rooms
    assert len(open_rooms) <= 1, f"players wait in several rooms at once: {open_rooms}"

    waiting = {player for player, placement in players.items() if placement["status"] in ("waiting", "queued")}
    assert set(values.get(keys.queue, {})) == waiting
    for player, placement in players.items():
        assert state.ttls[keys.player(player)] > 0
        if placement["room"]:
            assert player in seated, f"{player} points at {placement['room']} but is not in it"
        else:
            assert placement["status"] == "queued"
        if placement["status"] in ("waiting", "queued"):
            assert int(values[keys.queue][player]) == int(placement["joined_ms"])
        if placement.get("conn"):
            assert player in values.get(keys.node_conns(placement["conn_node"]), set())


# -- seating -------------------------------------------------------------------------------------------------


async def test_the_first_player_opens_the_offered_room_and_the_next_ones_join_it(client: aioredis.Redis) -> None:
    lobby = seating(client)
    first = await join(lobby, "p1", T, room="r1")
    assert (first.outcome, first.joined_ms) == ("seated", T)
    assert view_of(first) == RoomView("r1", "waiting", "node-a", None, None, members("p1"), view_of(first).version)
    second = await join(lobby, "p2", T + 1, room="r2", node="node-b")
    assert (second.outcome, view_of(second).room_id, view_of(second).node) == ("seated", "r1", "node-a")
    assert view_of(second).players == members("p1", "p2")
    assert view_of(second).version > view_of(first).version
    assert set(second.notify) == {"node-a", "node-b"}

    record = await record_of(lobby, "r1")
    assert (record.node, record.state, record.created_ms) == ("node-a", "waiting", T)
    assert record.players == members("p1", "p2")
    assert await lobby.room("r2") is None
    assert await lobby.open_rooms() == [("r1", 2)]
    assert await members_of(lobby, lobby.keys.rooms) == {"r1"}
    assert await members_of(lobby, lobby.keys.node_rooms("node-a")) == {"r1"}
    assert await members_of(lobby, lobby.keys.node_conns("node-b")) == {"p2"}
    assert await queue(lobby) == [("p1", T), ("p2", T + 1)]
    assert await lobby.player("p2") == {"room": "r1", "node": "node-a", "status": "waiting", "joined_ms": str(T + 1),
                                        "name": "name-p2", "conn": "lobby-p2", "conn_node": "node-b",
                                        "conn_kind": "lobby"}


async def test_the_third_player_starts_the_countdown_and_falling_below_three_stops_it(
        client: aioredis.Redis) -> None:
    lobby = seating(client, countdown_ms=10_000)
    seats = await fill(lobby, "r", ["p1", "p2", "p3"], T, step_ms=1)
    assert [view_of(seat).state for seat in seats] == ["waiting", "waiting", "countdown"]
    assert view_of(seats[2]).countdown_ends_ms == T + 2 + 10_000
    fourth = await join(lobby, "p4", T + 50, room="other")
    assert (view_of(fourth).state, view_of(fourth).countdown_ends_ms) == ("countdown", T + 2 + 10_000)

    assert (await lobby.leave("p4", T + 60)).outcome == "left"
    departure = await lobby.leave("p3", T + 70)
    assert (departure.outcome, departure.view) == ("left", None)
    record = await record_of(lobby, "r")
    assert (record.state, record.countdown_ends_ms, record.player_ids) == ("waiting", None, ["p1", "p2"])
    assert await lobby.open_rooms() == [("r", 2)]

    again = await join(lobby, "p5", T + 20_000, room="other")
    assert (view_of(again).state, view_of(again).countdown_ends_ms) == ("countdown", T + 30_000)


async def test_the_fifth_player_starts_the_match_at_once_and_closes_the_room_to_newcomers(
        client: aioredis.Redis) -> None:
    lobby = seating(client)
    seats = await fill(lobby, "r", [f"p{i}" for i in range(5)], T, step_ms=1)
    fifth = view_of(seats[-1])
    assert (fifth.state, fifth.started_ms, fifth.countdown_ends_ms, len(fifth.players)) == ("running", T + 4, None, 5)
    assert await lobby.open_rooms() == [] and await queue(lobby) == []
    for i in range(5):
        assert (await lobby.player(f"p{i}"))["status"] == "playing"
    sixth = await join(lobby, "p6", T + 10, room="r2")
    assert (sixth.outcome, view_of(sixth).room_id, view_of(sixth).state) == ("seated", "r2", "waiting")
    assert view_of(sixth).players == members("p6")


async def test_a_player_goes_to_the_fullest_room_with_a_free_seat(client: aioredis.Redis) -> None:
    # Two rooms with a free seat at once: with backfill, running rooms that lost players while nobody waited.
    lobby = seating(client, backfill=True)
    await fill(lobby, "A", [f"a{i}" for i in range(5)], T)
    await fill(lobby, "B", [f"b{i}" for i in range(5)], T + 10)
    for player in ("a0", "a1", "a2", "b0"):
        assert (await lobby.leave(player, T + 20)).outcome == "left"
    assert await lobby.open_rooms() == [("B", 4), ("A", 2)]

    first = await join(lobby, "c", T + 30, room="C")
    assert (view_of(first).room_id, view_of(first).state, len(view_of(first).players)) == ("B", "running", 5)
    assert (await lobby.player("c"))["status"] == "playing"
    second = await join(lobby, "d", T + 31, room="D")
    assert (view_of(second).room_id, len(view_of(second).players)) == ("A", 3)
    assert await lobby.open_rooms() == [("A", 3)]
    assert await lobby.room("C") is None and await lobby.room("D") is None


async def test_with_no_room_to_join_and_none_offered_a_player_waits_in_the_queue_alone(
        client: aioredis.Redis) -> None:
    lobby = seating(client)
    alone = await join(lobby, "p1", T)
    assert (alone.outcome, view_of(alone).state, view_of(alone).room_id, view_of(alone).players) == (
        "seated", "queued", "", ())
    await join(lobby, "p2", T + 1)
    assert (await lobby.player("p1"))["status"] == "queued"
    assert await lobby.open_rooms() == [] and await members_of(lobby, lobby.keys.rooms) == set()

    # Trying again later (now with a room to offer), p1 keeps the place in line it began with.
    again = await join(lobby, "p1", T + 5, room="r1")
    assert (again.outcome, again.joined_ms, view_of(again).room_id, view_of(again).state) == (
        "requeued", T, "r1", "waiting")
    await join(lobby, "p3", T + 6, room="r3")
    assert await queue(lobby) == [("p1", T), ("p2", T + 1), ("p3", T + 6)]
    assert (await record_of(lobby, "r1")).player_ids == ["p1", "p3"]


async def test_with_every_node_full_a_new_player_is_refused_with_nothing_written_but_a_free_seat_still_seats(
        client: aioredis.Redis) -> None:
    lobby = seating(client)

    async def full_join(player: str, now_ms: int) -> Outcome:
        return await lobby.join(player, name_of(player), now_ms, conn_id=lobby_conn(player), conn_node="node-a",
                                new_room_id="", new_room_node="", refuse_full=True)

    await lobby.note_saved("m-1", ["p1"])
    refused = await full_join("p1", T)
    assert (refused.outcome, refused.view, refused.saved, refused.notify) == ("full", None, ("m-1",), ())
    assert await lobby.player("p1") == {} and await queue(lobby) == []
    assert not await client.exists(lobby.keys.player_saved("p1"))  # handed over with the refusal
    # A player the lobby knows (waiting in the queue) is not refused: they keep their place.
    await join(lobby, "q1", T + 1)
    assert (await full_join("q1", T + 2)).outcome == "requeued"
    # An open room with a free seat takes a new player even while no node takes new rooms.
    await fill(lobby, "r1", ["a", "b"], T + 3)
    seated = await full_join("p1", T + 4)
    assert (seated.outcome, view_of(seated).room_id) == ("seated", "r1")


# -- countdown ---------------------------------------------------------------------------------------------


async def test_a_countdown_room_starts_when_asked_at_its_deadline_not_before(client: aioredis.Redis) -> None:
    lobby = seating(client, countdown_ms=5_000)
    await fill(lobby, "r", ["p1", "p2", "p3"], T)
    early = await lobby.start_if_due("r", T + 4_999)
    assert (early.outcome, view_of(early).state) == ("unchanged", "countdown")
    due = await lobby.start_if_due("r", T + 5_000)
    assert (due.outcome, view_of(due).state, view_of(due).started_ms) == ("started", "running", T + 5_000)
    assert view_of(due).players == members("p1", "p2", "p3")
    assert "node-a" in due.notify
    assert await lobby.open_rooms() == [] and await queue(lobby) == []
    assert {(await lobby.player(p))["status"] for p in ("p1", "p2", "p3")} == {"playing"}

    assert (await lobby.start_if_due("r", T + 6_000)).outcome == "unchanged"
    missing = await lobby.start_if_due("gone", T + 6_000)
    assert (missing.outcome, view_of(missing).state) == ("missing", "closed")


async def test_a_room_that_fell_below_the_minimum_is_not_started_after_the_old_deadline(
        client: aioredis.Redis) -> None:
    lobby = seating(client, countdown_ms=5_000)
    await fill(lobby, "r", ["p1", "p2", "p3"], T)
    await lobby.leave("p3", T + 1_000)
    late = await lobby.start_if_due("r", T + 60_000)
    assert (late.outcome, view_of(late).state, view_of(late).started_ms) == ("unchanged", "waiting", None)
    assert await lobby.open_rooms() == [("r", 2)]


# -- rejoin, busy, takeover, stale ---------------------------------------------------------------------------


async def test_joining_again_on_the_same_connection_returns_the_same_seat(client: aioredis.Redis) -> None:
    lobby = seating(client)
    first = await join(lobby, "p1", T, room="r1")
    again = await join(lobby, "p1", T + 5, room="r2")
    assert (again.outcome, again.joined_ms, view_of(again).room_id) == ("rejoined", T, "r1")
    assert view_of(again).players == view_of(first).players == members("p1")
    assert await lobby.room("r2") is None and await queue(lobby) == [("p1", T)]


async def test_a_waiting_player_whose_lobby_connection_ends_gives_the_seat_up(client: aioredis.Redis) -> None:
    lobby = seating(client)
    await fill(lobby, "r", ["p1", "p2"], T, step_ms=1)
    left = await lobby.leave("p1", T + 10, conn_id=lobby_conn("p1"), scope="queue")
    assert left.outcome == "left"
    assert await lobby.player("p1") == {}
    assert (await record_of(lobby, "r")).player_ids == ["p2"]
    back = await join(lobby, "p1", T + 20, room="r9")
    assert (back.outcome, back.joined_ms, view_of(back).player_ids) == ("seated", T + 20, ["p2", "p1"])
    assert await queue(lobby) == [("p2", T + 1), ("p1", T + 20)]


async def test_a_matched_players_lobby_connection_is_let_go_and_they_rejoin_the_same_seat_from_another_node(
        client: aioredis.Redis) -> None:
    lobby = seating(client)
    seats = await fill(lobby, "r", [f"p{i}" for i in range(5)], T, step_ms=1)
    # The match started: match_found ends the lobby connections, so Redis lets go of them at once.
    placement = await lobby.player("p1")
    assert (placement["room"], placement["status"], placement["conn"], placement["conn_node"]) == (
        "r", "playing", "", "")
    assert await members_of(lobby, lobby.keys.node_conns("node-a")) == set()
    # Closing that connection afterwards changes nothing.
    late = await lobby.leave("p1", T + 10, conn_id=lobby_conn("p1"), scope="queue")
    assert late.outcome == "stale" and (await lobby.player("p1"))["status"] == "playing"

    back = await join(lobby, "p1", T + 20, node="node-b", conn="lobby-p1-on-b", room="other")
    assert (back.outcome, back.joined_ms, view_of(back).room_id, view_of(back).state) == (
        "rejoined", T + 1, "r", "running")
    assert view_of(back).players == view_of(seats[-1]).players == members(*(f"p{i}" for i in range(5)))
    placement = await lobby.player("p1")
    # match_found again: that connection is let go too.
    assert (placement["conn"], placement["conn_node"], placement["name"]) == ("", "", "name-p1")
    assert await members_of(lobby, lobby.keys.node_conns("node-b")) == set()
    assert await lobby.room("other") is None
    assert set(back.notify) == {"node-a", "node-b"}


async def test_a_player_connected_elsewhere_is_busy_until_the_caller_takes_that_connection_over(
        client: aioredis.Redis) -> None:
    lobby = seating(client)
    await fill(lobby, "r", [f"p{i}" for i in range(4)], T, step_ms=1)
    before = await dump(lobby)
    busy = await join(lobby, "p1", T + 10, node="node-b", conn="c2", room="other")
    assert (busy.outcome, busy.view, busy.conn, busy.conn_node, busy.conn_kind) == (
        "busy", None, "lobby-p1", "node-a", "lobby")
    assert (await dump(lobby)).values == before.values

    taken = await join(lobby, "p1", T + 20, node="node-b", conn="c2", takeover="lobby-p1", room="other")
    assert (taken.outcome, taken.joined_ms, view_of(taken).room_id) == ("rejoined", T + 1, "r")
    assert view_of(taken).players == members(*(f"p{i}" for i in range(4)))
    assert "p1" not in await members_of(lobby, lobby.keys.node_conns("node-a"))
    assert await members_of(lobby, lobby.keys.node_conns("node-b")) == {"p1"}

    # The connection taken over can no longer give the seat up, nor be taken over again by its old id.
    stale = await lobby.leave("p1", T + 30, conn_id="lobby-p1", scope="seat")
    assert stale.outcome == "stale"
    again = await join(lobby, "p1", T + 40, node="node-c", conn="c3", takeover="lobby-p1")
    assert (again.outcome, again.conn, again.conn_node) == ("busy", "c2", "node-b")
    assert (await lobby.player("p1"))["room"] == "r"


async def test_a_stale_leave_changes_nothing(client: aioredis.Redis) -> None:
    lobby = seating(client)
    await fill(lobby, "r", ["p1", "p2", "p3"], T)
    before = await dump(lobby)
    for conn_id in ("some-other-connection", ""):  # '': only if no connection holds p1, but one does
        for scope in ("queue", "seat"):
            stale = await lobby.leave("p1", T + 1, conn_id=conn_id, scope=scope)
            assert (stale.outcome, stale.view) == ("stale", None)
    assert (await dump(lobby)).values == before.values

    assert (await lobby.leave("p1", T + 2, conn_id=lobby_conn("p1"))).outcome == "left"
    assert (await lobby.leave("p1", T + 3)).outcome == "not_seated"
    assert (await lobby.detach("p2", lobby_conn("p2"), T + 4)).outcome == "detached"
    assert (await lobby.leave("p2", T + 5, conn_id="")).outcome == "left"
    assert (await lobby.leave("p3", T + 6, conn_id="*")).outcome == "left"
    assert await lobby.room("r") is None
    assert await dump(lobby) == Dump({}, {})


# -- game connections ----------------------------------------------------------------------------------------


async def test_a_game_connection_supersedes_the_lobby_one_until_it_detaches(client: aioredis.Redis) -> None:
    lobby = seating(client)
    await join(lobby, "p0", T, room="r", node="node-a")
    for i in range(1, 5):
        await join(lobby, f"p{i}", T, node="node-b")

    attached = await lobby.attach("p1", "r", T + 1, conn_id="game-p1", conn_node="node-a")
    assert (attached.outcome, view_of(attached).room_id, view_of(attached).state) == ("attached", "r", "running")
    placement = await lobby.player("p1")
    assert (placement["conn"], placement["conn_node"], placement["conn_kind"]) == ("game-p1", "node-a", "game")
    assert "p1" not in await members_of(lobby, lobby.keys.node_conns("node-b"))
    assert "p1" in await members_of(lobby, lobby.keys.node_conns("node-a"))
    busy = await join(lobby, "p1", T + 2, node="node-b")
    assert (busy.outcome, busy.conn, busy.conn_node, busy.conn_kind) == ("busy", "game-p1", "node-a", "game")

    assert (await lobby.attach("p1", "elsewhere", T + 3, conn_id="g", conn_node="node-a")).outcome == "not_in_room"
    assert (await lobby.attach("stranger", "r", T + 3, conn_id="g", conn_node="node-a")).outcome == "not_in_room"
    assert (await lobby.detach("p1", lobby_conn("p1"), T + 4)).outcome == "stale"
    assert (await lobby.detach("p1", "game-p1", T + 4)).outcome == "detached"
    assert (await lobby.player("p1"))["conn"] == ""
    assert "p1" not in await members_of(lobby, lobby.keys.node_conns("node-a"))
    back = await join(lobby, "p1", T + 5, node="node-b")
    assert (back.outcome, view_of(back).room_id) == ("rejoined", "r")


async def test_a_detach_that_keeps_the_node_lets_that_nodes_sweep_free_the_seat(client: aioredis.Redis) -> None:
    lobby = seating(client)
    await join(lobby, "p1", T, room="r", node="node-a")
    await join(lobby, "p2", T, node="node-b")
    assert (await lobby.detach("p2", lobby_conn("p2"), T + 1, keep_node=True)).outcome == "detached"
    placement = await lobby.player("p2")
    assert (placement["conn"], placement["conn_node"]) == ("", "node-b")
    assert await members_of(lobby, lobby.keys.node_conns("node-b")) == {"p2"}
    await lobby.sweep("node-b", T + 2, new_host="node-c")
    assert await lobby.player("p2") == {}
    assert (await record_of(lobby, "r")).player_ids == ["p1"]


# -- backfill ----------------------------------------------------------------------------------------------


async def test_backfill_moves_the_longest_waiting_player_into_a_running_room_that_lost_one(
        client: aioredis.Redis) -> None:
    lobby = seating(client, backfill=True, countdown_ms=10_000)
    await fill(lobby, "A", [f"a{i}" for i in range(5)], T)
    await join(lobby, "q", T + 50)  # no room to join, none offered: waits alone
    await fill(lobby, "B", ["b0", "b1", "b2"], T + 100, step_ms=1)
    assert await queue(lobby) == [("q", T + 50), ("b0", T + 100), ("b1", T + 101), ("b2", T + 102)]

    # First in line: q, who waited in no room at all.
    assert (await lobby.leave("a0", T + 200)).outcome == "left"
    room_a = await record_of(lobby, "A")
    assert (room_a.state, room_a.player_ids) == ("running", ["a1", "a2", "a3", "a4", "q"])

    # Next: b0, taken out of room B, whose countdown stops as it falls below 3.
    left = await lobby.leave("a1", T + 300)
    assert (left.outcome, left.view) == ("left", None)
    room_a = await record_of(lobby, "A")
    assert (room_a.state, room_a.player_ids) == ("running", ["a2", "a3", "a4", "q", "b0"])
    placement = await lobby.player("b0")
    assert (placement["room"], placement["node"], placement["status"], placement["joined_ms"]) == (
        "A", "node-a", "playing", str(T + 100))
    room_b = await record_of(lobby, "B")
    assert (room_b.state, room_b.countdown_ends_ms, room_b.player_ids) == ("waiting", None, ["b1", "b2"])
    assert await lobby.open_rooms() == [("B", 2)]
    assert await queue(lobby) == [("b1", T + 101), ("b2", T + 102)]


async def test_backfill_deletes_the_waiting_room_it_empties(client: aioredis.Redis) -> None:
    lobby = seating(client, backfill=True)
    await fill(lobby, "A", [f"a{i}" for i in range(5)], T)
    await join(lobby, "b0", T + 100, room="B", node="node-b")
    await lobby.leave("a0", T + 200)
    assert (await record_of(lobby, "A")).player_ids == ["a1", "a2", "a3", "a4", "b0"]
    assert await lobby.room("B") is None
    assert await client.exists(lobby.keys.room_players("B"), lobby.keys.room_shadow("B")) == 0
    assert await members_of(lobby, lobby.keys.rooms) == {"A"}
    assert await members_of(lobby, lobby.keys.node_rooms("node-b")) == set()
    assert await lobby.open_rooms() == [] and await queue(lobby) == []


async def test_backfill_reopens_a_running_room_to_newcomers_when_nobody_waits(client: aioredis.Redis) -> None:
    lobby = seating(client, backfill=True)
    await fill(lobby, "A", [f"a{i}" for i in range(5)], T)
    departure = await lobby.leave("a0", T + 10)
    assert departure.outcome == "left"
    assert await lobby.open_rooms() == [("A", 4)]
    late = await join(lobby, "late", T + 20, room="other")
    assert (late.outcome, view_of(late).room_id, view_of(late).state) == ("seated", "A", "running")
    assert (await lobby.player("late"))["status"] == "playing"
    assert await lobby.open_rooms() == [] and await queue(lobby) == []


async def test_without_backfill_a_running_room_that_loses_a_player_takes_nobody(client: aioredis.Redis) -> None:
    lobby = seating(client, backfill=False)
    await fill(lobby, "A", [f"a{i}" for i in range(5)], T)
    await fill(lobby, "B", ["b0", "b1", "b2"], T + 100)
    before_b = await lobby.room("B")
    await lobby.leave("a0", T + 200)
    room_a = await record_of(lobby, "A")
    assert (room_a.state, room_a.player_ids) == ("running", ["a1", "a2", "a3", "a4"])
    assert await lobby.room("B") == before_b
    assert await lobby.open_rooms() == [("B", 3)]
    assert [player for player, _ in await queue(lobby)] == ["b0", "b1", "b2"]


# -- finish --------------------------------------------------------------------------------------------------


async def test_a_finished_room_is_deleted_and_its_players_are_free_to_join_again(client: aioredis.Redis) -> None:
    lobby = seating(client)
    await fill(lobby, "r", [f"p{i}" for i in range(5)], T)
    await lobby.attach("p1", "r", T + 1, conn_id="game-p1", conn_node="node-a")
    finished = await lobby.finish("r", T + 100, match_id="m1")
    assert (finished.outcome, set(finished.notify)) == ("finished", {"node-a"})
    over = lobby.keys.room_over("r")  # what keeps recovery from Postgres from bringing it back
    left = await dump(lobby)
    assert left.values == {over: "m1"} and 3590 <= left.ttls[over] <= 3600

    again = await join(lobby, "p1", T + 200, node="node-b", conn="new-lobby-conn", room="r2")
    assert (again.outcome, again.joined_ms, view_of(again).room_id) == ("seated", T + 200, "r2")
    assert (await lobby.finish("r", T + 300)).outcome == "missing"


async def test_a_match_whose_result_is_in_postgres_leaves_no_mark_nor_claim(client: aioredis.Redis) -> None:
    lobby = seating(client)
    await fill(lobby, "r", [f"p{i}" for i in range(5)], T)
    await lobby.finish("r", T + 100, match_id="m1")
    await client.set(lobby.keys.match_claim("m1"), "node-b", ex=3600)
    assert (await lobby.settle("r", "m1", T + 200)).outcome == "settled"
    assert (await dump(lobby)).values == {}
    assert (await lobby.settle("r", "m1", T + 300)).outcome == "settled"  # idempotent


async def test_settling_an_older_match_keeps_the_mark_a_later_match_of_the_room_set(client: aioredis.Redis) -> None:
    lobby = seating(client)
    await fill(lobby, "r", [f"p{i}" for i in range(5)], T)
    await lobby.finish("r", T + 100, match_id="m2")
    await lobby.settle("r", "m1", T + 200)
    assert (await dump(lobby)).values == {lobby.keys.room_over("r"): "m2"}


# -- expiry --------------------------------------------------------------------------------------------------


async def test_expire_leaves_a_room_whose_shadow_key_lives_and_reports_a_room_already_gone(
        client: aioredis.Redis) -> None:
    lobby = seating(client)
    await join(lobby, "p1", T, room="r")
    alive = await lobby.expire("r", T + 1, host_alive=False, new_room_ids=["x"], new_room_node="node-b")
    assert alive.outcome == "alive"
    assert (await record_of(lobby, "r")).player_ids == ["p1"]
    gone = await lobby.expire("never", T + 1, host_alive=False, new_room_ids=["x"], new_room_node="node-b")
    assert gone.outcome == "gone"
    assert await lobby.room("x") is None


async def test_expire_removes_an_empty_room(client: aioredis.Redis) -> None:
    lobby = seating(client)
    await fill(lobby, "r", [f"p{i}" for i in range(5)], T)
    for i in range(5):  # a running room stays, even empty, until it finishes or expires
        await lobby.leave(f"p{i}", T + 10)
    assert (await record_of(lobby, "r")).player_ids == []
    await expire_shadow(lobby, "r")
    removed = await lobby.expire("r", T + 20, host_alive=True, new_room_ids=["x"], new_room_node="node-b")
    assert removed.outcome == "removed"
    assert await dump(lobby) == Dump({}, {})


async def test_expire_dissolves_a_room_that_never_started_reseating_its_connected_players_first_in_line(
        client: aioredis.Redis) -> None:
    lobby = seating(client, countdown_ms=10_000)
    await fill(lobby, "r", ["p1", "p2", "p3"], T, step_ms=1)
    await lobby.detach("p2", lobby_conn("p2"), T + 10)  # p2 is no longer connected
    await expire_shadow(lobby, "r")
    dissolved = await lobby.expire("r", T + 1_000, host_alive=True, new_room_ids=["x1", "x2"],
                                   new_room_node="node-b")
    assert dissolved.outcome == "requeued"
    assert await lobby.room("r") is None and await lobby.room("x2") is None
    assert await lobby.player("p2") == {}
    room = await record_of(lobby, "x1")
    assert (room.node, room.state, room.player_ids) == ("node-b", "waiting", ["p1", "p3"])
    assert [(await lobby.player(p))["joined_ms"] for p in ("p1", "p3")] == [str(T), str(T + 2)]

    newcomer = await join(lobby, "n", T + 2_000, room="y")
    assert (view_of(newcomer).room_id, view_of(newcomer).state) == ("x1", "countdown")
    assert await queue(lobby) == [("p1", T), ("p3", T + 2), ("n", T + 2_000)]


async def test_expire_sends_a_running_room_whose_host_is_dead_to_recovery(client: aioredis.Redis) -> None:
    lobby = seating(client)
    await fill(lobby, "r", [f"p{i}" for i in range(5)], T, step_ms=1)
    await expire_shadow(lobby, "r")
    recovery = await lobby.expire("r", T + 1_000, host_alive=False, new_room_ids=["x"], new_room_node="node-b")
    assert (recovery.outcome, set(recovery.notify)) == ("recovery", {"node-a"})
    assert await lobby.room("r") is None and await lobby.room("x") is None
    assert await members_of(lobby, lobby.keys.rooms) == set()
    for i in range(5):
        placement = await lobby.player(f"p{i}")
        assert (placement["status"], placement["room"], placement["joined_ms"]) == ("queued", "", str(T + i))

    # Back in the lobby later, they come before players who began waiting after them.
    await join(lobby, "n", T + 2_000, room="y", node="node-b")
    # Its game connection was on the dead host, so nothing holds the player: no takeover needed.
    back = await join(lobby, "p3", T + 3_000, node="node-b", conn="p3-again")
    assert (back.outcome, back.joined_ms, view_of(back).player_ids) == ("requeued", T + 3, ["n", "p3"])
    assert await queue(lobby) == [("p3", T + 3), ("n", T + 2_000)]


async def test_expire_removes_a_running_room_whose_host_lives_and_frees_its_players(
        client: aioredis.Redis) -> None:
    lobby = seating(client)
    await fill(lobby, "r", [f"p{i}" for i in range(5)], T)
    await expire_shadow(lobby, "r")
    removed = await lobby.expire("r", T + 1_000, host_alive=True, new_room_ids=["x"], new_room_node="node-b")
    assert removed.outcome == "removed"
    assert await dump(lobby) == Dump({}, {})
    again = await join(lobby, "p0", T + 2_000, conn="fresh", room="y")
    assert (again.outcome, again.joined_ms) == ("seated", T + 2_000)


# -- a dead node ---------------------------------------------------------------------------------------------


async def sweep_scene(lobby: Seating) -> None:
    """Node node-a dies with: a running room it hosts (R), a countdown room it hosts (W) with one player waiting
    through it, and a player of a room hosted elsewhere (P, on node-c) connected through it."""
    await join(lobby, "q0", T, room="P", node="node-c")
    await join(lobby, "q1", T, node="node-a")  # plays in P through node-a
    for i in range(2, 5):
        await join(lobby, f"q{i}", T, node="node-b")
    await join(lobby, "r0", T + 10, room="R", node="node-a")
    for i in range(1, 5):
        await join(lobby, f"r{i}", T + 10 + i, node="node-b")
    await join(lobby, "w0", T + 20, room="W", node="node-a")  # waits through node-a
    await join(lobby, "w1", T + 21, node="node-b")
    await join(lobby, "w2", T + 22, node="node-c")


async def test_a_sweep_frees_what_a_dead_node_held_and_a_second_sweep_does_nothing(
        client: aioredis.Redis) -> None:
    lobby = seating(client, countdown_ms=10_000)
    await sweep_scene(lobby)
    assert (await record_of(lobby, "W")).state == "countdown"

    swept = await lobby.sweep("node-a", T + 100, new_host="node-c")
    assert (swept.outcome, swept.counts) == ("swept", {"moved": 1, "recovered": 1})
    assert {"node-b", "node-c"} <= set(swept.notify)

    # The waiting player connected through node-a lost the seat; the room moved and its countdown stopped.
    assert await lobby.player("w0") == {}
    room_w = await record_of(lobby, "W")
    assert (room_w.node, room_w.state, room_w.countdown_ends_ms, room_w.player_ids) == (
        "node-c", "waiting", None, ["w1", "w2"])
    assert await lobby.open_rooms() == [("W", 2)]
    assert await queue(lobby) == [("w1", T + 21), ("w2", T + 22)]
    # The player of P connected through node-a keeps the seat, without a connection.
    placement = await lobby.player("q1")
    assert (placement["room"], placement["status"], placement["conn"], placement["conn_node"]) == (
        "P", "playing", "", "")
    # The running room node-a hosted went to recovery on node-c: still running there, its players pointing at
    # node-c (and free of node-a's connection), listed for node-c to restore, and for node-a's fencing.
    room_r = await record_of(lobby, "R")
    assert (room_r.node, room_r.state, room_r.player_ids) == ("node-c", "running", [f"r{i}" for i in range(5)])
    for i in range(5):
        placement = await lobby.player(f"r{i}")
        assert (placement["status"], placement["room"], placement["node"]) == ("playing", "R", "node-c")
    assert await lobby.player("r0") | {"conn": "", "conn_node": ""} == await lobby.player("r0")
    assert await members_of(lobby, lobby.keys.node_adopt("node-c")) == {"R"}
    assert await members_of(lobby, lobby.keys.node_swept("node-a")) == {"R"}
    assert await members_of(lobby, lobby.keys.node_rooms("node-c")) == {"P", "W", "R"}
    assert await client.exists(lobby.keys.node_rooms("node-a"), lobby.keys.node_conns("node-a")) == 0

    before = await dump(lobby)
    again = await lobby.sweep("node-a", T + 200, new_host="node-b")
    assert (again.outcome, again.counts) == ("swept", {"moved": 0, "recovered": 0})
    assert (await dump(lobby)).values == before.values


async def test_a_sweep_changes_nothing_once_the_node_heart_beats_again(client: aioredis.Redis) -> None:
    """The "is it dead?" read and the sweep are two steps; a node that restarts in between keeps its rooms."""
    lobby = seating(client, countdown_ms=10_000)
    await sweep_scene(lobby)
    before = await dump(lobby)
    heartbeat = f"{lobby.keys.prefix}:node:node-a"
    await client.hset(heartbeat, "url", "ws://node-a")
    swept = await lobby.sweep("node-a", T + 100, new_host="node-c", alive_key=heartbeat)
    await client.delete(heartbeat)
    assert swept.outcome == "alive"
    assert (await dump(lobby)).values == before.values
    swept = await lobby.sweep("node-a", T + 100, new_host="node-c", alive_key=heartbeat)
    assert (swept.outcome, swept.counts) == ("swept", {"moved": 1, "recovered": 1})


async def test_with_no_live_host_a_sweep_gives_a_running_rooms_players_their_place_in_line(
        client: aioredis.Redis) -> None:
    lobby = seating(client)
    await sweep_scene(lobby)
    swept = await lobby.sweep("node-a", T + 100, new_host="")
    assert swept.counts is not None and swept.counts["recovered"] == 1
    assert await lobby.room("R") is None
    for i in range(5):
        placement = await lobby.player(f"r{i}")
        assert (placement["status"], placement["room"], placement["joined_ms"]) == ("queued", "", str(T + 10 + i))


async def test_the_players_of_a_room_moved_by_a_sweep_point_at_its_new_host(client: aioredis.Redis) -> None:
    lobby = seating(client)
    await sweep_scene(lobby)
    await lobby.sweep("node-a", T + 100, new_host="node-c")
    assert [(await lobby.player(p))["node"] for p in ("w1", "w2")] == ["node-c", "node-c"]


async def test_players_sent_to_recovery_by_expire_keep_their_place_through_the_dead_hosts_sweep(
        client: aioredis.Redis) -> None:
    lobby = seating(client)
    await fill(lobby, "r", [f"p{i}" for i in range(5)], T, step_ms=1)
    for i in range(5):
        await lobby.attach(f"p{i}", "r", T + 10, conn_id=f"game-p{i}", conn_node="node-a")
    await expire_shadow(lobby, "r")
    assert (await lobby.expire("r", T + 1_000, host_alive=False, new_room_ids=[], new_room_node="")).outcome \
        == "recovery"
    await lobby.sweep("node-a", T + 2_000, new_host="node-b")
    for i in range(5):
        placement = await lobby.player(f"p{i}")
        assert (placement.get("status"), placement.get("joined_ms")) == ("queued", str(T + i))


# -- TTLs ----------------------------------------------------------------------------------------------------


async def test_refresh_extends_the_ttls_of_players_and_rooms_and_never_revives_a_deleted_room(
        client: aioredis.Redis) -> None:
    lobby = seating(client, player_ttl_s=300, room_ttl_s=600)
    await join(lobby, "p1", T, room="r")
    keys = lobby.keys
    for key in (keys.player("p1"), keys.room("r"), keys.room_players("r"), keys.room_shadow("r")):
        await client.expire(key, 5)
    await lobby.refresh(["p1"], ["r", "gone"])
    assert 290 <= await client.ttl(keys.player("p1")) <= 300
    assert 710 <= await client.ttl(keys.room("r")) <= 720
    assert 710 <= await client.ttl(keys.room_players("r")) <= 720
    assert 590 <= await client.ttl(keys.room_shadow("r")) <= 600
    assert await client.exists(keys.room("gone"), keys.room_shadow("gone")) == 0


async def test_starting_a_room_does_not_bring_back_an_expired_player_without_a_ttl(client: aioredis.Redis) -> None:
    lobby = seating(client, countdown_ms=5_000)
    await fill(lobby, "r", ["p1", "p2", "p3"], T)
    await client.delete(lobby.keys.player("p2"))  # as its TTL would, had no node refreshed it
    assert (await lobby.start_if_due("r", T + 5_000)).outcome == "started"
    assert await client.ttl(lobby.keys.player("p2")) != -1


# -- many players at once ------------------------------------------------------------------------------------

NODES = ("node-a", "node-b", "node-c")
PLAYERS = 300
ROUNDS = 4
ROUND_MS = 20_000  # far longer than a countdown: every countdown of one round is due in the next


async def test_300_players_on_3_nodes_joining_leaving_and_rejoining_at_once_break_no_rule(
        client: aioredis.Redis) -> None:
    # A short countdown: one begun by a player's clock is often due by another's clock in the same round.
    lobby = seating(client, countdown_ms=500)
    views: list[RoomView] = []
    started: dict[str, int] = {}  # room -> its player count when it began to run
    seat_of: dict[str, str] = {}  # player -> the room they hold ('' queued alone); no entry: no place at all

    def saw_start(room_id: str, count: int) -> None:
        assert room_id not in started, f"{room_id} started twice"
        started[room_id] = count

    async def enter(player: str, node: str, conn: str, now: int, rng: random.Random) -> None:
        # Mostly with a new room to offer (named after the call, so never offered twice), else none.
        offer = f"room-{conn}-{now}" if rng.random() < 0.9 else ""
        outcome = await lobby.join(player, name_of(player), now, conn_id=conn, conn_node=node,
                                   new_room_id=offer, new_room_node=node)
        if outcome.outcome == "busy":
            # Still held by this player's connection of an earlier round: the caller finds it dead, takes over.
            assert outcome.conn != conn
            outcome = await lobby.join(player, name_of(player), now, conn_id=conn, conn_node=node,
                                       new_room_id=offer, new_room_node=node, takeover=outcome.conn)
        view = view_of(outcome)
        views.append(view)
        held = seat_of.get(player)
        if held is None:
            assert outcome.outcome == "seated"
        elif held == "":
            assert outcome.outcome == "requeued"
        else:
            assert (outcome.outcome, view.room_id) == ("rejoined", held)
        if outcome.outcome in ("seated", "requeued") and view.state == "running":
            saw_start(view.room_id, len(view.players))  # only this join can have started it
            assert len(view.players) == 5
        seat_of[player] = view.room_id

    async def start_if_due(player: str, now: int) -> None:
        if seat_of.get(player):
            due = await lobby.start_if_due(seat_of[player], now)
            assert due.outcome in ("started", "unchanged")
            views.append(view_of(due))
            if due.outcome == "started":
                saw_start(view_of(due).room_id, len(view_of(due).players))

    async def play(player: str, round_: int, rng: random.Random) -> None:
        node, conn = rng.choice(NODES), f"{player}-{round_}"
        # Each player's clock reads somewhere in the first half of the round and moves on with each call: the
        # nodes' clocks disagree, so one player's countdown may be due by another's clock in the same round.
        clock = iter(range(T + round_ * ROUND_MS + rng.randrange(ROUND_MS // 2), T + (round_ + 1) * ROUND_MS, 1_000))
        await start_if_due(player, next(clock))  # the countdowns of the round before are over by now
        await enter(player, node, conn, next(clock), rng)
        action = rng.random()
        if action < 0.45:
            scope = "queue" if action < 0.25 else "seat"
            left = await lobby.leave(player, next(clock), conn_id=conn, scope=scope)
            # A matched player's lobby connection was let go when the match started: leaving with it is stale.
            assert left.outcome in (("left", "kept", "stale") if scope == "queue" else ("left", "stale"))
            if left.outcome == "left":
                del seat_of[player]
        elif action < 0.7:
            await start_if_due(player, next(clock))
        if rng.random() < 0.3:
            await enter(player, node, conn, next(clock), rng)

    players = [f"p{i:03d}" for i in range(PLAYERS)]
    for round_ in range(ROUNDS):
        await asyncio.gather(*(play(player, round_, random.Random(f"{round_}:{player}")) for player in players))
        assert max(len(view.players) for view in views) <= 5
        check_lobby(lobby, await dump(lobby), started)

    assert 5 in started.values(), "no room filled up to start at once"


async def test_an_open_room_whose_keys_expired_unhandled_is_skipped_and_forgotten(client: aioredis.Redis) -> None:
    lobby = seating(client)
    await fill(lobby, "r", ["p1", "p2"], T)
    # The room's hash is gone but its entry in rooms:available stayed (its expiry event was lost).
    await client.delete(lobby.keys.room("r"))
    seat = await join(lobby, "p3", T + 10, room="fresh")
    assert (seat.outcome, view_of(seat).room_id, view_of(seat).player_ids) == ("seated", "fresh", ["p3"])
    assert await lobby.open_rooms() == [("fresh", 1)]
    assert "r" not in await members_of(lobby, lobby.keys.rooms)
    assert await client.exists(lobby.keys.room("r"), lobby.keys.room_players("r")) == 0


async def test_a_sweep_with_no_node_to_take_rooms_sends_their_waiting_players_to_the_queue(
        client: aioredis.Redis) -> None:
    lobby = seating(client)
    # Two players wait through node-b in a room that the dying node-a hosts.
    await fill(lobby, "r", ["p1", "p2"], T, node="node-a")
    for player in ("p1", "p2"):
        await lobby.client.hset(lobby.keys.player(player), mapping={"conn_node": "node-b"})
        await lobby.client.srem(lobby.keys.node_conns("node-a"), player)
        await lobby.client.sadd(lobby.keys.node_conns("node-b"), player)
    swept = await lobby.sweep("node-a", T + 100, new_host="")
    assert swept.outcome == "swept" and "node-b" in swept.notify
    assert await lobby.room("r") is None and await lobby.open_rooms() == []
    for player in ("p1", "p2"):
        placement = await lobby.player(player)
        assert (placement["status"], placement["room"]) == ("queued", "")
    assert [member for member, _ in await queue(lobby)] == ["p1", "p2"]


async def test_a_node_cannot_finish_a_room_a_sweep_moved_away_from_it(client: aioredis.Redis) -> None:
    """A node that only stalled closes the rooms swept from it: that must not end their match, which another
    node now restores."""
    lobby = seating(client)
    await sweep_scene(lobby)
    await lobby.sweep("node-a", T + 100, new_host="node-c")
    refused = await lobby.finish("R", T + 200, host="node-a")
    assert refused.outcome == "elsewhere"
    assert (await record_of(lobby, "R")).state == "running"
    assert (await lobby.finish("R", T + 300, host="node-c")).outcome == "finished"
