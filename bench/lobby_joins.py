"""Lobby throughput and wait times: how many joins per second one node sustains over `/lobby` against one Redis,
how many the seating scripts alone do, and the join → match_found wait at a steady arrival rate.

    .venv/bin/python -m bench.lobby_joins [--parts scripts,e2e,steady] [--rates 500,1000,1500,2000,3000] [--json]

1. scripts: `Seating.join` called by 64 concurrent tasks of one (then two) redis-py asyncio processes, then by
   `redis-benchmark` (a C client) for the ceiling of Redis itself. Rooms fill and start at 5.
2. e2e: a node in its own process on core 0 (the in-process `App` of `tickroom serve`, on uvloop); this process
   on core 1 (with Redis) opens one picows connection per player at a paced rate, sends `join`, and waits for
   `match_found`. The countdown is 600 s, so every room starts by filling to 5. First the handshake alone.
3. steady: Poisson arrivals at RATE/s with a countdown of COUNTDOWN s: the wait distribution, and how many
   rooms started full (5) or by the countdown (3-4).

Redis is a private one started for the run (never a shared one). Everything binds to 127.0.0.1 and stops by
itself; with the default flags the whole run takes under 3 minutes. `--py-spy FILE` samples the e2e node with
py-spy (`.venv/bin/pip install py-spy`) and prints where its time went.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from array import array
from collections import Counter
from collections.abc import Collection, Coroutine, Sequence
from concurrent.futures import ProcessPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil
import redis

from bench.lobby_load import Attempt, LoadResult, offer, paced, poisson, running_node, serve_node
from bench.tick_capacity import machine
from lobby.keys import LobbyKeys
from lobby.outage import lobby_client
from lobby.seating import Seating, SeatingRules, _script
from server.ops.embedded import LocalRedis
from server.ops.eventloop import run

NODE_CORE = 0
LOAD_CORE = 1  # the load generator, and Redis
HELD_SHARE = 0.95  # a rate is held when this share of it is matched per second, with no errors,
HELD_CONNECT_P99_MS = 500.0  # connections opened without SYN retries (the first one comes after 1 s),
HELD_WAIT_P99_MS = 1000.0  # and waits bounded by the hub's 1 s periodic read (see "late rooms")
LATE_SPREAD_S = 0.1  # a room is late when its players' match_found arrive further apart than this
RAMP_COUNTDOWN_S = 600.0


def pct(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted values (None when there are none)."""
    if not values:
        return None
    return values[min(len(values) - 1, int(q * len(values)))]


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


# -- 1. the seating scripts alone ----------------------------------------------------------------------------

def script_client(redis_url: str, prefix: str, seconds: float, concurrency: int, start_at: float,
                  core: int | None) -> tuple[int, array[float]]:
    """One client process: `concurrency` tasks calling `Seating.join` back to back for `seconds`."""
    if core is not None:
        os.sched_setaffinity(0, {core})
    return run(_script_calls(redis_url, prefix, seconds, concurrency, start_at))


async def _script_calls(redis_url: str, prefix: str, seconds: float, concurrency: int,
                        start_at: float) -> tuple[int, array[float]]:
    client = lobby_client(redis_url, max_connections=concurrency)  # the node's own client settings
    seating = Seating(client, LobbyKeys(prefix, "arena"), SeatingRules(countdown_ms=round(RAMP_COUNTDOWN_S * 1000)))
    await seating.load_scripts()
    node = f"bench-{os.getpid()}"
    latencies = array("d")
    await asyncio.sleep(max(0.0, start_at - time.time()))
    end = time.perf_counter() + seconds

    async def caller(number: int) -> None:
        calls = 0
        while (started := time.perf_counter()) < end:
            calls += 1
            player = f"{node}-{number}-{calls}"
            await seating.join(player, player, int(time.time() * 1000), conn_id=f"c-{player}", conn_node=node,
                               new_room_id=uuid.uuid4().hex[:16], new_room_node=node)
            latencies.append(time.perf_counter() - started)

    async with asyncio.TaskGroup() as group:
        for number in range(concurrency):
            group.create_task(caller(number))
    await client.aclose()
    return len(latencies), latencies


