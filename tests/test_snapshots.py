"""Room snapshots: the arena's own snapshot and restore (pure), their spread over the interval, and a running
room's snapshot landing in a real Redis with its TTL."""

from __future__ import annotations

import logging
import random
import time
import uuid
from dataclasses import dataclass

import orjson
import pytest
import redis.asyncio as aioredis

from game.arena import DEFINITION as ARENA
from game.arena import ArenaGame
from lobby.keys import LobbyKeys
from persistence.snapshots import Snapshot, SnapshotStore
from server.rooms.catalog import hosted
from server.rooms.lifecycle import RoomPhase
from server.rooms.room import Room
from server.rooms.snapshotter import Snapshotter
from tests.serverkit import is_event, join_game, new_token, node_settings, recv_until, start_lobby_app

ARENA_HOSTED = hosted(ARENA, node_settings())
LOG = logging.getLogger("t")


def played_game() -> ArenaGame:
    """Four players, one of whom left, after some moving and shooting."""
    game = ArenaGame(random.Random(7))
    for pid in (1, 2, 3, 4):
        game.add_player(pid)
    game.start()
    rng = random.Random(1)
    for tick in range(600):
        for pid in (1, 2, 3, 4):
            game.set_input(pid, tick, rng.uniform(-1, 1), rng.uniform(-1, 1))
            game.fire(pid, tick, rng.uniform(-3, 3))
        game.step(0.015)
        if tick == 300:
            game.remove_player(4)
    return game


def stats(game: ArenaGame) -> list[tuple[object, ...]]:
    return sorted((p["p"], p["x"], p["y"], p["hp"], p["k"], p["d"], p["sc"], p["alive"]) for p in game.players_state())


def test_a_restored_arena_has_the_same_clock_and_players_once_they_are_back() -> None:
    game = played_game()
    snapshot = orjson.loads(orjson.dumps(game.snapshot()))  # as it travels: through JSON
    restored = ArenaGame(random.Random(99))
    restored.restore(snapshot)
    assert restored.clock_ms == game.clock_ms > 0
    assert restored.players_state() == []  # nobody is connected after a crash
    for pid in (1, 2, 3):
        restored.add_player(pid)
    assert stats(restored) == stats(game)
    assert sum(p["sc"] for p in restored.players_state()) > 0  # the match really had hits
    restored.add_player(4)  # the player who had left comes back with their stats too
    assert [e for e in restored.ranking() if e.pid == 4] == [e for e in game.ranking() if e.pid == 4]


def test_a_restore_refuses_another_layout_and_a_game_that_has_players() -> None:
    snapshot = played_game().snapshot()
    with pytest.raises(ValueError, match="version"):
        ArenaGame(random.Random(1)).restore({**snapshot, "v": 99})
    busy = ArenaGame(random.Random(1))
    busy.add_player(1)
    with pytest.raises(ValueError, match="without players"):
        busy.restore(snapshot)


@dataclass
class FakeRoom:
    room_id: str
    mode: str = "arena"
    running: bool = True

    def snapshot(self, wall_ms: int, *, record_positions: bool = False) -> bytes | None:
        return orjson.dumps({"room": self.room_id}) if self.running else None


def test_each_running_room_is_due_exactly_once_per_interval_and_spread_over_it() -> None:
    rooms = [FakeRoom(f"room-{i}") for i in range(300)] + [FakeRoom("idle", running=False)]
    snapshotter = Snapshotter(lambda: rooms, SnapshotStore(None, "p", 60), every_s=30)  # type: ignore[arg-type]
    per_slot = [[s.room_id for s in snapshotter.due(slot)] for slot in range(snapshotter.slots)]
    due = [room for slot in per_slot for room in slot]
    assert sorted(due) == sorted(f"room-{i}" for i in range(300))  # once each, the idle room never
    assert snapshotter.slots == 30 and max(len(slot) for slot in per_slot) <= 25  # about 10 per slot


async def test_a_running_rooms_snapshot_lands_in_redis_with_its_ttl(redis_url: str) -> None:
    app = await start_lobby_app(redis_url, direct_join=True, min_players=2, max_players=2, snapshot_every_s=1,
                                snapshot_ttl_s=120)
    client = aioredis.Redis.from_url(redis_url)
    try:
        first, welcome = await join_game(app, "snap-room", token=new_token("ann"))
        second, _ = await join_game(app, "snap-room", token=new_token("bob"))
        assert welcome["type"] == "welcome"
        await recv_until(first, is_event("phase", state="running"))
        key = LobbyKeys(app.settings.lobby_prefix, "arena").room_snapshot("snap-room")
        deadline = time.monotonic() + 5
        while (raw := await client.get(key)) is None:
            assert time.monotonic() < deadline, "no snapshot within 5 s"
            await recv_until(first, lambda m: m["type"] == "state", timeout=1)
        document = orjson.loads(raw)
        assert (document["room"], document["mode"], document["roster"]) == ("snap-room", "arena", None)
        assert [(s["pid"], s["name"]) for s in document["seats"]] == [(1, "ann"), (2, "bob")]
        assert document["tick"] > 0 and {p["pid"] for p in document["game"]["players"]} == {1, 2}
        assert 0 < await client.ttl(key) <= 120
        for ws in (first, second):  # they stopped reading states: a closing handshake would wait for them
            ws.transport.abort()
    finally:
        await client.aclose()
        await app.__aexit__(None, None, None)


