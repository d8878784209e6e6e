"""A node that records its matches: a match played to its end is in Postgres with its result, and the players
are told once it is safe there (`result_saved`)."""

from __future__ import annotations

import asyncio
import math
import uuid
from typing import Any

import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import connect

from game.arena import ArenaConfig, ArenaGame
from lobby.keys import LobbyKeys
from persistence.migrate import migrate_url
from persistence.queries import leaderboard_totals
from server.ops.embedded import LocalPostgres
from tests.serverkit import (
    is_event,
    is_type,
    join_game,
    join_lobby,
    new_token,
    open_lobby,
    recv_json,
    recv_until,
    start_lobby_app,
)


async def test_a_finished_match_is_recorded_with_its_result_and_the_players_are_told(
        redis_url: str, fresh_database: str) -> None:
    await migrate_url(fresh_database)
    app = await start_lobby_app(redis_url, database_url=fresh_database, direct_join=True, min_players=2,
                                max_players=2, persist=True)
    try:
        ann_id, bob_id = str(uuid.uuid4()), str(uuid.uuid4())
        ann, _ = await join_game(app, "recorded", token=new_token("ann", player_id=ann_id))
        bob, _ = await join_game(app, "recorded", token=new_token("bob", player_id=bob_id))
        await recv_until(ann, is_event("phase", state="running"))
        await bob.send('{"type":"leave"}')
        end = await recv_until(ann, is_type("match_end"))
        assert end["reason"] == "last_player" and end["match"]
        saved = await recv_until(ann, is_event("result_saved"), timeout=10)
        assert saved["match"] == end["match"]
        conn = await asyncpg.connect(fresh_database)
        try:
            match = await conn.fetchrow("SELECT room_id, node, state, end_reason, started_at, ended_at "
                                        "FROM matches WHERE id = $1", uuid.UUID(end["match"]))
            lines = await conn.fetch("SELECT player_id, join_order, rank, left_at FROM match_players "
                                     "WHERE match_id = $1 ORDER BY join_order", uuid.UUID(end["match"]))
            names = await conn.fetch("SELECT id, name FROM players WHERE id = ANY($1::uuid[])",
                                     [uuid.UUID(ann_id), uuid.UUID(bob_id)])
        finally:
            await conn.close()
        assert match is not None
        assert (match["room_id"], match["node"], match["state"], match["end_reason"]) == (
            "recorded", app.settings.node_id, "finished", "last_player")
        assert match["started_at"] <= match["ended_at"]
        assert [(str(r["player_id"]), r["join_order"], r["rank"]) for r in lines] == [(ann_id, 1, 1), (bob_id, 2, 2)]
        assert lines[0]["left_at"] is None and lines[1]["left_at"] is not None
        assert {str(r["id"]): r["name"] for r in names} == {ann_id: "ann", bob_id: "bob"}
    finally:
        await app.__aexit__(None, None, None)


async def test_a_running_match_keeps_its_players_positions_in_postgres_until_its_result(
        redis_url: str, fresh_database: str) -> None:
    await migrate_url(fresh_database)
    app = await start_lobby_app(redis_url, database_url=fresh_database, direct_join=True, min_players=2,
                                max_players=2, persist=True, snapshot_every_s=1)
    conn = await asyncpg.connect(fresh_database)
    try:
        ann, _ = await join_game(app, "positions", token=new_token("ann"))
        bob, _ = await join_game(app, "positions", token=new_token("bob"))
        await recv_until(ann, is_event("phase", state="running"))
        deadline = asyncio.get_running_loop().time() + 5
        while (count := await conn.fetchval("SELECT count(*) FROM player_positions")) < 2:
            assert asyncio.get_running_loop().time() < deadline, f"{count} positions after 5 s"
            await recv_until(ann, is_type("state"), timeout=1)
        row = await conn.fetchrow("SELECT x, y, hp, match_clock_ms FROM player_positions LIMIT 1")
        assert row is not None and 0 <= row["x"] <= 1000 and row["hp"] == 100 and row["match_clock_ms"] >= 0
        await bob.send('{"type":"leave"}')
        await recv_until(ann, is_event("result_saved"), timeout=10)
        assert await conn.fetchval("SELECT count(*) FROM player_positions") == 0  # the result replaced them
    finally:
        await conn.close()
        await app.__aexit__(None, None, None)


