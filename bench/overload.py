"""A node offered more rooms than it can hold: do the rooms it took stay on time?

Starts a node pinned to core 0 with a real lobby, and bots on the other cores that all join through the lobby:
`--capacity` rooms times `--load` (default 1.3) rooms' worth of players, arriving over `--ramp` seconds. Then
measures the node over the steady part: the rooms it hosts, their tick lateness, the states each playing bot got
per second, and how many joins the lobby refused with `capacity`. Runs twice unless told otherwise: with the
node's load limit off (`TICKROOM_CPU_LIMIT=1`, every room accepted: the cliff) and with the default limit.

    .venv/bin/python -m bench.overload --capacity 180 [--load 1.3] [--seconds 30] [--ramp 30] [--runs off,on]

`--capacity`: what `bench.tick_capacity` held on this machine (rooms within lateness p99 < 5 ms).
Redis and Postgres: REDIS_URL/DATABASE_URL when set, else private ones started for the run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any

import psutil

from bench.tick_capacity import TICKROOM, data_services, free_port, get_stats, machine, wait_ready

LATENESS_LIMIT_MS = 30.0
STATES_LIMIT = 60.0


def run_once(env_urls: dict[str, str], *, limit: str | None, rooms: int, seconds: float, ramp: float,
             server_core: str, bot_cores: str) -> dict[str, Any]:
    port = free_port()
    env = {**os.environ, **env_urls, "TICKROOM_WORKERS": "1", "TICKROOM_LOG_LEVEL": "WARNING",
           "TICKROOM_COUNTDOWN_S": "2", "TICKROOM_MATCH_TIME_S": str(int(ramp + seconds + 120)),
           "TICKROOM_LOBBY_PREFIX": f"overload-{port}"}
    if limit is not None:
        env["TICKROOM_CPU_LIMIT"] = limit
    else:
        env.pop("TICKROOM_CPU_LIMIT", None)
    server = subprocess.Popen(["taskset", "-c", server_core, TICKROOM, "serve", "--port", str(port)], env=env)
    try:
        wait_ready(port, server)
        process = psutil.Process(server.pid)
        bots = rooms * 5
        command = ["taskset", "-c", bot_cores, TICKROOM, "bot", "--url", f"ws://127.0.0.1:{port}", "--lobby",
                   "--bots", str(bots), "--duration", str(ramp + seconds + 5), "--ramp", str(ramp), "--json",
                   "--quiet"]
        bot = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        # Steady part: after the ramp and the last countdowns, until shortly before the bots stop.
        time.sleep(ramp + 5.0)
        cpu0 = process.cpu_times()
        t0 = time.monotonic()
        time.sleep(seconds)
        cpu1 = process.cpu_times()
        elapsed = time.monotonic() - t0
        stats = get_stats(port)
        out, err = bot.communicate(timeout=ramp + seconds + 180)
        if bot.returncode != 0:
            raise RuntimeError(f"bot failed ({bot.returncode}): {err.decode()[-2000:]}")
        summary = json.loads(out.decode().strip().splitlines()[-1])
    finally:
        server.terminate()
        server.wait(timeout=60)
    totals = stats["totals"]
    running = [room for room in stats["rooms"].values() if room.get("state") == "running"]
    return {
        "load_limit": "off" if limit == "1" else "default" if limit is None else limit,
        "offered_rooms": rooms,
        "hosted_rooms": totals["rooms"],
        "running_rooms": len(running),
        "server_cpu_pct": round(100.0 * ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / elapsed, 1),
        "lateness_p50_ms": totals["lateness_ms"]["p50"],
        "lateness_p99_ms": totals["lateness_ms"]["p99"],
        "states_per_s_p50": summary["states_per_s_p50"],
        "states_per_s_min": summary["states_per_s_min"],
        "playing_bots": summary["connected"],
        "bots_under_60": summary["bots_under_60_states_per_s"],
        "capacity_refusals": summary.get("capacity_refusals", 0),
        "errors": summary["errors"],
        "error_codes": summary["error_codes"],
        "disconnects": summary["disconnects"],
        "bot_cpu_pct": summary.get("cpu_percent"),
    }


def passes(row: dict[str, Any]) -> bool:
    return row["lateness_p99_ms"] < LATENESS_LIMIT_MS and row["states_per_s_min"] >= STATES_LIMIT


COLUMNS = [("load_limit", "load limit"), ("offered_rooms", "rooms offered"), ("hosted_rooms", "rooms hosted"),
           ("server_cpu_pct", "server CPU %"), ("lateness_p50_ms", "lateness p50 ms"),
           ("lateness_p99_ms", "lateness p99 ms"), ("states_per_s_p50", "states/s p50"),
           ("states_per_s_min", "states/s min"), ("playing_bots", "bots that played"),
           ("bots_under_60", "bots < 60 states/s"),
           ("capacity_refusals", "joins refused `capacity`"), ("errors", "errors"), ("bot_cpu_pct", "bot CPU %")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capacity", type=int, required=True, help="rooms the node holds (bench.tick_capacity)")
    parser.add_argument("--load", type=float, default=1.3, help="offered rooms as a multiple of the capacity")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured seconds")
    parser.add_argument("--ramp", type=float, default=30.0, help="seconds over which the players arrive")
    parser.add_argument("--runs", default="off,on", help="load limit off (every room accepted) and/or on")
    parser.add_argument("--server-core", default="0")
    parser.add_argument("--bot-cores", default="1")
    args = parser.parse_args()
    if shutil.which("taskset") is None:
        print("taskset is required (util-linux)", file=sys.stderr)
        return 2
    print(f"machine: {machine()}", flush=True)
    rooms = round(args.capacity * args.load)
    rows = []
    with data_services() as env_urls:
        for run in args.runs.split(","):
            row = run_once(env_urls, limit="1" if run == "off" else None, rooms=rooms, seconds=args.seconds,
                           ramp=args.ramp, server_core=args.server_core, bot_cores=args.bot_cores)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print()
    print("| " + " | ".join(title for _, title in COLUMNS) + " | within limits |")
    print("|" + "---|" * (len(COLUMNS) + 1))
    for row in rows:
        print("| " + " | ".join(str(row[key]) for key, _ in COLUMNS) + f" | {'yes' if passes(row) else 'no'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
