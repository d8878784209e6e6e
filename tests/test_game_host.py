"""The room host with games on events (dice, tic-tac-toe) over real connections: an idle room does not step, a
message steps it at once, a game's refusal goes to its sender only, a newcomer gets the latest state with its
welcome, and messages that cross the end of a match are dropped without an error."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, cast

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.protocol import State

from server.app import App
from server.net.auth import Identity
from server.net.connection import GameConnection
from server.rooms.catalog import hosted, installed_games
from server.rooms.lifecycle import RoomPhase
from server.rooms.room import Room
from tests.serverkit import is_type, join_game, new_token, node_settings, recv_json, recv_until, start_app

Message = dict[str, Any]


def gone_connection() -> GameConnection:
    """A game connection that has closed: the room seats its player and sends it nothing."""
    return cast(GameConnection, SimpleNamespace(protocol=SimpleNamespace(state=State.CLOSED)))


@pytest.fixture
async def app() -> AsyncIterator[App]:
    node = await start_app(countdown_s=0.0, game_options='{"dice": {"lives": 1, "roll_time_ms": 60000}}')
    yield node
    await node.__aexit__(None, None, None)


async def quiet_for(ws: ClientConnection, seconds: float) -> list[Message]:
    """Everything that arrives within `seconds`."""
    got = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        try:
            got.append(await recv_json(ws, timeout=left))
        except TimeoutError:
            break
    return got


async def running_dice(app: App, room: str) -> tuple[list[ClientConnection], list[Message]]:
    players = [await join_game(app, room, mode="dice", token=new_token(f"d{i}")) for i in range(2)]
    for ws, _ in players:
        await recv_until(ws, lambda m: m["type"] == "state" and m.get("to_roll"))
    return [ws for ws, _ in players], [welcome for _, welcome in players]


async def test_an_idle_room_on_events_does_not_step_and_a_message_steps_it_at_once(app: App) -> None:
    games, welcomes = await running_dice(app, "idle-dice")
    assert welcomes[0]["tick_ms"] is None and welcomes[0]["mode"] == "dice"
    assert app.node is not None
    room = app.node.rooms["idle-dice"]
    steps = room.tick_no
    assert await quiet_for(games[0], 1.0) == []  # nobody acts: no state, no event
    assert room.tick_no == steps  # and the room did not step once
    await games[0].send('{"type":"roll"}')
    roll = await recv_until(games[1], is_type("event"), timeout=2)
    assert roll["kind"] == "roll" and roll["p"] == welcomes[0]["you"] and 1 <= roll["value"] <= 6
    state = await recv_until(games[1], is_type("state"), timeout=2)
    assert welcomes[0]["you"] not in state["to_roll"] and state["now"] > 0  # the room clock, for deadlines
    assert room.tick_no > steps
    for ws in games:
        await ws.close()


async def test_a_games_refusal_goes_to_its_sender_only_and_the_connection_goes_on(app: App) -> None:
    games, _ = await running_dice(app, "refusing-dice")
    await games[0].send('{"type":"roll"}')
    await recv_until(games[0], is_type("state"), timeout=2)
    await games[0].send('{"type":"roll"}')  # a second roll in the same throw
    error = await recv_until(games[0], is_type("error"), timeout=2)
    assert error["code"] == "not_your_roll"
    assert [m for m in await quiet_for(games[1], 0.5) if m["type"] == "error"] == []
    await games[0].send('{"type":"ping","t":7}')
    assert (await recv_until(games[0], is_type("pong")))["t"] == 7
    await games[0].send('{"type":"roll","extra":1,"seq":"x"}')  # unknown fields are ignored...
    await games[0].send('{"type":"move","cell":4}')  # ...but another game's message is no message of this one
    assert (await recv_until(games[0], is_type("error"), timeout=2))["code"] == "not_your_roll"
    assert (await recv_until(games[0], is_type("error"), timeout=2))["code"] == "unknown_type"
    for ws in games:
        await ws.close()


async def test_a_newcomer_gets_the_rooms_latest_state_with_its_welcome(app: App) -> None:
    first, _ = await join_game(app, "line-ttt", mode="tictactoe", token=new_token("x"))
    second, _ = await join_game(app, "line-ttt", mode="tictactoe", token=new_token("o"))
    state = await recv_until(first, lambda m: m["type"] == "state" and m["turn"] is not None, timeout=2)
    await asyncio.sleep(0.2)
    watcher, welcome = await join_game(app, "line-ttt", mode="tictactoe", token=new_token("watcher"))
    assert welcome["type"] == "welcome" and welcome["state"] == "running"  # a line takes newcomers while it runs
    latest = await recv_until(watcher, is_type("state"), timeout=2)
    assert latest["x"] == state["x"] and latest["o"] == state["o"]
    assert [entry["p"] for entry in latest["line"]] == [welcome["you"]]
    for ws in (first, second, watcher):
        await ws.close()


async def test_messages_that_cross_the_end_of_a_match_are_dropped_without_an_error(app: App) -> None:
    games, welcomes = await running_dice(app, "ending-dice")
    end = None
    while end is None:  # one life each: the first lost round ends the match
        for ws in games:
            await ws.send('{"type":"roll"}')
        for message in await quiet_for(games[0], 0.3):
            if message["type"] == "match_end":
                end = message
        assert all(m["type"] != "error" or m["code"] == "not_your_roll" for m in await quiet_for(games[1], 0.0))
    assert end["reason"] == "winner" and {line["p"] for line in end["ranking"]} == {w["you"] for w in welcomes}
    assert {"rounds_lost", "rolls", "score", "rank"} <= set(end["ranking"][0])
    await games[0].send('{"type":"roll"}')  # crossed the end on the wire
    assert [m for m in await quiet_for(games[0], 0.5) if m["type"] == "error"] == []
    for ws in games:
        await ws.close()


def test_a_finished_room_on_events_waits_for_its_linger_not_for_a_grace_that_has_passed() -> None:
    """Its players' reconnect grace ran out while the match was on: once finished, the room's next wake is the
    end of its linger, not that past grace (a wake time in the past would step it again and again)."""
    settings = node_settings(reconnect_grace_s=0.5, end_linger_s=2.0)
    now = [0.0]
    dice = hosted(installed_games()["dice"], settings)
    room = Room("spin", dice, dice.make(random.Random(1), 0), settings, 0.0, logging.getLogger("t"),
                roster=frozenset({"a", "b"}), clock=lambda: now[0])
    seats = [room.join(Identity(player, player), gone_connection(), 0.0) for player in ("a", "b")]
    assert room.phase is RoomPhase.RUNNING
    now[0] = 1.0
    for seat in seats:
        room.disconnect(seat, now[0])
    now[0] = 2.0  # both graces are over: the lobby gives a seat up, and the one left wins
    room.dismiss("a")
    room.tick(now[0])
    assert room.phase is RoomPhase.FINISHED
    now[0] = 2.5
    assert room.next_wake() == pytest.approx(2.0 + 2.0)
