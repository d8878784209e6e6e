"""`tickroom serve --workers N`: how workers are laid out (node ids, ports, public URLs) and restarted, and real
supervisors of two worker processes on the suite's Redis and Postgres: two nodes on one shared port, players on
both, a /game on the shared port sent to the right worker, `tickroom drain` of the supervisor's id draining both,
a worker killed with -9 started again with its players back in their match, SIGTERM stopping everything; and
`--workers 1`, one process as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import psutil
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from lobby.keys import LobbyKeys
from server.app import origin_allowed
from server.ops.embedded import free_ports
from server.ops.settings import Settings, SettingsError
from server.ops.supervisor import Supervisor
from server.ops.workers import RestartPolicy, plan_workers, worker_count
from tests.clusterkit import (
    TICKROOM,
    Message,
    child_environment,
    open_ws,
    redis_client,
    wait_heartbeats_after,
    wait_nodes_surveyed,
    wait_until,
)
from tests.serverkit import is_event, lobby_prefix, new_token, recv_until
from tests.test_lobby_cluster import JOIN, match_of, play

BASE = "wk"
WORKER_IDS = (f"{BASE}-w0", f"{BASE}-w1")


# -- the layout and the restart policy --------------------------------------------------------------------------

def test_workers_default_to_one_per_core_this_process_may_use() -> None:
    assert worker_count(Settings.load({})) == len(os.sched_getaffinity(0))
    assert worker_count(Settings.load({"TICKROOM_WORKERS": "3"})) == 3


def test_each_worker_is_a_node_of_its_own_reached_at_its_own_port_beside_the_shared_one() -> None:
    base = Settings.load({"TICKROOM_PORT": "9000", "TICKROOM_NODE_ID": "n"})
    slots = plan_workers(base, 3)
    assert [(slot.node_id, slot.shared_port, slot.own_port) for slot in slots] == \
        [("n-w0", 9000, 9001), ("n-w1", 9000, 9002), ("n-w2", 9000, 9003)]
    assert all(slot.sibling_ports == {9000, 9001, 9002, 9003} for slot in slots)

    def url(settings: Settings, index: int) -> str:  # as the app names it: the worker's own port
        slot = plan_workers(settings, 2)[index]
        return dataclasses.replace(slot.settings(settings), port=slot.own_port).advertised_url

    assert url(base, 1) == "ws://127.0.0.1:9002"
    assert plan_workers(dataclasses.replace(base, worker_port=9100), 2)[1].own_port == 9101
    # Behind a proxy: the operator's URL names each worker by its id or its port.
    assert url(dataclasses.replace(base, public_url="wss://play.example.org/node/{node}/"), 1) == \
        "wss://play.example.org/node/n-w1"
    assert url(dataclasses.replace(base, public_url="wss://game-1.example.org:{port}"), 0) == \
        "wss://game-1.example.org:9001"
    assert Settings.load({"TICKROOM_PUBLIC_URL": "ws://h/node/{node}", "TICKROOM_NODE_ID": "solo"}).advertised_url \
        == "ws://h/node/solo"


@pytest.mark.parametrize(("changes", "named"), [
    ({"public_url": "wss://play.example.org"}, "TICKROOM_PUBLIC_URL"),  # one URL for two workers
    ({"worker_port": 65535}, "TICKROOM_WORKER_PORT"),  # the second worker's port would be 65536
    ({"worker_port": 8999}, "TICKROOM_WORKER_PORT"),  # 8999 and 9000: the shared port among the workers'
])
def test_a_layout_that_cannot_work_is_refused_naming_the_setting(changes: dict[str, object], named: str) -> None:
    base = dataclasses.replace(Settings.load({"TICKROOM_PORT": "9000"}), **changes)  # type: ignore[arg-type]
    with pytest.raises(SettingsError, match=named):
        plan_workers(base, 2)


def test_a_public_url_may_hold_node_and_port_and_no_other_braces() -> None:
    with pytest.raises(SettingsError, match="TICKROOM_PUBLIC_URL"):
        Settings.load({"TICKROOM_PUBLIC_URL": "wss://play.example.org/{worker}"})


def test_settings_come_back_the_same_through_a_workers_environment() -> None:
    settings = Settings.load({"TICKROOM_PORT": "9000", "TICKROOM_NODE_ID": "n", "TICKROOM_BACKFILL": "yes",
                              "TICKROOM_NODE_HEARTBEAT_S": "0.2", "TICKROOM_DATA_DIR": "/tmp/x",
                              "TICKROOM_GAME_OPTIONS": '{"arena": {"kill_target": 5}}', "TICKROOM_WORKERS": "2",
                              "TICKROOM_PUBLIC_URL": "ws://h/node/{node}"})
    assert Settings.load(settings.as_environment()) == settings


def test_a_dead_worker_starts_again_after_a_doubling_back_off_and_is_left_dead_when_it_crash_loops() -> None:
    policy = RestartPolicy(first_delay_s=0.5, max_delay_s=3.0, crash_loop_deaths=5, window_s=60.0)
    assert [policy.died(now) for now in (0.0, 1.0, 3.0, 7.0)] == [0.5, 1.0, 2.0, 3.0]
    assert policy.died(20.0) is None  # five deaths within a minute
    steady = RestartPolicy(first_delay_s=0.5, crash_loop_deaths=3, window_s=60.0)
    assert [steady.died(now) for now in (0.0, 100.0, 200.0, 300.0)] == [0.5, 0.5, 0.5, 0.5]  # rare deaths


def test_a_page_of_the_shared_port_may_open_a_game_on_a_sibling_workers_port() -> None:
    siblings = frozenset({8000, 8001, 8002})
    assert origin_allowed("http://127.0.0.1:8000", "127.0.0.1:8001", frozenset(), siblings)
    assert not origin_allowed("http://127.0.0.1:8000", "127.0.0.1:8001", frozenset())  # a lone node: not its own
    assert not origin_allowed("http://127.0.0.1:9000", "127.0.0.1:8001", frozenset(), siblings)
    assert not origin_allowed("http://evil.example:8000", "127.0.0.1:8001", frozenset(), siblings)
    assert not origin_allowed("http://127.0.0.1:x", "127.0.0.1:8001", frozenset(), siblings)


async def test_a_supervisor_leaves_a_crash_looping_worker_dead_and_stops_when_none_is_left(
        redis_url: str, fresh_database: str, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings.load({}, redis_url=redis_url, database_url=fresh_database, port=free_ports(3),
                             node_id="loop", workers=2)
    supervisor = Supervisor(settings, plan_workers(settings, 2),
                            command=lambda slot: [sys.executable, "-c", "raise SystemExit(3)"],
                            restart_policy=lambda: RestartPolicy(first_delay_s=0.01, crash_loop_deaths=3))
    with caplog.at_level(logging.INFO, logger="tickroom.supervisor"):
        assert await asyncio.wait_for(supervisor.run(), 30) == 1
    said = [record.getMessage() for record in caplog.records if record.name == "tickroom.supervisor"]
    for node_id in ("loop-w0", "loop-w1"):
        assert sum(f"worker {node_id} " in line and "starting it again" in line for line in said) == 2, said
        assert sum(f"worker {node_id} exited with code 3, 3 deaths" in line and "crash loop" in line
                   for line in said) == 1, said


# -- real supervisors ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Serve:
    """One `tickroom serve` process (a supervisor, with --workers 2) on the suite's Redis and Postgres."""

    process: asyncio.subprocess.Process
    port: int
    log_path: Path

    @property
    def lobby(self) -> str:
        return f"ws://127.0.0.1:{self.port}/lobby"

    def workers(self) -> dict[int, psutil.Process]:
        """Its worker processes now, by index (`python -m server.worker INDEX`)."""
        found = {}
        for child in psutil.Process(self.process.pid).children():
            with contextlib.suppress(psutil.Error):
                command = child.cmdline()
                if command[-2:-1] == ["server.worker"]:
                    found[int(command[-1])] = child
        return found

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def problems(self) -> list[str]:
        return [line for line in self.log().splitlines()
                if '"level":"ERROR"' in line or '"level":"CRITICAL"' in line or line.startswith("Traceback")]

    async def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), 30)


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, redis_url: str, database_url: str, prefix: str, *args: str) -> AsyncIterator[Serve]:
    """`tickroom serve` with the test's lobby prefix and short timers, its output in a log file; whatever happens,
    nothing it started is left running (its log's tail is printed when the test fails)."""
    port = free_ports(3)
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            TICKROOM, "serve", *args, "--host", "127.0.0.1", "--port", str(port), "--node-id", BASE,
            "--redis-url", redis_url, "--database-url", database_url, "--lobby-prefix", prefix,
            "--min-players", "2", "--max-players", "2", "--node-heartbeat-s", "0.2", "--node-dead-after-s", "2",
            "--snapshot-every-s", "1", "--reconnect-grace-s", "30",
            stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT, env=child_environment())
    serve = Serve(process, port, log_path)
    try:
        yield serve
    except BaseException:
        print(f"----- last lines of {log_path} -----\n" + "\n".join(serve.log().splitlines()[-80:]))
        raise
    finally:
        if process.returncode is None:
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(process.pid).children(recursive=True):
                    child.kill()
            process.kill()
            await process.wait()


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    redis = redis_client(redis_url)
    yield redis
    await redis.aclose()


