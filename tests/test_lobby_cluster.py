"""The lobby across three real `tickroom serve` processes on one Redis: matched through one node, playing on
another, a dead host's waiting room moved to a live node, and hundreds of bots coming and going at random."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus

from lobby.keys import LobbyKeys
from tests.clusterkit import (
    TICKROOM,
    Cluster,
    Dump,
    Message,
    child_environment,
    dump,
    forget_everything,
    http_json,
    open_ws,
    redis_client,
    refusal,
    wait_heartbeats_after,
    wait_nodes_surveyed,
    wait_until,
)
from tests.serverkit import is_event, is_type, lobby_prefix, new_token, no_match_end_for, recv_until
from tests.test_bot_e2e import last_json_line, run_bot

# Node ids sort so that new rooms go to "a-host" while every node is equally loaded.
HOST, FRONT, OTHER = "a-host", "b-front", "c-front"
NODE_IDS = (HOST, FRONT, OTHER)
JOIN = orjson.dumps({"type": "join", "v": 1, "mode": "arena"}).decode()


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    redis = redis_client(redis_url)
    yield redis
    await redis.aclose()


@pytest.fixture
def cluster_of(tmp_path: Path, redis_url: str, fresh_database: str) -> Iterator[Callable[..., Cluster]]:
    """Makes the test's cluster (used as `async with`); kills whatever it left running, whatever happened. Each
    cluster is a deployment of its own: its own lobby prefix and its own database (recovery takes the live
    matches Postgres lists for nodes of its ids that are gone)."""
    made: list[Cluster] = []

    def make(prefix: str, *extra_args: str) -> Cluster:
        cluster = Cluster(tmp_path, redis_url, fresh_database, prefix, NODE_IDS, extra_args)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.kill_leftovers()


async def join_lobby(cluster: Cluster, node_id: str, token: str) -> ClientConnection:
    ws = await open_ws(f"{cluster[node_id].url}/lobby", token)
    await ws.send(JOIN)
    return ws


async def match_of(ws: ClientConnection) -> Message:
    """The match_found a lobby connection gets, with no error before it."""
    message = await recv_until(ws, lambda m: m["type"] in ("match_found", "error"), timeout=10)
    assert message["type"] == "match_found", message
    return message


async def play(token: str, found: Message) -> tuple[ClientConnection, Message]:
    """Follow `match_found` to the game: connect to its url with the token, say hello, get welcome."""
    ws = await open_ws(found["url"], token)
    await ws.send('{"type":"hello","v":1}')
    return ws, await recv_until(ws, lambda m: m["type"] in ("welcome", "error"))


async def playing_on_the_host(cluster: Cluster, tokens: list[str]) -> tuple[str, list[ClientConnection]]:
    """These players matched through b-front's lobby into one room on a-host, each in the game, which runs."""
    lobbies = [await join_lobby(cluster, FRONT, token) for token in tokens]
    founds = [await match_of(ws) for ws in lobbies]
    room = founds[0]["room"]
    assert {(found["room"], found["node"]) for found in founds} == {(room, HOST)}
    games = [(await play(token, found))[0] for token, found in zip(tokens, founds, strict=True)]
    await recv_until(games[0], is_event("phase", state="running"))
    return room, games


def room_key(prefix: str, room_id: str) -> str:
    return f"{prefix}:{{arena}}:room:{room_id}"


async def test_a_player_matched_through_a_front_node_plays_on_the_host_and_a_dead_hosts_waiting_room_moves(
        cluster_of: Callable[..., Cluster], client: aioredis.Redis) -> None:
    prefix = lobby_prefix()
    async with cluster_of(prefix, "--end-linger-s", "0.2") as cluster:
        host, front = cluster[HOST], cluster[FRONT]
        await wait_nodes_surveyed(client, prefix, NODE_IDS)

        # Matched through b-front's lobby into a room hosted by a-host, the least-loaded node (first by id).
        tokens = [new_token(f"p{i}") for i in range(3)]
        lobbies = [await join_lobby(cluster, FRONT, token) for token in tokens]
        founds = [await match_of(ws) for ws in lobbies]
        room = founds[0]["room"]
        assert {(found["room"], found["node"]) for found in founds} == {(room, HOST)}
        for found in founds:
            assert found["url"].startswith(f"{host.url}/game?room={room}&ticket=")
        # The front node refuses the ticket: the room is not its own, and it says whose it is.
        status, code, message = await refusal(founds[0]["url"].replace(host.url, front.url), tokens[0])
        assert (status, code) == (421, "wrong_node") and HOST in message
        games = []
        for token, found in zip(tokens, founds, strict=True):
            game, welcome = await play(token, found)
            assert welcome["type"] == "welcome" and welcome["room"] == room, welcome
            games.append(game)
        await recv_until(games[0], is_event("phase", state="running"))
        for game in games:  # they leave (a drop would keep their seats for the reconnect grace, 30 s)
            await game.send('{"type":"leave"}')
            await game.close()

        # Once a-host is idle again (and every node has seen it), the next room goes there too: two players
        # wait in it through b-front, then a-host dies.
        async def room_over() -> bool:
            return not await client.exists(room_key(prefix, room))

        await wait_until(room_over, 10, f"room {room} over and gone from Redis")
        await wait_heartbeats_after(client, prefix, NODE_IDS, int(time.time() * 1000))
        assert await client.hget(f"{prefix}:node:{HOST}", "load") == "0"
        # Once more: each node's survey follows its own heartbeat, so only a second round is sure to have seen
        # a-host's idle heartbeat.
        await wait_heartbeats_after(client, prefix, NODE_IDS, int(time.time() * 1000))
        waiting_tokens = [new_token(f"w{i}") for i in range(2)]
        waiting = [await join_lobby(cluster, FRONT, token) for token in waiting_tokens]
        status_msg = await recv_until(waiting[1], is_type("lobby"))
        waiting_room = status_msg["room"]
        assert status_msg["status"] == "waiting" and len(status_msg["players"]) == 2
        assert await client.hget(room_key(prefix, waiting_room), "node") == HOST

        await cluster.kill(HOST)

        async def swept() -> bool:
            node = await client.hget(room_key(prefix, waiting_room), "node")
            indexed = {str(n) for n in await client.zrange(f"{prefix}:nodes", 0, -1)}
            return node in (FRONT, OTHER) and HOST not in indexed

        took = await wait_until(swept, 8, f"room {waiting_room} moved off the dead a-host")
        assert took < 5, f"the sweep took {took:.1f} s"
        new_host = str(await client.hget(room_key(prefix, waiting_room), "node"))
        assert not await client.exists(f"{prefix}:{{arena}}:node:{HOST}:rooms",
                                       f"{prefix}:{{arena}}:node:{HOST}:conns")

        # A third player, through c-front, completes the moved room; all three play on its new host.
        third_token = new_token("third")
        players = [*waiting_tokens, third_token]
        lobbies = [*waiting, await join_lobby(cluster, OTHER, third_token)]
        founds = [await match_of(ws) for ws in lobbies]
        assert {(found["room"], found["node"]) for found in founds} == {(waiting_room, new_host)}
        games = []
        for token, found in zip(players, founds, strict=True):
            assert found["url"].startswith(f"{cluster[new_host].url}/game?room={waiting_room}&ticket=")
            game, welcome = await play(token, found)
            assert welcome["type"] == "welcome" and welcome["room"] == waiting_room, welcome
            games.append(game)
        await recv_until(games[0], is_event("phase", state="running"))
        for game in games:
            await game.close()
        assert cluster.problems() == []


