"""Open-loop load on a node's `/lobby`, and the node itself, for bench/lobby_joins.py.

Each arrival is one player: a picows connection with its own token that sends `join` as soon as it is open
and waits for `match_found` (the server then closes with 1000). Arrivals follow a schedule fixed in advance
(evenly paced, or Poisson), whatever the node's answers, so a slow node shows up as growing waits rather than
as a politely slower generator. The node runs in a process of its own (`python -m bench.lobby_joins --node`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import psutil
from picows import WSError, WSFrame, WSHandshakeError, WSListener, WSMsgType, WSTransport, ws_connect

from server.net.auth import mint_token
from server.ops.settings import DEV_SECRET

ROOT = Path(__file__).resolve().parent.parent
JOIN = b'{"type":"join","v":1,"mode":"arena"}'
LEAVE = b'{"type":"leave"}'
CONNECT_TIMEOUT_S = 10.0
CLOSE_WAIT_S = 3.0  # after the run's `leave`s, how long the node has to close the leftover connections
_TEXT = WSMsgType.TEXT
_CLOSE = WSMsgType.CLOSE
clock = time.perf_counter


# -- the node under test ---------------------------------------------------------------------------------

async def serve_node(redis_url: str, countdown_s: float, prefix: str) -> None:
    """Run a node (the in-process `App`, as `tickroom serve` does minus Postgres) until SIGTERM; print its port."""
    from server.app import App
    from server.cli import game_modes
    from server.ops.logs import configure_logging
    from server.ops.settings import Settings

    settings = Settings.load(environ={}, redis_url=redis_url, port=0, database_url="postgresql://unused",
                             cpu_limit=1.0, node_id=f"bench-{prefix}", lobby_prefix=prefix, countdown_s=countdown_s,
                             log_level="WARNING")
    configure_logging(settings.log_level, "text")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with App(settings, game_modes(settings)) as app:
        print(app.port, flush=True)
        await stop.wait()


@dataclass(frozen=True)
class NodeProcess:
    port: int
    process: psutil.Process

    @property
    def lobby_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/lobby"


@contextlib.contextmanager
def running_node(redis_url: str, countdown_s: float, core: int, py_spy: Path | None = None) -> Iterator[NodeProcess]:
    """A node on `core`, with a lobby prefix of its own (no keys shared with earlier runs, nothing flushed);
    with `py_spy`, sampled by py-spy into that file (collapsed stacks) until it stops."""
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    command = ["taskset", "-c", str(core), sys.executable, "-m", "bench.lobby_joins", "--node", redis_url,
               "--node-countdown", str(countdown_s), "--node-prefix", prefix]
    node = subprocess.Popen(command, stdout=subprocess.PIPE, cwd=ROOT)
    profiler = None
    try:
        assert node.stdout is not None
        line = node.stdout.readline()
        if not line.strip():
            raise RuntimeError(f"the node exited ({node.wait()}) before printing its port")
        if py_spy is not None:
            profiler = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--pid",
                                         str(node.pid), "--format", "raw", "--rate", "200", "--nonblocking",
                                         "--output", str(py_spy)], stdout=subprocess.DEVNULL)
        yield NodeProcess(int(line), psutil.Process(node.pid))
    finally:
        node.terminate()
        node.wait(timeout=30)
        if profiler is not None:
            profiler.wait(timeout=30)  # py-spy stops and writes its file when the node exits


# -- the players ----------------------------------------------------------------------------------------

@dataclass(slots=True)
class Attempt:
    """One player's try, in perf_counter seconds: connect begun, join sent, match_found received."""

    due: float
    started: float = 0.0
    joined: float = 0.0
    matched: float = 0.0
    room: str = ""
    size: int = 0  # players in the room that started
    error: str = ""


class LobbyPlayer(WSListener):
    __slots__ = ("_open", "attempt", "transport")

    def __init__(self, attempt: Attempt, open_players: set[LobbyPlayer]) -> None:
        self.attempt = attempt
        self.transport: WSTransport | None = None
        self._open = open_players

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self._open.add(self)
        self.attempt.joined = clock()
        transport.send(_TEXT, JOIN)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is _CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
            return
        if frame.msg_type is not _TEXT:
            return
        msg = orjson.loads(frame.get_payload_as_bytes())
        kind = msg.get("type")
        if kind == "match_found":
            attempt = self.attempt
            attempt.matched = clock()
            attempt.room = msg["room"]
            attempt.size = len(msg["players"])
        elif kind == "error":
            self.attempt.error = str(msg.get("code"))

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self._open.discard(self)

    def leave(self) -> None:
        if self.transport is not None:
            self.transport.send(_TEXT, LEAVE)


