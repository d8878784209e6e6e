"""A relay room's pin survives its node's crash: members on a-host pin a payload and talk; a-host is killed with -9
(and, in one variant, Redis loses everything at the kill); the members come back through b-other's lobby into the
same room, each told of the pin (same payload, same author) before anything else of the game, as a joiner is; a
newcomer matched there afterwards gets the pin first too; and `send` goes on between them all."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from lobby.keys import LobbyKeys
from tests.clusterkit import Cluster, Message, forget_everything, wait_nodes_surveyed, wait_until
from tests.serverkit import lobby_prefix
from tests.test_games_cluster import HOST, NODE_IDS, OTHER, Player, fetch

# A room that cannot go idle (nor warn of it) while the test runs; snapshots every second, each other one also to
# Postgres; 30 s for the members to come back after the kill.
RELAY_OPTIONS = {"relay": {"idle_ms": 120_000, "warn_ms": 1000}}
RELAY_ARGS = ("--end-linger-s", "0.5", "--snapshot-every-s", "1", "--reconnect-grace-s", "30",
              "--game-options", orjson.dumps(RELAY_OPTIONS).decode())
PAYLOAD = {"note": "meet at 8"}
HOST_EVENTS = frozenset({"join", "leave", "chat"})  # the host's own events; every other kind is the game's




def is_event(kind: str, **fields: Any) -> Callable[[Message], bool]:
    return lambda m: m["type"] == "event" and m.get("kind") == kind and all(m.get(k) == v for k, v in fields.items())


async def pin_on_joining(player: Player) -> tuple[Message, list[Message]]:
    """After the welcome: the `pinned` event this player gets for their join, and what came before it."""
    before: list[Message] = []
    async with asyncio.timeout(5):
        while True:
            message = await player.receive(5)
            if message is None:
                continue
            if is_event("pinned")(message):
                return message, before
            before.append(message)


def game_events(messages: list[Message]) -> list[Message]:
    """Those of `messages` that come from the game: anything but the host's join/leave/chat notices."""
    return [m for m in messages if not (m["type"] == "event" and m.get("kind") in HOST_EVENTS)]


async def talk(sender: Player, payload: Any, recipients: list[Player], *, to: Player | None = None) -> int:
    """`sender` sends `payload` (to everyone, or to `to`); each recipient gets it, the sender its `sent`: the id."""
    message: dict[str, Any] = {"type": "send", "payload": payload}
    if to is not None:
        message["to"] = to.you
    await sender.send(message)
    sent = await sender.wait_for(is_event("sent"), 5)
    for recipient in recipients:
        got = await recipient.wait_for(is_event("message", payload=payload), 5)
        assert (got["id"], got["from"], got["direct"]) == (sent["id"], sender.you, to is not None), got
    return int(sent["id"])


async def pin_saved(client: aioredis.Redis, database_url: str, prefix: str, room: str, pin: dict[str, Any],
                    *, in_postgres: bool) -> bool:
    """Whether the room's Redis snapshot (and, `in_postgres`, its progress in Postgres, with both members' rows)
    holds the pin and both messages sent."""
    raw = await client.get(LobbyKeys(prefix, "relay").room_snapshot(room))
    if raw is None:
        return False
    game = orjson.loads(raw)["game"]
    if (game["pin"], game["messages"]) != (pin, 2):
        return False
    if not in_postgres:
        return True
    rows = await fetch(database_url, "SELECT mp.game, "
                                     "(SELECT count(*) FROM player_positions pp WHERE pp.match_id = m.id "
                                     "AND pp.pid IS NOT NULL AND pp.state IS NOT NULL) AS seats "
                                     "FROM matches m JOIN match_progress mp ON mp.match_id = m.id "
                                     "WHERE m.room_id = $1 AND m.state = 'running'", room)
    return len(rows) == 1 and rows[0]["seats"] == 2 and \
        (orjson.loads(rows[0]["game"])["pin"], orjson.loads(rows[0]["game"])["messages"]) == (pin, 2)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("flush", [False, True], ids=["kill", "kill-and-flush"])
