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
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import psutil

from bench.tick_capacity import TICKROOM, data_services, free_port, get_stats, machine, wait_ready

LATENESS_LIMIT_MS = 30.0
STATES_LIMIT = 60.0
LATE_BOUND_S = 0.030  # the histogram's bucket at the limit: under 1 % of ticks past it means p99 <= 30 ms


def node_metrics(port: int) -> tuple[int, dict[float, float]]:
    """From the node's /metrics (cheap, unlike /stats, which sorts every room's samples): its rooms, and its
    tick-lateness histogram (cumulative counts by upper bound, seconds), with its full garbage collections so far
    under -1 and the seconds all of its collections took under -2."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    rooms = 0
    buckets = {}
    gc_count = gc_sum = 0.0
    for line in text.splitlines():
        if line.startswith("tickroom_gc_pause_seconds_count{"):
            gc_count += float(line.rsplit(" ", 1)[1]) if 'generation="2"' in line else 0.0
        elif line.startswith("tickroom_gc_pause_seconds_sum{"):
            gc_sum += float(line.rsplit(" ", 1)[1])
        if line.startswith("tickroom_tick_lateness_seconds_bucket{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[float("inf") if bound == "+Inf" else float(bound)] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("tickroom_rooms{"):
            rooms += int(float(line.rsplit(" ", 1)[1]))
    buckets[-1.0] = gc_count  # full collections so far
    buckets[-2.0] = gc_sum  # seconds in every collection so far
    return rooms, buckets


def pin_data_services(env_urls: dict[str, str], cores: str) -> list[int]:
    """Pin the Redis and Postgres serving the run (and every process they started) to the bots' cores, so that
    the node's core is the node's alone, as in production where they run on machines of their own."""
    ports = {int(url.rsplit(":", 1)[1].split("/", 1)[0]) for url in env_urls.values()}
    cpus = [int(core) for core in cores.split(",")]
    pinned = []
    for connection in psutil.net_connections(kind="tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port in ports and connection.pid:
            server = psutil.Process(connection.pid)
            for process in (server, *server.children(recursive=True)):
                process.cpu_affinity(cpus)
                pinned.append(process.pid)
    return pinned


class Timeline:
    """Samples the node each second: CPU, rooms and the tick-lateness histogram, so that a run shows when its
    rooms were late (the ramp, a stall, the whole time) and the steady part is judged on all of its ticks. Also
    what else took the node's core: the kernel's interrupt work (the loopback traffic's softirqs are charged to
    the core that sends, not to the node's CPU time) and time the hypervisor gave to other machines (steal)."""

    def __init__(self, port: int, process: psutil.Process, core: int | None, every_s: float = 1.0) -> None:
        self.port = port
        self.process = process
        self.core = core
        self.every_s = every_s
        # (t, node cpu s, rooms, buckets, the core's interrupt + softirq s, the core's steal s)
        self.samples: list[tuple[float, float, int, dict[float, float], float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Timeline:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                cpu = self.process.cpu_times()
                irq = steal = 0.0
                if self.core is not None:  # the node pinned to a core of its own
                    core = psutil.cpu_times(percpu=True)[self.core]
                    irq, steal = core.irq + core.softirq, core.steal
                rooms, buckets = node_metrics(self.port)
                self.samples.append((time.monotonic(), cpu.user + cpu.system, rooms, buckets, irq, steal))
            except (OSError, KeyError, psutil.Error):
                pass
            self._stop.wait(self.every_s)

    def window(self, start: float, end: float) -> dict[str, float]:
        """Ticks in [start, end] and the share of them later than each bound."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return {"ticks": 0, "late_30ms_pct": 0.0, "late_50ms_pct": 0.0, "late_100ms_pct": 0.0}
        first, last = inside[0][3], inside[-1][3]
        ticks = last[float("inf")] - first[float("inf")]

        def late_pct(bound: float) -> float:
            on_time = last[bound] - first[bound]
            return round(100.0 * (ticks - on_time) / ticks, 2) if ticks else 0.0

        return {"ticks": ticks, "late_30ms_pct": late_pct(LATE_BOUND_S), "late_50ms_pct": late_pct(0.05),
                "late_100ms_pct": late_pct(0.1)}

    def core_pct(self, start: float, end: float) -> tuple[float, float]:
        """The node's core over [start, end]: the share it spent in interrupts and softirqs, and stolen (%)."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return 0.0, 0.0
        first, last = inside[0], inside[-1]
        elapsed = last[0] - first[0]
        return round(100 * (last[4] - first[4]) / elapsed, 1), round(100 * (last[5] - first[5]) / elapsed, 1)

    def table(self, started: float, step_s: float = 5.0) -> list[str]:
        """Every `step_s`: rooms, the node's CPU, its core's softirq and steal, and the share of late ticks."""
        lines = ["| s | rooms | server CPU % | core softirq % | core steal % | ticks | late > 30 ms % | late > 50 ms %"
                 " | late > 100 ms % | full GCs | GC ms |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        index = 0
        while index + 1 < len(self.samples):
            t0, cpu0, _, first, irq0, steal0 = self.samples[index]
            end = index + 1
            while end + 1 < len(self.samples) and self.samples[end][0] - t0 < step_s * 0.95:
                end += 1
            t1, cpu1, rooms, last, irq1, steal1 = self.samples[end]
            late = self.window(t0, t1)
            lines.append(f"| {t0 - started:.0f} | {rooms} | {100 * (cpu1 - cpu0) / (t1 - t0):.0f}"
                         f" | {100 * (irq1 - irq0) / (t1 - t0):.0f} | {100 * (steal1 - steal0) / (t1 - t0):.0f}"
                         f" | {late['ticks']:.0f} | {late['late_30ms_pct']} | {late['late_50ms_pct']}"
                         f" | {late['late_100ms_pct']} | {last[-1.0] - first[-1.0]:.0f}"
                         f" | {1000 * (last[-2.0] - first[-2.0]):.1f} |")
            index = end
        return lines


def run_once(env_urls: dict[str, str], *, limit: str | None, rooms: int, seconds: float, ramp: float,
             server_core: str, bot_cores: str, timeline_s: float = 0.0) -> dict[str, Any]:
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
        started = time.monotonic()
        with Timeline(port, process, int(server_core.split(",")[0])) as timeline:
            bot = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            # Steady part: after the ramp and the last countdowns, until shortly before the bots stop.
            time.sleep(ramp + 5.0)
            cpu0 = process.cpu_times()
            t0 = time.monotonic()
            time.sleep(seconds)
            cpu1 = process.cpu_times()
            t1 = time.monotonic()
            stats = get_stats(port)
            out, err = bot.communicate(timeout=ramp + seconds + 180)
        elapsed = t1 - t0
        if bot.returncode != 0:
            raise RuntimeError(f"bot failed ({bot.returncode}): {err.decode()[-2000:]}")
        summary = json.loads(out.decode().strip().splitlines()[-1])
    finally:
        server.terminate()
        server.wait(timeout=60)
    steady = timeline.window(t0, t1)
    whole = timeline.window(started, t1)
    if timeline_s:
        print("\n".join(timeline.table(started, timeline_s)), flush=True)
    softirq_pct, steal_pct = timeline.core_pct(t0, t1)
    totals = stats["totals"]
    running = [room for room in stats["rooms"].values() if room.get("state") == "running"]
    return {
        "load_limit": "off" if limit == "1" else "default" if limit is None else limit,
        "offered_rooms": rooms,
        "hosted_rooms": totals["rooms"],
        "running_rooms": len(running),
        "server_cpu_pct": round(100.0 * ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / elapsed, 1),
        "core_softirq_pct": softirq_pct,
        "core_steal_pct": steal_pct,
        "late_30ms_pct_steady": steady["late_30ms_pct"],
        "late_30ms_pct_whole": whole["late_30ms_pct"],
        "late_50ms_pct_steady": steady["late_50ms_pct"],
        "lateness_p50_ms": totals["lateness_ms"]["p50"],
        "lateness_p99_ms": totals["lateness_ms"]["p99"],
        "states_per_s_p50": summary["states_per_s_p50"],
        "states_per_s_min": summary["states_per_s_min"],
        "playing_bots": summary["connected"],
        "bots_under_60": summary["bots_under_60_states_per_s"],
        "placed_states_per_s_min": summary["states_per_s_min_placed"],
        "placed_under_60": summary["placed_under_60_states_per_s"],
        "capacity_refusals": summary.get("capacity_refusals", 0),
        "errors": summary["errors"],
        "error_codes": summary["error_codes"],
        "disconnects": summary["disconnects"],
        "bot_cpu_pct": summary.get("cpu_percent"),
    }


def passes(row: dict[str, Any]) -> bool:
    """Accepted rooms on time over the whole steady part (fewer than 1 % of their ticks later than 30 ms: p99 within
    30 ms) and every bot that got into a room at ≥ 60 states/s. Refused players are not in a room."""
    return row["late_30ms_pct_steady"] < 1.0 and row["placed_states_per_s_min"] >= STATES_LIMIT


COLUMNS = [("load_limit", "load limit"), ("offered_rooms", "rooms offered"), ("hosted_rooms", "rooms hosted"),
           ("server_cpu_pct", "server CPU %"), ("core_softirq_pct", "its core's softirq %"),
           ("late_30ms_pct_steady", "ticks > 30 ms % (steady)"),
           ("late_30ms_pct_whole", "ticks > 30 ms % (ramp too)"), ("lateness_p99_ms", "lateness p99 ms (last 15 s)"),
           ("states_per_s_p50", "states/s p50"), ("playing_bots", "bots that played"),
           ("placed_states_per_s_min", "states/s min of bots in a room"), ("placed_under_60", "of them < 60/s"),
           ("capacity_refusals", "joins refused `capacity`"), ("errors", "errors"), ("bot_cpu_pct", "bot CPU %")]


def results_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]],
                  within: Callable[[dict[str, Any]], bool]) -> str:
    """The runs as a Markdown table, each judged in its last column."""
    lines = ["| " + " | ".join(title for _, title in columns) + " | within limits |", "|" + "---|" * (len(columns) + 1)]
    lines += ["| " + " | ".join(str(row[key]) for key, _ in columns) + f" | {'yes' if within(row) else 'no'} |"
              for row in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capacity", type=int, required=True, help="rooms the node holds (bench.tick_capacity)")
    parser.add_argument("--load", type=float, default=1.3, help="offered rooms as a multiple of the capacity")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured seconds")
    parser.add_argument("--ramp", type=float, default=30.0, help="seconds over which the players arrive")
    parser.add_argument("--runs", default="off,on", help="load limit off (every room accepted) and/or on")
    parser.add_argument("--server-core", default="0")
    parser.add_argument("--bot-cores", default="1")
    parser.add_argument("--timeline", type=float, default=0.0, metavar="S",
                        help="print each run's rooms, CPU and late ticks every S seconds")
    args = parser.parse_args()
    if shutil.which("taskset") is None:
        print("taskset is required (util-linux)", file=sys.stderr)
        return 2
    print(f"machine: {machine()}", flush=True)
    rooms = round(args.capacity * args.load)
    rows = []
    with data_services() as env_urls:
        pinned = pin_data_services(env_urls, args.bot_cores)
        print(f"Redis and Postgres ({len(pinned)} processes) pinned to core(s) {args.bot_cores}", flush=True)
        for run in args.runs.split(","):
            row = run_once(env_urls, limit="1" if run == "off" else None, rooms=rooms, seconds=args.seconds,
                           ramp=args.ramp, server_core=args.server_core, bot_cores=args.bot_cores,
                           timeline_s=args.timeline)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print()
    print(results_table(rows, COLUMNS, passes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