async def test_a_killed_hosts_running_match_is_restored_on_a_live_node_and_its_players_come_back_into_it(
        cluster_of: Callable[..., Cluster], client: aioredis.Redis) -> None:
    prefix = lobby_prefix()
    async with cluster_of(prefix, "--snapshot-every-s", "1", "--reconnect-grace-s", "30") as cluster:
        await wait_nodes_surveyed(client, prefix, NODE_IDS)
        tokens = [new_token(f"k{i}") for i in range(3)]
        room, games = await playing_on_the_host(cluster, tokens)
        await games[0].send('{"type":"input","seq":1,"dx":1,"dy":0}')  # one player moves, so positions differ
        keys = LobbyKeys(prefix, "arena")
        snapshot_key = keys.room_snapshot(room)

        async def moved_in_a_snapshot() -> bool:
            raw = await client.get(snapshot_key)
            return raw is not None and orjson.loads(raw)["game"]["now_us"] > 1_500_000

        await wait_until(moved_in_a_snapshot, 10, "a snapshot of the running match")
        await games[0].send('{"type":"input","seq":2,"dx":0,"dy":0}')
        await asyncio.sleep(1.5)  # the next snapshot has everyone standing still
        snapshot = orjson.loads(await client.get(snapshot_key))

        await cluster.kill(HOST)

        async def restored_elsewhere() -> bool:
            """Claimed by a live node (the sweep), then struck off its `adopt` set (restored)."""
            node = await client.hget(room_key(prefix, room), "node")
            return node in (FRONT, OTHER) and not await client.sismember(keys.node_adopt(node), room)

        await wait_until(restored_elsewhere, 10, f"room {room} claimed and restored off the dead host")
        new_host = str(await client.hget(room_key(prefix, room), "node"))
        assert await client.hget(room_key(prefix, room), "state") == "running"

        # The players come back through a lobby, which sends them to the room's new host.
        welcomes = []
        for token in tokens:
            found = await match_of(await join_lobby(cluster, OTHER, token))
            assert (found["room"], found["node"]) == (room, new_host)
            game, welcome = await play(token, found)
            assert welcome["type"] == "welcome" and welcome["room"] == room and welcome["state"] == "running", welcome
            if not welcomes:  # the restored match waits the grace for the others: one player back ends nothing
                assert await no_match_end_for(game, 1.5) > 0
            welcomes.append(game)
        state = await recv_until(welcomes[0], lambda m: m["type"] == "state" and len(m["players"]) == 3)
        saved = {p["pid"]: p for p in snapshot["game"]["players"]}
        for player in state["players"]:
            before = saved[player["p"]]
            assert (player["x"], player["y"]) == (round(before["x"], 1), round(before["y"], 1))
            assert (player["hp"], player["k"], player["d"], player["sc"]) == (
                before["hp"], before["kills"], before["deaths"], before["score"])
        assert state["t"] >= snapshot["game"]["now_us"] // 1000  # the match clock went on from the snapshot
        for game in welcomes:
            await game.close()
        assert cluster.problems() == []


async def snapshotted_match_on_the_host(cluster: Cluster, client: aioredis.Redis, prefix: str,
                                        tokens: list[str]) -> str:
    """`playing_on_the_host`, once the room's first snapshot is in Redis: its room id."""
    await wait_nodes_surveyed(client, prefix, NODE_IDS)
    room, _ = await playing_on_the_host(cluster, tokens)
    key = LobbyKeys(prefix, "arena").room_snapshot(room)

    async def written() -> bool:
        return bool(await client.exists(key))

    await wait_until(written, 10, f"a snapshot of room {room}")
    return room


async def test_a_killed_hosts_players_are_back_in_their_match_long_before_its_heartbeat_would_expire(
        cluster_of: Callable[..., Cluster], client: aioredis.Redis) -> None:
    """kill -9 closes the host's connections at once, its notice listener's too: the others take it for dead at
    its first missed heartbeat instead of waiting out its key (10 s here)."""
    prefix = lobby_prefix()
    async with cluster_of(prefix, "--node-dead-after-s", "10", "--snapshot-every-s", "1",
                          "--reconnect-grace-s", "30") as cluster:
        tokens = [new_token(f"f{i}") for i in range(3)]
        room = await snapshotted_match_on_the_host(cluster, client, prefix, tokens)
        killed = time.monotonic()
        await cluster.kill(HOST)

        async def come_back(token: str) -> tuple[Message, Message]:
            found = await match_of(await join_lobby(cluster, FRONT, token))
            game, welcome = await play(token, found)
            await game.close()
            return found, welcome

        comebacks = await asyncio.gather(*(come_back(token) for token in tokens))
        elapsed = time.monotonic() - killed
        for found, welcome in comebacks:
            assert found["room"] == room and found["node"] in (FRONT, OTHER)  # never the dead host
            assert welcome["type"] == "welcome" and welcome["state"] == "running", welcome
        assert elapsed < 3.0, f"players back {elapsed:.2f} s after the kill; the dead-after time is 10 s"
        assert any(cluster.logged("process is gone").values())


async def test_a_stalled_host_is_suspected_at_once_but_taken_for_dead_only_when_its_key_expires(
        cluster_of: Callable[..., Cluster], client: aioredis.Redis) -> None:
    """A host that stops heart-beating but keeps its connections open (stalled, or a machine cut off until TCP
    gives up) is not judged by its listener: its rooms move when its key expires. Meanwhile the lobby sends
    nobody to it: a player coming back is told `recovering` and then sent to the match's new host."""
    prefix = lobby_prefix()
    async with cluster_of(prefix, "--node-dead-after-s", "4", "--snapshot-every-s", "1",
                          "--reconnect-grace-s", "30") as cluster:
        tokens = [new_token(f"s{i}") for i in range(3)]
        room = await snapshotted_match_on_the_host(cluster, client, prefix, tokens)
        host = cluster[HOST].process
        assert host is not None
        host.send_signal(signal.SIGSTOP)
        try:
            stopped = time.monotonic()

            async def suspected() -> bool:  # three heartbeats (0.2 s) late, and seen so by a survey
                ttl_ms = await client.pttl(f"{prefix}:node:{HOST}")
                return 0 <= ttl_ms < 4000 - 1000

            await wait_until(suspected, 5, f"{HOST} three heartbeats late")
            lobby = await join_lobby(cluster, FRONT, tokens[0])
            status = await recv_until(lobby, lambda m: m["type"] in ("lobby", "match_found", "error"), timeout=5)
            assert (status["type"], status.get("status"), status.get("room")) == ("lobby", "recovering", room), status
            found = await match_of(lobby)
            moved = time.monotonic() - stopped
            assert found["room"] == room and found["node"] in (FRONT, OTHER)
            assert moved >= 4.0 - 0.5, f"the stalled host was taken for dead after {moved:.2f} s, not at its expiry"
            game, welcome = await play(tokens[0], found)
            assert welcome["type"] == "welcome" and welcome["state"] == "running", welcome
            await game.close()
        finally:
            host.send_signal(signal.SIGCONT)


async def test_bots_whose_host_is_killed_come_back_into_their_restored_match_and_count_reconnects(
        cluster_of: Callable[..., Cluster], client: aioredis.Redis) -> None:
    prefix = lobby_prefix()
    async with cluster_of(prefix, "--snapshot-every-s", "1", "--reconnect-grace-s", "30") as cluster:
        await wait_nodes_surveyed(client, prefix, NODE_IDS)
        # Five bots through b-front's lobby: one room, on a-host.
        bots = asyncio.get_running_loop().create_task(run_bot(
            "--url", cluster[FRONT].url, "--lobby", "--bots", "5", "--duration", "14", "--ramp", "0.2", "--json",
            "--quiet"))

        async def snapshot_of_a_running_match() -> bool:
            keys = LobbyKeys(prefix, "arena")
            rooms = [str(room_id) for room_id in await client.smembers(keys.node_rooms(HOST))]
            return any([await client.exists(keys.room_snapshot(room_id)) for room_id in rooms])

        await wait_until(snapshot_of_a_running_match, 10, "a snapshot of the bots' match on a-host")
        await cluster.kill(HOST)
        code, out, err = await bots
        assert code == 0, err
        summary = last_json_line(out)
        assert summary["disconnects"] == 5, summary
        assert summary["reconnects"] == 5, summary  # each bot back in the match, on its new host
        assert cluster.problems() == []


# -- Redis lost everything: recovery from Postgres --------------------------------------------------------------