def redis_cpu_s(redis_server: LocalRedis) -> float:
    return float(sum(psutil.Process(redis_server.pid).cpu_times()[:2]))


def evalsha_us(client: redis.Redis) -> float | None:
    stats: dict[str, Any] = client.info("commandstats")
    entry = stats.get("cmdstat_evalsha")
    return None if entry is None else float(entry["usec_per_call"])


def scripts_alone(redis_server: LocalRedis, processes: int, seconds: float, concurrency: int) -> dict[str, Any]:
    sync = redis.Redis.from_url(redis_server.url)
    sync.config_resetstat()
    # One process: it on core 1 and Redis on core 0. More: everyone unpinned, to see whether Redis saturates.
    one = processes == 1
    os.sched_setaffinity(redis_server.pid, {NODE_CORE} if one else {NODE_CORE, LOAD_CORE})
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    start_at = time.time() + 1.5  # every process connected and its scripts loaded
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = [pool.submit(script_client, redis_server.url, prefix, seconds, concurrency, start_at,
                               LOAD_CORE if one else None) for _ in range(processes)]
        time.sleep(max(0.0, start_at - time.time()))
        cpu0 = redis_cpu_s(redis_server)
        t0 = time.perf_counter()
        results = [future.result() for future in futures]
        cpu1, elapsed = redis_cpu_s(redis_server), time.perf_counter() - t0
    calls = sum(count for count, _ in results)
    latencies = sorted(x for _, lat in results for x in lat)
    redis_share = (cpu1 - cpu0) / elapsed
    rate = calls / seconds
    return {"client": f"redis-py asyncio, {processes} process(es) x {concurrency} tasks",
            "joins_per_s": round(rate), "p50_ms": ms(pct(latencies, 0.5)), "p99_ms": ms(pct(latencies, 0.99)),
            "redis_cpu_pct": round(100 * redis_share, 1), "redis_us_per_join": round(redis_share / rate * 1e6, 1),
            "script_us": evalsha_us(sync)}


def redis_benchmark(redis_server: LocalRedis, requests: int, clients: int) -> dict[str, Any] | None:
    """The same join script driven by redis-benchmark (C, pipelining off): Redis's own ceiling."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return None
    sync = redis.Redis.from_url(redis_server.url)
    sync.config_resetstat()
    os.sched_setaffinity(redis_server.pid, {NODE_CORE})
    keys = LobbyKeys(f"bench{uuid.uuid4().hex[:8]}", "arena")
    sha = sync.script_load(_script("join"))
    rules = SeatingRules(countdown_ms=round(RAMP_COUNTDOWN_S * 1000)).as_json("arena").decode()
    # __rand_int__ is replaced by a random 12-digit number in each argument: new players, new room ids.
    command = ["taskset", "-c", str(LOAD_CORE), binary, "-h", "127.0.0.1", "-p", str(redis_server.port),
               "-c", str(clients), "-n", str(requests), "-r", "1000000000", "--csv",
               "EVALSHA", sha, "1", keys.available, keys.base, str(int(time.time() * 1000)), rules,
               "p__rand_int__", "bench", "c__rand_int__", "bench", "__rand_int__", "bench", ""]
    cpu0, t0 = redis_cpu_s(redis_server), time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120).stdout
    cpu1, elapsed = redis_cpu_s(redis_server), time.perf_counter() - t0
    # The last seven fields: rps, avg, min, p50, p95, p99, max (the test's name holds commas of its own).
    row = next(line.replace('"', "").split(",")[-7:] for line in out.splitlines() if line.startswith('"EVALSHA'))
    rate = float(row[0])
    redis_share = (cpu1 - cpu0) / elapsed
    return {"client": f"redis-benchmark, {clients} connections", "joins_per_s": round(rate),
            "p50_ms": float(row[3]), "p99_ms": float(row[5]), "redis_cpu_pct": round(100 * redis_share, 1),
            "redis_us_per_join": round(redis_share / rate * 1e6, 1), "script_us": evalsha_us(sync)}


# -- 2. end to end over /lobby --------------------------------------------------------------------------------

def listen_overflows() -> int:
    """The kernel's count of connections dropped because a listen queue was full (all sockets, this machine)."""
    lines = [line.split() for line in Path("/proc/net/netstat").read_text().splitlines() if line.startswith("TcpExt:")]
    return int(dict(zip(lines[0], lines[1], strict=True)).get("ListenOverflows", 0)) if len(lines) == 2 else 0


