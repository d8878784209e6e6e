"""How long a node takes to restore N rooms after a crash, target: 1,000 in under 1 s from Redis.

    .venv/bin/python -m bench.restore [--rooms 1000] [--runs 3] [--source redis|postgres]

`redis` (the default): writes N running five-player rooms into a private Redis as a sweep leaves them for a
node (room hashes, the node's room index and `adopt` set, one snapshot each), then starts that node (the
in-process `App` of `tickroom serve`, no Postgres), whose first heartbeat adopts them.
`postgres`: Redis has lost everything; Postgres (DATABASE_URL, else a private one) has the N matches of the
node from before its restart, with their positions and progress. The restarted node's first recovery scan
claims each in Redis (one script call each) and restores it.
The time runs from the node's start to the last room restored and ticking. Each run uses a fresh key prefix
(and database).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import redis.asyncio as aioredis

from bench.persistence import five_players, running_game, snapshot_body
from bench.tick_capacity import machine
from lobby.keys import LobbyKeys
from persistence.migrate import migrate_url
from persistence.writebehind import WriteBehind, spill_key
from server.app import App
from server.cli import game_modes
from server.ops.embedded import LocalPostgres, LocalRedis
from server.ops.eventloop import run
from server.ops.settings import Settings

NODE = "bench-restore"


async def populate(client: aioredis.Redis, prefix: str, rooms: int) -> list[str]:
    keys = LobbyKeys(prefix, "arena")
    game = running_game().snapshot()
    now_ms = int(time.time() * 1000)
    room_ids = [uuid.uuid4().hex[:16] for _ in range(rooms)]
    async with client.pipeline(transaction=False) as pipe:
        for room_id in room_ids:
            players = five_players()
            pipe.hset(keys.room(room_id), mapping={
                "mode": "arena", "node": NODE, "state": "running", "created_ms": now_ms - 60_000,
                "started_ms": now_ms - 50_000, "players": orjson.dumps(players), "version": 5})
            pipe.set(keys.room_snapshot(room_id), snapshot_body(room_id, players, game), ex=600)
            pipe.sadd(keys.node_rooms(NODE), room_id)
            pipe.sadd(keys.node_adopt(NODE), room_id)
        await pipe.execute()
    return room_ids


async def one_run(redis_url: str, rooms: int) -> dict[str, Any]:
    prefix = f"restore{uuid.uuid4().hex[:8]}"
    client = aioredis.Redis.from_url(redis_url)
    await populate(client, prefix, rooms)
    settings = Settings.load(environ={}, redis_url=redis_url, port=0, database_url="postgresql://unused",
                             node_id=NODE, lobby_prefix=prefix, log_level="WARNING", max_rooms=rooms + 10)
    # The node's first heartbeat finds the rooms in its `adopt` set: timed from the node's start.
    started = time.perf_counter()
    async with App(settings, game_modes(settings)) as app:
        assert app.node is not None
        for _ in range(30_000):  # polled each millisecond, for at most about 30 s
            if len(app.node.rooms) >= rooms:
                break
            await asyncio.sleep(0.001)
        took = time.perf_counter() - started
        restored = len(app.node.rooms)
        left = await client.scard(LobbyKeys(prefix, "arena").node_adopt(NODE))
    await client.aclose()
    return {"rooms": rooms, "restored": restored, "left_in_adopt": left, "seconds": round(took, 3),
            "us_per_room": round(took / max(1, restored) * 1e6)}


async def populate_postgres(database_url: str, redis_url: str, prefix: str, rooms: int) -> None:
    """N running matches of NODE in Postgres, as its rooms' writes left them: opened, started, positions."""
    game = running_game().snapshot()
    now_ms = int(time.time() * 1000)
    client = aioredis.Redis.from_url(redis_url)
    queue = WriteBehind(database_url, client, spill_key(prefix, "bench-populate"))
    worker = asyncio.get_running_loop().create_task(queue.run())
    try:
        for _ in range(rooms):
            players = five_players()
            base = {"match": str(uuid.uuid4()), "room": uuid.uuid4().hex[:16], "mode": "arena", "node": NODE,
                    "created_ms": now_ms - 60_000}
            queue.submit({"op": "match_started", **base, "started_ms": now_ms - 50_000})
            queue.submit({"op": "positions", **base, "clock_ms": 40_000, "taken_ms": now_ms - 10_000, "tick": 2_666,
                          "roster": [p["id"] for p in players],
                          "game": {key: value for key, value in game.items() if key != "players"},
                          "players": [{**player, "pid": entry["pid"], "joined_ms": now_ms - 55_000, "x": entry["x"],
                                       "y": entry["y"], "hp": entry["hp"], "kills": entry["kills"],
                                       "deaths": entry["deaths"], "score": entry["score"], "state": entry}
                                      for player, entry in zip(players, game["players"], strict=True)]})
        assert await queue.drain(300), "the writes did not land"
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
        await queue.close()
        await client.aclose()


async def one_postgres_run(redis_url: str, server_url: str, rooms: int) -> dict[str, Any]:
    prefix = f"restore{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(server_url)
    name = f"bench_{uuid.uuid4().hex[:10]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    database_url = f"{server_url.rpartition('/')[0]}/{name}"
    try:
        await migrate_url(database_url)
        await populate_postgres(database_url, redis_url, prefix, rooms)
        settings = Settings.load(environ={}, redis_url=redis_url, port=0, database_url=database_url, node_id=NODE,
                                 lobby_prefix=prefix, log_level="ERROR", max_rooms=rooms + 10)
        started = time.perf_counter()
        async with App(settings, game_modes(settings), persist=True) as app:
            assert app.node is not None
            for _ in range(60_000):  # polled each millisecond, for at most about 60 s
                if len(app.node.rooms) >= rooms:
                    break
                await asyncio.sleep(0.001)
            took = time.perf_counter() - started
            restored = len(app.node.rooms)
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
    return {"source": "postgres", "rooms": rooms, "restored": restored, "seconds": round(took, 3),
            "us_per_room": round(took / max(1, restored) * 1e6)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rooms", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--source", choices=("redis", "postgres"), default="redis")
    args = parser.parse_args()
    random.seed(1)
    print(f"machine: {machine()}")
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tickroom-bench-")))
        redis_url = stack.enter_context(LocalRedis.start(tmp / "redis", persist=False)).url
        if args.source == "redis":
            results = [run(one_run(redis_url, args.rooms)) for _ in range(args.runs)]
        else:
            server_url = os.environ.get("DATABASE_URL")
            if server_url is None:
                os.chmod(tmp, 0o755)  # Postgres runs as another user when we are root
                server_url = stack.enter_context(LocalPostgres.start(tmp / "postgres", fast=False,
                                                                     prefer="system")).url
            results = [run(one_postgres_run(redis_url, server_url, args.rooms)) for _ in range(args.runs)]
    for result in results:
        print(json.dumps(result))
    print(f"median: {statistics.median(r['seconds'] for r in results):.3f} s for {args.rooms} rooms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
