"""The bot as a person runs it: `tickroom bot ... --json` against a real node, read from its last line."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from server.app import App
from tests.serverkit import start_app, start_lobby_app

TICKROOM = str(Path(sys.executable).with_name("tickroom"))


@pytest.fixture
async def app() -> AsyncIterator[App]:
    app = await start_app(countdown_s=1.0)
    yield app
    await app.__aexit__(None, None, None)


async def run_bot(*args: str, timeout: float = 60.0) -> tuple[int, str, str]:
    env = {key: value for key, value in os.environ.items() if key != "TICKROOM_JWT_SECRET"}
    process = await asyncio.create_subprocess_exec(TICKROOM, "bot", *args, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.PIPE, env=env)
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def last_json_line(out: str) -> dict[str, Any]:
    summary: dict[str, Any] = orjson.loads(out.strip().splitlines()[-1])
    return summary


async def test_five_bots_fill_one_room_and_report_a_json_summary(app: App) -> None:
    code, out, err = await run_bot("--url", app.url, "--bots", "5", "--duration", "4", "--ramp", "0.2", "--json")
    assert code == 0, err
    summary = last_json_line(out)
    for key in ("bots", "duration_s", "states_per_s_p50", "states_per_s_min", "ack_ms_p50", "ack_ms_p99",
                "errors", "disconnects"):
        assert key in summary
    assert summary["bots"] == 5 and summary["connected"] == 5
    assert summary["duration_s"] == 4
    assert 60 <= summary["states_per_s_min"] <= summary["states_per_s_p50"] <= 70
    assert 0 < summary["ack_ms_p50"] <= summary["ack_ms_p99"] < 200
    assert summary["errors"] == 0 and summary["disconnects"] == 0
    # Live progress went to stderr while it ran.
    assert "states/s" in err


async def test_bots_report_the_bytes_they_receive_a_fraction_with_the_delta_encoding(app: App) -> None:
    rates = {}
    for encoding in ("json", "delta"):
        code, out, err = await run_bot("--url", app.url, "--bots", "5", "--duration", "4", "--ramp", "0.2", "--json",
                                       "--quiet", "--encoding", encoding)
        assert code == 0, err
        summary = last_json_line(out)
        assert summary["errors"] == 0 and summary["states_per_s_min"] >= 60
        rates[encoding] = summary["bytes_per_s_p50"]
    # The bots play the arena (they fire): speed is not asserted, the size of what they receive is.
    # About a fifth on a quiet machine, 3.9 times less in a loaded suite run: what a match sends varies with how
    # it goes, and a client skipped for reading slowly gets a keyframe. The test asks for less than a third.
    assert 0 < rates["delta"] * 3 <= rates["json"]


async def test_bots_in_a_named_room_play_there(app: App) -> None:
    assert app.node is not None
    node = app.node
    seen: set[str] = set()

    async def watch() -> None:
        while True:
            seen.update(node.rooms)
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    try:
        code, out, err = await run_bot("--url", app.url, "--bots", "3", "--duration", "3", "--room", "named-room",
                                       "--json", "--quiet")
    finally:
        watcher.cancel()
    assert code == 0, err
    assert seen == {"named-room"}
    assert last_json_line(out)["connected"] == 3


async def test_a_bot_refused_at_the_handshake_counts_errors_and_still_reports(app: App) -> None:
    code, out, _ = await run_bot("--url", app.url, "--bots", "2", "--duration", "2", "--secret",
                                 "a-secret-that-the-server-does-not-know-at-all", "--json", "--quiet")
    summary = last_json_line(out)
    assert code == 1  # nobody got in
    assert summary["connected"] == 0
    assert summary["errors"] > 0
    assert "token_invalid" in summary["error_codes"]


async def test_bots_in_lobby_mode_are_matched_follow_match_found_and_report_their_waits(redis_url: str) -> None:
    lobby_app = await start_lobby_app(redis_url, countdown_s=1.0, match_time_s=2.0, end_linger_s=0.2)
    try:
        code, out, err = await run_bot("--url", lobby_app.url, "--lobby", "--bots", "10", "--duration", "6",
                                       "--ramp", "0.5", "--json", "--quiet")
    finally:
        await lobby_app.__aexit__(None, None, None)
    assert code == 0, err
    summary = last_json_line(out)
    assert summary["connected"] == 10 and summary["errors"] == 0
    # Two rooms of five at once; after the 2 s matches, back through the lobby for more.
    assert summary["matched"] >= 20 and summary["rooms"] >= 4
    assert summary["wait_ms_p50"] is not None and 0 < summary["wait_ms_p50"] <= summary["wait_ms_p99"] < 3000


async def test_the_readmes_bot_example_prints_the_summary_the_readme_describes(redis_url: str) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    command = next(line.split("#")[0].split() for line in readme.splitlines()
                   if line.startswith(".venv/bin/tickroom bot "))
    described = readme[readme.index("The bot's `--json` summary"):].split("\n\n")[0]
    fields = []
    for name, other in re.findall(r"`([a-z_0-9]+)`(?:/`(p\d+)`)?", described):
        fields.append(name)
        if other:  # `wait_ms_p50`/`p99`
            fields.append(f"{name.rsplit('_', 1)[0]}_{other}")
    fields.remove("match_found")  # the message the wait ends at, not a field
    assert fields, "the README names the summary's fields"
    args = command[2:]
    args[args.index("--url") + 1] = "{url}"
    args[args.index("--duration") + 1] = "3"  # the example plays 30 s; the output's shape is what is checked
    lobby_app = await start_lobby_app(redis_url, countdown_s=0.5)
    try:
        code, out, err = await run_bot(*(arg.format(url=lobby_app.url) for arg in args))
    finally:
        await lobby_app.__aexit__(None, None, None)
    assert code == 0, err
    summary = last_json_line(out)
    missing = [field for field in fields if field not in summary]
    assert not missing, f"the README names {missing}, which the summary lacks: {summary}"
    assert summary["connected"] == 10 and summary["errors"] == 0