def measured(load: Coroutine[Any, Any, LoadResult]) -> tuple[LoadResult, int]:
    """Run one step of load; also the listen queue overflows it caused."""
    before = listen_overflows()
    result = run(load)
    return result, listen_overflows() - before


def in_window(attempts: list[Attempt], window: tuple[float, float]) -> list[Attempt]:
    low, high = window
    return [a for a in attempts if low <= a.joined < high]


def errors_of(attempts: list[Attempt]) -> str:
    counts = Counter(a.error for a in attempts if a.error)
    return ", ".join(f"{code} {n}" for code, n in counts.most_common()) or "0"


def late_rooms_pct(attempts: list[Attempt]) -> float:
    """Share of rooms whose players got match_found more than LATE_SPREAD_S apart (they all start together)."""
    times: dict[str, list[float]] = {}
    for a in attempts:
        if a.matched:
            times.setdefault(a.room, []).append(a.matched)
    late = sum(1 for t in times.values() if max(t) - min(t) > LATE_SPREAD_S)
    return round(100 * late / max(1, len(times)), 2)


def handshake_row(rate: float, result: LoadResult, overflows: int) -> dict[str, Any]:
    span = result.window[1] - result.window[0]
    opened = in_window(result.attempts, result.window)
    connects = sorted(a.joined - a.started for a in opened)
    return {"offered_per_s": rate, "opened_per_s": round(len(opened) / span), "connect_p50_ms": ms(pct(connects, 0.5)),
            "connect_p99_ms": ms(pct(connects, 0.99)), "node_cpu_pct": round(100 * result.node_cpu_s / span, 1),
            "node_us_per_conn": round(result.node_cpu_s / max(1, len(opened)) * 1e6),
            "listen_overflows": overflows, "errors": errors_of(result.attempts)}


def ramp_row(rate: float, result: LoadResult, overflows: int) -> dict[str, Any]:
    low, high = result.window
    span = high - low
    sent = in_window(result.attempts, result.window)
    matched = sum(1 for a in result.attempts if low <= a.matched < high)
    waits = sorted(a.matched - a.joined for a in sent if a.matched)
    connects = sorted(a.joined - a.started for a in sent)
    lag = sorted(a.started - a.due for a in result.attempts if low <= a.due < high)
    row: dict[str, Any] = {
        "offered_per_s": rate, "sent_per_s": round(len(sent) / span), "matched_per_s": round(matched / span),
        "connect_p50_ms": ms(pct(connects, 0.5)), "connect_p99_ms": ms(pct(connects, 0.99)),
        "wait_p50_ms": ms(pct(waits, 0.5)), "wait_p99_ms": ms(pct(waits, 0.99)),
        "node_cpu_pct": round(100 * result.node_cpu_s / span, 1),
        "node_core_busy_pct": round(100 * result.node_core_busy, 1),
        "node_us_per_join": round(result.node_cpu_s / max(1, matched) * 1e6),
        "redis_cpu_pct": round(100 * result.redis_cpu_s / span, 1),
        "loadgen_cpu_pct": round(100 * result.own_cpu_s / span, 1),
        "loadgen_lag_p99_ms": ms(pct(lag, 0.99)), "listen_overflows": overflows, "left_waiting": result.left,
        "late_rooms_pct": late_rooms_pct(result.attempts), "errors": errors_of(result.attempts)}
    row["held"] = (matched / span >= HELD_SHARE * rate and row["errors"] == "0"
                   and (row["connect_p99_ms"] or 0.0) <= HELD_CONNECT_P99_MS
                   and (row["wait_p99_ms"] or 0.0) <= HELD_WAIT_P99_MS)
    return row