async def test_the_leaderboard_moves_at_each_kill_during_the_match(redis_url: str, fresh_database: str) -> None:
    await migrate_url(fresh_database)
    # One hit kills, and a shot crosses the whole arena: a kill is one aimed shot away.
    one_shot = ArenaConfig(max_hp=10, damage=10, projectile_life_s=3.0, kill_target=5)
    app = await start_lobby_app(redis_url, database_url=fresh_database, direct_join=True, min_players=2,
                                max_players=2, persist=True, modes={"arena": lambda ctx: ArenaGame(ctx.rng, one_shot)})
    client = aioredis.Redis.from_url(redis_url)
    try:
        ann_id = str(uuid.uuid4())
        ann, _ = await join_game(app, "kills", token=new_token("ann", player_id=ann_id))
        bob, _ = await join_game(app, "kills", token=new_token("bob"))
        await recv_until(ann, is_event("phase", state="running"))
        state = await recv_until(ann, is_type("state"))
        me, other = sorted(state["players"], key=lambda p: p["p"])
        await ann.send(orjson.dumps({"type": "fire", "seq": 1, "angle": math.atan2(other["y"] - me["y"],
                                                                                  other["x"] - me["x"])}).decode())
        kill = await recv_until(ann, is_event("kill"), timeout=5)
        assert kill["p"] == me["p"]
        key = LobbyKeys(app.settings.lobby_prefix, "arena").leaderboard
        deadline = asyncio.get_running_loop().time() + 5
        while await client.zscore(key, ann_id) is None:  # the match goes on: this is the kill's doing
            assert asyncio.get_running_loop().time() < deadline, "the kill never reached the leaderboard"
            await asyncio.sleep(0.02)
        assert await client.zscore(key, ann_id) == one_shot.score_per_hit + one_shot.score_per_kill
        for ws in (ann, bob):
            ws.transport.abort()
    finally:
        await client.aclose()
        await app.__aexit__(None, None, None)


async def test_the_live_leaderboard_lists_the_players_of_a_finished_match_as_its_rebuild_from_postgres_does(
        redis_url: str, fresh_database: str) -> None:
    await migrate_url(fresh_database)
    app = await start_lobby_app(redis_url, database_url=fresh_database, direct_join=True, min_players=2,
                                max_players=2, persist=True)
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        ann, _ = await join_game(app, "no-kills", token=new_token("ann"))
        bob, _ = await join_game(app, "no-kills", token=new_token("bob"))
        await recv_until(ann, is_event("phase", state="running"))
        await bob.send('{"type":"leave"}')  # nobody scored: the match ends with ann the last player
        await recv_until(ann, is_type("match_end"))
        await recv_until(ann, is_event("result_saved"))
        conn = await asyncpg.connect(fresh_database)
        try:
            totals = await leaderboard_totals(conn, "arena")
        finally:
            await conn.close()
        assert len(totals) == 2 and set(totals.values()) == {0}
        key = LobbyKeys(app.settings.lobby_prefix, "arena").leaderboard
        deadline = asyncio.get_running_loop().time() + 5
        while {player: int(score) for player, score in await client.zrange(key, 0, -1, withscores=True)} != totals:
            assert asyncio.get_running_loop().time() < deadline, "the live board does not list what Postgres has"
            await asyncio.sleep(0.02)
        await ann.close()
    finally:
        await client.aclose()
        await app.__aexit__(None, None, None)


async def test_a_room_that_closes_without_a_result_is_recorded_as_cancelled(
        redis_url: str, fresh_database: str) -> None:
    """No match row stays live for ever: a development room whose only player left is recorded as cancelled,
    and the room id can open a new match."""
    await migrate_url(fresh_database)
    app = await start_lobby_app(redis_url, database_url=fresh_database, direct_join=True, min_players=3,
                                max_players=3, persist=True)
    conn = await asyncpg.connect(fresh_database)
    try:
        ann, _ = await join_game(app, "lonely", token=new_token("ann"))
        await ann.send('{"type":"leave"}')
        deadline = asyncio.get_running_loop().time() + 10
        while (row := await conn.fetchrow("SELECT state, end_reason FROM matches WHERE room_id = 'lonely'")) is None \
                or row["state"] != "cancelled":
            assert asyncio.get_running_loop().time() < deadline, f"the match is still {row}"
            await asyncio.sleep(0.05)
        assert row["end_reason"] == "abandoned"
        bob, welcome = await join_game(app, "lonely", token=new_token("bob"))
        assert welcome["type"] == "welcome"
        await bob.close()
    finally:
        await conn.close()
        await app.__aexit__(None, None, None)