async def matched(serve: Serve, sockets: list[ClientConnection], names: str) -> tuple[list[str], list[Message]]:
    """Two players through the lobby of the shared port: their tokens and their `match_found`s (one room)."""
    tokens = [new_token(f"{names}{i}") for i in range(2)]
    lobbies = [await open_ws(serve.lobby, token) for token in tokens]
    sockets.extend(lobbies)
    for lobby in lobbies:
        await lobby.send(JOIN)
    founds = [await match_of(lobby) for lobby in lobbies]
    assert len({(found["room"], found["node"]) for found in founds}) == 1, founds
    return tokens, founds


async def in_the_game(tokens: list[str], founds: list[Message], sockets: list[ClientConnection]) -> None:
    """Each player follows `match_found` to its worker and is in the match, which runs (full: it starts at once)."""
    for token, found in zip(tokens, founds, strict=True):
        game, welcome = await play(token, found)
        sockets.append(game)
        assert welcome["type"] == "welcome", welcome
    await recv_until(sockets[-1], is_event("phase", state="running"), timeout=10)


async def close_all(sockets: list[ClientConnection]) -> None:
    for ws in sockets:
        with contextlib.suppress(Exception):
            await ws.close()


async def test_two_workers_are_two_nodes_on_one_port_hosting_rooms_each_drained_together_and_stopped_by_sigterm(
        tmp_path: Path, redis_url: str, fresh_database: str, client: aioredis.Redis) -> None:
    prefix = lobby_prefix()
    sockets: list[ClientConnection] = []
    async with serving(tmp_path, redis_url, fresh_database, prefix, "--workers", "2") as serve:
        await wait_nodes_surveyed(client, prefix, WORKER_IDS, timeout=30)
        urls = {node_id: await client.hget(f"{prefix}:node:{node_id}", "url") for node_id in WORKER_IDS}
        assert urls == {f"{BASE}-w{i}": f"ws://127.0.0.1:{serve.port + 1 + i}" for i in range(2)}
        workers = serve.workers()
        assert sorted(workers) == [0, 1]
        try:
            # A /game on the shared port that lands on the other worker is told where the room is.
            tokens, founds = await matched(serve, sockets, "a")
            host_url = urls[founds[0]["node"]]
            assert founds[0]["url"].startswith(f"{host_url}/game?")
            shared = founds[0]["url"].replace(host_url, f"ws://127.0.0.1:{serve.port}")
            for _ in range(40):  # the kernel spreads connections over both workers
                try:
                    landed = await open_ws(shared, tokens[0])
                except InvalidStatus as error:
                    refused = error.response
                    break
                await landed.close()  # on the host itself: accepted
            else:
                pytest.fail("40 connections to the shared port all landed on the room's own worker")
            body = orjson.loads(refused.body or b"{}")
            assert (refused.status_code, body["error"]) == (421, "wrong_node"), body
            assert host_url in body["message"]
            await in_the_game(tokens, founds, sockets)

            # The next rooms go to the less loaded worker, once the heartbeats say the first has a room.
            hosts = {founds[0]["node"]}
            for group in "bcd":
                if len(hosts) == 2:
                    break
                await wait_heartbeats_after(client, prefix, WORKER_IDS, int(time.time() * 1000))
                tokens, founds = await matched(serve, sockets, group)
                await in_the_game(tokens, founds, sockets)
                hosts.add(founds[0]["node"])
            assert hosts == set(WORKER_IDS)
        finally:
            await close_all(sockets)

        # `tickroom drain` of the supervisor's id, which is no node: each of its workers.
        drain = await asyncio.create_subprocess_exec(
            TICKROOM, "drain", BASE, "--no-wait", "--redis-url", redis_url, "--lobby-prefix", prefix,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=child_environment())
        out, err = await asyncio.wait_for(drain.communicate(), 20)
        assert drain.returncode == 0, err
        assert [line.split()[2] for line in out.decode().splitlines()] == list(WORKER_IDS), out

        async def draining() -> bool:
            states = [await client.hget(f"{prefix}:node:{node_id}", "state") for node_id in WORKER_IDS]
            return all(state in ("draining", "handing_off", "drained") for state in states)

        await wait_until(draining, 10, "both workers draining")

        assert await serve.stop() == 0
        _, alive = psutil.wait_procs(list(workers.values()), timeout=10)
        assert alive == []
        for node_id in WORKER_IDS:  # each deregistered on its way out
            assert not await client.exists(f"{prefix}:node:{node_id}")
        log = serve.log()
        for node_id in WORKER_IDS:  # every worker's lines name it
            assert f'"node":"{node_id}"' in log and f"node {node_id} ready" in log
        assert serve.problems() == []