async def test_an_unreadable_snapshot_reads_as_none(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        store = SnapshotStore(client, f"t{time.monotonic_ns()}", 60)
        await store.save([Snapshot("arena", "good", b'{"room": "good"}'), Snapshot("arena", "bad", b"{nope")])
        assert await store.load("arena", "good") == {"room": "good"}
        assert await store.load("arena", "bad") is None
        assert await store.load("arena", "missing") is None
        await store.save([])  # nothing to write: no round trip, no error
    finally:
        await client.aclose()


def test_a_restored_room_tells_the_leaderboard_only_what_it_was_not_told_yet() -> None:
    """The dead host told the leaderboard of points scored after the snapshot: the restored room, whose scores
    are the snapshot's, must bring the board to its own scores, not add them again."""
    game = played_game()
    players = [str(uuid.uuid4()) for _ in range(4)]
    document = {"v": 1, "room": "restored", "mode": "arena", "match": str(uuid.uuid4()), "created_ms": 1,
                "started_ms": 2, "tick": 600, "taken_ms": 3, "roster": players,
                "seats": [{"pid": i + 1, "id": pid, "name": f"p{i}", "joined_ms": 1, "connected": True}
                          for i, pid in enumerate(players)],
                "game": orjson.loads(orjson.dumps(game.snapshot()))}
    scores = {entry.pid: entry.score for entry in game.ranking()}
    told = {players[0]: scores[1] + 110, players[1]: scores[2]}  # p0 scored once more after the snapshot
    added: list[tuple[str, str, int]] = []
    room = Room.restored(document, ARENA_HOSTED, ArenaGame(random.Random(5)), node_settings(), 0.0, LOG,
                         scorer=lambda mode, match, player, points: added.append((match, player, points)),
                         told=told)
    assert (room.match_id, room.phase, room.tick_no) == (document["match"], RoomPhase.RUNNING, 600)
    room._score()
    by_player = {player: points for _, player, points in added}
    assert by_player.get(players[0]) == -110  # the board comes back to the restored score
    assert players[1] not in by_player  # told exactly its score already
    for pid in (3, 4):  # never told: all of their score (if any)
        assert by_player.get(players[pid - 1], 0) == scores[pid]
    assert any(scores[pid] for pid in (3, 4))  # the scene has points to tell


def test_in_a_restored_match_the_only_player_back_wins_once_the_others_seats_are_given_up() -> None:
    """Everyone comes back from a restore away, holding their seats for the reconnect grace; a match in which
    one player still holds a seat ends with that player first, as it would have had the others left while it
    ran."""
    game = played_game()
    players = [str(uuid.uuid4()) for _ in range(4)]  # the fourth left while the match ran: not in the roster
    document = {"v": 1, "room": "alone", "mode": "arena", "match": str(uuid.uuid4()), "created_ms": 1,
                "started_ms": 2, "tick": 600, "taken_ms": 3, "roster": players[:3],
                "seats": [{"pid": i + 1, "id": pid, "name": f"p{i}", "joined_ms": 1} for i, pid in enumerate(players)],
                "game": orjson.loads(orjson.dumps(game.snapshot()))}
    room = Room.restored(document, ARENA_HOSTED, ArenaGame(random.Random(5)), node_settings(), 0.0, LOG)
    room.game.join(3, "p2", 0)  # the one player who came back (a join activates their pid in the game)
    room.dismiss(players[0])  # the first whose reconnect grace ran out...
    assert room.game.end_reason is None  # ...while the second's runs on: it still holds a seat
    room.dismiss(players[1])
    assert room.game.end_reason == "last_player"
    assert room.game.standings()[0].pid == 3
    assert room.roster == frozenset(players[2:3])


def test_a_seat_given_up_before_the_snapshot_stays_given_up_in_the_restored_match() -> None:
    game = played_game()
    players = [str(uuid.uuid4()) for _ in range(4)]
    document = {"v": 1, "room": "left", "mode": "arena", "match": str(uuid.uuid4()), "created_ms": 1,
                "started_ms": 2, "tick": 600, "taken_ms": 3, "roster": players[1:3],  # the first and fourth left
                "seats": [{"pid": i + 1, "id": pid, "name": f"p{i}", "joined_ms": 1} for i, pid in enumerate(players)],
                "game": orjson.loads(orjson.dumps(game.snapshot()))}
    room = Room.restored(document, ARENA_HOSTED, ArenaGame(random.Random(5)), node_settings(), 0.0, LOG)
    room.game.join(3, "p2", 0)
    room.dismiss(players[1])  # one of the two seats still held is given up: one is left
    assert room.game.end_reason == "last_player" and room.game.standings()[0].pid == 3


def test_a_restored_match_nobody_came_back_to_does_not_end_when_seats_are_given_up() -> None:
    game = played_game()
    restored = ArenaGame(random.Random(5))
    restored.restore(orjson.loads(orjson.dumps(game.snapshot())))
    for pid in (1, 2):
        restored.remove_player(pid)
    assert restored.end_reason is None  # nobody is active: the room ends as abandoned after the grace instead
