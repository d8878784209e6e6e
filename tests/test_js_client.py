"""The JavaScript client library (clients/js) against a real lobby node: its own `node --test` suite, run with the
node's URL and JWT secret, once over the test kit's WebSocket and once over Node's own (--experimental-websocket)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.app import App
from tests.serverkit import start_lobby_app

REPO = Path(__file__).resolve().parent.parent
JS_TESTS = REPO / "clients" / "js" / "test"
NODE = shutil.which("node") or "/usr/bin/node"
SUITE_TIMEOUT_S = 120.0


def node_has_flag(flag: str) -> bool:
    if not os.path.exists(NODE):
        return False
    probe = subprocess.run([NODE, flag, "-e", "process.exit(typeof WebSocket === 'function' ? 0 : 1)"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.fixture
async def lobby_node(redis_url: str) -> AsyncIterator[App]:
    app = await start_lobby_app(redis_url, countdown_s=0.5)
    yield app
    await app.__aexit__(None, None, None)


@pytest.mark.skipif(not os.path.exists(NODE), reason="node is not installed")
@pytest.mark.parametrize("node_flags", [pytest.param([], id="test-kit-websocket"),
                                        pytest.param(["--experimental-websocket"], id="node-websocket")])
async def test_js_client_suite_passes_against_a_lobby_node(lobby_node: App, node_flags: list[str]) -> None:
    if node_flags and not node_has_flag(node_flags[0]):
        pytest.skip(f"this node has no {node_flags[0]}")
    env = {**os.environ, "TICKROOM_URL": lobby_node.url, "TICKROOM_JWT_SECRET": lobby_node.settings.jwt_secret}
    # A subprocess of the event loop: the node in this process keeps serving while node runs the suite.
    process = await asyncio.create_subprocess_exec(NODE, *node_flags, "--test", str(JS_TESTS), cwd=REPO, env=env,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        output, _ = await asyncio.wait_for(process.communicate(), SUITE_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        output, _ = await process.communicate()
        pytest.fail(f"node --test ran over {SUITE_TIMEOUT_S:.0f} s:\n{output.decode(errors='replace')}")
    report = output.decode(errors="replace")
    assert process.returncode == 0, f"node --test failed ({process.returncode}):\n{report}"
    assert "# fail 0" in report and "# skipped 0" in report, report
