"""What idle turn-based rooms cost a node: 1,000 running dice rooms whose players do nothing.

Starts a node pinned to core 0 (`taskset -c 0`), opens two players per dice room from this process (pinned to core
1), waits until every room runs, then measures the node's CPU over a quiet window (nobody rolls; the dice game's
roll time is set to its maximum, 120 s, so that the server's own rolls for idle players stay rare). Prints the
node's CPU with no room at all, then with the rooms, and its RSS.

    .venv/bin/python -m bench.idle_rooms [--rooms 1000] [--seconds 30]

Redis and Postgres: REDIS_URL/DATABASE_URL when set, else private ones started for the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any

import psutil
from websockets.asyncio.client import ClientConnection, connect

from bench.tick_capacity import TICKROOM, data_services, free_port, get_stats, machine, wait_ready
from server.net.auth import mint_token
from server.ops.settings import DEV_SECRET


def cpu_percent(process: psutil.Process, seconds: float) -> float:
    before = process.cpu_times()
    started = time.monotonic()
    time.sleep(seconds)
    after = process.cpu_times()
    elapsed = time.monotonic() - started
    return 100.0 * ((after.user + after.system) - (before.user + before.system)) / elapsed


async def open_players(port: int, rooms: int) -> list[ClientConnection]:
    """Two players in each room `idle-N`, each welcomed; the connections stay open (and silent) until closed."""
    async def player(room: int, seat: int) -> ClientConnection:
        token = mint_token(DEV_SECRET, f"idle{room}-{seat}", ttl_s=3600)
        ws = await connect(f"ws://127.0.0.1:{port}/game?room=idle-{room}&mode=dice&token={token}",
                           compression=None, open_timeout=60, max_queue=None, ping_interval=None)
        await ws.send('{"type":"hello","v":1}')
        welcome = json.loads(await ws.recv())
        if welcome.get("type") != "welcome":
            raise RuntimeError(f"room idle-{room}: {welcome}")
        return ws

    players: list[ClientConnection] = []
    for start in range(0, rooms, 100):  # a hundred rooms at a time: the handshakes do not all queue at once
        batch = range(start, min(rooms, start + 100))
        players += await asyncio.gather(*(player(room, seat) for room in batch for seat in (1, 2)))
    return players


async def drain(players: list[ClientConnection]) -> None:
    """Read whatever the rooms send (a state when a match starts), so that no buffer fills."""
    async def read(ws: ClientConnection) -> None:
        with contextlib.suppress(Exception):
            async for _ in ws:
                pass

    await asyncio.gather(*(read(ws) for ws in players))


def running_rooms(port: int) -> int:
    rooms: dict[str, Any] = get_stats(port)["rooms"]
    return sum(1 for room in rooms.values() if room["state"] == "running")


async def measure(port: int, process: psutil.Process, rooms: int, seconds: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    empty_cpu = await loop.run_in_executor(None, cpu_percent, process, min(seconds, 10.0))
    players = await open_players(port, rooms)
    reader = asyncio.create_task(drain(players))
    deadline = time.monotonic() + 60
    while (running := await loop.run_in_executor(None, running_rooms, port)) < rooms:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {running} of {rooms} rooms run after 60 s")
        await asyncio.sleep(0.5)
    await asyncio.sleep(2.0)  # the starts' states are out
    idle_cpu = await loop.run_in_executor(None, cpu_percent, process, seconds)
    rss_mib = process.memory_info().rss / 2**20
    for ws in players:
        await ws.close()
    reader.cancel()
    return {"rooms": rooms, "players": len(players), "running": running, "empty_node_cpu_pct": round(empty_cpu, 2),
            "idle_rooms_cpu_pct": round(idle_cpu, 2), "server_rss_mib": round(rss_mib, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rooms", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30.0, help="measured seconds of quiet")
    parser.add_argument("--server-core", default="0")
    parser.add_argument("--client-core", type=int, default=1)
    args = parser.parse_args()
    if shutil.which("taskset") is None:
        print("taskset is required (util-linux)", file=sys.stderr)
        return 2
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {args.client_core})
    print(f"machine: {machine()}", flush=True)
    with data_services() as env_urls:
        port = free_port()
        env = {**os.environ, **env_urls, "TICKROOM_WORKERS": "1", "TICKROOM_LOG_LEVEL": "WARNING",
               "TICKROOM_DIRECT_JOIN": "true", "TICKROOM_COUNTDOWN_S": "0.5",
               "TICKROOM_MAX_ROOMS": str(args.rooms + 10),
               "TICKROOM_GAME_OPTIONS": json.dumps({"dice": {"roll_time_ms": 120000}})}
        server = subprocess.Popen(["taskset", "-c", args.server_core, TICKROOM, "serve", "--port", str(port)], env=env)
        try:
            wait_ready(port, server)
            row = asyncio.run(measure(port, psutil.Process(server.pid), args.rooms, args.seconds))
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(json.dumps(row))
    print(f"\n{row['rooms']} idle dice rooms ({row['players']} players connected): node CPU "
          f"{row['idle_rooms_cpu_pct']} % of a core (with no room: {row['empty_node_cpu_pct']} %), "
          f"RSS {row['server_rss_mib']} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