async def test_results_of_matches_that_end_while_postgres_is_down_arrive_exactly_once_when_it_is_back(
        redis_url: str, private_postgres: LocalPostgres) -> None:
    await migrate_url(private_postgres.url)
    app = await start_lobby_app(redis_url, database_url=private_postgres.url, direct_join=True, min_players=2,
                                max_players=2, persist=True)
    try:
        private_postgres.stop()
        winners, ends = [], []
        for n in range(3):
            winner, _ = await join_game(app, f"outage-{n}", token=new_token(f"w{n}"))
            loser, _ = await join_game(app, f"outage-{n}", token=new_token(f"l{n}"))
            await recv_until(winner, is_event("phase", state="running"))
            await loser.send('{"type":"leave"}')
            ends.append(await recv_until(winner, is_type("match_end")))
            winners.append(winner)
        with pytest.raises(TimeoutError):  # not durable yet: no result_saved while Postgres is down
            await recv_until(winners[0], is_event("result_saved"), timeout=1.0)
        private_postgres.restart()
        for winner, end in zip(winners, ends, strict=True):
            saved = await recv_until(winner, is_event("result_saved"), timeout=15)
            assert saved["match"] == end["match"]
        conn = await asyncpg.connect(private_postgres.url)
        try:
            rows = await conn.fetch("SELECT m.id, m.state, count(mp.player_id) AS players FROM matches m "
                                    "JOIN match_players mp ON mp.match_id = m.id GROUP BY m.id, m.state")
        finally:
            await conn.close()
        assert sorted((str(r["id"]), r["state"], r["players"]) for r in rows) == sorted(
            (end["match"], "finished", 2) for end in ends)
    finally:
        await app.__aexit__(None, None, None)


async def into_a_running_match(app: Any, tokens: list[str]) -> tuple[list[dict[str, Any]], list[Any]]:
    """The players of `tokens` join the lobby, are matched together, and play: their match_found and game
    connections, once the match runs."""
    lobbies = [await join_lobby(app, token) for token in tokens]
    founds = [await recv_until(ws, is_type("match_found")) for ws in lobbies]
    games = []
    for token, found in zip(tokens, founds, strict=True):
        game = await connect(found["url"], additional_headers={"Authorization": f"Bearer {token}"},
                             compression=None, open_timeout=5, max_queue=None)
        await game.send('{"type":"hello","v":1}')
        games.append(game)
    await recv_until(games[0], is_event("phase", state="running"))
    return founds, games


async def test_players_who_dropped_out_before_the_match_ended_are_told_its_saved_result_at_their_next_join(
        redis_url: str, private_postgres: LocalPostgres) -> None:
    await migrate_url(private_postgres.url)
    app = await start_lobby_app(redis_url, database_url=private_postgres.url, persist=True, countdown_s=0.3,
                                end_linger_s=0.2, reconnect_grace_s=0.5)
    client = aioredis.Redis.from_url(redis_url)
    try:
        ids = [str(uuid.uuid4()) for _ in range(3)]
        tokens = [new_token(f"r{n}", player_id=player_id) for n, player_id in enumerate(ids)]
        _, games = await into_a_running_match(app, tokens)
        private_postgres.stop()
        await games[1].close()  # dropped: their seat goes when the reconnect grace runs out
        await games[2].send('{"type":"leave"}')  # walked out of the match
        end = await recv_until(games[0], is_type("match_end"), timeout=10)
        await games[0].close()  # everyone is gone before the result can be durable
        private_postgres.restart()
        keys = LobbyKeys(app.settings.lobby_prefix, "arena")
        deadline = asyncio.get_running_loop().time() + 20
        while not await client.sismember(keys.player_saved(ids[1]), end["match"]):
            assert asyncio.get_running_loop().time() < deadline, "the saved result was not noted for the dropped player"
            await asyncio.sleep(0.05)
        # The player there at match_end had the result with it, the one who left walked out of it: nothing
        # waits for either in Redis.
        assert not await client.exists(keys.player_saved(ids[0]), keys.player_saved(ids[2]))
        lobby = await join_lobby(app, tokens[1])
        told = await recv_json(lobby)
        assert told == {"type": "event", "kind": "result_saved", "match": end["match"]}
        assert not await client.exists(keys.player_saved(ids[1]))  # told once
        await lobby.close()
    finally:
        await client.aclose()
        await app.__aexit__(None, None, None)


