"""Every core of a machine: the same crowd through the lobby, on `tickroom serve --workers 1` and `--workers 2`.

Starts `tickroom serve --workers N` (nothing pinned: its workers, the bots, Redis and Postgres share the
machine's cores, as they would on a small host), then `--rooms` rooms' worth of bots that join through the
shared port's `/lobby` over `--ramp` seconds, and measures the `--seconds` after: per worker, the rooms it hosts,
its CPU and the share of its ticks later than 30 ms (from its own port's `/metrics`); for the machine, the rooms
hosted, the states per second of every bot that got into a room, the joins refused `capacity`, and how busy
the machine's cores were. With one worker the node stops at what one core holds and refuses the rest; with two,
the lobby places rooms on both.

    .venv/bin/python -m bench.workers [--rooms 150] [--workers 1,2] [--seconds 30] [--ramp 30]

Redis and Postgres: REDIS_URL/DATABASE_URL when set, else private ones started for the run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from typing import Any

import psutil

from bench.overload import LATE_BOUND_S, STATES_LIMIT, Timeline, results_table
from bench.tick_capacity import TICKROOM, data_services, machine, wait_ready
from server.ops.embedded import free_ports


def listener(port: int) -> psutil.Process:
    for connection in psutil.net_connections(kind="tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port and connection.pid:
            return psutil.Process(connection.pid)
    raise RuntimeError(f"nothing listens on port {port}")


def run_once(env_urls: dict[str, str], *, workers: int, rooms: int, seconds: float, ramp: float,
             bot_cores: str | None) -> dict[str, Any]:
    port = free_ports(workers + 1)  # the shared port, then each worker's own
    env = {**os.environ, **env_urls, "TICKROOM_WORKERS": str(workers), "TICKROOM_LOG_LEVEL": "WARNING",
           "TICKROOM_COUNTDOWN_S": "2", "TICKROOM_MATCH_TIME_S": str(int(ramp + seconds + 120)),
           "TICKROOM_LOBBY_PREFIX": f"workers-{port}", "TICKROOM_WORKER_PORT": str(port + 1)}
    env.pop("TICKROOM_CPU_LIMIT", None)
    env.pop("TICKROOM_PUBLIC_URL", None)
    server = subprocess.Popen([TICKROOM, "serve", "--port", str(port)], env=env)
    worker_ports = [port + 1 + index for index in range(workers)] if workers > 1 else [port]
    try:
        for worker_port in worker_ports:
            wait_ready(worker_port, server, timeout=60.0)
        processes = [listener(worker_port) for worker_port in worker_ports]
        command = [TICKROOM, "bot", "--url", f"ws://127.0.0.1:{port}", "--lobby", "--bots", str(rooms * 5),
                   "--duration", str(ramp + seconds + 5), "--ramp", str(ramp), "--json", "--quiet"]
        if bot_cores:
            command = ["taskset", "-c", bot_cores, *command]
        with contextlib.ExitStack() as stack:
            timelines = [stack.enter_context(Timeline(worker_port, process, None))
                         for worker_port, process in zip(worker_ports, processes, strict=True)]
            bot = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            time.sleep(ramp + 5.0)
            machine0 = psutil.cpu_times()
            t0 = time.monotonic()
            time.sleep(seconds)
            t1 = time.monotonic()
            machine1 = psutil.cpu_times()
            out, err = bot.communicate(timeout=ramp + seconds + 180)
        if bot.returncode != 0:
            raise RuntimeError(f"bot failed ({bot.returncode}): {err.decode()[-2000:]}")
        summary = json.loads(out.decode().strip().splitlines()[-1])
    finally:
        server.terminate()
        server.wait(timeout=60)
    per_worker = []
    for timeline in timelines:
        inside = [sample for sample in timeline.samples if t0 <= sample[0] <= t1]
        if len(inside) < 2:
            raise RuntimeError(f"worker on port {timeline.port}: its /metrics did not answer during the run")
        late = timeline.window(t0, t1)
        cpu = 100 * (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])
        per_worker.append({"rooms": inside[-1][2], "cpu_pct": round(cpu, 1), "late_30ms_pct": late["late_30ms_pct"]})
    busy = (sum(machine1) - machine1.idle - machine1.iowait) - (sum(machine0) - machine0.idle - machine0.iowait)
    return {
        "workers": workers,
        "offered_rooms": rooms,
        "hosted_rooms": sum(worker["rooms"] for worker in per_worker),
        "rooms_per_worker": "/".join(str(worker["rooms"]) for worker in per_worker),
        "cpu_pct_per_worker": "/".join(str(worker["cpu_pct"]) for worker in per_worker),
        "late_30ms_pct_per_worker": "/".join(str(worker["late_30ms_pct"]) for worker in per_worker),
        "late_30ms_pct_max": max(worker["late_30ms_pct"] for worker in per_worker),
        "machine_busy_pct": round(100 * busy / (t1 - t0) / (os.cpu_count() or 1), 1),
        "bot_cpu_pct": summary.get("cpu_percent"),
        "placed_states_per_s_min": summary["states_per_s_min_placed"],
        "placed_under_60": summary["placed_under_60_states_per_s"],
        "capacity_refusals": summary.get("capacity_refusals", 0),
        "errors": summary["errors"],
        "disconnects": summary["disconnects"],
    }


def passes(row: dict[str, Any]) -> bool:
    """Every worker's rooms on time (under 1 % of their ticks past 30 ms) and every bot in a room ≥ 60 states/s."""
    return row["late_30ms_pct_max"] < 1.0 and row["placed_states_per_s_min"] >= STATES_LIMIT


COLUMNS = [("workers", "workers"), ("offered_rooms", "rooms offered"), ("hosted_rooms", "rooms hosted"),
           ("rooms_per_worker", "rooms per worker"), ("cpu_pct_per_worker", "CPU % per worker"),
           ("late_30ms_pct_per_worker", f"ticks > {LATE_BOUND_S * 1000:.0f} ms % per worker"),
           ("machine_busy_pct", "machine busy % (all cores)"), ("bot_cpu_pct", "bot CPU %"),
           ("placed_states_per_s_min", "states/s min of bots in a room"), ("placed_under_60", "of them < 60/s"),
           ("capacity_refusals", "joins refused `capacity`"), ("errors", "errors")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rooms", type=int, default=150, help="rooms' worth of players offered (5 bots each)")
    parser.add_argument("--workers", default="1,2", help="worker counts to run, in order")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured seconds")
    parser.add_argument("--ramp", type=float, default=30.0, help="seconds over which the players arrive")
    parser.add_argument("--bot-cores", default=None, help="pin the bots (taskset -c); default: not pinned")
    args = parser.parse_args()
    print(f"machine: {machine()}", flush=True)
    rows = []
    with data_services() as env_urls:
        for workers in (int(count) for count in args.workers.split(",")):
            row = run_once(env_urls, workers=workers, rooms=args.rooms, seconds=args.seconds, ramp=args.ramp,
                           bot_cores=args.bot_cores)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print()
    print(results_table(rows, COLUMNS, passes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
