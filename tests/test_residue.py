"""Finished matches leave nothing behind in Redis: once their results are durable in Postgres, the lobby's keys
are the live set (lobby/census.py), and each per-match guard goes when what it guarded is over."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import orjson
import redis.asyncio as aioredis
from websockets.asyncio.client import connect

from lobby.census import take_census
from lobby.keys import LobbyKeys
from lobby.leaderboard import LeaderboardFeed
from persistence.snapshots import Snapshot, SnapshotStore
from server.rooms.snapshotter import Snapshotter
from tests.serverkit import (
    is_event,
    is_type,
    join_game,
    join_lobby,
    lobby_prefix,
    new_token,
    recv_until,
    start_lobby_app,
    wait_for,
)
from tests.test_bot_e2e import last_json_line, run_bot

SETTLE_S = 20.0  # the residue goes within this of the results being durable (the bound is a minute)


async def _live_matches(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM matches WHERE state IN ('waiting', 'running')"))
    finally:
        await conn.close()


async def _finished_matches(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM matches WHERE state = 'finished'"))
    finally:
        await conn.close()


async def test_after_bots_played_matches_through_the_lobby_redis_holds_only_the_live_set(
        redis_url: str, migrated: str) -> None:
    app = await start_lobby_app(redis_url, database_url=migrated, persist=True, countdown_s=0.3, match_time_s=2.0,
                                end_linger_s=0.2, snapshot_every_s=1.0)
    client = aioredis.Redis.from_url(redis_url)
    prefix = app.settings.lobby_prefix
    try:
        code, out, err = await run_bot("--url", app.url, "--lobby", "--bots", "10", "--duration", "7",
                                       "--ramp", "0.5", "--json", "--quiet")
        assert code == 0, err
        summary = last_json_line(out)
        assert summary["errors"] == 0, summary["error_codes"]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60  # a room its players left waits the reconnect grace, then is cancelled
        while await _live_matches(migrated):
            assert loop.time() < deadline, "matches still live in Postgres a minute after the bots stopped"
            await asyncio.sleep(0.2)
        assert await _finished_matches(migrated) >= 4
        deadline = loop.time() + SETTLE_S
        while (census := await take_census(client, prefix)).residue:
            assert loop.time() < deadline, f"left in Redis after the results were durable: {census.residue}"
            await asyncio.sleep(0.2)
        leaderboard = LobbyKeys(prefix, "arena").leaderboard
        assert leaderboard in census.live and f"{prefix}:nodes" in census.live
    finally:
        await client.aclose()
        await app.__aexit__(None, None, None)


async def test_the_feed_deletes_what_the_board_was_told_of_a_match_after_its_last_points(
        client: aioredis.Redis) -> None:
    prefix = lobby_prefix()
    keys = LobbyKeys(prefix, "arena")
    feed = LeaderboardFeed(client, prefix)
    runner = asyncio.create_task(feed.run())
    try:
        feed.add("arena", "m1", "p1", 100)
        feed.add("arena", "m2", "p1", 10)
        feed.forget("arena", "m1")  # in the same write as its last points: they go first
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while feed.written < 2:
            assert loop.time() < deadline
            await asyncio.sleep(0.01)
        assert await client.zscore(keys.leaderboard, "p1") == 110
        assert not await client.exists(keys.match_told("m1"))
        assert await client.hgetall(keys.match_told("m2")) == {"p1": "10"}
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def test_the_snapshotter_deletes_a_finished_rooms_snapshot_after_its_write_in_flight(
        client: aioredis.Redis) -> None:
    prefix = lobby_prefix()
    store = SnapshotStore(client, prefix, 600)
    room_id = f"r-{uuid.uuid4().hex[:6]}"
    body = orjson.dumps({"room": room_id})
    await store.save([Snapshot("arena", room_id, body)])
    snapshotter = Snapshotter(list, store, every_s=1.0)
    snapshotter.forget("arena", room_id)
    runner = asyncio.create_task(snapshotter.run())
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while await client.exists(store.key("arena", room_id)):
            assert loop.time() < deadline, "the finished room's snapshot is still there"
            await asyncio.sleep(0.05)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def test_a_snapshot_left_of_a_match_postgres_has_as_finished_is_not_restored(redis_url: str,
                                                                                   migrated: str) -> None:
    app = await start_lobby_app(redis_url, database_url=migrated, persist=True, direct_join=True, min_players=2,
                                max_players=2, snapshot_every_s=1, end_linger_s=5)
    client = aioredis.Redis.from_url(redis_url)
    try:
        assert app.node is not None
        key = LobbyKeys(app.settings.lobby_prefix, "arena").room_snapshot("done-room")
        first, _ = await join_game(app, "done-room", token=new_token("ann"))
        second, _ = await join_game(app, "done-room", token=new_token("bob"))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while (left_behind := await client.get(key)) is None:
            assert loop.time() < deadline, "no snapshot within 5 s"
            await recv_until(first, is_type("state"), timeout=1)
        await second.send('{"type":"leave"}')
        await recv_until(first, is_type("match_end"))
        await recv_until(first, is_event("result_saved"))  # in Postgres (nothing spilled: Postgres is up)
        await first.close()
        await wait_for(lambda: "done-room" not in app.node.rooms, timeout=10)
        # What a node that died after its result was committed, and before its snapshot was deleted, leaves.
        await client.set(key, left_behind, ex=600)
        await app.node.adopt_rooms("arena", ["done-room"])
        assert "done-room" not in app.node.rooms
    finally:
        await client.aclose()
        await app.__aexit__(None, None, None)


async def test_a_node_forgets_its_view_of_a_room_once_the_room_is_gone(redis_url: str) -> None:
    app = await start_lobby_app(redis_url, countdown_s=0.2, match_time_s=1.0, end_linger_s=0.2)
    try:
        assert app.hub is not None
        hub = app.hub
        tokens = [new_token(f"v{i}") for i in range(3)]
        lobbies = [await join_lobby(app, token) for token in tokens]
        founds = [await recv_until(ws, is_type("match_found")) for ws in lobbies]
        key = ("arena", founds[0]["room"])
        games = []
        for token, found in zip(tokens, founds, strict=True):
            game = await connect(found["url"], additional_headers={"Authorization": f"Bearer {token}"},
                                 compression=None, open_timeout=5)
            await game.send('{"type":"hello","v":1}')
            games.append(game)
        await recv_until(games[0], is_type("match_end"), timeout=10)
        await wait_for(lambda: key not in hub._latest, timeout=10)
        for ws in (*games, *lobbies):
            await ws.close()
    finally:
        await app.__aexit__(None, None, None)