async def test_a_worker_killed_mid_match_is_started_again_and_its_players_get_back_into_their_match(
        tmp_path: Path, redis_url: str, fresh_database: str, client: aioredis.Redis) -> None:
    prefix = lobby_prefix()
    sockets: list[ClientConnection] = []
    async with serving(tmp_path, redis_url, fresh_database, prefix, "--workers", "2") as serve:
        await wait_nodes_surveyed(client, prefix, WORKER_IDS, timeout=30)
        try:
            tokens, founds = await matched(serve, sockets, "k")
            await in_the_game(tokens, founds, sockets)
            room, host = founds[0]["room"], founds[0]["node"]
            snapshot = LobbyKeys(prefix, "arena").room_snapshot(room)

            async def snapshotted() -> bool:
                return bool(await client.exists(snapshot))

            await wait_until(snapshotted, 10, f"a snapshot of room {room}")
            index = WORKER_IDS.index(host)
            killed = serve.workers()[index]
            killed.kill()
            # Gone, its sockets closed: a connection queued on its share of the port until then is reset.
            await asyncio.to_thread(killed.wait, 10)

            async def back(token: str) -> Message:
                lobby = await open_ws(serve.lobby, token)
                sockets.append(lobby)
                await lobby.send(JOIN)
                found = await match_of(lobby)
                game, welcome = await play(token, found)
                sockets.append(game)
                assert found["room"] == room and found["node"] in WORKER_IDS, found
                return welcome

            for welcome in await asyncio.gather(*(back(token) for token in tokens)):
                assert welcome["type"] == "welcome" and welcome["state"] == "running", welcome

            async def started_again() -> bool:
                worker = serve.workers().get(index)
                return worker is not None and worker.pid != killed.pid and \
                    bool(await client.exists(f"{prefix}:node:{host}"))

            await wait_until(started_again, 20, f"{host} started again and heart-beating")
        finally:
            await close_all(sockets)
        assert f"worker {host} (pid {killed.pid}) exited with signal SIGKILL: starting it again" in serve.log()
        assert await serve.stop() == 0
        assert serve.problems() == []


async def test_one_worker_is_one_process_the_node_as_named(
        tmp_path: Path, redis_url: str, fresh_database: str, client: aioredis.Redis) -> None:
    prefix = lobby_prefix()
    async with serving(tmp_path, redis_url, fresh_database, prefix, "--workers", "1") as serve:
        await wait_nodes_surveyed(client, prefix, (BASE,), timeout=30)
        assert psutil.Process(serve.process.pid).children(recursive=True) == []
        assert await client.hget(f"{prefix}:node:{BASE}", "url") == f"ws://127.0.0.1:{serve.port}"
        assert await serve.stop() == 0
        assert '"node":' not in serve.log()  # a lone node's lines are as before