def end_to_end(redis_server: LocalRedis, rates: list[float], seconds: float, handshake_rate: float,
               py_spy: Path | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    os.sched_setaffinity(redis_server.pid, {LOAD_CORE})
    redis_process = psutil.Process(redis_server.pid)
    rows = []
    with running_node(redis_server.url, RAMP_COUNTDOWN_S, NODE_CORE, py_spy) as node:
        run(offer(node.lobby_url, paced(200, 1.0), node.process, redis_process, warmup_s=0.0, drain_s=1.0))
        handshake = handshake_row(handshake_rate, *measured(offer(
            node.lobby_url, paced(handshake_rate, 4.0), node.process, redis_process, warmup_s=1.0, drain_s=2.0,
            join=False, node_core=NODE_CORE)))
        print(f"handshake only: {json.dumps(handshake)}", flush=True)
        for rate in rates:
            rows.append(ramp_row(rate, *measured(offer(node.lobby_url, paced(rate, seconds), node.process,
                                                       redis_process, warmup_s=1.0, drain_s=2.0,
                                                       node_core=NODE_CORE))))
            print(f"ramp: {json.dumps(rows[-1])}", flush=True)
    return handshake, rows


# -- 3. waits at a steady arrival rate --------------------------------------------------------------------------

def steady(redis_server: LocalRedis, rate: float, countdown_s: float, seconds: float, seed: int) -> dict[str, Any]:
    os.sched_setaffinity(redis_server.pid, {LOAD_CORE})
    arrivals = poisson(rate, seconds, random.Random(seed))
    with running_node(redis_server.url, countdown_s, NODE_CORE) as node:
        # Warm up (Redis connections, scripts), then leave: the warm-up's last room is dissolved.
        run(offer(node.lobby_url, paced(100, 1.0), node.process, psutil.Process(redis_server.pid), warmup_s=0.0,
                  drain_s=0.5))
        result = run(offer(node.lobby_url, arrivals, node.process, psutil.Process(redis_server.pid),
                           warmup_s=0.0, drain_s=countdown_s + 2.0))
    matched = [a for a in result.attempts if a.matched]
    waits = sorted(a.matched - a.joined for a in matched)
    sizes = {a.room: a.size for a in matched}
    full = sum(1 for size in sizes.values() if size >= 5)
    return {"rate_per_s": rate, "countdown_s": countdown_s, "joins": len(result.attempts), "matched": len(matched),
            "wait_p50_ms": ms(pct(waits, 0.5)), "wait_p90_ms": ms(pct(waits, 0.9)),
            "wait_p99_ms": ms(pct(waits, 0.99)), "wait_max_ms": ms(waits[-1] if waits else None),
            "rooms": len(sizes), "rooms_full_pct": round(100 * full / max(1, len(sizes)), 1),
            "rooms_countdown": len(sizes) - full, "late_rooms_pct": late_rooms_pct(matched),
            "left_waiting": result.left, "errors": errors_of(result.attempts)}


# -- output -------------------------------------------------------------------------------------------------

def markdown(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    lines = ["| " + " | ".join(title for _, title in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = ["yes" if row[key] is True else "no" if row[key] is False else "—" if row[key] is None
                 else str(row[key]) for key, _ in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


SCRIPT_COLUMNS = [("client", "client"), ("joins_per_s", "joins/s"), ("p50_ms", "call p50 ms"),
                  ("p99_ms", "call p99 ms"), ("redis_cpu_pct", "Redis CPU %"),
                  ("redis_us_per_join", "Redis CPU µs/join"), ("script_us", "script µs (commandstats)")]
HANDSHAKE_COLUMNS = [("offered_per_s", "connections/s offered"), ("opened_per_s", "opened/s"),
                     ("connect_p50_ms", "connect p50 ms"), ("connect_p99_ms", "connect p99 ms"),
                     ("node_cpu_pct", "node CPU %"), ("node_us_per_conn", "node CPU µs/conn"),
                     ("listen_overflows", "listen overflows"), ("errors", "errors")]
RAMP_COLUMNS = [("offered_per_s", "offered/s"), ("sent_per_s", "joins sent/s"), ("matched_per_s", "matched/s"),
                ("connect_p50_ms", "connect p50 ms"), ("connect_p99_ms", "connect p99 ms"),
                ("wait_p50_ms", "join→match p50 ms"), ("wait_p99_ms", "join→match p99 ms"),
                ("node_cpu_pct", "node CPU %"), ("node_core_busy_pct", "node's core busy %"),
                ("node_us_per_join", "node CPU µs/join"),
                ("redis_cpu_pct", "Redis CPU %"), ("loadgen_cpu_pct", "load gen CPU %"),
                ("loadgen_lag_p99_ms", "load gen lag p99 ms"), ("listen_overflows", "listen overflows"),
                ("left_waiting", "left waiting"), ("late_rooms_pct", "late rooms %"),
                ("errors", "errors"), ("held", "held")]
STEADY_COLUMNS = [("rate_per_s", "arrivals/s"), ("countdown_s", "countdown s"), ("joins", "joins"),
                  ("matched", "matched"), ("wait_p50_ms", "wait p50 ms"), ("wait_p90_ms", "p90 ms"),
                  ("wait_p99_ms", "p99 ms"), ("wait_max_ms", "max ms"), ("rooms", "rooms"),
                  ("rooms_full_pct", "started full %"), ("rooms_countdown", "started by countdown"),
                  ("late_rooms_pct", "late rooms %"), ("left_waiting", "left waiting"), ("errors", "errors")]


def versions() -> str:
    names = ("uvloop", "websockets", "picows", "redis", "orjson")
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    server = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"v=(\S+)", server)
    return ", ".join(found) + (f", redis-server {match.group(1)}" if match else "")


# Where a join's node time goes, as subtrees of the node's stacks (they overlap: a join includes its Redis call).
PROFILE_SUBTREES = [
    ("Listener._serve", "a connection's task: the opening handshake, then its session"),
    ("App._process_request", "  our part of it: routing and the token check"),
    ("verify_token", "    the token check (lobby/signing.py, HS256)"),
    ("ServerProtocol.accept", "  websockets' Sans-I/O accept (checks the upgrade, builds the 101)"),
    ("LobbySession._join", "the join: the script call, then telling the waiters"),
    ("Seating.join", "  join.lua through redis-py"),
    ("LobbyHub._publish", "  delivering the room's new state to its local waiters"),
    ("mint_ticket", "    seat tickets for match_found (HS256)"),
    ("NodeRegistry.count_room", "  counting a new room on its host (one call per new room)"),
    ("WriteQueue.run", "the queued leave of each matched player (its seat is kept)"),
    ("GameConnection.close", "closing handshake after match_found"),
    ("BlockingConnectionPool.get_connection", "redis-py: taking a pooled connection (all calls)"),
    ("BlockingConnectionPool.release", "redis-py: giving it back (all calls)"),
]


def library_of(frame: str, installed: Collection[str]) -> str:
    """Whose code a py-spy frame `function (path:line)` is: a package, ours, the stdlib, or the event loop."""
    if frame.startswith("Runner.run "):
        return "event loop C code (uvloop, the kernel, the GC)"  # native time shows as its caller's own
    top = frame.rpartition(" (")[2].split("site-packages/")[-1].split("/")[0]
    if top in ("lobby", "server", "game", "bench"):
        return f"ours ({top}/)"
    if top in installed:
        return top
    return "asyncio" if top == "asyncio" else "other stdlib"


def profile_summary(path: Path, top: int = 12) -> str:
    """Where the node's time went, from py-spy's collapsed stacks: own samples by library, named subtrees (lower
    bounds: py-spy sometimes sees a coroutine's frames without their callers), and the top functions."""
    installed = set(metadata.packages_distributions())
    own: Counter[str] = Counter()
    libraries: Counter[str] = Counter()
    inside: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        samples = int(count)
        total += samples
        libraries[library_of(frames[-1], installed)] += samples
        own[re.sub(r" \(.*?([^/]+):\d+\)$", r" (\1)", frames[-1])] += samples
        for name in {frame.split(" (")[0] for frame in frames}:
            inside[name] += samples
    if not total:
        return f"no samples in {path}"
    lines = [f"node profile: {total} py-spy samples at 200 Hz (all its steps)", "own %  library"]
    lines += [f"{100 * samples / total:5.1f}  {library}" for library, samples in libraries.most_common()]
    lines.append("inside %  what")
    lines += [f"{100 * inside[name] / total:8.1f}  {what} ({name})" for name, what in PROFILE_SUBTREES]
    lines.append("own %  function")
    lines += [f"{100 * samples / total:5.1f}  {frame}" for frame, samples in own.most_common(top)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="scripts,e2e,steady")
    parser.add_argument("--script-procs", default="1,2", help="client processes for the scripts-alone runs")
    parser.add_argument("--script-seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent join calls per client process")
    parser.add_argument("--rates", default="500,1000,1500,2000,3000", help="offered joins/s, one step each")
    parser.add_argument("--seconds", type=float, default=6.0, help="arrivals per step (the first second unmeasured)")
    parser.add_argument("--handshake-rate", type=float, default=1000.0)
    parser.add_argument("--steady", default="200@10,200@1,3@1", help="RATE@COUNTDOWN_S runs, Poisson arrivals")
    parser.add_argument("--steady-seconds", type=float, default=15.0,
                        help="arrivals per steady run (longer at low rates: at least 90 arrivals expected)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--py-spy", type=Path, help="profile the e2e node with py-spy into this file")
    parser.add_argument("--json", action="store_true", help="also print every figure as one JSON object")
    parser.add_argument("--node", help=argparse.SUPPRESS)  # internal: run the node under test on this Redis
    parser.add_argument("--node-countdown", type=float, default=RAMP_COUNTDOWN_S, help=argparse.SUPPRESS)
    parser.add_argument("--node-prefix", default="bench", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.node:
        run(serve_node(args.node, args.node_countdown, args.node_prefix))
        return 0
    if shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        print("needs taskset (util-linux) and at least 2 cores", file=sys.stderr)
        return 2
    parts = set(args.parts.split(","))
    report: dict[str, Any] = {"machine": machine(), "versions": versions()}
    print(f"machine: {report['machine']}\nversions: {report['versions']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="tickroom-lobby-bench-") as tmp, \
            LocalRedis.start(Path(tmp) / "redis", persist=False) as redis_server:
        if "scripts" in parts:
            rows = [scripts_alone(redis_server, int(n), args.script_seconds, args.concurrency)
                    for n in args.script_procs.split(",")]
            benchmark = redis_benchmark(redis_server, requests=200_000, clients=50)
            if benchmark is not None:
                rows.append(benchmark)
            report["scripts"] = rows
            print("\nscripts alone (Seating.join; rooms fill to 5):\n" + markdown(rows, SCRIPT_COLUMNS), flush=True)
        os.sched_setaffinity(0, {LOAD_CORE})
        if "e2e" in parts:
            rates = [float(rate) for rate in args.rates.split(",")]
            handshake, ramp = end_to_end(redis_server, rates, args.seconds, args.handshake_rate, args.py_spy)
            report["handshake"], report["ramp"] = handshake, ramp
            print("\nhandshake alone (open /lobby, close; no join):\n" + markdown([handshake], HANDSHAKE_COLUMNS))
            print(f"\nend to end over /lobby (node on core {NODE_CORE}; rooms start at 5):\n"
                  + markdown(ramp, RAMP_COLUMNS), flush=True)
            held = [row["offered_per_s"] for row in ramp if row["held"]]
            print(f"highest rate held (≥{HELD_SHARE:.0%} of it matched per second, no errors, connect p99 ≤ "
                  f"{HELD_CONNECT_P99_MS:.0f} ms, wait p99 ≤ {HELD_WAIT_P99_MS:.0f} ms): "
                  f"{max(held) if held else 'none'} joins/s", flush=True)
        if "steady" in parts:
            rows = []
            for spec in args.steady.split(","):
                rate, countdown = (float(x) for x in spec.split("@"))
                rows.append(steady(redis_server, rate, countdown, max(args.steady_seconds, 90 / rate), args.seed))
                print(f"steady: {json.dumps(rows[-1])}", flush=True)
            report["steady"] = rows
            print("\njoin → match_found at a steady (Poisson) arrival rate:\n" + markdown(rows, STEADY_COLUMNS),
                  flush=True)
    if args.py_spy is not None and args.py_spy.exists():
        print("\n" + profile_summary(args.py_spy))
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
