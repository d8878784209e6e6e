"""A soak: one node, `--bots` bots through the lobby for `--minutes`, matches ending and starting all along.

Samples the node's RSS every `--sample-every` seconds and prints a table of the samples, with the drift after
`--flat-after` minutes (the target: within 2 %). With `--tracemalloc`, the node traces its allocations
(TICKROOM_TRACEMALLOC_DIR, development only) and writes a snapshot at `--flat-after` minutes and one at the end;
the soak prints what grew most between the two, by line. When the bots are done it waits for every result to
be durable and takes a census of Redis (bench/residue.py): keys and memory per 1,000 finished matches, and any
key outside the live set.

    flock /tmp/heavy.lock .venv/bin/python -m bench.soak --minutes 30 [--bots 300] [--tracemalloc]

The node runs on core 0, the bots on core 1 (`taskset`).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import redis.asyncio as aioredis

from bench.residue import (
    SETTLE_S,
    Node,
    bot_command,
    bot_summary,
    redis_memory,
    residue_bytes,
    residue_report,
    running_node,
    settle,
    wait_durable,
)
from bench.tick_capacity import data_services, machine
from lobby.census import take_census

TOP_GROWTH = 15


def _rss_mib(node: Node) -> float:
    return float(node.process.memory_info().rss) / 2**20


async def _snapshot(node: Node, directory: Path, count: int, timeout: float = 120.0) -> Path:
    """Ask the node for its next allocation snapshot (SIGUSR2) and wait until it is written."""
    path = directory / f"snapshot-{count}.tracemalloc"
    node.process.send_signal(signal.SIGUSR2)
    deadline = time.monotonic() + timeout
    size = -1
    while True:  # written once its size stops changing
        if path.exists() and path.stat().st_size == size and size > 0:
            return path
        if time.monotonic() > deadline:
            raise TimeoutError(f"the node wrote no {path.name} within {timeout:.0f} s")
        size = path.stat().st_size if path.exists() else -1
        await asyncio.sleep(1.0)


def growth(first: Path, last: Path, top: int = TOP_GROWTH) -> list[str]:
    """What grew most between two snapshots, by line (the allocation's innermost frame of our code or not)."""
    before, after = tracemalloc.Snapshot.load(str(first)), tracemalloc.Snapshot.load(str(last))
    stats = after.compare_to(before, "lineno")
    lines = [f"{'KiB':>9} {'count':>8}  where"]
    for stat in stats[:top]:
        frame = stat.traceback[0]
        lines.append(f"{stat.size_diff / 1024:+9.1f} {stat.count_diff:+8d}  {frame.filename}:{frame.lineno}")
    total = sum(stat.size_diff for stat in stats)
    lines.append(f"{total / 1024:+9.1f}          in all")
    return lines


async def soak(node: Node, bots: int, seconds: float, sample_every: float, flat_after: float,
               trace_dir: Path | None) -> int:
    client = aioredis.Redis.from_url(node.redis_url)
    samples: list[tuple[float, float, int, int]] = []  # (elapsed s, RSS MiB, live rooms, Redis keys)
    snapshots: list[Path] = []
    try:
        memory_before = await redis_memory(client)
        keys_before = len((await take_census(client, node.prefix)).live)
        ramp = min(20.0, bots / 20)
        bot = await asyncio.create_subprocess_exec(*bot_command(node, bots, seconds, ramp),
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        communicate = asyncio.ensure_future(bot.communicate())
        began = time.monotonic()
        next_sample = began
        while not communicate.done():
            now = time.monotonic()
            if now >= next_sample:
                elapsed = now - began
                rooms = int(await client.scard(f"{node.prefix}:{{arena}}:rooms"))  # as the lobby knows them
                keys = int(await client.dbsize())
                samples.append((elapsed, _rss_mib(node), rooms, keys))
                print(f"{elapsed / 60:6.1f} min  RSS {samples[-1][1]:7.1f} MiB  rooms {rooms:4d}  Redis keys {keys}",
                      flush=True)
                next_sample += sample_every
                if trace_dir is not None and not snapshots and elapsed >= flat_after:
                    snapshots.append(await _snapshot(node, trace_dir, 1))
            await asyncio.wait({communicate}, timeout=max(0.0, next_sample - time.monotonic()))
        out, err = communicate.result()
        if bot.returncode not in (0, 1):
            raise RuntimeError(f"bot failed ({bot.returncode}): {err.decode()[-2000:]}")
        summary = bot_summary(out)
        end_rss = _rss_mib(node)
        if trace_dir is not None and snapshots:
            snapshots.append(await _snapshot(node, trace_dir, 2))
        counts = await wait_durable(node.database_url, timeout=180)
        census, waited = await settle(client, node.prefix, SETTLE_S)
        memory_after = await redis_memory(client)
        residue_memory = await residue_bytes(client, census)
    finally:
        await client.aclose()
    print()
    print("| minute | node RSS MiB | lobby rooms | Redis keys |")
    print("|---:|---:|---:|---:|")
    for elapsed, rss, rooms, keys in samples:
        print(f"| {elapsed / 60:.1f} | {rss:.1f} | {rooms} | {keys} |")
    print(f"| end (bots gone) | {end_rss:.1f} | | |")
    steady = [rss for elapsed, rss, _, _ in samples if elapsed >= flat_after]
    if steady:
        drift = 100.0 * (max(steady) - min(steady)) / min(steady)
        print(f"\nRSS after {flat_after / 60:.0f} min: {min(steady):.1f} to {max(steady):.1f} MiB "
              f"({drift:.2f} % spread; first {steady[0]:.1f}, last {steady[-1]:.1f})")
    print(f"bots: {bots} for {seconds / 60:.0f} min: matched {summary['matched']} times, matches "
          f"{summary.get('matches')}, errors {summary['errors']} {summary.get('error_codes', {})}, "
          f"disconnects {summary.get('disconnects')}")
    print(f"matches in Postgres: {counts}")
    print(residue_report(census, counts.get("finished", 0), waited, keys_before, memory_before, memory_after,
                         residue_memory))
    if len(snapshots) == 2:
        print(f"\nallocations that grew from minute {flat_after / 60:.0f} to the end (tracemalloc):")
        print("\n".join(growth(*snapshots)))
    return 0 if summary["errors"] == 0 and not census.residue else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bots", type=int, default=300)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--sample-every", type=float, default=30.0, help="seconds between two RSS samples")
    parser.add_argument("--flat-after", type=float, default=10.0,
                        help="minutes after which RSS should be flat (and the first tracemalloc snapshot)")
    parser.add_argument("--match-time", type=float, default=180.0, help="TICKROOM_MATCH_TIME_S")
    parser.add_argument("--countdown", type=float, default=10.0, help="TICKROOM_COUNTDOWN_S")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="trace the node's allocations and print what grew (slows the node down)")
    args = parser.parse_args()
    if args.bots < 1 or args.minutes <= 0 or args.sample_every <= 0:
        parser.error("--bots, --minutes and --sample-every must be positive")
    print(f"machine: {machine()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="tickroom-soak-") as tmp:
        trace_dir = Path(tmp) / "tracemalloc" if args.tracemalloc else None
        extra = {"TICKROOM_TRACEMALLOC_DIR": str(trace_dir)} if trace_dir is not None else {}
        with data_services() as env_urls, running_node(env_urls, match_time_s=args.match_time,
                                                       countdown_s=args.countdown, extra_env=extra) as node:
            return asyncio.run(soak(node, args.bots, args.minutes * 60, args.sample_every, args.flat_after * 60,
                                    trace_dir))


if __name__ == "__main__":
    sys.exit(main())