async def test_a_player_back_with_the_ticket_of_a_match_that_ended_meanwhile_joins_afresh_without_waiting(
        redis_url: str, migrated: str) -> None:
    """Once the result is durable the lobby forgets the match (its `over` mark goes): a player who dropped out
    and comes back with that match's ticket is not held `recovering` for a recovery that will never come."""
    app = await start_lobby_app(redis_url, database_url=migrated, persist=True, countdown_s=0.3,
                                end_linger_s=0.2, reconnect_grace_s=0.5, node_dead_after_s=4.0)
    client = aioredis.Redis.from_url(redis_url)
    try:
        ids = [str(uuid.uuid4()) for _ in range(3)]
        tokens = [new_token(f"b{n}", player_id=player_id) for n, player_id in enumerate(ids)]
        founds, games = await into_a_running_match(app, tokens)
        await games[1].close()  # dropped out, and stays away past the grace
        await games[2].send('{"type":"leave"}')
        end = await recv_until(games[0], is_type("match_end"), timeout=10)
        await games[0].close()
        keys = LobbyKeys(app.settings.lobby_prefix, "arena")
        room = founds[1]["room"]
        deadline = asyncio.get_running_loop().time() + 20
        while await client.exists(keys.room_over(room)) or not await client.exists(keys.player_saved(ids[1])):
            assert asyncio.get_running_loop().time() < deadline, "the result did not become durable"
            await asyncio.sleep(0.05)
        lobby = await open_lobby(app, tokens[1])
        join = {"type": "join", "v": 1, "mode": "arena", "ticket": founds[1]["ticket"]}
        await lobby.send(orjson.dumps(join).decode())
        assert await recv_json(lobby) == {"type": "event", "kind": "result_saved", "match": end["match"]}
        # At once, a new join's status: recovery would have been waited for (MISSING_SCANS + 1) x 4 s + 5 s.
        status = await recv_until(lobby, is_type("lobby"), timeout=3)
        assert status["status"] != "recovering"
        await lobby.close()
    finally:
        await client.aclose()
        await app.__aexit__(None, None, None)


async def test_the_node_that_sweeps_a_dead_one_writes_what_the_dead_one_had_spilled(
        redis_url: str, fresh_database: str) -> None:
    """A node killed while Postgres was down leaves writes in its Redis spill (one batch in flight): whoever
    sweeps it takes them over, and they reach Postgres."""
    await migrate_url(fresh_database)
    app = await start_lobby_app(redis_url, database_url=fresh_database, persist=True)
    client = aioredis.Redis.from_url(redis_url)
    conn = await asyncpg.connect(fresh_database)
    try:
        prefix = app.settings.lobby_prefix
        matches = [str(uuid.uuid4()) for _ in range(3)]
        writes = [orjson.dumps({"op": "match_result", "match": match_id, "room": f"ghost-{i}", "mode": "arena",
                                "node": "ghost", "created_ms": 1_795_000_000_000, "started_ms": None,
                                "ended_ms": 1_795_000_060_000, "reason": "abandoned", "cancelled": True,
                                "players": []}) for i, match_id in enumerate(matches)]
        await client.rpush(f"{prefix}:node:ghost:writes:spill:inflight", writes[0])
        await client.rpush(f"{prefix}:node:ghost:writes:spill", *writes[1:])
        await client.zadd(f"{prefix}:nodes", {"ghost": 0})  # listed, with no heartbeat: dead

        async def all_written() -> bool:
            count = await conn.fetchval("SELECT count(*) FROM matches WHERE id = ANY($1::uuid[]) "
                                        "AND state = 'cancelled'", [uuid.UUID(m) for m in matches])
            return bool(count == len(matches))

        deadline = asyncio.get_running_loop().time() + 10
        while not await all_written():
            assert asyncio.get_running_loop().time() < deadline, "the dead node's spilled writes never landed"
            await asyncio.sleep(0.05)
        assert await client.exists(f"{prefix}:node:ghost:writes:spill",
                                   f"{prefix}:node:ghost:writes:spill:inflight") == 0
    finally:
        await conn.close()
        await client.aclose()
        await app.__aexit__(None, None, None)