async def positions_in_postgres(database_url: str, room: str) -> tuple[int, dict[int, dict[str, Any]]]:
    """The last positions Postgres has of the live match of `room`: its clock, and each player's row by pid."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT pp.pid, pp.state, pp.match_clock_ms FROM player_positions pp "
            "JOIN matches m ON m.id = pp.match_id WHERE m.room_id = $1 AND m.state = 'running'", room)
    finally:
        await conn.close()
    # The game's own state of each player (the x and y columns are 32-bit floats, for people to read).
    return (min((row["match_clock_ms"] for row in rows), default=-1),
            {row["pid"]: orjson.loads(row["state"]) for row in rows})


async def match_row(database_url: str, room: str) -> dict[str, Any]:
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow("SELECT id, node, state, version FROM matches WHERE room_id = $1 "
                                  "ORDER BY created_at DESC LIMIT 1", room)
    finally:
        await conn.close()
    assert row is not None
    return dict(row)


async def a_running_match_with_positions_in_postgres(cluster: Cluster, client: aioredis.Redis,
                                                     tokens: list[str]) -> tuple[str, list[ClientConnection]]:
    """Three players matched through b-front play on a-host; one moves, then all stand still until Postgres has
    positions from after that: what a restore from Postgres must give back."""
    room, games = await playing_on_the_host(cluster, tokens)
    await games[0].send('{"type":"input","seq":1,"dx":1,"dy":0}')
    moving = await recv_until(games[0], lambda m: m["type"] == "state" and m["t"] > 1500)
    await games[0].send('{"type":"input","seq":2,"dx":0,"dy":0}')

    async def still_in_postgres() -> bool:
        clock, _ = await positions_in_postgres(cluster.database_url, room)
        return clock > moving["t"] + 500

    await wait_until(still_in_postgres, 15, "positions in Postgres from after the move")
    return room, games


async def test_a_killed_host_restarted_after_redis_lost_everything_restores_its_match_from_postgres(
        cluster_of: Callable[..., Cluster], client: aioredis.Redis) -> None:
    prefix = lobby_prefix()
    # The other nodes wait long before they count the host dead: the host's restart claims its match itself.
    async with cluster_of(prefix, "--snapshot-every-s", "1", "--reconnect-grace-s", "30",
                          "--node-dead-after-s", "8") as cluster:
        await wait_nodes_surveyed(client, prefix, NODE_IDS)
        tokens = [new_token(f"f{i}") for i in range(3)]
        room, _ = await a_running_match_with_positions_in_postgres(cluster, client, tokens)
        clock, saved = await positions_in_postgres(cluster.database_url, room)
        assert len(saved) == 3 and len({(row["x"], row["y"]) for row in saved.values()}) == 3

        await cluster.kill(HOST)
        assert await forget_everything(client, prefix) > 0
        await cluster.restart(HOST)

        async def back_in_the_lobby() -> bool:
            return (await client.hget(room_key(prefix, room), "node") == HOST
                    and await client.hget(room_key(prefix, room), "state") == "running")

        await wait_until(back_in_the_lobby, 10, f"room {room} claimed again by its restarted host")
        # The players come back through another node's lobby, which sends them to the restored room.
        back = []
        for token in tokens:
            found = await match_of(await join_lobby(cluster, OTHER, token))
            assert (found["room"], found["node"]) == (room, HOST), found
            game, welcome = await play(token, found)
            assert welcome["type"] == "welcome" and welcome["room"] == room and welcome["state"] == "running", welcome
            back.append(game)
        state = await recv_until(back[0], lambda m: m["type"] == "state" and len(m["players"]) == 3)
        for player in state["players"]:
            before = saved[player["p"]]
            assert (player["x"], player["y"]) == (round(before["x"], 1), round(before["y"], 1))
            assert (player["hp"], player["k"], player["d"], player["sc"]) == (
                before["hp"], before["kills"], before["deaths"], before["score"])
        assert state["t"] >= clock  # the match clock goes on from the positions
        row = await match_row(cluster.database_url, room)
        assert (row["node"], row["state"]) == (HOST, "running")
        assert cluster.logged("restored from Postgres") == {HOST: 1, FRONT: 0, OTHER: 0}
        for game in back:
            await game.close()
        assert cluster.problems() == []


async def test_a_killed_hosts_match_with_no_snapshot_yet_is_restored_from_postgres_by_the_node_it_went_to(
        cluster_of: Callable[..., Cluster], client: aioredis.Redis) -> None:
    prefix = lobby_prefix()
    # No snapshot within the test: Postgres has the positions of the match's start, and nothing else does.
    async with cluster_of(prefix, "--snapshot-every-s", "600", "--reconnect-grace-s", "30") as cluster:
        await wait_nodes_surveyed(client, prefix, NODE_IDS)
        tokens = [new_token(f"s{i}") for i in range(3)]
        room, _ = await playing_on_the_host(cluster, tokens)

        async def started_in_postgres() -> bool:
            return len((await positions_in_postgres(cluster.database_url, room))[1]) == 3

        await wait_until(started_in_postgres, 10, "the match's first positions in Postgres")
        _, saved = await positions_in_postgres(cluster.database_url, room)
        assert not await client.exists(LobbyKeys(prefix, "arena").room_snapshot(room))
        await cluster.kill(HOST)

        async def restored_elsewhere() -> bool:
            node = await client.hget(room_key(prefix, room), "node")
            return node in (FRONT, OTHER) and not await client.sismember(
                LobbyKeys(prefix, "arena").node_adopt(node), room)

        await wait_until(restored_elsewhere, 10, f"room {room} swept to a live node and handled there")
        new_host = str(await client.hget(room_key(prefix, room), "node"))
        found = await match_of(await join_lobby(cluster, OTHER, tokens[1]))
        assert (found["room"], found["node"]) == (room, new_host)
        game, welcome = await play(tokens[1], found)
        assert welcome["state"] == "running", welcome
        state = await recv_until(game, lambda m: m["type"] == "state")
        mine = next(p for p in state["players"] if p["p"] == welcome["you"])
        before = saved[welcome["you"]]
        assert (mine["x"], mine["y"], mine["hp"]) == (round(before["x"], 1), round(before["y"], 1), before["hp"])
        await game.close()
        assert cluster.logged("restored from its snapshot") == {HOST: 0, FRONT: 0, OTHER: 0} | {new_host: 1}
        assert cluster.problems() == []


async def test_after_redis_lost_everything_exactly_one_live_node_restores_a_dead_hosts_match_from_postgres(
        cluster_of: Callable[..., Cluster], client: aioredis.Redis) -> None:
    prefix = lobby_prefix()
    async with cluster_of(prefix, "--snapshot-every-s", "1", "--reconnect-grace-s", "30") as cluster:
        await wait_nodes_surveyed(client, prefix, NODE_IDS)
        tokens = [new_token(f"g{i}") for i in range(3)]
        room, games = await a_running_match_with_positions_in_postgres(cluster, client, tokens)
        _, saved = await positions_in_postgres(cluster.database_url, room)
        match_id = (await match_row(cluster.database_url, room))["id"]

        await cluster.kill(HOST)
        await forget_everything(client, prefix)

        async def restored_elsewhere() -> bool:
            return await client.hget(room_key(prefix, room), "node") in (FRONT, OTHER)

        took = await wait_until(restored_elsewhere, 20, f"room {room} claimed by a live node")
        # Gone from Redis and silent in Postgres for a dead-after time (2 s): claimed then, not after three.
        assert took < 4.5, f"claimed {took:.1f} s after the kill"
        new_host = str(await client.hget(room_key(prefix, room), "node"))
        assert await client.get(LobbyKeys(prefix, "arena").match_claim(str(match_id))) == new_host
        for token in tokens:
            found = await match_of(await join_lobby(cluster, FRONT, token))
            assert (found["room"], found["node"]) == (room, new_host), found
            game, welcome = await play(token, found)
            assert welcome["state"] == "running", welcome
            state = await recv_until(game, lambda m: m["type"] == "state")
            mine = next(p for p in state["players"] if p["p"] == welcome["you"])
            assert (mine["x"], mine["y"], mine["sc"]) == (
                round(saved[welcome["you"]]["x"], 1), round(saved[welcome["you"]]["y"], 1),
                saved[welcome["you"]]["score"])
            games.append(game)

        async def moved_in_postgres() -> bool:
            return (await match_row(cluster.database_url, room))["node"] == new_host

        await wait_until(moved_in_postgres, 10, "the match row naming its new host")
        # Nothing to wait for: three more scans of each live node (every 2 s) must not restore it a second time.
        await asyncio.sleep(3 * 2.0)
        counts = cluster.logged("restored from Postgres")
        assert counts[new_host] == 1 and sum(counts.values()) == 1, counts
        for game in games:
            with contextlib.suppress(Exception):
                await game.close()
        assert cluster.problems() == []


async def test_bots_back_before_a_lost_match_is_restored_from_postgres_wait_for_it_and_count_reconnects(
        cluster_of: Callable[..., Cluster], client: aioredis.Redis) -> None:
    """Redis loses everything as the host dies: the bots, back in the lobby at once with their match's ticket,
    are told `recovering` instead of being matched anew, and land in their restored match."""
    prefix = lobby_prefix()
    async with cluster_of(prefix, "--reconnect-grace-s", "30") as cluster:
        await wait_nodes_surveyed(client, prefix, NODE_IDS)
        bots = asyncio.get_running_loop().create_task(run_bot(
            "--url", cluster[FRONT].url, "--lobby", "--bots", "5", "--duration", "24", "--ramp", "0.2", "--json",
            "--quiet"))

        async def a_match_in_postgres() -> bool:
            conn = await asyncpg.connect(cluster.database_url)
            try:
                count = await conn.fetchval("SELECT count(*) FROM player_positions pp JOIN matches m "
                                            "ON m.id = pp.match_id WHERE m.state = 'running' AND m.node = $1", HOST)
            finally:
                await conn.close()
            return bool(count == 5)

        await wait_until(a_match_in_postgres, 15, "the bots' match on a-host, with its positions in Postgres")
        await cluster.kill(HOST)
        await forget_everything(client, prefix)
        code, out, err = await bots
        assert code == 0, err
        summary = last_json_line(out)
        assert (summary["disconnects"], summary["reconnects"]) == (5, 5), summary
        assert sum(cluster.logged("waiting for its recovery").values()) >= 1
        assert sum(cluster.logged("restored from Postgres").values()) == 1
        assert cluster.problems() == []


# -- draining a node ------------------------------------------------------------------------------------------

async def test_a_drained_node_hands_its_match_to_another_where_every_player_finishes_it(
        cluster_of: Callable[..., Cluster], client: aioredis.Redis) -> None:
    prefix = lobby_prefix()
    async with cluster_of(prefix, "--snapshot-every-s", "1", "--match-time-s", "10", "--end-linger-s", "0.5") \
            as cluster:
        await wait_nodes_surveyed(client, prefix, NODE_IDS)
        tokens = [new_token(f"d{i}") for i in range(3)]
        room, games = await playing_on_the_host(cluster, tokens)
        await games[0].send('{"type":"input","seq":1,"dx":1,"dy":0}')

        # `tickroom drain`, through Redis, with one second for the match to finish (it will not): handed off.
        drain = await asyncio.create_subprocess_exec(
            TICKROOM, "drain", HOST, "--deadline-s", "1", "--redis-url", cluster.redis_url,
            "--lobby-prefix", prefix, "--log-format", "text", stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=child_environment())
        told = [await recv_until(game, is_type("reconnect"), timeout=15) for game in games]
        assert {message["reason"] for message in told} == {"drain"}
        out, err = await asyncio.wait_for(drain.communicate(), 20)
        assert drain.returncode == 0, (out, err)
        assert b"drained" in out
        assert await client.hget(f"{prefix}:node:{HOST}", "state") == "drained"

        # Every player comes back through a lobby into the same match, on another node, and plays it out.
        back = []
        for token in tokens:
            found = await match_of(await join_lobby(cluster, OTHER, token))
            assert found["room"] == room and found["node"] in (FRONT, OTHER), found
            game, welcome = await play(token, found)
            assert welcome["state"] == "running", welcome
            back.append(game)
        ends = [await recv_until(game, is_type("match_end"), timeout=20) for game in back]
        assert {end["match"] for end in ends} == {ends[0]["match"]} and ends[0]["reason"] == "time"
        await recv_until(back[0], is_event("result_saved"), timeout=15)
        conn = await asyncpg.connect(cluster.database_url)
        try:
            rows = await conn.fetch("SELECT id, state, node FROM matches WHERE room_id = $1", room)
            lines = await conn.fetchval("SELECT count(*) FROM match_players WHERE match_id = $1", rows[0]["id"])
        finally:
            await conn.close()
        assert [(str(row["id"]), row["state"]) for row in rows] == [(ends[0]["match"], "finished")]
        assert rows[0]["node"] in (FRONT, OTHER) and lines == 3
        for game in back:
            with contextlib.suppress(Exception):
                await game.close()
        assert cluster.problems() == []


# -- hundreds of bots on three nodes -------------------------------------------------------------------------

BOTS = 300
# Most bots arrive in a rush (rooms fill at once), then steadily, then a trickle (rooms count down and start
# with 3 or 4): (share of the bots, from, to) in seconds.
ARRIVALS = ((0.65, 0.0, 6.0), (0.25, 6.0, 16.0), (0.1, 16.0, 30.0))
LOBBY_GRACE_S, RECONNECT_GRACE_S, JOIN_WINDOW_S = 0.5, 1.0, 2.0
GRACE_ARGS = ("--lobby-grace-s", str(LOBBY_GRACE_S), "--reconnect-grace-s", str(RECONNECT_GRACE_S),
              "--join-window-s", str(JOIN_WINDOW_S))
SEED = 20_251_123
MAX_PLAYERS, MIN_PLAYERS = 5, 3
# What a bot does in one visit to the lobby, and how often.
PLANS = {"play": 55, "leave": 15, "drop": 12, "abort": 8, "no_show": 10}
PATIENCE_S = 8.0  # how long a bot that means to play waits for its match
LAST_ROUND_S = 34.0  # no bot visits the lobby after this, so that the run ends in time
# The lobby errors after which the connection closes and the bot tries again a little later.
TRY_AGAIN = frozenset({"already_connected", "already_in_match"})


@dataclass
class LobbyVisit:
    """One lobby connection of one bot: every message it got, with the time it got it."""

    player: str
    node: str
    plan: str
    opened: float
    seen: list[tuple[float, Message]] = field(default_factory=list)
    ended: float = 0.0
    how: str = ""  # matched, left, dropped, aborted, refused, closed (by the server), failed


@dataclass
class GameVisit:
    """One game connection of one bot, following a match_found."""

    player: str
    room: str
    host: str
    opened: float
    refused: tuple[int, str] | None = None
    welcome: Message | None = None
    running_with: int | None = None  # players present when the match started (the phase event to running)
    errors: list[str] = field(default_factory=list)
    last_state: float | None = None  # when the last `state` before any `match_end` arrived: the match was on
    match_end: float | None = None  # when `match_end` arrived
    ended: float = 0.0
    # When the bot began to close (its close frame is out, and the server starts the reconnect grace then): the
    # close itself may end much later, when a client with unread states finally reads the server's answer.
    closing: float | None = None
    how: str = ""  # left, dropped, aborted, closed (by the server), refused, failed
    close_code: int | None = None


@dataclass
class Seen:
    """Everything every bot saw, on one clock (this process's monotonic clock)."""

    lobbies: list[LobbyVisit] = field(default_factory=list)
    games: list[GameVisit] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def match_founds(self) -> list[tuple[LobbyVisit, float, Message]]:
        return [(visit, t, m) for visit in self.lobbies for t, m in visit.seen if m["type"] == "match_found"]


class Bot:
    """One player who visits the lobby a few times, and plays (or not) what it is matched into."""

    def __init__(self, index: int, cluster: Cluster, seen: Seen, rng: random.Random, last_round_at: float) -> None:
        self.player_id = str(uuid.uuid4())
        self.token = new_token(f"bot{index}", player_id=self.player_id)
        self.cluster = cluster
        self.seen = seen
        self.rng = rng
        self.last_round_at = last_round_at  # no visit to the lobby starts after this (monotonic) time

    async def run(self, start_in: float) -> None:
        rng = self.rng
        await asyncio.sleep(start_in)
        rounds = rng.choice((1, 1, 1, 2, 2, 3))
        for round_no in range(rounds):
            if time.monotonic() > self.last_round_at:
                return
            plan = rng.choices(list(PLANS), weights=list(PLANS.values()))[0]
            found = await self.visit_lobby(plan)
            if found is not None and plan != "no_show":
                await self.play(found)
            if round_no + 1 < rounds:
                # Often back at once (within the grace windows: the seat is given back), else a while later.
                await asyncio.sleep(rng.uniform(0, 0.3) if rng.random() < 0.5 else rng.uniform(0.6, 3.0))

    async def visit_lobby(self, plan: str) -> Message | None:
        """Join through a random node; the match_found if one came."""
        for _attempt in range(8):
            node = self.rng.choice(NODE_IDS)
            visit = LobbyVisit(self.player_id, node, plan, time.monotonic())
            self.seen.lobbies.append(visit)
            try:
                async with asyncio.timeout(20):
                    try:
                        found = await self._lobby(visit)
                    finally:
                        visit.ended = time.monotonic()
            except TimeoutError:
                visit.how = "failed"
                self.seen.failures.append(f"{self.player_id}: lobby visit on {node} hung")
                return None
            except (OSError, InvalidStatus, ConnectionClosed) as error:
                visit.how = "failed"
                self.seen.failures.append(f"{self.player_id}: lobby on {node}: {error!r}")
                return None
            if visit.how != "refused":
                return found
            await asyncio.sleep(self.rng.uniform(0.2, 0.6))
        return None

    async def _lobby(self, visit: LobbyVisit) -> Message | None:
        rng = self.rng
        ws = await open_ws(f"{self.cluster[visit.node].url}/lobby", self.token)
        try:
            await ws.send(JOIN)
            patience = PATIENCE_S if visit.plan in ("play", "no_show") else rng.uniform(0.0, 0.8)
            deadline = time.monotonic() + patience
            joins = 1
            while (remaining := deadline - time.monotonic()) > 0:
                try:
                    raw = await asyncio.wait_for(ws.recv(), remaining)
                except TimeoutError:
                    break
                except ConnectionClosed:
                    visit.how = "closed"
                    return None
                message: Message = orjson.loads(raw)
                visit.seen.append((time.monotonic(), message))
                if message["type"] == "match_found":
                    visit.how = "matched"
                    return message
                if message["type"] == "error":
                    if message["code"] in TRY_AGAIN:
                        visit.how = "refused"
                        return None
                    if message["code"] in ("seat_lost", "lobby_unavailable") and joins < 5:
                        joins += 1
                        await ws.send(JOIN)
            # Patience ran out: give the place up, or just vanish (a clean close or a dead TCP connection).
            ending = visit.plan if visit.plan in ("leave", "drop", "abort") else rng.choice(("leave", "drop"))
            if ending == "leave":
                with contextlib.suppress(ConnectionClosed):  # a match_found and its close may be on their way
                    await ws.send('{"type":"leave"}')
                visit.how = "left"
                # A match_found may have crossed the leave: the seat is then kept, as for any matched player.
                return await self._drain_for_match(ws, visit)
            if ending == "abort":
                visit.how = "aborted"
                ws.transport.abort()
            else:
                visit.how = "dropped"
            return None
        finally:
            await ws.close()

    async def _drain_for_match(self, ws: ClientConnection, visit: LobbyVisit) -> Message | None:
        found = None
        try:
            async with asyncio.timeout(3):
                async for raw in ws:
                    message: Message = orjson.loads(raw)
                    visit.seen.append((time.monotonic(), message))
                    if message["type"] == "match_found":
                        found = message
        except (TimeoutError, ConnectionClosed):
            pass
        return found

    async def play(self, found: Message) -> None:
        rng = self.rng
        if rng.random() < 0.25:
            await asyncio.sleep(rng.uniform(0.2, 1.5))  # a slow client: the others start, or leave, meanwhile
        game = GameVisit(self.player_id, found["room"], found["node"], time.monotonic())
        self.seen.games.append(game)
        try:
            async with asyncio.timeout(20):
                await self._game(game, found, stay=rng.uniform(0.2, 2.5), ending=rng.choice(("left", "dropped",
                                                                                                "aborted")))
        except InvalidStatus as error:
            body = orjson.loads(error.response.body or b"{}")
            game.refused = (error.response.status_code, str(body.get("error")))
            game.how = "refused"
        except ConnectionClosed as error:
            game.how, game.close_code = "closed", error.rcvd.code if error.rcvd else None
        except (TimeoutError, OSError) as error:
            game.how = "failed"
            self.seen.failures.append(f"{self.player_id}: game {found['room']}: {error!r}")
        game.ended = time.monotonic()

    async def _game(self, game: GameVisit, found: Message, stay: float, ending: str) -> None:
        ws = await open_ws(found["url"], self.token)
        present: set[int] = set()
        try:
            await ws.send('{"type":"hello","v":1}')
            await ws.send('{"type":"input","seq":1,"dx":1,"dy":0}')
            deadline = time.monotonic() + stay
            while (remaining := deadline - time.monotonic()) > 0:
                try:
                    raw = await asyncio.wait_for(ws.recv(), remaining)
                except TimeoutError:
                    break
                except ConnectionClosed:
                    game.how, game.close_code = "closed", ws.close_code
                    return
                now = time.monotonic()
                if isinstance(raw, str) and raw.startswith('{"type":"state"'):
                    if game.match_end is None:  # the hot path: states are not decoded
                        game.last_state = now
                    continue
                message: Message = orjson.loads(raw)
                kind = message["type"]
                if kind == "welcome":
                    game.welcome = message
                    present = {player["p"] for player in message["players"]}
                elif kind == "event" and message["kind"] == "join":
                    present.add(message["p"])
                elif kind == "event" and message["kind"] == "leave":
                    present.discard(message["p"])
                elif kind == "event" and message["kind"] == "phase" and message["state"] == "running":
                    game.running_with = len(present)
                elif kind == "error":
                    game.errors.append(message["code"])
                elif kind == "match_end":
                    game.match_end = now
            game.how = ending
            if ending == "left":
                with contextlib.suppress(TimeoutError, ConnectionClosed):
                    await ws.send('{"type":"leave"}')
                    async with asyncio.timeout(3):
                        async for _ in ws:
                            pass
            elif ending == "aborted":
                ws.transport.abort()
        finally:
            if game.closing is None:
                game.closing = time.monotonic()
            await ws.close()


# -- reading the lobby back from Redis ------------------------------------------------------------------------

# One consistent look at the lobby, taken inside Redis while the bots run.
SNAPSHOT = """
local base = ARGV[1]
local rooms = {}
for _, id in ipairs(redis.call('SMEMBERS', base .. ':rooms')) do
  local r = redis.call('HMGET', base .. ':room:' .. id, 'state', 'node', 'players')
  rooms[#rooms + 1] = {id, r[1] or '', r[2] or '', r[3] or '[]',
                       redis.call('SMEMBERS', base .. ':room:' .. id .. ':players')}
end
local queue = {}
for _, id in ipairs(redis.call('ZRANGE', base .. ':queue', 0, -1)) do
  local p = redis.call('HMGET', base .. ':player:' .. id, 'status', 'room')
  queue[#queue + 1] = {id, p[1] or '', p[2] or ''}
end
return cjson.encode({available = redis.call('ZRANGE', base .. ':rooms:available', 0, -1, 'WITHSCORES'),
                     rooms = rooms, queue = queue})
"""


def as_list(value: Any) -> list[Any]:
    """cjson encodes an empty table as an object."""
    return value if isinstance(value, list) else []


def roster_ids(raw: str) -> list[str]:
    return [entry["id"] for entry in as_list(orjson.loads(raw or "[]"))]


def check_snapshot(snapshot: Message, problems: list[str]) -> None:
    """The invariants that hold at every instant, each broken one described in `problems`."""
    flat = as_list(snapshot["available"])
    available = {flat[k]: int(float(flat[k + 1])) for k in range(0, len(flat), 2)}
    seats: dict[str, str] = {}
    open_rooms: dict[str, int] = {}
    for room_id, state, _node, roster_raw, members_raw in as_list(snapshot["rooms"]):
        members, roster = set(as_list(members_raw)), roster_ids(roster_raw)
        if len(members) > MAX_PLAYERS:
            problems.append(f"room {room_id} holds {len(members)} players")
        if sorted(roster) != sorted(members):
            problems.append(f"room {room_id}: join-order list {roster} is not its set {sorted(members)}")
        for player in members:
            if player in seats:
                problems.append(f"player {player} sits in rooms {seats[player]} and {room_id} at once")
            seats[player] = room_id
        if state in ("waiting", "countdown"):
            open_rooms[room_id] = len(members)
    if available != open_rooms:
        problems.append(f"rooms:available {available} is not the open rooms {open_rooms}")
    if len(open_rooms) > 1:
        problems.append(f"players wait in several open rooms at once: {open_rooms}")
    for player, status, room_id in as_list(snapshot["queue"]):
        if not status:
            problems.append(f"queued player {player} has no player hash")
        elif status == "queued" and open_rooms:
            problems.append(f"player {player} waits with no room while {open_rooms} has a seat")
        elif status == "waiting" and open_rooms.get(room_id) is None:
            problems.append(f"waiting player {player} is in room {room_id!r}, which is not open")
        elif status not in ("waiting", "queued"):
            problems.append(f"the queue lists player {player}, who is {status}")


async def watch_lobby(client: aioredis.Redis, base: str, problems: list[str], stop: asyncio.Event) -> int:
    """Check a consistent snapshot of the lobby every 0.2 s until `stop`; how many were checked."""
    snapshot_script = client.register_script(SNAPSHOT)
    count = 0
    while not stop.is_set():
        check_snapshot(orjson.loads(await snapshot_script(keys=[], args=[base])), problems)
        count += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.2)
    return count


