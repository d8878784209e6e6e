"""The reconnect grace is the contract: a seat is given up only by `leave`, by the grace running out, or by the end
of the match. Players who drop (an abort, a clean close without `leave`, a half-open connection) keep the match
going for the others and come back into it through the lobby, which answers `match_found` for their running
match whatever became of their old connection.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from websockets.asyncio.client import ClientConnection, connect

from lobby.upkeep import SUSPECT_AFTER_BEATS
from server.app import App
from tests.clusterkit import forget_everything
from tests.serverkit import (
    RawClient,
    closed_with,
    is_event,
    is_type,
    join_lobby,
    new_token,
    no_match_end_for,
    recv_until,
    start_lobby_app,
)

Message = dict[str, Any]
GRACE_S = 6.0
AWAY_S = 1.5  # how long the dropped players stay away: long enough for a wrongly ended match to show


@pytest.fixture
async def node(redis_url: str) -> AsyncIterator[App]:
    app = await start_lobby_app(redis_url, reconnect_grace_s=GRACE_S, countdown_s=0.5)
    yield app
    await app.__aexit__(None, None, None)


async def play(token: str, found: Message) -> tuple[ClientConnection, Message]:
    # max_queue=None: states pile up unread while the test looks elsewhere, and a full queue would stop the
    # client reading, so that its close handshake waits out the close timeout.
    ws = await connect(found["url"], additional_headers={"Authorization": f"Bearer {token}"}, compression=None,
                       open_timeout=5, max_queue=None)
    await ws.send('{"type":"hello","v":1}')
    return ws, await recv_until(ws, lambda m: m["type"] in ("welcome", "error"))


async def match_found(app: App, token: str) -> Message:
    lobby = await join_lobby(app, token)
    found = await recv_until(lobby, is_type("match_found"), timeout=10)
    await lobby.close()
    return found


async def running_match(app: App, count: int) -> tuple[list[str], list[Message]]:
    tokens = [new_token(f"g{i}") for i in range(count)]
    lobbies = [await join_lobby(app, token) for token in tokens]
    founds = [await recv_until(ws, is_type("match_found"), timeout=10) for ws in lobbies]
    assert len({found["room"] for found in founds}) == 1
    return tokens, founds


async def test_players_who_drop_without_leave_keep_the_match_and_come_back_into_it(node: App) -> None:
    tokens, founds = await running_match(node, 4)
    room = founds[0]["room"]
    survivor, _ = await play(tokens[0], founds[0])
    aborted, _ = await play(tokens[1], founds[1])
    closed, _ = await play(tokens[2], founds[2])
    # The fourth plays on a raw socket that will go silent: a half-open connection the server cannot see die.
    half_open = await RawClient.open(node.port, path=urllib.parse.urlsplit(founds[3]["url"]).path + "?"
                                     + urllib.parse.urlsplit(founds[3]["url"]).query, token=tokens[3])
    half_open.send_json({"type": "hello", "v": 1})
    assert (await half_open.message())["type"] == "welcome"
    await recv_until(survivor, is_event("phase", state="running"))

    assert aborted.transport is not None
    aborted.transport.abort()  # no close frame
    await closed.close()  # a clean close, without `leave`
    # Three of four away: not one of them gave their seat up, so nobody is the last player.
    assert await no_match_end_for(survivor, AWAY_S) >= AWAY_S * 60

    back = []
    for token in tokens[1:]:
        found = await match_found(node, token)  # the half-open one too: no `already_in_match`
        assert found["room"] == room
        ws, welcome = await play(token, found)
        assert welcome["type"] == "welcome" and welcome["state"] == "running", welcome
        back.append(ws)
    state = await recv_until(survivor, lambda m: m["type"] == "state" and len(m["players"]) == 4)
    assert state["players"]
    assert await half_open.at_eof(timeout=5, unread_ok=True)  # taken over: the server dropped the silent one
    for ws in (survivor, *back):
        await ws.close()
    half_open.close()


async def test_a_match_ends_last_player_only_once_the_others_gave_their_seats_up(redis_url: str) -> None:
    app = await start_lobby_app(redis_url, reconnect_grace_s=1.0, countdown_s=0.5)
    try:
        tokens, founds = await running_match(app, 3)
        games = [(await play(token, found))[0] for token, found in zip(tokens, founds, strict=True)]
        await recv_until(games[0], is_event("phase", state="running"))
        await games[1].send('{"type":"leave"}')  # gives the seat up at once
        await games[2].close()  # keeps it for the grace (1 s here)
        assert await no_match_end_for(games[0], 0.5) > 0
        end = await recv_until(games[0], is_type("match_end"), timeout=5)
        assert end["reason"] == "last_player" and end["ranking"][0]["name"] == "g0"
        await games[0].close()
    finally:
        await app.__aexit__(None, None, None)


async def test_a_second_connection_to_a_running_match_is_refused_while_the_first_answers(node: App) -> None:
    tokens, founds = await running_match(node, 3)
    first, _ = await play(tokens[0], founds[0])
    await asyncio.sleep(0.2)  # the attach is written in the background
    again = await match_found(node, tokens[0])  # the lobby sends them back to their match...
    assert again["room"] == founds[0]["room"] and again["node"] == founds[0]["node"]
    second, refusal = await play(tokens[0], again)  # ...where the live first connection keeps the seat
    assert refusal["type"] == "error" and refusal["code"] == "already_connected"
    assert await closed_with(second) == 1008
    await first.send('{"type":"ping","t":9}')
    assert (await recv_until(first, is_type("pong")))["t"] == 9
    await first.close()


async def test_a_live_node_puts_its_running_match_back_when_redis_lost_the_lobby(node: App, redis: Any) -> None:
    tokens, founds = await running_match(node, 3)
    room = founds[0]["room"]
    games = [(await play(token, found))[0] for token, found in zip(tokens, founds, strict=True)]
    await recv_until(games[0], is_event("phase", state="running"))
    prefix = node.settings.lobby_prefix
    await forget_everything(redis, prefix)  # what a FLUSHALL does, to this deployment's keys
    # The host's snapshotter may write the room's snapshot again before its heartbeat notices the loss.
    await redis.set(f"{prefix}:{{arena}}:room:{room}:snapshot", b"{}", ex=60)

    async def listed_again() -> bool:
        return await redis.hget(f"{prefix}:{{arena}}:room:{room}", "node") == node.settings.node_id.encode()

    deadline = asyncio.get_running_loop().time() + 10
    while not await listed_again():
        assert asyncio.get_running_loop().time() < deadline, "the node did not register its match again"
        await asyncio.sleep(0.05)
    members = await redis.smembers(f"{prefix}:{{arena}}:room:{room}:players")
    assert {member.decode() for member in members} == {player["id"] for player in founds[0]["players"]}
    # A player who drops now comes back into the same match through the lobby; the others play on.
    await games[1].close()
    found = await match_found(node, tokens[1])
    assert found["room"] == room
    back, welcome = await play(tokens[1], found)
    assert welcome["type"] == "welcome" and welcome["state"] == "running", welcome
    # A connected player's record names their game connection again: a lobby join sends them to the match.
    again = await match_found(node, tokens[0])
    assert again["room"] == room
    for ws in (games[0], games[2], back):
        await ws.close()


async def test_a_comeback_whose_lobby_lookup_meets_a_redis_outage_is_told_lobby_unavailable(
        node: App, monkeypatch: pytest.MonkeyPatch) -> None:
    tokens, founds = await running_match(node, 3)
    game, _ = await play(tokens[0], founds[0])
    await asyncio.sleep(0.2)  # the attach is written in the background
    assert node.hub is not None
    seating = node.hub.seatings["arena"]

    async def unreachable(room_id: str) -> None:
        raise RedisConnectionError("Connection refused")

    # The join itself reaches Redis and finds the player busy in their match; the look-up of that match does not.
    monkeypatch.setattr(seating, "room", unreachable)
    lobby = await join_lobby(node, tokens[0])
    error = await recv_until(lobby, is_type("error"), timeout=10)
    assert error["code"] == "lobby_unavailable", error
    monkeypatch.undo()
    # The connection stays open, and the same join, sent again, is answered.
    await lobby.send('{"type":"join","v":1}')
    assert (await recv_until(lobby, is_type("match_found"), timeout=10))["room"] == founds[0]["room"]
    await game.close()


async def test_a_node_puts_its_match_back_even_when_its_first_try_meets_an_outage(
        node: App, redis: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    tokens, founds = await running_match(node, 3)
    room = founds[0]["room"]
    games = [(await play(token, found))[0] for token, found in zip(tokens, founds, strict=True)]
    await recv_until(games[0], is_event("phase", state="running"))
    assert node.hub is not None
    seating = node.hub.seatings["arena"]
    reclaim = seating.reclaim_many
    tries = 0

    async def first_fails(*args: Any, **kwargs: Any) -> Any:
        nonlocal tries
        tries += 1
        if tries == 1:
            raise RedisConnectionError("Connection reset by peer")
        return await reclaim(*args, **kwargs)

    monkeypatch.setattr(seating, "reclaim_many", first_fails)
    prefix = node.settings.lobby_prefix
    await forget_everything(redis, prefix)
    # The heartbeat that finds its hash gone writes it again, then fails to re-register the match: the next
    # heartbeats (whose hash is there again) must still finish the job.
    deadline = asyncio.get_running_loop().time() + 10
    while await redis.hget(f"{prefix}:{{arena}}:room:{room}", "node") != node.settings.node_id.encode():
        assert asyncio.get_running_loop().time() < deadline, f"the match was not registered again ({tries} tries)"
        await asyncio.sleep(0.05)
    assert tries >= 2
    for ws in games:
        await ws.close()


async def test_a_held_comeback_ends_with_seat_lost_when_its_stalled_host_returns_without_the_match(
        node: App, redis: Any) -> None:
    """A player's record names a game connection on a host that stalled (its heartbeat is late but its key
    lives), and the lobby no longer has their match: the join is held (`recovering`). When the host beats again
    and still nothing runs the match, the held join ends as documented, with `seat_lost`, not a refusal."""
    assert node.hub is not None
    hub = node.hub
    seating = hub.seatings["arena"]
    ghost, room = "ghost-node", "ghostroom0000001"
    ids = [str(uuid.uuid4()) for _ in range(5)]
    now = int(time.time() * 1000)
    for index, player_id in enumerate(ids):  # five fill the room: it runs at once, on the ghost
        await seating.join(player_id, f"p{index}", now, conn_id=f"lobby-{index}", conn_node=ghost,
                           new_room_id=room, new_room_node=ghost)
    assert (await seating.attach(ids[0], room, now, conn_id="game-ghost", conn_node=ghost)).outcome == "attached"
    await redis.delete(seating.keys.room(room))  # the lobby lost the match; the player's record is left
    listener = redis.pubsub()
    await listener.subscribe(hub.bus.channel(ghost))  # the ghost's process is there: only its heartbeat is late
    node_key = hub.registry.node_key(ghost)
    beat_ms = int(node.settings.node_dead_after_s * 1000)

    stalled = True

    async def keep_beating() -> None:
        await hub.registry.heartbeat(ghost, "ws://127.0.0.1:9", 0, int(time.time() * 1000))
        while True:  # the age of a beat is read from its key's time to live: half the dead-after time, or none
            await redis.pexpire(node_key, beat_ms // 2 if stalled else beat_ms)
            await asyncio.sleep(0.05)

    beating = asyncio.create_task(keep_beating())
    try:
        # Long enough for any survey that saw the first beat as fresh to have been followed by stale ones.
        await asyncio.sleep(SUSPECT_AFTER_BEATS * node.settings.node_heartbeat_s + 0.5)
        lobby = await join_lobby(node, new_token("p0", player_id=ids[0]))
        held = await recv_until(lobby, is_type("lobby"), timeout=10)
        assert (held["status"], held["room"]) == ("recovering", room), held
        stalled = False
        error = await recv_until(lobby, is_type("error"), timeout=10)
        assert error["code"] == "seat_lost", error
        await lobby.send('{"type":"ping","t":1}')  # the connection stays open for the next join
        assert (await recv_until(lobby, is_type("pong")))["t"] == 1
        await lobby.close()
    finally:
        beating.cancel()
        await listener.aclose()
