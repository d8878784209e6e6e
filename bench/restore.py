"""How long a node takes to restore N rooms from their Redis snapshots (recovery), target: 1,000 in under 1 s.

    .venv/bin/python -m bench.restore [--rooms 1000] [--runs 3]

Writes N running five-player rooms into a private Redis as a sweep leaves them for a node (room hashes, the
node's room index and `adopt` set, one snapshot each), then starts that node (the in-process `App` of
`tickroom serve`, no Postgres), whose first heartbeat adopts them. The time runs from the node's start to
the last room restored and ticking. Each run uses a fresh key prefix.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from bench.persistence import five_players, running_game, snapshot_body
from bench.tick_capacity import machine
from lobby.keys import LobbyKeys
from server.app import App
from server.cli import game_modes
from server.embedded import LocalRedis
from server.eventloop import run
from server.settings import Settings

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rooms", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    random.seed(1)
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="tickroom-bench-") as tmp, \
            LocalRedis.start(Path(tmp) / "redis", persist=False) as redis_server:
        results = [run(one_run(redis_server.url, args.rooms)) for _ in range(args.runs)]
    for result in results:
        print(json.dumps(result))
    print(f"median: {statistics.median(r['seconds'] for r in results):.3f} s for {args.rooms} rooms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