def check_quiet_lobby(prefix: str, state: Dump) -> list[str]:
    """The lobby once every bot is gone and every grace window, countdown and join window has passed."""
    base = f"{prefix}:{{arena}}"
    available_key, queue_key, rooms_key = f"{base}:rooms:available", f"{base}:queue", f"{base}:rooms"
    nodes_key, leaderboard_key = f"{prefix}:nodes", f"{base}:leaderboard"  # the leaderboard is kept for good
    room_hash = re.compile(re.escape(f"{base}:room:") + r"([^:]+)$")
    room_part = re.compile(re.escape(f"{base}:room:") + r"([^:]+):(players|ttl)$")
    player_hash = re.compile(re.escape(f"{base}:player:") + r"([^:]+)$")
    node_set = re.compile(re.escape(f"{base}:node:") + r"([^:]+):(rooms|conns)$")
    node_hash = re.compile(re.escape(f"{prefix}:node:") + r"([^:{}]+)$")
    values, problems = state.values, []
    rooms = {m[1]: value for key, value in values.items() if (m := room_hash.match(key))}
    players = {m[1]: value for key, value in values.items() if (m := player_hash.match(key))}
    nodes = {m[1] for key in values if (m := node_hash.match(key))}

    # Keys without a TTL are indexes, and every member of an index exists.
    for key, ttl in state.ttls.items():
        if ttl == -1 and key not in (available_key, queue_key, rooms_key, nodes_key, leaderboard_key) \
                and not node_set.match(key):
            problems.append(f"{key} has no TTL and is no index")
        if (m := room_part.match(key)) and m[1] not in rooms:
            problems.append(f"{key} outlives its room")
    for index in (available_key, rooms_key):
        for room_id in values.get(index, ()):
            if room_id not in rooms:
                problems.append(f"{index} lists room {room_id}, which does not exist")
    for player in values.get(queue_key, {}):
        if player not in players:
            problems.append(f"the queue lists player {player}, who has no player hash")
    for node_id in values.get(nodes_key, {}):
        if node_id not in nodes:
            problems.append(f"{nodes_key} lists node {node_id}, which has no live hash")
    for key, members in values.items():
        if (m := node_set.match(key)) and m[2] == "rooms":
            problems.extend(f"{key} lists room {room_id}, not hosted there" for room_id in members
                            if rooms.get(room_id, {}).get("node") != m[1])
        elif m:
            problems.append(f"{key} still lists {sorted(members)} though every client is gone")

    # Every seated player is in exactly one room, which lists them; rooms agree with themselves.
    seats: dict[str, list[str]] = {}
    open_rooms: dict[str, int] = {}
    for room_id, room in rooms.items():
        roster, members = roster_ids(room.get("players", "[]")), values.get(f"{base}:room:{room_id}:players", set())
        if sorted(roster) != sorted(members) or len(set(roster)) != len(roster):
            problems.append(f"room {room_id}: join-order list {roster} is not its set {sorted(members)}")
        if len(members) > MAX_PLAYERS:
            problems.append(f"room {room_id} holds {len(members)} players")
        if state.ttls.get(f"{base}:room:{room_id}:ttl", -2) <= 0:
            problems.append(f"room {room_id} has no shadow key")
        for player in members:
            seats.setdefault(player, []).append(room_id)
        if room.get("state") != "running":
            open_rooms[room_id] = len(members)
    for player, held in seats.items():
        if len(held) > 1:
            problems.append(f"player {player} sits in {held}")
        if player not in players:
            problems.append(f"room {held[0]} lists player {player}, who has no player hash")
    for player, placement in players.items():
        room_id = placement.get("room", "")
        if room_id and player not in values.get(f"{base}:room:{room_id}:players", set()):
            problems.append(f"player {player} points at room {room_id}, which does not list them")
        if placement.get("status") in ("waiting", "queued"):
            problems.append(f"player {player} still waits ({placement}) after every client left")
        if placement.get("conn"):
            problems.append(f"player {player} still has a connection registered: {placement}")
    available = {room_id: int(score) for room_id, score in values.get(available_key, {}).items()}
    if available != {room_id: count for room_id, count in open_rooms.items() if count < MAX_PLAYERS}:
        problems.append(f"rooms:available {available} is not the open rooms {open_rooms}")
    if len(open_rooms) > 1:
        problems.append(f"several open rooms: {open_rooms}")
    if open_rooms:
        problems.append(f"rooms still wait for players after every client left: {open_rooms}")
    if values.get(queue_key):
        problems.append(f"the queue still holds {sorted(values[queue_key])}")
    return problems


