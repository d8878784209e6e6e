"""Spectators: anyone with a token may watch a room this node hosts (`/game?room=ID&spectate=1`): they get the
room's broadcast, hold no seat, keep no room alive, and may send nothing but `ping` and `leave`."""

from __future__ import annotations

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.serverkit import closed_with, is_type, join_game, new_token, recv_until, start_app


async def test_a_spectator_watches_a_running_room_read_only_and_holds_no_seat() -> None:
    app = await start_app(countdown_s=0.0)
    try:
        players = [await join_game(app, "watched") for _ in range(3)]
        await recv_until(players[0][0], lambda m: m["type"] == "event" and m.get("state") == "running")
        watcher = await connect(f"{app.url}/game?room=watched&spectate=1&token={new_token('eve')}",
                                compression=None, open_timeout=5, max_queue=None)
        await watcher.send('{"type":"hello","v":1}')
        welcome = await recv_until(watcher, is_type("welcome"))
        assert (welcome["you"], welcome["spectator"], welcome["state"], welcome["mode"]) == (
            None, True, "running", "arena")
        assert len(welcome["players"]) == 3
        state = await recv_until(watcher, is_type("state"))
        assert len(state["players"]) == 3
        assert app.node is not None and app.node.rooms["watched"].player_count == 3  # no seat taken
        await watcher.send('{"type":"input","seq":1,"dx":1,"dy":0}')
        error = await recv_until(watcher, is_type("error"))
        assert error["code"] == "read_only"
        await watcher.send('{"type":"ping","t":3}')
        assert (await recv_until(watcher, is_type("pong")))["t"] == 3  # the connection goes on
        # A spectator keeps no room alive: when its players are gone, the room closes, and the spectator with it.
        for ws, _ in players:
            await ws.send('{"type":"leave"}')
        assert await closed_with(watcher) == 1000
    finally:
        await app.__aexit__(None, None, None)


async def test_a_spectator_of_a_room_this_node_does_not_host_is_refused() -> None:
    app = await start_app()
    try:
        try:
            await connect(f"{app.url}/game?room=nowhere&spectate=1&token={new_token()}", open_timeout=5)
            raise AssertionError("a spectator of no room was let in")
        except InvalidStatus as refusal:
            assert refusal.response.status_code == 404
            assert b"room_not_found" in refusal.response.body
    finally:
        await app.__aexit__(None, None, None)


async def test_the_spectators_of_an_abandoned_room_are_closed_with_it() -> None:
    app = await start_app(countdown_s=60.0)
    try:
        player, _ = await join_game(app, "left-alone")
        watcher = await connect(f"{app.url}/game?room=left-alone&spectate=1&token={new_token('eve')}",
                                compression=None, open_timeout=5, max_queue=None)
        await watcher.send('{"type":"hello","v":1}')
        assert (await recv_until(watcher, is_type("welcome")))["state"] == "waiting"
        await player.send('{"type":"leave"}')  # the only player leaves a room that never started
        assert await closed_with(watcher) == 1000
    finally:
        await app.__aexit__(None, None, None)
