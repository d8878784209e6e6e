"""How many five-player arena rooms one core holds at 66 Hz.

Starts a node pinned to core 0 (`taskset -c 0`), drives it with bot processes pinned to the other
cores, and steps the number of rooms up until tick lateness p99 passes 5 ms or the slowest bot gets
fewer than 60 states/s. Prints one row per step and a Markdown table at the end.

    .venv/bin/python bench/tick_capacity.py [--steps 10,25,50,100,150,200] [--seconds 20] [--snapshot-every 30]

Redis and Postgres: REDIS_URL/DATABASE_URL when set, else private ones started for the run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from server.ops.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
TICKROOM = str(Path(sys.executable).with_name("tickroom"))
LATENESS_LIMIT_MS = 5.0
STATES_LIMIT = 60.0


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = psutil.virtual_memory().total / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, Python {platform.python_version()}, {platform.system()}"


@contextlib.contextmanager
def data_services() -> Iterator[dict[str, str]]:
    if os.environ.get("REDIS_URL") and os.environ.get("DATABASE_URL"):
        yield {"REDIS_URL": os.environ["REDIS_URL"], "DATABASE_URL": os.environ["DATABASE_URL"]}
        return
    from server.ops.embedded import LocalPostgres, LocalRedis

    with tempfile.TemporaryDirectory(prefix="tickroom-bench-") as tmp, \
            LocalRedis.start(Path(tmp) / "redis", persist=False) as redis_server, \
            LocalPostgres.start(Path(tmp) / "pg", fast=True) as pg_server:
        yield {"REDIS_URL": redis_server.url, "DATABASE_URL": pg_server.url}


def get_stats(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10) as response:
        stats: dict[str, Any] = json.loads(response.read())
        return stats


def wait_ready(port: int, server: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited with {server.returncode}")
        with contextlib.suppress(OSError):
            get_stats(port)
            return
        time.sleep(0.1)
    raise RuntimeError("server did not become ready")


def run_step(port: int, server: psutil.Process, rooms: int, seconds: float, bot_cores: str,
             processes: int, encoding: str = "json") -> dict[str, Any]:
    bots = rooms * 5
    ramp = min(5.0, max(1.0, rooms / 40))
    command = ["taskset", "-c", bot_cores, TICKROOM, "bot", "--url", f"ws://127.0.0.1:{port}",
               "--bots", str(bots), "--duration", str(seconds + ramp), "--ramp", str(ramp), "--json", "--quiet",
               "--processes", str(processes), "--encoding", encoding]
    bot = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # Measure the server over the steady part only: after the ramp, until shortly before the bots stop.
    time.sleep(ramp + 1.0)
    cpu0 = server.cpu_times()
    t0 = time.monotonic()
    time.sleep(max(1.0, seconds - 2.0))
    cpu1 = server.cpu_times()
    elapsed = time.monotonic() - t0
    stats = get_stats(port)
    rss_mib = server.memory_info().rss / 2**20
    out, err = bot.communicate(timeout=seconds + 120)
    if bot.returncode != 0:
        raise RuntimeError(f"bot failed ({bot.returncode}): {err.decode()[-2000:]}")
    summary = json.loads(out.decode().strip().splitlines()[-1])
    server_cpu = 100.0 * ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / elapsed
    totals = stats["totals"]
    return {
        "rooms": rooms,
        "bots": bots,
        "live_rooms": totals["rooms"],
        "server_cpu_pct": round(server_cpu, 1),
        "lateness_p50_ms": totals["lateness_ms"]["p50"],
        "lateness_p99_ms": totals["lateness_ms"]["p99"],
        "duration_p99_ms": totals["duration_ms"]["p99"],
        "states_per_s_p50": summary["states_per_s_p50"],
        "states_per_s_min": summary["states_per_s_min"],
        "bytes_per_s_p50": summary["bytes_per_s_p50"],
        "ack_ms_p50": summary["ack_ms_p50"],
        "ack_ms_p99": summary["ack_ms_p99"],
        "errors": summary["errors"],
        "disconnects": summary["disconnects"],
        "bot_cpu_pct": summary.get("cpu_percent"),
        "server_rss_mib": round(rss_mib, 1),
    }


def passes(row: dict[str, Any]) -> bool:
    return row["lateness_p99_ms"] <= LATENESS_LIMIT_MS and row["states_per_s_min"] >= STATES_LIMIT


COLUMNS = [("rooms", "rooms"), ("server_cpu_pct", "server CPU %"), ("lateness_p50_ms", "lateness p50 ms"),
           ("lateness_p99_ms", "lateness p99 ms"), ("duration_p99_ms", "tick p99 ms"),
           ("states_per_s_p50", "states/s p50"), ("states_per_s_min", "states/s min"),
           ("bytes_per_s_p50", "bytes/s per bot p50"),
           ("ack_ms_p50", "ack p50 ms"), ("ack_ms_p99", "ack p99 ms"), ("bot_cpu_pct", "bot CPU %"),
           ("server_rss_mib", "server RSS MiB"), ("errors", "errors"), ("disconnects", "disconnects")]


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " | ok |",
             "|" + "---|" * (len(COLUMNS) + 1)]
    for row in rows:
        lines.append("| " + " | ".join(str(row[key]) for key, _ in COLUMNS) + f" | {'yes' if passes(row) else 'no'} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default="10,25,50,100,150,200,300", help="room counts to try, in order")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per step")
    parser.add_argument("--server-core", default="0")
    parser.add_argument("--bot-cores", default="1")
    parser.add_argument("--bot-processes", type=int, default=1)
    parser.add_argument("--encoding", default="json", choices=("json", "delta"),
                        help="the state encoding the bots ask for (default: %(default)s, comparable with the "
                             "figures recorded before the delta encoding; delta costs the bots twice the CPU)")
    parser.add_argument("--keep-going", action="store_true", help="run every step even after a failing one")
    parser.add_argument("--snapshot-every", type=float, default=30.0,
                        help="seconds between two snapshots of a room (TICKROOM_SNAPSHOT_EVERY_S)")
    args = parser.parse_args()
    if shutil.which("taskset") is None:
        print("taskset is required (util-linux)", file=sys.stderr)
        return 2
    print(f"machine: {machine()}", flush=True)
    rows = []
    with data_services() as env_urls:
        port = free_port()
        # Rooms joined by id (the bots skip the lobby: this measures rooms, not matchmaking).
        env = {**os.environ, **env_urls, "TICKROOM_WORKERS": "1", "TICKROOM_LOG_LEVEL": "WARNING",
               "TICKROOM_DIRECT_JOIN": "true",
               "TICKROOM_CPU_LIMIT": "1",  # this measures how many rooms fit: the node must not refuse any
               "TICKROOM_SNAPSHOT_EVERY_S": str(args.snapshot_every)}
        server = subprocess.Popen(["taskset", "-c", args.server_core, TICKROOM, "serve", "--port", str(port)],
                                  env=env)
        try:
            wait_ready(port, server)
            process = psutil.Process(server.pid)
            for rooms in (int(step) for step in args.steps.split(",")):
                row = run_step(port, process, rooms, args.seconds, args.bot_cores, args.bot_processes,
                               args.encoding)
                rows.append(row)
                print(json.dumps(row), flush=True)
                if not passes(row) and not args.keep_going:
                    break
        finally:
            server.terminate()
            server.wait(timeout=30)
    print()
    print(markdown(rows))
    held = [row["rooms"] for row in rows if passes(row)]
    print(f"\nmost rooms held within limits: {max(held) if held else 0}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