# -- what the bots saw -----------------------------------------------------------------------------------------


def check_what_bots_saw(seen: Seen, cluster: Cluster) -> list[str]:
    problems: list[str] = []
    hosts: dict[str, set[str]] = {}
    biggest_found: dict[str, int] = {}
    for visit in seen.lobbies:
        if visit.how == "closed":
            problems.append(f"the lobby closed on {visit.player} without a match: {visit.seen}")
        shown_rooms: set[str] = set()
        for _t, message in visit.seen:
            kind = message["type"]
            if kind == "lobby":
                shown_rooms.add(message["room"])
                if len(message["players"]) > MAX_PLAYERS:
                    problems.append(f"lobby message lists {len(message['players'])} players: {message}")
            elif kind == "match_found":
                room, listed = message["room"], [player["id"] for player in message["players"]]
                hosts.setdefault(room, set()).add(message["node"])
                biggest_found[room] = max(biggest_found.get(room, 0), len(listed))
                if not 1 <= len(listed) <= MAX_PLAYERS or visit.player not in listed:
                    problems.append(f"match_found for {visit.player} lists {listed}")
                # The match_found of a room the player waited in is sent as it starts: it has the minimum.
                if room in shown_rooms and len(listed) < MIN_PLAYERS:
                    problems.append(f"room {room} started with {len(listed)} players: {message}")
                if not message["url"].startswith(f"{cluster[message['node']].url}/game?room={room}&ticket="):
                    problems.append(f"match_found url {message['url']} is not node {message['node']}'s")
            elif kind == "error" and message["code"] not in TRY_AGAIN:
                problems.append(f"lobby error for {visit.player}: {message}")
    problems.extend(f"room {room} reported hosted by {sorted(nodes)}" for room, nodes in hosts.items()
                    if len(nodes) > 1)
    problems.extend(f"room {room}: no match_found listed {MIN_PLAYERS} or more players ({count})"
                    for room, count in biggest_found.items() if count < MIN_PLAYERS)
    for game in seen.games:
        if game.refused is not None and game.refused[1] not in ("not_in_room", "room_not_found"):
            problems.append(f"game {game.room} refused {game.player}: {game.refused}")
        if game.welcome is not None and (game.welcome["room"] != game.room or
                                         len(game.welcome["players"]) > MAX_PLAYERS):
            problems.append(f"welcome does not match its match_found: {game.welcome}")
        if game.running_with is not None and game.running_with < MIN_PLAYERS:
            problems.append(f"room {game.room}'s match started with {game.running_with} players present")
        unexpected = [code for code in game.errors if code not in ("match_cancelled", "room_closed")]
        if unexpected:
            problems.append(f"game {game.room} gave {game.player} errors {unexpected}")
    problems.extend(one_game_at_a_time(seen))
    problems.extend(refused_while_gone(seen))
    return problems


