"""Web pages and the node: a page of a site the operator did not list may not open /lobby or /game with a player's
token (403 origin_not_allowed), and the JSON endpoints answer CORS headers to listed origins only. Clients that send
no Origin (native games, the bot) and the node's own pages are unaffected."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import AsyncIterator

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from server.app import App
from server.ops.settings import Settings, SettingsError
from tests.serverkit import new_token, start_app

GAME_SITE = "https://game.example.com"


@pytest.fixture
async def app() -> AsyncIterator[App]:
    node = await start_app(allowed_origins=f"{GAME_SITE}, https://other.example.org/")
    yield node
    await node.__aexit__(None, None, None)


async def open_lobby(app: App, origin: str | None) -> tuple[int, dict[str, str] | None]:
    """Open /lobby with this Origin header: 101, or the refusal's status and JSON body."""
    headers = {"Authorization": f"Bearer {new_token()}"} | ({"Origin": origin} if origin else {})
    try:
        ws = await connect(f"{app.url}/lobby", additional_headers=headers, open_timeout=5, compression=None,
                           origin=None)
    except InvalidStatus as refusal:
        return refusal.response.status_code, orjson.loads(refusal.response.body)
    await ws.close()
    return 101, None


def get(app: App, path: str, origin: str | None) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(f"http://127.0.0.1:{app.port}{path}", headers={"Origin": origin} if origin else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers)


async def test_a_page_of_an_unlisted_site_may_not_open_the_lobby_or_a_game(app: App) -> None:
    assert await open_lobby(app, "https://evil.example.net") == (403, {
        "error": "origin_not_allowed", "message": "pages of https://evil.example.net may not connect to this node"})
    assert (await open_lobby(app, "null"))[0] == 403  # a page opened from a file
    status, body = await open_lobby(app, "https://game.example.com.evil.net")
    assert (status, body and body["error"]) == (403, "origin_not_allowed")


async def test_listed_sites_the_nodes_own_pages_and_clients_without_origin_may(app: App) -> None:
    assert (await open_lobby(app, GAME_SITE))[0] == 101
    assert (await open_lobby(app, "https://other.example.org"))[0] == 101  # listed with a trailing slash
    assert (await open_lobby(app, f"http://127.0.0.1:{app.port}"))[0] == 101  # a page the node serves itself
    assert (await open_lobby(app, None))[0] == 101  # a native client, the bot


async def test_the_json_endpoints_answer_cors_headers_to_listed_origins_only(app: App) -> None:
    status, headers = await asyncio.to_thread(get, app, "/modes", GAME_SITE)
    assert status == 200 and headers["Access-Control-Allow-Origin"] == GAME_SITE and headers["Vary"] == "Origin"
    status, headers = await asyncio.to_thread(get, app, "/modes", "https://evil.example.net")
    assert status == 200 and "Access-Control-Allow-Origin" not in headers  # the browser keeps it from that page
    status, headers = await asyncio.to_thread(get, app, "/modes", None)
    assert status == 200 and "Access-Control-Allow-Origin" not in headers


async def test_any_origin_is_for_development_only() -> None:
    node = await start_app(allowed_origins="*")
    try:
        assert (await open_lobby(node, "https://anything.example"))[0] == 101
        status, headers = await asyncio.to_thread(get, node, "/modes", "https://anything.example")
        assert status == 200 and headers["Access-Control-Allow-Origin"] == "*"
    finally:
        await node.__aexit__(None, None, None)
    with pytest.raises(SettingsError, match="TICKROOM_ALLOWED_ORIGINS"):
        Settings.load({"TICKROOM_ENV": "production", "TICKROOM_JWT_SECRET": "s" * 40,
                       "TICKROOM_ALLOWED_ORIGINS": "*"})
    with pytest.raises(SettingsError, match="TICKROOM_ALLOWED_ORIGINS"):
        Settings.load({"TICKROOM_ALLOWED_ORIGINS": "game.example.com"})  # an origin has a scheme


async def refused_over_websocket(url: str, headers: dict[str, str]) -> tuple[dict[str, str], int, str]:
    """Open `url` as a browser would ask to be told of a refusal: the `error` message, then the close."""
    async with connect(url, additional_headers=headers, open_timeout=5, compression=None, origin=None) as ws:
        error = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
        await ws.wait_closed()
        assert ws.close_code is not None and ws.close_reason is not None
        return error, ws.close_code, ws.close_reason


async def test_a_browser_asking_for_it_learns_why_its_connection_was_refused_from_the_close(app: App) -> None:
    error, code, reason = await refused_over_websocket(f"{app.url}/lobby?refusal=close",
                                                       {"Authorization": "Bearer not-a-token"})
    assert (error["type"], error["code"], code, reason) == ("error", "token_invalid", 4401, "token_invalid")
    error, code, reason = await refused_over_websocket(
        f"{app.url}/game?room=r1&refusal=close&token={new_token()}", {"Origin": "https://evil.example.net"})
    assert (error["code"], code, reason) == ("origin_not_allowed", 4403, "origin_not_allowed")
    # Without asking, a client keeps the HTTP refusal with its JSON body.
    with pytest.raises(InvalidStatus) as refused:
        await connect(f"{app.url}/lobby", additional_headers={"Authorization": "Bearer not-a-token"},
                      open_timeout=5)
    assert refused.value.response.status_code == 401
    assert orjson.loads(refused.value.response.body)["error"] == "token_invalid"


async def test_a_development_node_mints_a_token_for_a_page_and_a_production_one_does_not(app: App) -> None:
    def post(node: App, path: str, body: bytes = b"") -> tuple[int, dict[str, object]]:
        request = urllib.request.Request(f"http://127.0.0.1:{node.port}{path}", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, orjson.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, orjson.loads(error.read())

    status, body = await asyncio.to_thread(post, app, "/dev/token", b'{"name": " ann "}')
    assert status == 200 and body["name"] == "ann" and body["expires_in_s"] == 86_400
    # The token it gives opens the lobby, as the player it names.
    assert (await open_lobby_with(app, str(body["token"])))[0] == 101
    status, again = await asyncio.to_thread(post, app, "/dev/token?name=ann")  # the name in the query does too
    assert status == 200 and again["player_id"] != body["player_id"]  # a new player each time
    for bad, code in [(b'{"name": ""}', "bad_request"), (b'{"name": 7}', "bad_request"), (b"[]", "bad_request"),
                      (b'{"name": "' + b"x" * 33 + b'"}', "bad_request"), (b"{name", "bad_json")]:
        status, refused = await asyncio.to_thread(post, app, "/dev/token", bad)
        assert (status, refused["error"]) == (400, code), bad
    status, refused = await asyncio.to_thread(post, app, "/dev/token")  # no name at all
    assert (status, refused["error"]) == (400, "bad_request")
    production = await start_app(environment="production", jwt_secret="p" * 40)
    try:
        status, body = await asyncio.to_thread(post, production, "/dev/token", b'{"name": "ann"}')
        assert (status, body["error"]) == (404, "not_found")
    finally:
        await production.__aexit__(None, None, None)


async def open_lobby_with(app: App, token: str) -> tuple[int, None]:
    ws = await connect(f"{app.url}/lobby", additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=5)
    await ws.close()
    return 101, None
