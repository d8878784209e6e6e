"""The lobby when things fail: Redis going away and coming back, rooms nobody keeps alive, nodes that die."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from lobby.keys import LobbyKeys
from lobby.nodes import NodeRegistry
from lobby.seating import Seating, SeatingRules
from server.app import App
from server.ops.embedded import LocalRedis
from tests.serverkit import (
    closed_with,
    is_event,
    is_type,
    join_lobby,
    lobby_prefix,
    new_token,
    recv_json,
    recv_until,
    start_lobby_app,
)
from tests.test_lobby import http_get, matched, play


async def eventually(check: object, timeout: float = 10.0, interval: float = 0.05) -> None:
    """Wait until the async callable `check` returns True; fail after `timeout` seconds."""
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(interval)


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def states_within(ws: object, seconds: float) -> int:
    """How many `state` messages a game connection receives in `seconds`."""
    count = 0
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            message = await recv_json(ws, remaining)  # type: ignore[arg-type]
        except TimeoutError:
            break
        count += message["type"] == "state"
    return count


async def test_a_redis_outage_stops_no_tick_fails_lobby_calls_clearly_and_heals_by_itself(tmp_path: Path) -> None:
    redis_server = LocalRedis.start(tmp_path / "redis", persist=False)
    app: App | None = None
    try:
        app = await start_lobby_app(redis_server.url, lobby_grace_s=0.2)
        tokens = [new_token() for _ in range(3)]
        lobbies = [await join_lobby(app, token) for token in tokens]
        founds = [await matched(ws) for ws in lobbies]
        games = [(await play(token, found))[0] for token, found in zip(tokens, founds, strict=True)]
        await recv_until(games[0], is_event("phase", state="running"))

        redis_server.stop()
        # The running match does not notice: a full second of states arrives on time.
        assert await states_within(games[0], 1.0) >= 55
        # The lobby says clearly that it cannot seat anyone now, and keeps the connection.
        waiting = await join_lobby(app)
        error = await recv_until(waiting, is_type("error"), timeout=10)
        assert error["code"] == "lobby_unavailable"
        assert (await http_get(app, "/lobby/rooms"))[0] == 503
        # What the match has to tell the lobby meanwhile is kept, not lost.
        await games[2].send('{"type":"leave"}')
        assert app.hub is not None
        hub = app.hub

        async def write_pending() -> bool:
            return hub.pending_writes > 0

        await eventually(write_pending)

        redis_server.restart()  # empty: no data, no scripts

        async def writes_done() -> bool:
            return hub.pending_writes == 0

        await eventually(writes_done, timeout=15)
        # The same lobby connection may simply try again, and is seated.
        await waiting.send('{"type":"join","v":1}')
        status = await recv_until(waiting, is_type("lobby"), timeout=10)
        assert status["status"] == "waiting" and len(status["players"]) == 1
        assert await states_within(games[0], 0.5) >= 25
        for ws in (*games[:2], waiting):
            await ws.close()
    finally:
        if app is not None:
            await app.__aexit__(None, None, None)
        redis_server.stop()


async def test_a_room_nobody_keeps_alive_expires_and_its_connected_players_are_seated_again(
        redis_url: str, client: aioredis.Redis) -> None:
    prefix = lobby_prefix()
    app = await start_lobby_app(redis_url, lobby_prefix=prefix, room_ttl_s=2, player_ttl_s=60)
    try:
        seating = Seating(client, LobbyKeys(prefix, "arena"), SeatingRules(room_ttl_s=2, player_ttl_s=60))
        # A room on a node that never heart-beats, with a player whose connection that node held: nobody
        # refreshes the room, so its shadow key expires and a live node decides.
        seat = await seating.join("p1", "ann", int(time.time() * 1000), conn_id="c1", conn_node="elsewhere",
                                  new_room_id="forgotten", new_room_node="elsewhere")
        assert seat.view is not None and seat.view.room_id == "forgotten"

        async def reseated() -> bool:
            placement = await seating.player("p1")
            return placement.get("room", "forgotten") not in ("forgotten", "")

        await eventually(reseated, timeout=10)
        assert await seating.room("forgotten") is None
        placement = await seating.player("p1")
        room = await seating.room(placement["room"])
        assert room is not None and room.node == "test-node" and room.player_ids == ["p1"]
        assert placement["joined_ms"] == str(seat.joined_ms)  # still first in line
    finally:
        await app.__aexit__(None, None, None)


async def test_an_expired_running_room_whose_host_is_dead_sends_its_players_back_in_line(
        redis_url: str, client: aioredis.Redis) -> None:
    prefix = lobby_prefix()
    app = await start_lobby_app(redis_url, lobby_prefix=prefix, room_ttl_s=2, player_ttl_s=60)
    try:
        seating = Seating(client, LobbyKeys(prefix, "arena"), SeatingRules(room_ttl_s=2, player_ttl_s=60))
        now = int(time.time() * 1000)
        for i in range(5):
            await seating.join(f"p{i}", f"n{i}", now + i, conn_id=f"c{i}", conn_node="gone",
                               new_room_id="lost", new_room_node="gone")
        assert (await seating.room("lost")) is not None

        async def requeued() -> bool:
            return await seating.room("lost") is None

        await eventually(requeued, timeout=10)
        for i in range(5):
            placement = await seating.player(f"p{i}")
            assert (placement["status"], placement["room"], placement["conn"]) == ("queued", "", "")
    finally:
        await app.__aexit__(None, None, None)


async def test_when_a_node_dies_its_waiting_room_moves_to_a_live_node_and_its_players_let_go(
        redis_url: str, client: aioredis.Redis) -> None:
    prefix = lobby_prefix()
    app = await start_lobby_app(redis_url, lobby_prefix=prefix, countdown_s=3.0)
    try:
        seating = Seating(client, LobbyKeys(prefix, "arena"), SeatingRules())
        ghost = NodeRegistry(client, prefix, dead_after_s=0.5)
        await ghost.heartbeat("ghost", "ws://127.0.0.1:1", 0, int(time.time() * 1000))
        # Two players wait through the ghost node, in a room it hosts.
        ghost_players = [str(uuid.uuid4()) for _ in range(2)]
        for player_id in ghost_players:
            await seating.join(player_id, "ghost-player", int(time.time() * 1000), conn_id=f"c-{player_id}",
                               conn_node="ghost", new_room_id="haunted", new_room_node="ghost")
        # A real player joins: the fullest open room is the ghost's.
        real = await join_lobby(app)
        status = await recv_until(real, is_type("lobby"))
        assert status["room"] == "haunted" and len(status["players"]) == 3
        # The ghost stops heart-beating: within a few seconds its players are gone, the room moved here.
        await recv_until(real, lambda m: m["type"] == "lobby" and len(m["players"]) == 1, timeout=10)
        room = await seating.room("haunted")
        assert room is not None and room.node == "test-node"
        # Two more players, and the match is found on the live node.
        others = [await join_lobby(app) for _ in range(2)]
        found = await matched(real, timeout=10)
        assert found["room"] == "haunted" and found["node"] == "test-node" and found["url"].startswith(app.url)
        for ws in others:
            await matched(ws)
        assert await ghost.is_alive("ghost") is False
        live, dead = await ghost.survey()
        assert [node.node_id for node in live] == ["test-node"] and dead == []
    finally:
        await app.__aexit__(None, None, None)


async def test_a_redis_failover_to_read_only_stops_no_tick_and_the_lobby_comes_back(tmp_path: Path) -> None:
    redis_server = LocalRedis.start(tmp_path / "redis", persist=False)
    admin = aioredis.Redis.from_url(redis_server.url)
    app: App | None = None
    try:
        app = await start_lobby_app(redis_server.url)
        tokens = [new_token() for _ in range(3)]
        lobbies = [await join_lobby(app, token) for token in tokens]
        founds = [await matched(ws) for ws in lobbies]
        games = [(await play(token, found))[0] for token, found in zip(tokens, founds, strict=True)]
        await recv_until(games[0], is_event("phase", state="running"))
        # Redis becomes a replica (of nothing that answers): every write is refused with READONLY.
        await admin.execute_command("REPLICAOF", "127.0.0.1", "1")
        assert await states_within(games[0], 1.5) >= 80
        waiting = await join_lobby(app)
        assert (await recv_until(waiting, is_type("error"), timeout=10))["code"] == "lobby_unavailable"
        await admin.execute_command("REPLICAOF", "NO", "ONE")
        await waiting.send('{"type":"join","v":1}')
        assert (await recv_until(waiting, is_type("lobby"), timeout=10))["status"] == "waiting"
        assert app.node is not None and founds[0]["room"] in app.node.rooms
        for ws in (*games, waiting):
            await ws.close()
    finally:
        if app is not None:
            await app.__aexit__(None, None, None)
        await admin.aclose()
        redis_server.stop()


async def test_a_node_taken_for_dead_while_it_stalled_closes_the_matches_the_others_took_over(
        redis_url: str, client: aioredis.Redis) -> None:
    prefix = lobby_prefix()
    app = await start_lobby_app(redis_url, lobby_prefix=prefix)
    try:
        tokens = [new_token() for _ in range(3)]
        lobbies = [await join_lobby(app, token) for token in tokens]
        founds = [await matched(ws) for ws in lobbies]
        games = [(await play(token, found))[0] for token, found in zip(tokens, founds, strict=True)]
        await recv_until(games[0], is_event("phase", state="running"))
        # As if the node had stalled past the dead-after time: its heartbeat expired, another node swept it,
        # and its match's players went back to the lobby.
        await client.delete(NodeRegistry(client, prefix).node_key("test-node"))
        seating = Seating(client, LobbyKeys(prefix, "arena"), SeatingRules())
        swept = await seating.sweep("test-node", int(time.time() * 1000), new_host="")
        assert swept.counts == {"moved": 0, "recovered": 1}
        # The node notices at its next heartbeat and closes that match, so nobody plays in two rooms.
        error = await recv_until(games[0], is_type("error"), timeout=5)
        assert error["code"] == "room_closed"
        assert await closed_with(games[0]) == 1001
        # Its players are free to join the lobby again, and are seated afresh.
        again = await join_lobby(app, tokens[0])
        assert (await recv_until(again, is_type("lobby")))["status"] == "waiting"
    finally:
        await app.__aexit__(None, None, None)


async def test_after_a_short_redis_restart_no_node_takes_a_live_peer_for_dead(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Redis restarts with its data kept: every node's listener is dropped, and each comes back from its own
    back-off, some seconds apart. The first node back must not take a peer that is still waiting in its back-off
    (no listener yet, heartbeat late) for a dead process, nor sweep its rooms."""
    redis_server = LocalRedis.start(tmp_path / "redis", persist=True)
    prefix = lobby_prefix()
    apps: list[App] = []
    try:
        for name in ("node-a", "node-b"):
            apps.append(await start_lobby_app(redis_server.url, lobby_prefix=prefix, node_id=name,
                                              node_heartbeat_s=0.2, node_dead_after_s=30.0))
        client = aioredis.Redis.from_url(redis_server.url)
        registry = NodeRegistry(client, prefix)
        await asyncio.sleep(1.0)  # both heart-beat steadily and judge each other
        redis_server.stop()
        await asyncio.sleep(8.0)  # every loop is deep in its back-off (seconds between tries)
        redis_server.restart()
        await asyncio.sleep(9.0)  # every node came back from its back-off (5 s at most), and beat since
        assert not [record.getMessage() for record in caplog.records if "process is gone" in record.getMessage()]
        assert {node.node_id for node in await registry.live_nodes()} == {"node-a", "node-b"}
        assert not [record for record in caplog.records if "sweeping up after" in record.getMessage()]
        await client.aclose()
    finally:
        for app in apps:
            await app.__aexit__(None, None, None)
        redis_server.stop()

