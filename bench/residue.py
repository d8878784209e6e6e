"""What finished matches leave behind in Redis: Redis keys and memory per 1,000 finished matches (target ~0).

Starts one node (`tickroom serve --workers 1`, pinned to core 0) on a Redis and a Postgres of the run's own,
plays matches through the lobby with bots (pinned to core 1) for `--seconds`, waits until every match is over
in Postgres, then takes a census of the lobby's keys (lobby/census.py) until nothing but the live set is left
(or `--settle` seconds pass) and prints the keys and memory left per 1,000 finished matches, and every key
outside the live set.

    .venv/bin/python -m bench.residue [--bots 50] [--seconds 120] [--match-time 6]

bench/soak.py uses the same node and census for its long run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import psutil
import redis.asyncio as aioredis

from bench.tick_capacity import TICKROOM, data_services, free_port, machine, wait_ready
from lobby.census import Census, take_census

SETTLE_S = 60.0  # the bound: the residue is gone within a minute of the results being durable


@dataclass(frozen=True)
class Node:
    port: int
    process: psutil.Process
    prefix: str
    redis_url: str
    database_url: str

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


@contextlib.contextmanager
def running_node(env_urls: dict[str, str], *, match_time_s: float, countdown_s: float, core: str = "0",
                 extra_env: dict[str, str] | None = None) -> Iterator[Node]:
    """`tickroom serve --workers 1` on `core`, with a lobby prefix of its own, until the block ends (SIGTERM)."""
    port = free_port()
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    env = {**os.environ, **env_urls, "TICKROOM_WORKERS": "1", "TICKROOM_LOG_LEVEL": "WARNING",
           "TICKROOM_LOG_FORMAT": "text", "TICKROOM_LOBBY_PREFIX": prefix, "TICKROOM_NODE_ID": f"{prefix}-node",
           "TICKROOM_MATCH_TIME_S": str(match_time_s), "TICKROOM_COUNTDOWN_S": str(countdown_s),
           **(extra_env or {})}
    server = subprocess.Popen(["taskset", "-c", core, TICKROOM, "serve", "--port", str(port)], env=env)
    try:
        wait_ready(port, server, timeout=60)
        yield Node(port, psutil.Process(server.pid), prefix, env_urls["REDIS_URL"], env_urls["DATABASE_URL"])
    finally:
        server.terminate()
        server.wait(timeout=60)


def bot_command(node: Node, bots: int, seconds: float, ramp: float, core: str = "1") -> list[str]:
    return ["taskset", "-c", core, TICKROOM, "bot", "--url", node.url, "--lobby", "--bots", str(bots),
            "--duration", str(seconds), "--ramp", str(ramp), "--json", "--quiet"]


def bot_summary(out: bytes) -> dict[str, Any]:
    summary: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return summary


async def match_counts(database_url: str) -> dict[str, int]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT state, count(*) AS n FROM matches GROUP BY state")
    finally:
        await conn.close()
    return {row["state"]: int(row["n"]) for row in rows}


async def wait_durable(database_url: str, timeout: float) -> dict[str, int]:
    """Until no match is waiting or running in Postgres (every result durable), at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        counts = await match_counts(database_url)
        if (not counts.get("waiting") and not counts.get("running")) or time.monotonic() > deadline:
            return counts
        await asyncio.sleep(0.5)


async def settle(client: aioredis.Redis, prefix: str, timeout: float) -> tuple[Census, float]:
    """The census once the residue is gone, or at `timeout`; and how long that took."""
    began = time.monotonic()
    while True:
        census = await take_census(client, prefix)
        waited = time.monotonic() - began
        if not census.residue or waited >= timeout:
            return census, waited
        await asyncio.sleep(1.0)


async def redis_memory(client: aioredis.Redis) -> int:
    info = await client.info("memory")
    return int(info["used_memory"])


async def residue_bytes(client: aioredis.Redis, census: Census) -> int:
    """What the residue keys take in Redis (MEMORY USAGE of each)."""
    total = 0
    for key in census.residue:
        total += int(await client.memory_usage(key) or 0)
    return total


def residue_report(census: Census, finished: int, waited: float, keys_before: int, memory_before: int,
                   memory_after: int, residue_memory: int) -> str:
    per_k = 1000 / finished if finished else 0.0
    lines = [f"finished matches: {finished}",
             f"keys: {keys_before} before the run, {len(census.live)} live + {len(census.residue)} residue after "
             f"({waited:.1f} s after the results were durable)",
             f"residue per 1,000 finished matches: {len(census.residue) * per_k:.1f} keys, "
             f"{residue_memory * per_k / 2**10:.1f} KiB (MEMORY USAGE)",
             # The whole server's figure also holds the leaderboard (one entry per player), the lobby's scripts
             # and the clients' buffers: what grows with players and connections, not with finished matches.
             f"Redis used_memory: {memory_before / 2**20:.2f} MiB before the run, {memory_after / 2**20:.2f} MiB "
             f"after (leaderboard, scripts and client buffers included)"]
    for kind, count in sorted(census.residue_kinds().items()):
        lines.append(f"  residue {kind}: {count}")
    for key in sorted(census.residue)[:50]:
        lines.append(f"  {key}  ({census.residue[key]})")
    if len(census.residue) > 50:
        lines.append(f"  ... and {len(census.residue) - 50} more")
    return "\n".join(lines)


async def measure(node: Node, bots: int, seconds: float, ramp: float) -> tuple[dict[str, Any], str, bool]:
    client = aioredis.Redis.from_url(node.redis_url)
    try:
        keys_before = len((await take_census(client, node.prefix)).live)
        memory_before = await redis_memory(client)
        bot = await asyncio.create_subprocess_exec(*bot_command(node, bots, seconds, ramp),
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await bot.communicate()
        if bot.returncode not in (0, 1):
            raise RuntimeError(f"bot failed ({bot.returncode}): {err.decode()[-2000:]}")
        summary = bot_summary(out)
        counts = await wait_durable(node.database_url, timeout=120)
        census, waited = await settle(client, node.prefix, SETTLE_S)
        memory_after = await redis_memory(client)
        residue_memory = await residue_bytes(client, census)
    finally:
        await client.aclose()
    report = residue_report(census, counts.get("finished", 0), waited, keys_before, memory_before, memory_after,
                            residue_memory)
    return summary, f"matches in Postgres: {counts}\n{report}", not census.residue


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bots", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=120.0, help="how long the bots play")
    parser.add_argument("--match-time", type=float, default=6.0, help="match time limit (TICKROOM_MATCH_TIME_S)")
    parser.add_argument("--countdown", type=float, default=1.0, help="countdown (TICKROOM_COUNTDOWN_S)")
    args = parser.parse_args()
    print(f"machine: {machine()}", flush=True)
    with data_services() as env_urls, running_node(env_urls, match_time_s=args.match_time,
                                                   countdown_s=args.countdown,
                                                   extra_env={"TICKROOM_END_LINGER_S": "0.5"}) as node:
        summary, report, clean = asyncio.run(measure(node, args.bots, args.seconds, min(5.0, args.bots / 20)))
    print(f"bots: {args.bots} for {args.seconds:.0f} s; matched {summary['matched']} times; errors "
          f"{summary['errors']} {summary.get('error_codes', {})}")
    print(report)
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