def refused_while_gone(seen: Seen, slack: float = 0.5) -> list[str]:
    """`already_in_match` is for a player connected to a match, `already_connected` for one with another lobby
    connection open. A bot has one connection at a time, so either refusal is only a race with the close of its
    previous connection, and never comes `slack` seconds or more after that close."""
    last_game: dict[str, list[GameVisit]] = {}
    for game in seen.games:
        last_game.setdefault(game.player, []).append(game)
    lobby_ends: dict[str, list[float]] = {}
    for visit in seen.lobbies:
        lobby_ends.setdefault(visit.player, []).append(visit.ended)
    problems = []
    for visit in seen.lobbies:
        for t, message in visit.seen:
            if message["type"] != "error" or message["code"] not in TRY_AGAIN:
                continue
            if message["code"] == "already_in_match":
                games = [game for game in last_game.get(visit.player, []) if game.ended < t]
                last = max(games, key=lambda game: game.ended, default=None)
                closed: float | None = None if last is None else last.ended
                ended = "" if last is None or last.match_end is None else \
                    f"; its match ended {last.ended - last.match_end:.2f} s before it left"
            else:
                closed = max((end for end in lobby_ends.get(visit.player, []) if end < t), default=None)
                ended = ""
            if closed is None or t - closed > slack:
                since = "none open before" if closed is None else f"{t - closed:.2f} s after the last one closed"
                problems.append(f"{message['code']} for {visit.player} ({since}{ended}): {message['message']}")
    return problems


