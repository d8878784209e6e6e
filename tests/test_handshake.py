"""The `/game` handshake: tokens accepted and refused with HTTP 401 and a JSON reason, bad room requests."""

from __future__ import annotations

import asyncio
import os
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from server.app import App
from tests.serverkit import join_game, new_token, start_app


@pytest.fixture
async def app() -> AsyncIterator[App]:
    app = await start_app()
    yield app
    await app.__aexit__(None, None, None)


async def refused_with(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, additional_headers=headers or {}, open_timeout=5):
            pass
    response = info.value.response
    assert response.headers["Content-Type"] == "application/json"
    body: dict[str, Any] = orjson.loads(response.body)
    return response.status_code, body


async def test_a_valid_bearer_token_is_welcomed_with_the_players_identity(app: App) -> None:
    player_id = "0b6f7a2e-4a39-4c47-a1a4-3b0e8d2b4c11"
    ws, welcome = await join_game(app, "hs-ok", token=new_token("ann", player_id=player_id))
    assert welcome["type"] == "welcome"
    assert welcome["id"] == player_id
    assert welcome["you"] == 1
    assert welcome["players"] == [{"p": 1, "id": player_id, "name": "ann", "color": welcome["players"][0]["color"]}]
    await ws.close()


async def test_a_token_in_the_query_string_is_accepted_for_browsers(app: App) -> None:
    async with connect(f"{app.url}/game?room=hs-query&token={new_token('bob')}") as ws:
        await ws.send('{"type":"hello","v":1}')
        assert orjson.loads(await ws.recv())["type"] == "welcome"


async def test_a_missing_token_is_refused_with_401(app: App) -> None:
    status, body = await refused_with(f"{app.url}/game?room=r")
    assert (status, body["error"]) == (401, "token_missing")
    assert body["message"]


async def test_a_token_signed_with_another_secret_is_refused(app: App) -> None:
    token = new_token("mallory", secret="not-the-server-secret-but-long-enough-for-hs256")
    status, body = await refused_with(f"{app.url}/game?room=r", {"Authorization": f"Bearer {token}"})
    assert (status, body["error"]) == (401, "token_invalid")


async def test_garbage_in_place_of_a_token_is_refused(app: App) -> None:
    status, body = await refused_with(f"{app.url}/game?room=r", {"Authorization": "Bearer abc.def.ghi"})
    assert (status, body["error"]) == (401, "token_invalid")


async def test_an_expired_token_is_refused_as_expired(app: App) -> None:
    token = new_token("late", ttl_s=-60)
    status, body = await refused_with(f"{app.url}/game?room=r", {"Authorization": f"Bearer {token}"})
    assert (status, body["error"]) == (401, "token_expired")


async def test_a_token_whose_subject_is_not_a_uuid_is_refused(app: App) -> None:
    token = new_token("x", player_id="not-a-uuid")
    status, body = await refused_with(f"{app.url}/game?room=r", {"Authorization": f"Bearer {token}"})
    assert (status, body["error"]) == (401, "token_invalid")


@pytest.mark.parametrize(("query", "code"), [
    ("", "room_required"),
    ("?room=", "room_required"),
    ("?room=has%20space", "bad_room_id"),
    ("?room=" + "x" * 65, "bad_room_id"),
    ("?room=ok&mode=chess", "unknown_mode"),
])
async def test_bad_room_requests_are_refused_with_400(app: App, query: str, code: str) -> None:
    status, body = await refused_with(f"{app.url}/game{query}", {"Authorization": f"Bearer {new_token()}"})
    assert (status, body["error"]) == (400, code)


async def test_unknown_paths_get_404_json(app: App) -> None:
    status, body = await refused_with(f"{app.url}/nowhere", {"Authorization": f"Bearer {new_token()}"})
    assert (status, body["error"]) == (404, "not_found")


async def test_health_and_stats_answer_plain_http_with_json(app: App) -> None:
    base = app.url.replace("ws://", "http://")
    ws, _ = await join_game(app, "hs-stats")

    def get(path: str) -> Any:
        with urllib.request.urlopen(base + path, timeout=5) as response:
            assert response.headers["Content-Type"] == "application/json"
            return orjson.loads(response.read())

    # The node runs in this event loop: ask from a thread.
    assert await asyncio.to_thread(get, "/healthz") == {"status": "ok"}
    stats = await asyncio.to_thread(get, "/stats")
    assert stats["connections"] == 1
    room = stats["rooms"]["hs-stats"]
    assert room["state"] == "waiting"
    assert room["players"] == 1
    assert set(room["lateness_ms"]) == {"p50", "p99", "max"}
    await ws.close()


async def test_a_token_printed_by_tickroom_token_is_accepted_and_stable_per_name(app: App) -> None:
    tickroom = str(Path(sys.executable).with_name("tickroom"))
    env = {key: value for key, value in os.environ.items() if key != "TICKROOM_JWT_SECRET"}

    async def mint(name: str) -> str:
        process = await asyncio.create_subprocess_exec(tickroom, "token", name, stdout=asyncio.subprocess.PIPE,
                                                       env=env)
        out, _ = await process.communicate()
        assert process.returncode == 0
        return out.decode().strip()

    first, second = await mint("dev-ann"), await mint("dev-ann")
    ws, welcome = await join_game(app, "hs-cli-token", token=first)
    assert (welcome["type"], welcome["players"][0]["name"]) == ("welcome", "dev-ann")
    await ws.close()
    again, welcome_again = await join_game(app, "hs-cli-token-2", token=second)
    assert welcome_again["id"] == welcome["id"]
    await again.close()
