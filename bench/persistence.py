"""What persistence costs: a room's snapshot (built on the event loop, written to Redis in pipelined slots),
and the write-behind queue's throughput into Postgres.

    .venv/bin/python -m bench.persistence [--rooms 1000] [--writes 5000]

1. snapshot: a running five-player arena room's snapshot built (the synchronous part, on the node's loop) and
   its JSON size; then `--rooms` snapshots written the way the snapshotter does, one pipeline per one-second
   slot of a 30 s interval: µs of wall time per room written.
2. writes: `--writes` match results (five players each) submitted at once to a `WriteBehind` on a fresh
   database: results per second until all are durable, and the submit → durable time (p50, p99).

Redis and Postgres: REDIS_URL / DATABASE_URL when set, else private ones started for the run (never a shared
one's data is touched: a unique key prefix and a database of its own, dropped at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from bench.tick_capacity import machine
from game.arena import ArenaGame
from persistence.migrate import migrate_url
from persistence.snapshots import Snapshot, SnapshotStore
from persistence.writebehind import WriteBehind
from server.net.protocol import encode
from server.ops.embedded import LocalPostgres, LocalRedis
from server.ops.eventloop import run

SLOTS = 30


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def running_game() -> ArenaGame:
    game = ArenaGame(random.Random(3))
    for pid in range(1, 6):
        game.add_player(pid)
    game.start()
    rng = random.Random(5)
    for tick in range(300):
        for pid in range(1, 6):
            game.set_input(pid, tick, rng.uniform(-1, 1), rng.uniform(-1, 1))
            game.fire(pid, tick, rng.uniform(-3, 3))
        game.step(0.015)
    return game


def five_players() -> list[dict[str, str]]:
    return [{"id": str(uuid.uuid4()), "name": f"p{i}"} for i in range(5)]


def snapshot_body(room_id: str, players: list[dict[str, str]], game: dict[str, Any]) -> bytes:
    """What `Room.snapshot` encodes for a running room of these players, whose game state is `game`."""
    now_ms = int(time.time() * 1000)
    return encode({"v": 1, "room": room_id, "mode": "arena", "match": str(uuid.uuid4()),
                   "created_ms": now_ms - 60_000, "started_ms": now_ms - 50_000, "tick": 3_000, "taken_ms": now_ms,
                   "roster": sorted(p["id"] for p in players),
                   "seats": [{"pid": i + 1, "id": p["id"], "name": p["name"], "joined_ms": now_ms - 60_000,
                              "connected": True} for i, p in enumerate(players)],
                   "game": game})


async def snapshots(redis_url: str, rooms: int) -> dict[str, Any]:
    game = running_game()
    players = five_players()
    builds = []
    for _ in range(2000):
        started = time.perf_counter()
        body = snapshot_body("room", players, game.snapshot())
        builds.append((time.perf_counter() - started) * 1e6)
    client = aioredis.Redis.from_url(redis_url)
    store = SnapshotStore(client, f"bench{uuid.uuid4().hex[:8]}", 60)
    per_slot = max(1, rooms // SLOTS)
    batches = [[Snapshot("arena", f"r{slot}-{i}", snapshot_body(f"r{slot}-{i}", players, game.snapshot()))
                for i in range(per_slot)]
               for slot in range(SLOTS)]
    writes = []
    for batch in batches:
        started = time.perf_counter()
        await store.save(batch)
        writes.append((time.perf_counter() - started) * 1e6)
    await client.aclose()
    return {"build_us_p50": round(statistics.median(builds), 1), "build_us_p99": round(pct(builds, 0.99), 1),
            "bytes": len(body), "rooms": per_slot * SLOTS, "rooms_per_slot": per_slot,
            "slot_write_ms_p50": round(statistics.median(writes) / 1000, 2),
            "slot_write_ms_max": round(max(writes) / 1000, 2),
            "write_us_per_room": round(statistics.median(writes) / per_slot, 1)}


def result(n: int) -> dict[str, Any]:
    now = int(time.time() * 1000)
    return {"op": "match_result", "match": str(uuid.uuid4()), "room": f"bench-{n}", "mode": "arena", "node": "b",
            "created_ms": now, "started_ms": now, "ended_ms": now + 60_000, "reason": "kills",
            "players": [{"id": str(uuid.uuid4()), "name": f"p{i}", "order": i + 1, "joined_ms": now, "rank": i + 1,
                         "kills": 5 - i, "deaths": i, "score": 500 - 100 * i} for i in range(5)]}


async def writes(database_url: str, redis_url: str, count: int) -> dict[str, Any]:
    admin = await asyncpg.connect(database_url)
    name = f"bench_{uuid.uuid4().hex[:10]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = f"{database_url.rpartition('/')[0]}/{name}"
    client = aioredis.Redis.from_url(redis_url)
    try:
        await migrate_url(url)
        queue = WriteBehind(url, client, f"bench{uuid.uuid4().hex[:8]}:spill", memory_limit=count + 1)
        task = asyncio.get_running_loop().create_task(queue.run())
        submitted: dict[int, float] = {}
        durable: list[float] = []
        started = time.perf_counter()
        futures = []
        def timed(n: int) -> Callable[[asyncio.Future[None]], None]:
            return lambda _future: durable.append(time.perf_counter() - submitted[n])

        for n in range(count):
            submitted[n] = time.perf_counter()
            future = queue.submit(result(n))
            future.add_done_callback(timed(n))
            futures.append(future)
        await asyncio.gather(*futures)
        elapsed = time.perf_counter() - started
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await queue.close()
        return {"results": count, "seconds": round(elapsed, 2), "results_per_s": round(count / elapsed),
                "rows_per_s": round(count * 6 / elapsed), "durable_ms_p50": round(pct(durable, 0.5) * 1000),
                "durable_ms_p99": round(pct(durable, 0.99) * 1000)}
    finally:
        await client.aclose()
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rooms", type=int, default=1000)
    parser.add_argument("--writes", type=int, default=5000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with ExitStack() as stack:
        redis_url = os.environ.get("REDIS_URL")
        database_url = os.environ.get("DATABASE_URL")
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tickroom-bench-")))
        if redis_url is None:
            redis_url = stack.enter_context(LocalRedis.start(tmp / "redis", persist=False)).url
        if database_url is None:
            os.chmod(tmp, 0o755)  # Postgres runs as another user when we are root
            database_url = stack.enter_context(LocalPostgres.start(tmp / "postgres", fast=False,
                                                                   prefer="system")).url
        print(f"machine: {machine()}")
        figures = {"snapshot": run(snapshots(redis_url, args.rooms)),
                   "writes": run(writes(database_url, redis_url, args.writes))}
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