def one_game_at_a_time(seen: Seen, slack: float = 0.5) -> list[str]:
    """A player is never seated in a second room while still holding a seat in a room whose match goes on.

    A player holds a seat in room R from its match_found until they leave the game, are refused at its door,
    are closed out by the server, see the match end, or stay away longer than the reconnect grace. R's match
    goes on at least as long as some bot still receives its states before any `match_end`."""
    alive_until: dict[str, float] = {}
    for game in seen.games:
        if game.last_state is not None:
            alive_until[game.room] = max(alive_until.get(game.room, 0.0), game.last_state)
    games_of: dict[str, list[GameVisit]] = {}
    for game in seen.games:
        games_of.setdefault(game.player, []).append(game)

    def released(player: str, room: str, at: float) -> bool:
        visits = [game for game in games_of.get(player, []) if game.room == room and game.opened <= at]
        if not visits:
            return False  # matched but never came: the seat is still theirs
        last = max(visits, key=lambda game: game.opened)
        gone = last.ended if last.closing is None else min(last.ended, last.closing)
        if gone > at:
            return False
        if last.how in ("left", "refused", "closed", "failed") or last.match_end is not None:
            return True
        return gone + RECONNECT_GRACE_S <= at + slack

    problems = []
    matched: dict[str, list[tuple[float, str]]] = {}
    for visit, t, message in seen.match_founds():
        matched.setdefault(visit.player, []).append((t, message["room"]))
    for visit in seen.lobbies:
        first_seen: dict[str, float] = {}
        for t, message in visit.seen:
            if message["type"] in ("lobby", "match_found") and message.get("room"):
                first_seen.setdefault(message["room"], t)
        for room, t in first_seen.items():
            for t_old, old in matched.get(visit.player, []):
                if old != room and t_old < t and not released(visit.player, old, t) \
                        and alive_until.get(old, 0.0) > t + slack:
                    problems.append(f"player {visit.player} was seated in {room} at {t:.2f} while still holding "
                                    f"a seat in {old} (matched at {t_old:.2f}, running until "
                                    f"{alive_until[old]:.2f})")
    return problems


def summary(seen: Seen, snapshots: int) -> str:
    founds = seen.match_founds()
    welcomed = [game for game in seen.games if game.welcome is not None]
    small_starts = sorted(game.running_with for game in seen.games
                          if game.running_with is not None and game.running_with < MIN_PLAYERS)
    lobby_endings = Counter(visit.how for visit in seen.lobbies)
    game_endings = Counter(game.how for game in seen.games)
    refusals = Counter(game.refused[1] for game in seen.games if game.refused)
    errors = Counter(code for game in seen.games for code in game.errors)
    lobby_errors = Counter(m["code"] for visit in seen.lobbies for _, m in visit.seen if m["type"] == "error")
    gave_up = Counter(visit.how for visit in seen.lobbies
                      if visit.how in ("left", "dropped", "aborted") and not any(
                          m["type"] == "match_found" for _, m in visit.seen))
    sizes: dict[str, int] = {}
    for _, _, message in founds:
        sizes[message["room"]] = max(sizes.get(message["room"], 0), len(message["players"]))
    started = dict(sorted(Counter(sizes.values()).items()))
    hosts = dict(sorted(Counter({m["room"]: m["node"] for _, _, m in founds}.values()).items()))
    return (f"{len(seen.lobbies)} lobby visits {dict(lobby_endings)}, {len(founds)} match_found in "
            f"{len({m['room'] for _, _, m in founds})} rooms, {len(seen.games)} game visits {dict(game_endings)}, "
            f"{len(welcomed)} welcomed, refusals {dict(refusals)}, game errors {dict(errors)}, "
            f"lobby errors {dict(lobby_errors)}, gave up waiting {dict(gave_up)}, rooms by size at start {started}, "
            f"rooms by host {hosts}, game starts seen with fewer than {MIN_PLAYERS} present: {small_starts}, "
            f"{snapshots} Redis snapshots")


async def node_stats(cluster: Cluster) -> dict[str, Any]:
    answers = {}
    for node_id, node in cluster.nodes.items():
        _, answers[node_id] = await asyncio.to_thread(http_json, f"{node.http}/stats")
    return answers


async def test_hundreds_of_bots_joining_leaving_and_dropping_on_three_nodes_keep_the_lobby_consistent(
        cluster_of: Callable[..., Cluster], client: aioredis.Redis) -> None:
    prefix = lobby_prefix()
    base = f"{prefix}:{{arena}}"
    async with cluster_of(prefix, *GRACE_ARGS) as cluster:
        await wait_nodes_surveyed(client, prefix, NODE_IDS)
        seen, while_running = Seen(), list[str]()
        stop = asyncio.Event()
        watcher = asyncio.create_task(watch_lobby(client, base, while_running, stop))
        try:
            last_round_at = time.monotonic() + LAST_ROUND_S
            bots = [Bot(k, cluster, seen, random.Random(SEED + k), last_round_at) for k in range(BOTS)]
            spread = random.Random(SEED)
            waves = [spread.choices(ARRIVALS, weights=[share for share, _, _ in ARRIVALS])[0] for _ in bots]
            arrivals = [spread.uniform(start, end) for _, start, end in waves]
            async with asyncio.timeout(75):
                await asyncio.gather(*(bot.run(start_in) for bot, start_in in zip(bots, arrivals, strict=True)))
        finally:
            stop.set()
            snapshots = await watcher
        print(summary(seen, snapshots))

        # Quiet: no node has a connection or a room, nobody waits, twice in a row (0.2 s apart, so that the
        # lobby writes of the last rooms to close have run). Then whatever is wrong stays wrong: read it all.
        quiet_reads: list[bool] = []

        async def quiet() -> bool:
            stats = await node_stats(cluster)
            waiting = await client.zcard(f"{base}:queue") + await client.zcard(f"{base}:rooms:available")
            quiet_reads.append(waiting == 0 and not any(
                answer["connections"] or answer["rooms"] for answer in stats.values()))
            return quiet_reads[-2:] == [True, True]

        with contextlib.suppress(TimeoutError):
            await wait_until(quiet, 10, "the lobby settled", interval=0.2)
        state = await dump(client, prefix)
        leftover = [key for key, value in state.values.items()
                    if key.startswith(f"{base}:room:") and isinstance(value, dict) and value.get("state")]
        # Rooms still in Redis must be matches nobody ever came to (their host never opened them); any other is
        # a room whose end the lobby never heard of.
        logs = "\n".join(node.log_path.read_text(errors="replace") for node in cluster.nodes.values())
        found = {
            "bots that could not do what they meant to": seen.failures,
            "the lobby in Redis while the bots ran": while_running,
            "what the bots saw": check_what_bots_saw(seen, cluster),
            "the lobby in Redis once quiet": check_quiet_lobby(prefix, state),
            "rooms closed on their host but still in Redis": [
                key for key in leftover if f"room {key.rsplit(':', 1)[1]} created" in logs],
            "errors in the nodes' logs": cluster.problems(),
        }
        print(f"rooms left in Redis: {len(leftover)}")
        for what, items in found.items():
            if items:
                print(f"{len(items)} problem(s) with {what}:", *items[:12], sep="\n  ")
        assert {what: len(items) for what, items in found.items() if items} == {}


# -- a storm of drops and comebacks while a node is killed (issue 12) ----------------------------------------------

# Three rooms of five; drops and comebacks for STORM_S, the kill at KILL_AT_S. `bench/storm.py` runs it bigger
# (TICKROOM_STORM="PLAYERS,SECONDS,KILL_AT") and then with the default heartbeat (1 s) and dead-after time (5 s).
_STORM = os.environ.get("TICKROOM_STORM", "")
STORM_PLAYERS, STORM_S, KILL_AT_S = (int(_STORM.split(",")[0]), *map(float, _STORM.split(",")[1:3])) if _STORM \
    else (15, 18.0, 7.0)
STORM_TIMING = ("--node-heartbeat-s", "1", "--node-dead-after-s", "5") if _STORM else ("--node-dead-after-s", "4")
MEAN_PLAY_S = 2.5  # a player plays this long on average between drops