async def test_a_relay_rooms_pin_survives_its_nodes_crash_for_returning_members_and_newcomers(
        cluster_of: Callable[..., Cluster], client: aioredis.Redis, flush: bool) -> None:
    prefix = lobby_prefix()
    # The room on a-host, alone when it is formed; then b-other joins, and a-host is killed.
    async with cluster_of(prefix, (HOST,), *RELAY_ARGS) as host_only, asyncio.timeout(50):
        await wait_nodes_surveyed(client, prefix, (HOST,))
        ann, bo = members = [Player("relay", "ann", seed=1), Player("relay", "bo", seed=2)]
        for member in members:
            await member.matched(host_only, HOST)
            await member.enter(bot=False)
        room = ann.room
        assert [(member.room, member.found and member.found["node"]) for member in members] == [(room, HOST)] * 2
        for member in members:
            await member.wait_for(lambda m: m["type"] == "state" and m["expires_ms"] is not None
                                  and len(m["members"]) == 2, 5)
        pids = {member.name: member.you for member in members}

        await ann.send({"type": "pin", "payload": PAYLOAD})
        pins = await asyncio.gather(*(member.wait_for(is_event("pinned"), 5) for member in members))
        pin = {"by": ann.you, "payload": PAYLOAD, "at_ms": pins[0]["at_ms"]}
        assert [{key: p[key] for key in pin} for p in pins] == [pin, pin], pins
        assert await talk(ann, {"text": "hi"}, [bo]) == 1
        assert await talk(bo, {"text": "ok"}, [ann], to=ann) == 2
        await wait_until(lambda: pin_saved(client, host_only.database_url, prefix, room, pin, in_postgres=flush), 10,
                         "the pin in the room's Redis snapshot" + (" and in Postgres" if flush else ""))
        (match_id,) = [str(row["id"]) for row in await fetch(
            host_only.database_url, "SELECT id FROM matches WHERE room_id = $1", room)]

        async with cluster_of(prefix, (OTHER,), *RELAY_ARGS) as other_only:
            await wait_nodes_surveyed(client, prefix, NODE_IDS)
            await host_only.kill(HOST)
            if flush:
                assert await forget_everything(client, prefix) > 0
            for member in members:
                await member.close()

            # Each member comes back through b-other's lobby with their ticket, into the same room, under the same
            # pid, and is told of the pin (same payload, author and time) before anything else of the game.
            for member in members:
                back = await member.matched(other_only, OTHER, timeout=20)
                assert (back["room"], back["node"]) == (room, OTHER), back
                welcome = await member.enter(bot=False)
                assert (welcome["state"], member.you) == ("running", pids[member.name]), welcome
                pinned, before = await pin_on_joining(member)
                assert {key: pinned[key] for key in pin} == pin, pinned
                assert game_events(before) == [], (member.name, before)

            # A newcomer matched through b-other's lobby lands in that room and gets the pin first as well.
            cy = Player("relay", "cy", seed=3)
            found = await cy.matched(other_only, OTHER, timeout=20)
            assert (found["room"], found["node"]) == (room, OTHER), (
                found, "rooms:available", await client.zrange(LobbyKeys(prefix, "relay").available, 0, -1,
                                                              withscores=True))
            await cy.enter(bot=False)
            pinned, before = await pin_on_joining(cy)
            assert {key: pinned[key] for key in pin} == pin, pinned
            assert game_events(before) == [], before
            for member in members:
                await member.wait_for(is_event("member_joined", p=cy.you, name="cy"), 5)
            state = cy.state or await cy.wait_for(lambda m: m["type"] == "state", 5)
            assert (state["pinned"], [entry["p"] for entry in state["members"]]) == (pin, [ann.you, bo.you, cy.you])

            # And the talk goes on, numbered on from before the kill.
            assert await talk(ann, {"text": "back"}, [bo, cy]) == 3
            assert await talk(cy, {"text": "hello bo"}, [bo], to=bo) == 4
            assert await talk(bo, {"text": "hello all"}, [ann, cy]) == 5
            assert [error for player in (*members, cy) for error in player.errors] == []

            # One match all along, now hosted by b-other.
            async def moved() -> bool:
                rows = await fetch(other_only.database_url, "SELECT id, node, state FROM matches WHERE room_id = $1",
                                   room)
                assert [(str(row["id"]), row["state"]) for row in rows] == [(match_id, "running")], rows
                return bool(rows[0]["node"] == OTHER)

            await wait_until(moved, 10, f"the match of room {room} hosted by {OTHER} in Postgres")
            restored = "restored from Postgres" if flush else "restored from its snapshot"
            assert other_only.logged(restored)[OTHER] == 1, other_only.logged(restored)
            for player in (*members, cy):
                await player.close()
            assert other_only.problems() == []
        assert host_only.problems() == []