async def _play(url: str, token: str, attempt: Attempt, open_players: set[LobbyPlayer], join: bool) -> None:
    attempt.started = clock()
    try:
        if join:
            transport, _ = await ws_connect(lambda: LobbyPlayer(attempt, open_players), url,
                                            extra_headers={"Authorization": f"Bearer {token}"}, max_redirects=0,
                                            websocket_handshake_timeout=CONNECT_TIMEOUT_S)
        else:  # the handshake alone: open, then close at once without a join
            transport, _ = await ws_connect(WSListener, url, extra_headers={"Authorization": f"Bearer {token}"},
                                            max_redirects=0, websocket_handshake_timeout=CONNECT_TIMEOUT_S)
            attempt.joined = clock()
            transport.send_close()
            transport.disconnect()
    except WSHandshakeError as exc:
        attempt.error = f"http_{exc.response.status if exc.response is not None else '?'}"
        return
    except (OSError, WSError, TimeoutError) as exc:
        attempt.error = f"connect_{type(exc).__name__}"
        return
    await transport.wait_disconnected()


def paced(rate: float, seconds: float) -> list[float]:
    return [i / rate for i in range(int(rate * seconds))]


def poisson(rate: float, seconds: float, rng: random.Random) -> list[float]:
    times, t = [], rng.expovariate(rate)
    while t < seconds:
        times.append(t)
        t += rng.expovariate(rate)
    return times


def tokens(count: int) -> list[str]:
    """Minted before the run: minting (~16 µs each) is no part of what the node does."""
    run = uuid.uuid4().hex[:6]
    return [mint_token(DEV_SECRET, f"b{run}-{i}", player_id=str(uuid.uuid4())) for i in range(count)]


@dataclass
class LoadResult:
    attempts: list[Attempt]
    window: tuple[float, float]  # perf_counter bounds of the measured part of the arrivals
    node_cpu_s: float  # node process CPU seconds over the window
    redis_cpu_s: float
    own_cpu_s: float
    node_core_busy: float  # share of the window the node's core was busy (the kernel's work for it included)
    left: int  # players still waiting at the end, sent `leave`


async def offer(url: str, arrivals: list[float], node: psutil.Process, redis: psutil.Process, *,
                warmup_s: float, drain_s: float, join: bool = True, node_core: int = 0) -> LoadResult:
    """Start one player at each arrival time (seconds from now); measure CPU from `warmup_s` to the last
    arrival; wait up to `drain_s` for the last waits to end, then send `leave` to whoever still waits."""
    keys = tokens(len(arrivals))
    open_players: set[LobbyPlayer] = set()
    me = psutil.Process()
    t0 = clock() + 0.1
    end = t0 + (arrivals[-1] if arrivals else 0.0)
    window = (t0 + min(warmup_s, end - t0), end)

    def cpu() -> tuple[float, ...]:
        node_s, redis_s, own_s = (float(sum(p.cpu_times()[:2])) for p in (node, redis, me))
        core = psutil.cpu_times(percpu=True)[node_core]
        return node_s, redis_s, own_s, core.idle + core.iowait, sum(core)

    async def sample_cpu() -> tuple[float, ...]:
        await asyncio.sleep(max(0.0, window[0] - clock()))
        before = cpu()
        await asyncio.sleep(max(0.0, window[1] - clock()))
        return tuple(b - a for a, b in zip(before, cpu(), strict=True))

    attempts = [Attempt(due=t0 + offset) for offset in arrivals]
    async with asyncio.TaskGroup() as group:
        sampler = group.create_task(sample_cpu())
        players: list[asyncio.Task[None]] = []
        for attempt, token in zip(attempts, keys, strict=True):
            delay = attempt.due - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            players.append(group.create_task(_play(url, token, attempt, open_players, join)))
        if players:
            await asyncio.wait(players, timeout=drain_s)
        left = len(open_players)
        for player in list(open_players):
            player.leave()
        pending = (await asyncio.wait(players, timeout=CLOSE_WAIT_S))[1] if players else set()
        for player in list(open_players):
            if player.transport is not None:
                player.transport.disconnect()
        for task in pending:
            task.cancel()
    node_cpu, redis_cpu, own_cpu, core_idle, core_total = sampler.result()
    return LoadResult(attempts, window, node_cpu, redis_cpu, own_cpu, 1.0 - core_idle / max(core_total, 1e-9), left)

