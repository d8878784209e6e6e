"""Helpers for tests that run several `tickroom serve` processes on one Redis and one Postgres.

Each node is a real child process with its own port, node id and log file; `Cluster` starts them, waits for
their `/healthz`, kills one on demand, and always stops them all (printing their log tails when the test fails).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from server.ops.embedded import free_port

TICKROOM = str(Path(sys.executable).with_name("tickroom"))
Message = dict[str, Any]


@dataclass
class NodeProcess:
    """One `tickroom serve` child process."""

    node_id: str
    port: int
    log_path: Path
    process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as error:
            return f"(no log: {error})"
        return "\n".join(text.splitlines()[-lines:])


def _http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            status: int = response.status
            return status
    except OSError:
        return None


def http_json(url: str) -> tuple[int, Any]:
    """GET a node's HTTP endpoint (blocking: call it through `asyncio.to_thread`)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, orjson.loads(error.read())


def child_environment() -> dict[str, str]:
    """This process's environment without anything that would configure a node behind the test's back."""
    return {key: value for key, value in os.environ.items()
            if key not in ("REDIS_URL", "DATABASE_URL") and not key.startswith("TICKROOM_")}


@dataclass
class Cluster:
    """Nodes sharing one Redis (one lobby prefix) and one Postgres. Use as `async with`."""

    tmp_path: Path
    redis_url: str
    database_url: str
    prefix: str
    node_ids: Sequence[str]
    extra_args: Sequence[str] = ()
    nodes: dict[str, NodeProcess] = field(default_factory=dict)

    async def __aenter__(self) -> Cluster:
        try:
            for node_id in self.node_ids:
                self.nodes[node_id] = await self._spawn(node_id)
            await asyncio.gather(*(self.wait_healthy(node) for node in self.nodes.values()))
        except BaseException:
            self.print_tails()
            await self.stop_all()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if exc is not None:
            self.print_tails()
        await self.stop_all()

    def __getitem__(self, node_id: str) -> NodeProcess:
        return self.nodes[node_id]

    async def _spawn(self, node_id: str, port: int | None = None) -> NodeProcess:
        # A restarted node logs to a new file: `problems()` reads every life's log.
        lives = sum(1 for _ in self.tmp_path.glob(f"{node_id}*.log"))
        node = NodeProcess(node_id, port or free_port(),
                           self.tmp_path / (f"{node_id}.log" if not lives else f"{node_id}.{lives + 1}.log"))
        # One node per process (the default would be a supervisor of one worker per core).
        args = ["serve", "--workers", "1", "--host", "127.0.0.1", "--port", str(node.port), "--node-id", node_id,
                "--public-url", node.url, "--redis-url", self.redis_url, "--database-url", self.database_url,
                "--lobby-prefix", self.prefix, "--countdown-s", "1", "--node-heartbeat-s", "0.2",
                "--node-dead-after-s", "2",
                # Storms of joins on a loaded machine are not overload: no load limit unless a test sets one.
                "--cpu-limit", "1", *self.extra_args]
        with node.log_path.open("wb") as log:
            node.process = await asyncio.create_subprocess_exec(
                TICKROOM, *args, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT,
                env=child_environment())
        return node

    async def wait_healthy(self, node: NodeProcess, timeout: float = 30.0) -> None:
        assert node.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if node.process.returncode is not None:
                raise AssertionError(f"node {node.node_id} exited early with {node.process.returncode}")
            if await asyncio.to_thread(_http_status, f"{node.http}/healthz") == 200:
                return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"node {node.node_id} did not become healthy in {timeout:g} s")

    async def kill(self, node_id: str) -> None:
        """kill -9: no shutdown, no deregistration; the other nodes must find out by themselves."""
        node = self.nodes[node_id]
        assert node.process is not None
        node.process.send_signal(signal.SIGKILL)
        await asyncio.wait_for(node.process.wait(), 10)

    async def restart(self, node_id: str) -> None:
        """Start a node that was killed again, under the same id and port, and wait until it is healthy."""
        old = self.nodes[node_id]
        assert old.process is not None and old.process.returncode is not None, "restart only a node that is gone"
        node = self.nodes[node_id] = await self._spawn(node_id, port=old.port)
        await self.wait_healthy(node)

    async def stop_all(self) -> None:
        async def stop(node: NodeProcess) -> None:
            process = node.process
            if process is None or process.returncode is not None:
                return
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()

        await asyncio.gather(*(stop(node) for node in self.nodes.values()), return_exceptions=True)

    def kill_leftovers(self) -> None:
        """Last resort, from a fixture's teardown (when the test was torn down before `__aexit__` ran)."""
        for node in self.nodes.values():
            if node.process is not None and node.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    node.process.kill()

    def print_tails(self, lines: int = 60) -> None:
        for node in self.nodes.values():
            print(f"----- last {lines} lines of {node.node_id}'s log ({node.log_path}) -----\n{node.tail(lines)}")

    def problems(self) -> list[str]:
        """Lines where a node (in any of its lives) logged an error or a traceback."""
        found = []
        for log_path in sorted(self.tmp_path.glob("*.log")):
            for line in log_path.read_text(errors="replace").splitlines():
                if any(mark in line for mark in ('"level":"ERROR"', '"level":"CRITICAL"', " ERROR ", " CRITICAL ")) \
                        or line.startswith("Traceback"):
                    found.append(f"{log_path.stem}: {line}")
        return found

    def logged(self, text: str) -> dict[str, int]:
        """How many lines of each node's logs (all its lives) contain `text`."""
        return {node_id: sum(log_path.read_text(errors="replace").count(text)
                             for log_path in self.tmp_path.glob(f"{node_id}*.log"))
                for node_id in self.nodes}


