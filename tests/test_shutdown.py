"""Graceful shutdown of a node that keeps records: every client is told to reconnect, running rooms are
snapshotted, and the result of a match that just ended is in Postgres (tests/test_serve_embedded.py checks that
`tickroom serve` exits 0 on SIGTERM)."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import orjson
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from lobby.keys import LobbyKeys
from persistence.migrate import migrate_url
from tests.serverkit import is_event, is_type, join_game, join_lobby, new_token, recv_until, start_lobby_app


async def told_to_reconnect(ws: ClientConnection) -> tuple[dict[str, object], int | None]:
    """The `reconnect` message, then the close code (states may come before it)."""
    message = await recv_until(ws, is_type("reconnect"), timeout=10)
    try:
        while True:
            await asyncio.wait_for(ws.recv(), 10)
    except ConnectionClosed as closed:
        return message, closed.rcvd.code if closed.rcvd is not None else None


async def test_shutdown_tells_every_client_to_reconnect_snapshots_running_rooms_and_keeps_results(
        redis_url: str, fresh_database: str) -> None:
    await migrate_url(fresh_database)
    app = await start_lobby_app(redis_url, database_url=fresh_database, direct_join=True, min_players=2,
                                max_players=2, persist=True, snapshot_every_s=3600)
    client = aioredis.Redis.from_url(redis_url)
    try:
        # A match that ends just before the shutdown: its result must be in Postgres afterwards.
        ann, _ = await join_game(app, "ending", token=new_token("ann"))
        bob, _ = await join_game(app, "ending", token=new_token("bob"))
        await recv_until(ann, is_event("phase", state="running"))
        await bob.send('{"type":"leave"}')
        ended = await recv_until(ann, is_type("match_end"))
        # A match still running, and a player waiting in the lobby.
        cid, _ = await join_game(app, "running", token=new_token("cid"))
        dan, _ = await join_game(app, "running", token=new_token("dan"))
        await recv_until(cid, is_event("phase", state="running"))
        waiting = await join_lobby(app)
        await recv_until(waiting, is_type("lobby"))

        closing = asyncio.get_running_loop().create_task(app.__aexit__(None, None, None))
        for ws in (cid, dan, waiting):
            message, code = await told_to_reconnect(ws)
            assert message == {"type": "reconnect", "reason": "shutdown", "retry_ms": 1000}
            assert code == 1001
        await asyncio.wait_for(closing, 15)

        raw = await client.get(LobbyKeys(app.settings.lobby_prefix, "arena").room_snapshot("running"))
        assert raw is not None and [s["name"] for s in orjson.loads(raw)["seats"]] == ["cid", "dan"]
        conn = await asyncpg.connect(fresh_database)
        try:
            state = await conn.fetchval("SELECT state FROM matches WHERE id = $1", uuid.UUID(ended["match"]))
        finally:
            await conn.close()
        assert state == "finished"
    finally:
        await client.aclose()
