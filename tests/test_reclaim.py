"""The lobby's reclaim script against a real Redis: a live match the lobby lost is claimed by exactly one node,
never while Redis still knows the room or its snapshot, and with its members the room runs again on the
claimer with its players placed in it (pulled out of the queue or a waiting room, never out of another match)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis

from lobby.keys import LobbyKeys
from lobby.seating import Claim, Member, Outcome, RoomRecord, Seating, SeatingRules
from tests.clusterkit import Dump
from tests.clusterkit import dump as dump_prefix

# Time is injected: every test passes its own clock readings, starting here.
T = 1_000_000
CREATED_MS = T - 90_000
OLD_NODE = "node-dead"  # the host the match had in Postgres
STARTED_MS = T - 80_000


def seating(client: aioredis.Redis, **rules: Any) -> Seating:
    # A prefix of its own per test: no flushing, no interference between tests.
    return Seating(client, LobbyKeys(f"t{uuid.uuid4().hex[:8]}", "arena"), SeatingRules(**rules))


def name_of(player: str) -> str:
    return f"name-{player}"


def members(*players: str) -> list[Member]:
    return [Member(player, name_of(player)) for player in players]


async def join(lobby: Seating, player: str, now_ms: int, *, room: str = "", node: str = "node-a") -> Outcome:
    """Join through a lobby connection `lobby-<player>` on `node`, offering `room` as a new room there."""
    return await lobby.join(player, name_of(player), now_ms, conn_id=f"lobby-{player}", conn_node=node,
                            new_room_id=room, new_room_node=node if room else "")


async def reclaim(lobby: Seating, node: str, *, room: str = "lost", match: str = "m-1",
                  players: Sequence[Member] | None = None, now_ms: int = T) -> Outcome:
    claim = Claim(room, match, OLD_NODE, created_ms=CREATED_MS, started_ms=STARTED_MS,
                  members=None if players is None else tuple(players))
    [outcome] = await lobby.reclaim_many(node, now_ms, [claim])
    return outcome


async def record_of(lobby: Seating, room_id: str) -> RoomRecord:
    record = await lobby.room(room_id)
    assert record is not None, f"room {room_id} does not exist"
    return record


async def members_of(lobby: Seating, key: str) -> set[str]:
    found: set[Any] = await lobby.client.smembers(key)
    return {str(member) for member in found}


async def queue(lobby: Seating) -> list[str]:
    return [str(player) for player in await lobby.client.zrange(lobby.keys.queue, 0, -1)]


async def dump(lobby: Seating) -> Dump:
    return await dump_prefix(lobby.client, lobby.keys.base)


# -- one winner ------------------------------------------------------------------------------------------------


async def test_of_twenty_nodes_reclaiming_one_match_at_once_exactly_one_wins(client: aioredis.Redis) -> None:
    lobby = seating(client)
    nodes = [f"node-{i}" for i in range(20)]
    outcomes = await asyncio.gather(*(reclaim(lobby, node, players=members("p1", "p2", "p3")) for node in nodes))
    winners = [node for node, outcome in zip(nodes, outcomes, strict=True) if outcome.outcome == "claimed"]
    assert len(winners) == 1, Counter(outcome.outcome for outcome in outcomes)
    # The losers came after the winner: its claim answers them first.
    assert Counter(outcome.outcome for outcome in outcomes) == Counter({"claimed": 1, "taken": 19})
    assert await client.get(lobby.keys.match_claim("m-1")) == winners[0]
    record = await record_of(lobby, "lost")
    assert (record.node, record.state, record.player_ids) == (winners[0], "running", ["p1", "p2", "p3"])
    for player in ("p1", "p2", "p3"):
        assert (await lobby.player(player))["node"] == winners[0]
    assert [node for node in nodes if await members_of(lobby, lobby.keys.node_rooms(node))] == winners


async def test_of_twenty_nodes_claiming_a_match_only_to_cancel_it_exactly_one_wins(client: aioredis.Redis) -> None:
    lobby = seating(client)
    nodes = [f"node-{i}" for i in range(20)]
    outcomes = await asyncio.gather(*(reclaim(lobby, node) for node in nodes))
    assert Counter(outcome.outcome for outcome in outcomes) == Counter({"claimed": 1, "taken": 19})
    winner = next(node for node, outcome in zip(nodes, outcomes, strict=True) if outcome.outcome == "claimed")
    assert await client.get(lobby.keys.match_claim("m-1")) == winner


# -- refusals --------------------------------------------------------------------------------------------------


async def test_a_room_the_lobby_still_knows_is_not_claimed(client: aioredis.Redis) -> None:
    lobby = seating(client)
    await join(lobby, "p1", T, room="lost")
    before = await dump(lobby)
    refused = await reclaim(lobby, "node-b", players=members("p1", "p2"), now_ms=T + 10)
    assert (refused.outcome, refused.room) == ("exists", "lost")
    assert (await dump(lobby)).values == before.values  # no claim, the room and its player untouched
    assert not await client.exists(lobby.keys.match_claim("m-1"))


async def test_a_room_whose_snapshot_redis_still_has_is_not_claimed(client: aioredis.Redis) -> None:
    lobby = seating(client)
    await client.set(lobby.keys.room_snapshot("lost"), orjson.dumps({"v": 1, "room": "lost"}), ex=600)
    before = await dump(lobby)
    refused = await reclaim(lobby, "node-b", players=members("p1", "p2"))
    assert (refused.outcome, refused.room) == ("snapshot", "lost")
    assert (await dump(lobby)).values == before.values
    assert await lobby.room("lost") is None and await lobby.player("p1") == {}


async def test_a_match_claimed_once_is_taken_for_every_later_claim(client: aioredis.Redis) -> None:
    lobby = seating(client)
    assert (await reclaim(lobby, "node-a")).outcome == "claimed"
    before = await dump(lobby)
    second = await reclaim(lobby, "node-b", players=members("p1", "p2", "p3"), now_ms=T + 5)
    assert (second.outcome, second.room) == ("taken", "lost")
    third = await reclaim(lobby, "node-a", now_ms=T + 6)  # the winner asking again (its answer was lost)
    assert third.outcome == "claimed"
    assert (await dump(lobby)).values == before.values
    assert await client.get(lobby.keys.match_claim("m-1")) == "node-a"
    # Another match of the same room is a claim of its own.
    assert (await reclaim(lobby, "node-b", match="m-2", now_ms=T + 7)).outcome == "claimed"


# -- what a claim with members sets up -------------------------------------------------------------------------


async def test_a_claimed_room_runs_on_the_claimer_with_its_players_placed_in_it(client: aioredis.Redis) -> None:
    lobby = seating(client, player_ttl_s=300, room_ttl_s=600)
    claimed = await reclaim(lobby, "node-b", players=members("p1", "p2", "p3"))
    assert claimed.outcome == "claimed"
    assert claimed.view is not None
    assert (claimed.view.room_id, claimed.view.state, claimed.view.node, claimed.view.started_ms) == (
        "lost", "running", "node-b", STARTED_MS)
    assert claimed.view.players == tuple(members("p1", "p2", "p3"))
    assert "node-b" in claimed.notify

    keys = lobby.keys
    record = await record_of(lobby, "lost")
    assert (record.mode, record.node, record.state, record.created_ms, record.started_ms) == (
        "arena", "node-b", "running", CREATED_MS, STARTED_MS)
    assert record.players == tuple(members("p1", "p2", "p3")) and record.version >= 1
    assert await members_of(lobby, keys.room_players("lost")) == {"p1", "p2", "p3"}
    assert await members_of(lobby, keys.rooms) == {"lost"}
    assert await members_of(lobby, keys.node_rooms("node-b")) == {"lost"}
    assert await lobby.open_rooms() == [] and await queue(lobby) == []  # a running room takes nobody
    for player in ("p1", "p2", "p3"):
        assert await lobby.player(player) == {"room": "lost", "node": "node-b", "status": "playing",
                                              "name": name_of(player), "joined_ms": str(T), "conn": "",
                                              "conn_node": "", "conn_kind": ""}
        assert 0 < await client.ttl(keys.player(player)) <= 300
    # The room's keys live as long as any room's, its shadow key too (so its expiry is handled as usual).
    assert 0 < await client.ttl(keys.room_shadow("lost")) <= 600
    assert 600 < await client.ttl(keys.room("lost")) <= 720
    assert 600 < await client.ttl(keys.room_players("lost")) <= 720
    assert 0 < await client.ttl(keys.match_claim("m-1")) <= 3600
    assert await client.get(keys.match_claim("m-1")) == "node-b"


async def test_a_queued_player_is_pulled_into_the_claimed_room_and_off_the_queue(client: aioredis.Redis) -> None:
    lobby = seating(client)
    alone = await join(lobby, "p1", T - 500)  # no room offered, none open: the queue alone
    assert alone.view is not None and alone.view.state == "queued"
    assert await queue(lobby) == ["p1"]

    claimed = await reclaim(lobby, "node-b", players=members("p1", "p2", "p3"))
    assert claimed.outcome == "claimed"
    assert await queue(lobby) == []
    placement = await lobby.player("p1")
    assert (placement["room"], placement["node"], placement["status"], placement["joined_ms"]) == (
        "lost", "node-b", "playing", str(T - 500))  # their place in line is theirs still
    assert await members_of(lobby, lobby.keys.room_players("lost")) == {"p1", "p2", "p3"}
    # Their lobby connection is let go, and its node is told, to send them match_found for this room.
    assert (placement["conn"], placement["conn_node"], placement["conn_kind"]) == ("", "", "")
    assert await members_of(lobby, lobby.keys.node_conns("node-a")) == set()
    assert "node-a" in claimed.notify


async def test_a_player_seated_in_a_waiting_room_is_moved_out_of_it(client: aioredis.Redis) -> None:
    lobby = seating(client, countdown_ms=10_000)
    for k, player in enumerate(("w1", "w2", "p1")):
        await join(lobby, player, T - 100 + k, room="W")
    assert (await record_of(lobby, "W")).state == "countdown"

    claimed = await reclaim(lobby, "node-b", players=members("p1", "p2", "p3"))
    assert claimed.outcome == "claimed"
    waiting = await record_of(lobby, "W")
    # Down to two players: the countdown stops, and the room still takes newcomers.
    assert (waiting.state, waiting.countdown_ends_ms, waiting.player_ids) == ("waiting", None, ["w1", "w2"])
    assert await members_of(lobby, lobby.keys.room_players("W")) == {"w1", "w2"}
    assert await lobby.open_rooms() == [("W", 2)]
    assert await queue(lobby) == ["w1", "w2"]
    placement = await lobby.player("p1")
    assert (placement["room"], placement["node"], placement["status"]) == ("lost", "node-b", "playing")
    assert (await record_of(lobby, "lost")).player_ids == ["p1", "p2", "p3"]


async def test_a_waiting_room_emptied_by_a_claim_is_deleted(client: aioredis.Redis) -> None:
    lobby = seating(client)
    await join(lobby, "p1", T - 100, room="W")
    assert (await reclaim(lobby, "node-b", players=members("p1", "p2"))).outcome == "claimed"
    assert await lobby.room("W") is None
    assert await members_of(lobby, lobby.keys.rooms) == {"lost"}
    assert await lobby.open_rooms() == []
    assert await members_of(lobby, lobby.keys.node_rooms("node-a")) == set()


async def test_a_player_playing_another_match_stays_there_and_is_not_in_the_claimed_room(
        client: aioredis.Redis) -> None:
    lobby = seating(client)
    others = [f"r{i}" for i in range(5)]
    for k, player in enumerate(others):
        await join(lobby, player, T - 100 + k, room="R")
    assert (await record_of(lobby, "R")).state == "running"
    before = await lobby.player("r0")

    claimed = await reclaim(lobby, "node-b", players=members("p1", "r0", "p3"))
    assert claimed.outcome == "claimed"
    assert await lobby.player("r0") == before
    running = await record_of(lobby, "R")
    assert (running.state, running.node, running.player_ids) == ("running", "node-a", others)
    restored = await record_of(lobby, "lost")
    assert restored.players == tuple(members("p1", "p3"))  # join order kept, without the one who moved on
    assert await members_of(lobby, lobby.keys.room_players("lost")) == {"p1", "p3"}


async def test_a_player_whose_placement_still_names_the_lost_room_is_placed_in_it_again(
        client: aioredis.Redis) -> None:
    """The room's keys expired before its players' hashes (or only the room's hash was lost): the player's
    placement names the very room being reclaimed. That is not 'another match' to stay in: the claimed room
    must list them, or the lobby points them at a room that does not hold them."""
    lobby = seating(client)
    await client.hset(lobby.keys.player("p1"), mapping={"room": "lost", "node": "node-dead", "status": "playing",
                                                        "name": name_of("p1"), "joined_ms": str(T - 500),
                                                        "conn": "", "conn_node": "", "conn_kind": ""})
    claimed = await reclaim(lobby, "node-b", players=members("p1", "p2", "p3"))
    assert claimed.outcome == "claimed"
    assert (await record_of(lobby, "lost")).player_ids == ["p1", "p2", "p3"]
    assert await members_of(lobby, lobby.keys.room_players("lost")) == {"p1", "p2", "p3"}
    placement = await lobby.player("p1")
    assert (placement["room"], placement["node"], placement["status"]) == ("lost", "node-b", "playing")


# -- a claim without members -----------------------------------------------------------------------------------


async def test_a_claim_without_members_sets_the_claim_and_the_old_nodes_fencing_list_only(
        client: aioredis.Redis) -> None:
    lobby = seating(client)
    await join(lobby, "p1", T - 100)  # a lobby with something in it: queued player, a waiting room
    await join(lobby, "w1", T - 90, room="W")
    before = await dump(lobby)
    claimed = await reclaim(lobby, "node-b")
    assert (claimed.outcome, claimed.room, claimed.view, claimed.notify) == ("claimed", "lost", None, ())
    after = await dump(lobby)
    claim, swept = lobby.keys.match_claim("m-1"), lobby.keys.node_swept(OLD_NODE)
    assert set(after.values) - set(before.values) == {claim, swept}
    assert {key: value for key, value in after.values.items() if key not in (claim, swept)} == before.values
    assert after.values[swept] == {"lost"}
    assert after.values[claim] == "node-b"
    assert 3590 <= after.ttls[claim] <= 3600


async def test_a_room_the_lobby_saw_end_is_not_claimed_while_its_result_may_be_on_its_way(
        client: aioredis.Redis) -> None:
    lobby = seating(client)
    await client.set(lobby.keys.room_over("lost"), "1", ex=3600)  # what finish.lua leaves
    assert (await reclaim(lobby, "node-b", players=members("p1", "p2", "p3"))).outcome == "over"
    assert await client.get(lobby.keys.match_claim("m-1")) is None


async def test_a_claimed_room_is_written_down_as_taken_from_its_old_node_for_its_fencing(
        client: aioredis.Redis) -> None:
    lobby = seating(client)
    assert (await reclaim(lobby, "node-b", players=members("p1", "p2", "p3"))).outcome == "claimed"
    assert await members_of(lobby, lobby.keys.node_swept(OLD_NODE)) == {"lost"}
    assert 0 < await client.ttl(lobby.keys.node_swept(OLD_NODE)) <= 3600