async def wait_until(condition: Callable[[], Awaitable[bool]], timeout: float, what: str,
                     interval: float = 0.05) -> float:
    """Poll `condition` until it holds; the seconds it took. Fails naming `what` after `timeout` seconds."""
    started = time.monotonic()
    while not await condition():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        await asyncio.sleep(interval)
    return time.monotonic() - started


_FORGET = """
local keys = redis.call('KEYS', ARGV[1])
for i = 1, #keys, 1000 do redis.call('DEL', unpack(keys, i, math.min(i + 999, #keys))) end
return #keys
"""


async def forget_everything(client: aioredis.Redis, prefix: str) -> int:
    """What FLUSHALL does to a deployment, to this test's keys only (other tests share the Redis server): at
    once, in one script, as FLUSHALL would; a SCAN and DEL would let the nodes' scripts run against a half-emptied
    lobby, which no real failure does."""
    return int(await client.eval(_FORGET, 0, f"{prefix}:*"))


def redis_client(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, decode_responses=True)


@dataclass(frozen=True)
class Dump:
    """Every key under a prefix with its value and TTL (-1: none), read while nothing changes."""

    values: dict[str, Any]
    ttls: dict[str, int]


async def dump(client: aioredis.Redis, prefix: str) -> Dump:
    """Read back every key under `prefix` (a client with `decode_responses`)."""
    keys = sorted([key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)])
    async with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.type(key)
        kinds = await pipe.execute()
    async with client.pipeline(transaction=False) as pipe:
        for key, kind in zip(keys, kinds, strict=True):
            if kind == "hash":
                pipe.hgetall(key)
            elif kind == "set":
                pipe.smembers(key)
            elif kind == "zset":
                pipe.zrange(key, 0, -1, withscores=True)
            else:
                pipe.get(key)
            pipe.ttl(key)
        replies = await pipe.execute()
    values: dict[str, Any] = {}
    for key, kind, value in zip(keys, kinds, replies[0::2], strict=True):
        values[key] = {member: score for member, score in value} if kind == "zset" else value
    return Dump(values, dict(zip(keys, replies[1::2], strict=True)))


async def wait_nodes_surveyed(client: aioredis.Redis, prefix: str, node_ids: Sequence[str],
                              timeout: float = 10.0) -> None:
    """Until every node is registered and has heart-beaten (then surveyed the others) since all were."""
    all_seen_ms: list[int] = []

    async def registered() -> bool:
        for node_id in node_ids:
            if not await client.exists(f"{prefix}:node:{node_id}"):
                return False
        all_seen_ms.append(int(time.time() * 1000))
        return True

    await wait_until(registered, timeout, f"nodes {list(node_ids)} registered")
    await wait_heartbeats_after(client, prefix, node_ids, all_seen_ms[0], timeout)


async def wait_heartbeats_after(client: aioredis.Redis, prefix: str, node_ids: Sequence[str], since_ms: int,
                                timeout: float = 10.0) -> None:
    """Until each node heart-beat at least one full period after `since_ms`: its survey since then has run."""
    async def fresh() -> bool:
        for node_id in node_ids:
            beat = await client.hget(f"{prefix}:node:{node_id}", "heartbeat_ms")
            if beat is None or int(beat) < since_ms + 300:
                return False
        return True

    await wait_until(fresh, timeout, f"nodes {list(node_ids)} heart-beat after {since_ms}")


async def open_ws(url: str, token: str) -> ClientConnection:
    return await connect(url, additional_headers={"Authorization": f"Bearer {token}"}, compression=None,
                         open_timeout=5, close_timeout=2)


async def refusal(url: str, token: str) -> tuple[int, str, str]:
    """Connect to `url`, expecting the handshake to be refused: (HTTP status, error code, message)."""
    try:
        ws = await open_ws(url, token)
    except InvalidStatus as error:
        body = orjson.loads(error.response.body or b"{}")
        return error.response.status_code, str(body.get("error")), str(body.get("message"))
    await ws.close()
    raise AssertionError(f"{url} accepted the connection")
