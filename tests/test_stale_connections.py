"""A player whose older connection went dead without closing (a half-open TCP connection: the phone lost its
network) connects again: the older one is pinged, dropped when it does not answer within `stale_probe_s`, and the
new one takes over, on /game and in the lobby, on the same node or across nodes (a "kick" notice). A live older
connection keeps the player, and the new one is refused as before."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from server.app import App
from tests.serverkit import (
    RawClient,
    closed_with,
    is_type,
    join_game,
    join_lobby,
    lobby_prefix,
    new_token,
    recv_until,
    start_app,
    start_lobby_app,
)

PROBE_S = 0.5  # node_settings' stale_probe_s
JOIN = {"type": "join", "v": 1, "mode": "arena"}


async def silent_lobby_player(app: App, token: str) -> tuple[RawClient, str]:
    """A lobby connection that joined, got its room, and from then on answers nothing (not even pings)."""
    stale = await RawClient.open(app.port, path="/lobby", token=token)
    stale.send_json(JOIN)
    status = await stale.message()
    assert status["type"] == "lobby" and status["room"]
    return stale, status["room"]


async def test_a_game_reconnect_replaces_a_connection_that_no_longer_answers() -> None:
    app = await start_app()
    try:
        token = new_token("phone")
        stale = await RawClient.open(app.port, path="/game?room=r1", token=token)
        stale.send_json({"type": "hello", "v": 1})
        assert (await stale.message())["type"] == "welcome"
        # From here the old connection reads and answers nothing.
        started = time.monotonic()
        ws, welcome = await join_game(app, "r1", token=token)
        assert welcome["type"] == "welcome", welcome
        assert PROBE_S * 0.8 <= time.monotonic() - started < PROBE_S + 2.0
        await ws.close()
        stale.close()
    finally:
        await app.__aexit__(None, None, None)


async def test_a_second_game_connection_is_refused_while_the_first_still_answers() -> None:
    app = await start_app()
    try:
        token = new_token()
        first, welcome = await join_game(app, "r2", token=token)  # websockets answers the probe's ping
        assert welcome["type"] == "welcome"
        second, refusal = await join_game(app, "r2", token=token)
        assert refusal["type"] == "error" and refusal["code"] == "already_connected"
        assert await closed_with(second) == 1008
        await first.send('{"type":"ping","t":7}')
        assert (await recv_until(first, is_type("pong")))["t"] == 7
        await first.close()
    finally:
        await app.__aexit__(None, None, None)


async def test_a_lobby_player_whose_connection_went_dead_joins_again_into_the_same_room(redis_url: str) -> None:
    app = await start_lobby_app(redis_url, countdown_s=600)
    try:
        token = new_token("waiter")
        stale, room = await silent_lobby_player(app, token)
        again = await join_lobby(app, token)
        status = await recv_until(again, is_type("lobby"), timeout=PROBE_S + 5)
        assert status["room"] == room
        assert [p["name"] for p in status["players"]] == ["waiter"]
        await again.close()
        stale.close()
    finally:
        await app.__aexit__(None, None, None)


@pytest.fixture
async def two_nodes(redis_url: str) -> AsyncIterator[tuple[App, App]]:
    prefix = lobby_prefix()
    first = await start_lobby_app(redis_url, lobby_prefix=prefix, node_id="a-node", countdown_s=600)
    second = await start_lobby_app(redis_url, lobby_prefix=prefix, node_id="b-node", countdown_s=600)
    try:
        yield first, second
    finally:
        await second.__aexit__(None, None, None)
        await first.__aexit__(None, None, None)


async def test_a_kick_notice_drops_the_dead_connection_on_the_other_node(two_nodes: tuple[App, App]) -> None:
    first, second = two_nodes
    token = new_token("traveller")
    stale, room = await silent_lobby_player(first, token)
    again = await join_lobby(second, token)
    status = await recv_until(again, is_type("lobby"), timeout=PROBE_S + 5)
    assert status["room"] == room
    assert await stale.at_eof(timeout=5, unread_ok=True)  # node a dropped it (after a ping it left unread)
    assert first.hub is not None and not first.hub.waiters
    await again.close()
    stale.close()


async def test_a_live_lobby_connection_on_another_node_keeps_the_player(two_nodes: tuple[App, App]) -> None:
    first, second = two_nodes
    token = new_token()
    alive = await join_lobby(first, token)
    assert (await recv_until(alive, is_type("lobby")))["room"]
    refused = await join_lobby(second, token)
    error = await recv_until(refused, is_type("error"), timeout=PROBE_S + 5)
    assert error["code"] == "already_connected"
    await alive.send('{"type":"ping","t":3}')
    assert (await recv_until(alive, is_type("pong")))["t"] == 3
    assert first.hub is not None and len(first.hub.waiters) == 1
    await alive.close()


LONG_PROBE_S = 4.0  # long enough that a refusal at the probe's deadline could not pass for a prompt one


@pytest.mark.parametrize("across_nodes", [False, True], ids=["same-node", "across-nodes"])
async def test_a_second_lobby_connection_is_refused_as_soon_as_the_first_answers_the_probe(
        redis_url: str, across_nodes: bool) -> None:
    prefix = lobby_prefix()
    first = await start_lobby_app(redis_url, lobby_prefix=prefix, node_id="a-node", countdown_s=600,
                                  stale_probe_s=LONG_PROBE_S)
    second = (await start_lobby_app(redis_url, lobby_prefix=prefix, node_id="b-node", countdown_s=600,
                                    stale_probe_s=LONG_PROBE_S)) if across_nodes else first
    try:
        token = new_token()
        alive = await join_lobby(first, token)
        assert (await recv_until(alive, is_type("lobby")))["room"]
        started = time.monotonic()
        refused = await join_lobby(second, token)
        error = await recv_until(refused, is_type("error"), timeout=LONG_PROBE_S + 5)
        elapsed = time.monotonic() - started
        assert error["code"] == "already_connected"
        # The first connection answers its ping within milliseconds; waiting out the probe's deadline
        # (LONG_PROBE_S and more) would be the bug.
        assert elapsed < LONG_PROBE_S / 2, f"refused after {elapsed:.2f} s"
        await alive.send('{"type":"ping","t":5}')
        assert (await recv_until(alive, is_type("pong")))["t"] == 5
        await alive.close()
    finally:
        if second is not first:
            await second.__aexit__(None, None, None)
        await first.__aexit__(None, None, None)