@dataclass
class Stormer:
    """One client of the storm, written from docs/protocol.md: it drops its game connection at random (an abort,
    a close without `leave`, or a connection it stops reading) and comes back through a lobby with its ticket."""

    token: str
    name: str
    rng: random.Random
    rooms: set[str] = field(default_factory=set)
    ticket: str | None = None
    game: ClientConnection | None = None
    lost_at: float | None = None  # when it last lost its game connection (a drop, or its host's death)
    back_after: list[tuple[float, float]] = field(default_factory=list)  # (lost at, seconds until welcome)
    refusals: list[str] = field(default_factory=list)  # lobby or game refusals: none is promised
    unreachable: int = 0  # /game connections that failed at the TCP level (then: back to the lobby)
    match_ends: list[Message] = field(default_factory=list)
    silent: list[ClientConnection] = field(default_factory=list)  # half-open: never read again
    node: str = ""  # the host its last match_found named
    welcomed: list[float] = field(default_factory=list)  # when each welcome came

    async def come_back(self, cluster: Cluster, lobby_nodes: tuple[str, ...]) -> None:
        """Through a lobby into the game, trying again the documented way until welcomed."""
        delay = 0.2
        while True:
            lobby = await open_ws(f"{cluster[self.rng.choice(lobby_nodes)].url}/lobby", self.token)
            join: dict[str, Any] = {"type": "join", "v": 1, "mode": "arena"}
            if self.ticket is not None:
                join["ticket"] = self.ticket
            await lobby.send(orjson.dumps(join).decode())
            reply = await recv_until(lobby, lambda m: m["type"] in ("match_found", "error"), timeout=30)
            await lobby.close()
            if reply["type"] == "error":
                self.refusals.append(f"lobby {reply['code']}: {reply['message']}")
                await asyncio.sleep(delay)
                continue
            self.rooms.add(reply["room"])
            self.ticket = reply["ticket"]
            self.node = reply["node"]
            try:
                game = await open_ws(reply["url"], self.token)
            except (OSError, InvalidMessage):  # no TCP, or a host that died with the handshake in its backlog
                self.unreachable += 1
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)
                continue
            except InvalidStatus as error:
                self.refusals.append(f"game {error.response.status_code}: {error.response.body!r}")
                await asyncio.sleep(delay)
                continue
            try:
                await game.send('{"type":"hello","v":1}')
                welcome = await recv_until(game, lambda m: m["type"] in ("welcome", "error"), timeout=10)
            except ConnectionClosed:  # its host died as it let us in: back to the lobby
                self.unreachable += 1
                await asyncio.sleep(delay)
                continue
            if welcome["type"] == "error":
                self.refusals.append(f"game {welcome['code']}: {welcome['message']}")
                await asyncio.sleep(delay)
                continue
            self.welcomed.append(time.monotonic())
            if self.lost_at is not None:
                self.back_after.append((self.lost_at, time.monotonic() - self.lost_at))
                self.lost_at = None
            self.game = game
            return

    async def play_until(self, deadline: float) -> bool:
        """Read states until `deadline`; False when the connection was lost meanwhile (its host died, say)."""
        assert self.game is not None
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = orjson.loads(await asyncio.wait_for(self.game.recv(), left))
            except TimeoutError:
                return True
            except ConnectionClosed:
                self.lost_at = time.monotonic()
                self.game = None
                return False
            if message["type"] == "match_end":
                self.match_ends.append(message)
        return True

    async def drop(self) -> None:
        game, self.game = self.game, None
        assert game is not None
        how = self.rng.choice(("abort", "close", "silent"))
        if how == "abort" and game.transport is not None:
            game.transport.abort()
        elif how == "close":
            await game.close()
        elif game.transport is not None:
            game.transport.pause_reading()  # half-open as far as the server can tell: it answers nothing any more
            self.silent.append(game)
        self.lost_at = time.monotonic()

    async def storm(self, cluster: Cluster, lobby_nodes: tuple[str, ...], until: float) -> None:
        await self.come_back(cluster, lobby_nodes)
        while time.monotonic() < until:
            if await self.play_until(min(until, time.monotonic() + self.rng.expovariate(1 / MEAN_PLAY_S))):
                if time.monotonic() >= until:
                    break
                await self.drop()
                await asyncio.sleep(self.rng.uniform(0.05, 1.0))
            await self.come_back(cluster, lobby_nodes)


@pytest.mark.parametrize("flush", [False, True], ids=["kill", "kill-and-flush"])
async def test_a_storm_of_drops_and_comebacks_through_a_node_kill_loses_no_seat_and_ends_each_match_once(
        cluster_of: Callable[..., Cluster], client: aioredis.Redis, flush: bool) -> None:
    prefix = lobby_prefix()
    async with cluster_of(prefix, "--snapshot-every-s", "1", "--reconnect-grace-s", "20", "--countdown-s", "30",
                          *STORM_TIMING) as cluster:
        await wait_nodes_surveyed(client, prefix, NODE_IDS)
        rng = random.Random(12 + flush)
        players = [Stormer(new_token(f"st{i}"), f"st{i}", random.Random(rng.random())) for i in range(STORM_PLAYERS)]
        lobby_nodes = (FRONT, OTHER)
        started = time.monotonic()
        storms: list[asyncio.Task[None]] = []
        for wave in range(0, STORM_PLAYERS, 5):  # a room at a time, so that the rooms spread over the nodes
            storms.extend(asyncio.create_task(player.storm(cluster, lobby_nodes, started + STORM_S))
                          for player in players[wave:wave + 5])

            async def matched(members: list[Stormer] = players[wave:wave + 5]) -> bool:
                return all(member.rooms for member in members)

            await wait_until(matched, 10, f"the players {wave} to {wave + 4} in their room")
            await wait_heartbeats_after(client, prefix, NODE_IDS, int(time.time() * 1000))

        await asyncio.sleep(max(0.0, started + KILL_AT_S - time.monotonic()))  # the storm runs meanwhile
        hosts = {room: await client.hget(room_key(prefix, room), "node")
                 for room in {room for player in players for room in player.rooms}}
        assert HOST in hosts.values() and set(hosts.values()) - {HOST}, f"rooms on the killed node and others: {hosts}"
        on_host = [player for player in players if player.node == HOST]
        await cluster.kill(HOST)
        killed_at = time.monotonic()
        if flush:
            await forget_everything(client, prefix)
        async with asyncio.timeout(STORM_S + 60):
            await asyncio.gather(*storms)

        # Every player is in their one match; the lobby counts each room's seats right.
        rooms = {room for player in players for room in player.rooms}
        assert all(len(player.rooms) == 1 for player in players), [sorted(p.rooms) for p in players]
        assert len(rooms) == STORM_PLAYERS // 5
        _, listed = await asyncio.to_thread(http_json, f"{cluster[FRONT].http}/lobby/rooms?mode=arena")
        counts = {room["id"]: room["players"] for room in listed["rooms"]}
        assert counts == dict.fromkeys(rooms, 5), counts
        # No comeback refused; no match ended while its dropped players were inside their grace.
        assert [refusal for player in players for refusal in player.refusals] == []
        assert [end for player in players for end in player.match_ends] == []
        # The killed node's players were back within 3 s of the kill (10 s when Redis lost everything too).
        after_kill = [min(t for t in player.welcomed if t > killed_at) - killed_at for player in on_host]
        after = [seconds for player in players for lost, seconds in player.back_after if lost >= killed_at]
        print(f"STORM {'kill-and-flush' if flush else 'kill'}: {STORM_PLAYERS} players, {STORM_S:g} s, "
              f"{len(rooms)} rooms ({len(on_host)} players on the killed node); "
              f"{sum(len(player.back_after) for player in players)} drops and comebacks; killed node's players "
              f"back after {min(after_kill):.2f} to {max(after_kill):.2f} s; every other comeback after the kill "
              f"within {max(after, default=0.0):.2f} s")
        assert after_kill and max(after_kill) < (10.0 if flush else 3.0), sorted(after_kill)
        assert all(player.node != HOST for player in players)
        # Every comeback after the kill, on every node, within 10 s (a half-open drop waits for the probe, 2 s).
        assert after and max(after) < 10.0, sorted(after)[-5:]
        assert [player.back_after for player in players if player.lost_at is not None] == []

        # Each match ends once: in each room all but one leave, and the last player wins.
        for room in rooms:
            members = [player for player in players if room in player.rooms]
            for player in members[1:]:
                assert player.game is not None
                await player.game.send('{"type":"leave"}')
            assert members[0].game is not None
            end = await recv_until(members[0].game, is_type("match_end"), timeout=10)
            assert end["reason"] == "last_player"

        async def every_result_in_postgres() -> bool:
            conn = await asyncpg.connect(cluster.database_url)
            try:
                rows = await conn.fetch("SELECT room_id, state FROM matches WHERE room_id = ANY($1::text[])",
                                        list(rooms))
            finally:
                await conn.close()
            return sorted((row["room_id"], row["state"]) for row in rows) == sorted((room, "finished")
                                                                                   for room in rooms)

        await wait_until(every_result_in_postgres, 15, "exactly one finished match row per room")
        for player in players:
            for ws in (player.game, *player.silent):
                if ws is not None and ws.transport is not None:
                    ws.transport.abort()
