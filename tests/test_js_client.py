"""The JavaScript client library (clients/js) against real nodes: its own `node --test` suite, run once over the test
kit's WebSocket and once over Node's own (--experimental-websocket). One lobby node in this process for the suite
(integration.test.mjs); a deployment of two `tickroom serve` processes for what needs more than one node
(live-cluster.test.mjs: a spectator on the host, a drain, giving up with every node killed)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from server.app import App
from server.ops.settings import DEV_SECRET
from tests.clusterkit import Cluster, wait_nodes_surveyed
from tests.serverkit import lobby_prefix, start_lobby_app

REPO = Path(__file__).resolve().parent.parent
JS_TESTS = REPO / "clients" / "js" / "test"
CLUSTER_TESTS = JS_TESTS / "live-cluster.test.mjs"
NODE = shutil.which("node") or "/usr/bin/node"
SUITE_TIMEOUT_S = 120.0
CLUSTER_TIMEOUT_S = 60.0
# Node ids sort so that the lobby of b-lobby places new rooms on a-host while both are idle: the clients know only
# b-lobby, whose lobby they come back through when a-host drains.
HOST, LOBBY = "a-host", "b-lobby"
ADMIN_TOKEN = "js-client-test-admin-token-0123456789abcdef"
CLUSTER_ARGS = ("--admin-token", ADMIN_TOKEN, "--end-linger-s", "0.5", "--reconnect-grace-s", "30")
WEBSOCKETS = [pytest.param([], id="test-kit-websocket"),
              pytest.param(["--experimental-websocket"], id="node-websocket")]


def node_has_flag(flag: str) -> bool:
    if not os.path.exists(NODE):
        return False
    probe = subprocess.run([NODE, flag, "-e", "process.exit(typeof WebSocket === 'function' ? 0 : 1)"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


async def node_test(node_flags: list[str], files: list[Path], env: dict[str, str], timeout_s: float) -> str:
    """Run `node --test` on `files` with `env` added; its report, once every test passed and none was skipped."""
    if node_flags and not node_has_flag(node_flags[0]):
        pytest.skip(f"this node has no {node_flags[0]}")
    # A subprocess of the event loop: nodes in this process keep serving while node runs the tests.
    process = await asyncio.create_subprocess_exec(NODE, *node_flags, "--test", *map(str, files), cwd=REPO,
                                                   env={**os.environ, **env}, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.STDOUT)
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout_s)
    except TimeoutError:
        process.kill()
        output, _ = await process.communicate()
        pytest.fail(f"node --test ran over {timeout_s:.0f} s:\n{output.decode(errors='replace')}")
    report = output.decode(errors="replace")
    assert process.returncode == 0, f"node --test failed ({process.returncode}):\n{report}"
    assert "# fail 0" in report and "# skipped 0" in report, report
    return report


@pytest.fixture
async def lobby_node(redis_url: str) -> AsyncIterator[App]:
    app = await start_lobby_app(redis_url, countdown_s=0.5)
    yield app
    await app.__aexit__(None, None, None)


@pytest.mark.skipif(not os.path.exists(NODE), reason="node is not installed")
@pytest.mark.parametrize("node_flags", WEBSOCKETS)
async def test_js_client_suite_passes_against_a_lobby_node(lobby_node: App, node_flags: list[str]) -> None:
    files = sorted(path for path in JS_TESTS.glob("*.test.mjs") if path != CLUSTER_TESTS)
    await node_test(node_flags, files, {"TICKROOM_URL": lobby_node.url,
                                        "TICKROOM_JWT_SECRET": lobby_node.settings.jwt_secret}, SUITE_TIMEOUT_S)


@pytest.mark.skipif(not os.path.exists(NODE), reason="node is not installed")
@pytest.mark.parametrize("node_flags", WEBSOCKETS)
@pytest.mark.timeout(90)
async def test_js_client_spectates_follows_a_drain_to_another_node_and_gives_up_once_every_node_is_killed(
        cluster_of: Callable[..., Cluster], client: aioredis.Redis, node_flags: list[str]) -> None:
    prefix = lobby_prefix()
    async with cluster_of(prefix, (HOST, LOBBY), *CLUSTER_ARGS) as cluster:
        await wait_nodes_surveyed(client, prefix, (HOST, LOBBY))
        pids = [node.process.pid for node in cluster.nodes.values() if node.process is not None]
        # The last JS test kills both nodes (-9) itself, by these process ids, when its players are in a match.
        await node_test(node_flags, [CLUSTER_TESTS], {
            "TICKROOM_LOBBY_URL": cluster[LOBBY].url, "TICKROOM_JWT_SECRET": DEV_SECRET,
            "TICKROOM_ADMIN_TOKEN": ADMIN_TOKEN, "TICKROOM_NODE_PIDS": ",".join(map(str, pids))}, CLUSTER_TIMEOUT_S)
        for node in cluster.nodes.values():
            assert node.process is not None
            assert await asyncio.wait_for(node.process.wait(), 10) == -9, f"the JS test killed {node.node_id}"
        assert cluster.problems() == []
