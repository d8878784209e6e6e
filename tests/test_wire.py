"""The `delta` state encoding (server/net/wire.py, docs/protocol.md "State encodings"): what a client rebuilds from
keyframes and deltas equals what JSON would have sent, for the arena and any state shape; over a real node: a
keyframe first (also for a newcomer mid-match), the same states as a JSON client, bad encodings refused."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from bench.wire_bytes import arena_states
from server.net.wire import DeltaError, StateDecoder, delta, keyframe
from tests.serverkit import closed_with, is_type, new_token, open_game, recv_until, start_app


def as_json(message: dict[str, Any]) -> dict[str, Any]:
    """What a JSON client gets for `message`."""
    decoded: dict[str, Any] = orjson.loads(orjson.dumps(message))
    return decoded


def rebuilt(states: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The states a delta client rebuilds: a keyframe, then a delta against each previous state."""
    decoder = StateDecoder()
    out = [decoder.decode(keyframe(states[0]))]
    for previous, message in itertools.pairwise(states):
        out.append(decoder.decode(delta(previous, message)))
    return out


def test_a_whole_arena_match_with_joins_leaves_deaths_and_projectiles_rebuilds_exactly() -> None:
    states = list(arena_states(40.0, 5, seed=7, churn=True))
    for got, message in zip(rebuilt(states), states, strict=True):
        expected = as_json(message)
        assert got == expected
        assert [type(value) for value in _leaves(got)] == [type(value) for value in _leaves(expected)]
    # The match had what the test is about: players coming and going, deaths, projectiles born and gone.
    counts = {len(state["players"]) for state in states}
    assert len(counts) >= 3
    assert any(not player["alive"] for state in states for player in state["players"])
    assert max(len(state["projectiles"]) for state in states) >= 3
    assert any(state["players"][0]["d"] > 0 for state in states[-10:])


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for key in sorted(value, key=str) for leaf in _leaves(value[key])]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]


def test_a_newcomer_mid_match_starts_from_a_keyframe_and_then_follows_the_deltas() -> None:
    states = list(arena_states(5.0, 5, seed=3))
    late = StateDecoder()
    assert late.decode(keyframe(states[150])) == as_json(states[150])
    for previous, message in itertools.pairwise(states[150:]):
        assert late.decode(delta(previous, message)) == as_json(message)


def test_the_arena_delta_is_a_fraction_of_the_json_state() -> None:
    states = list(arena_states(10.0, 5, seed=1))
    json_bytes = sum(len(orjson.dumps(message)) for message in states[1:])
    delta_bytes = sum(len(delta(previous, message)) for previous, message in itertools.pairwise(states))
    assert delta_bytes * 4 < json_bytes


SHAPES: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({"a": 1, "b": "x"}, {"a": 2, "c": None}),  # changed, gone, new
    ({"a": 1.5}, {"a": 1}),  # float to int: the type is kept
    ({"a": 1}, {"a": 1.0}),
    ({"a": True}, {"a": 1}),
    ({"a": 0.1}, {"a": 0.123456}),  # not tenths
    ({"a": 0.1}, {"a": 900.7}),  # too far for a byte of tenths
    ({"a": -5.5}, {"a": -5.4}),
    ({"a": {"b": {"c": 1, "d": [1, 2]}}}, {"a": {"b": {"c": 1, "d": [2, 1]}}}),
    ({"a": [1, 2, 3]}, {"a": [1, 2]}),  # no ids: whole
    ({"a": [{"x": 1}]}, {"a": [{"x": 2}]}),
    ({"a": [{"id": 1}, {"id": 2}]}, {"a": [{"id": 2}, {"id": 1}]}),  # reordered: whole
    ({"a": [{"id": 1}, {"id": 2}]}, {"a": [{"id": 3}, {"id": 2}]}),  # new before old: whole
    ({"a": [{"id": 1}, {"id": 2}]}, {"a": [{"id": 2, "n": 1}, {"id": 4}, {"id": 3}]}),
    ({"a": [{"id": 1}, {"id": 1}]}, {"a": [{"id": 1}]}),  # ids not unique
    ({"a": [{"id": 1}]}, {"a": [{"id": "1"}]}),
    ({"a": [{"p": 1, "v": 2}]}, {"a": [{"p": 1, "v": 3}, {"p": 2, "v": 1}]}),
    ({"a": [{"id": 1}]}, {"a": {"1": {"id": 2}}}),  # a map where a list was: sent as a value
    ({"a": [{"id": 1}]}, {"a": []}),
    ({"a": []}, {"a": [{"id": 1}]}),
    ({"a": {"x": 1}}, {"a": {}}),
    ({"a": {"x": 1}}, {"a": 3}),
    ({"a": 3}, {"a": {"x": 1}}),
    ({"a": "é\u2603"}, {"a": "e"}),
    ({"a": [None, [1, 2]]}, {"a": [None, [1, 3]]}),
]


@pytest.mark.parametrize(("before", "after"), SHAPES)
def test_any_state_shape_rebuilds_exactly(before: dict[str, Any], after: dict[str, Any]) -> None:
    states = [{"type": "state", "tick": 1, "t": 0, **before}, {"type": "state", "tick": 2, "t": 15, **after},
              {"type": "state", "tick": 4, "t": 40, **before}]
    for got, message in zip(rebuilt(states), states, strict=True):
        assert got == as_json(message)
        assert [type(value) for value in _leaves(got)] == [type(value) for value in _leaves(as_json(message))]


def test_a_delta_without_a_keyframe_is_refused() -> None:
    state = {"type": "state", "tick": 1, "t": 0}
    with pytest.raises(DeltaError):
        StateDecoder().decode(delta(state, {**state, "tick": 2}))


def test_an_unchanged_state_is_a_few_bytes() -> None:
    state = {"type": "state", "tick": 1, "t": 0, "players": [{"p": 1, "x": 1.5}]}
    assert len(delta(state, {**state, "tick": 2, "t": 15})) == 4  # [1, 15, {}]


# -- over a real node -------------------------------------------------------------------------------------------


class StateClient:
    """A client that asked for `encoding` and rebuilds its states; the other messages are JSON text."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.decoder = StateDecoder()
        self.frames: list[str] = []  # "key", "delta" or "text" per state received

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        if isinstance(raw, bytes):
            # A keyframe is a MessagePack map, a delta an array (docs/protocol.md).
            self.frames.append("key" if raw[0] & 0xF0 == 0x80 or raw[0] in (0xDE, 0xDF) else "delta")
            return self.decoder.decode(raw)
        message: dict[str, Any] = orjson.loads(raw)
        if message["type"] == "state":
            self.frames.append("text")
        return message

    async def until(self, kind: str, timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            message = await self.next(max(0.01, deadline - time.monotonic()))
            if message["type"] == kind:
                return message


async def seated(app: Any, room: str, encoding: str | None, **kwargs: Any) -> tuple[StateClient, dict[str, Any]]:
    ws = await open_game(app, room, **kwargs)
    hello: dict[str, Any] = {"type": "hello", "v": 1}
    if encoding is not None:
        hello["encoding"] = encoding
    await ws.send(orjson.dumps(hello).decode())
    client = StateClient(ws)
    return client, await client.until("welcome")


async def states_by_tick(client: StateClient, count: int) -> dict[int, dict[str, Any]]:
    found: dict[int, dict[str, Any]] = {}
    while len(found) < count:
        message = await client.until("state")
        found[message["tick"]] = message
    return found


async def test_a_delta_client_gets_a_keyframe_then_deltas_equal_to_what_a_json_client_gets() -> None:
    app = await start_app(countdown_s=60.0)  # the room counts down (with states) while a newcomer comes
    try:
        plain, _ = await seated(app, "wire", None)
        packed, _ = await seated(app, "wire", "delta")
        third, _ = await seated(app, "wire", "json")
        for ws in (plain.ws, packed.ws, third.ws):
            await ws.send('{"type":"input","seq":1,"dx":1,"dy":0.5}')
        await packed.ws.send('{"type":"fire","seq":2,"angle":0.5}')
        json_states = await states_by_tick(plain, 60)
        delta_states = await states_by_tick(packed, 60)
        common = sorted(set(json_states) & set(delta_states))
        assert len(common) >= 30
        for tick in common:
            assert delta_states[tick] == json_states[tick]
        assert packed.frames[0] == "key" and set(packed.frames[1:]) == {"delta"}
        assert set(plain.frames) == {"text"}
        # A newcomer while the others get deltas starts from a keyframe.
        late, welcome = await seated(app, "wire", "delta")
        assert welcome["type"] == "welcome" and welcome["state"] == "countdown"
        late_states = await states_by_tick(late, 20)
        assert late.frames[0] == "key" and set(late.frames[1:]) == {"delta"}
        more = await states_by_tick(plain, 40)
        for tick in sorted(set(late_states) & set(more)):
            assert late_states[tick] == more[tick]
        assert set(late_states) & set(more)
    finally:
        await app.__aexit__(None, None, None)


async def test_a_spectator_can_ask_for_deltas() -> None:
    app = await start_app(countdown_s=0.0)
    try:
        players = [await seated(app, "watched", None) for _ in range(3)]
        watcher_ws = await connect(f"{app.url}/game?room=watched&spectate=1&token={new_token('eve')}",
                                   compression=None, open_timeout=5, max_queue=None)
        await watcher_ws.send('{"type":"hello","v":1,"encoding":"delta"}')
        watcher = StateClient(watcher_ws)
        await watcher.until("welcome")
        seen = await states_by_tick(watcher, 30)
        mine = await states_by_tick(players[0][0], 60)
        assert set(seen) & set(mine)
        for tick in set(seen) & set(mine):
            assert seen[tick] == mine[tick]
        assert watcher.frames[0] == "key" and set(watcher.frames[1:]) == {"delta"}
    finally:
        await app.__aexit__(None, None, None)


@pytest.mark.parametrize("encoding", ["msgpack", "", "DELTA", "x" * 300])
async def test_an_unknown_encoding_is_refused_with_its_own_code(encoding: str) -> None:
    app = await start_app()
    try:
        ws = await open_game(app, "refused")
        await ws.send(orjson.dumps({"type": "hello", "v": 1, "encoding": encoding}).decode())
        error = await recv_until(ws, is_type("error"))
        assert error["code"] == "unsupported_encoding"
        assert await closed_with(ws) == 1008
    finally:
        await app.__aexit__(None, None, None)


async def play_dice(client: StateClient, you: int, seconds: float) -> dict[int, dict[str, Any]]:
    """Roll whenever it is this client's turn; every state seen, by tick."""
    found: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            message = await client.next(left)
        except TimeoutError:
            break
        if message["type"] == "match_end":
            break
        if message["type"] == "state":
            found[message["tick"]] = message
            if you in message["to_roll"]:
                await client.ws.send('{"type":"roll"}')
    return found


async def test_a_game_on_events_sends_deltas_too() -> None:
    app = await start_app(countdown_s=0.0)
    try:
        plain, plain_welcome = await seated(app, "dice1", None, mode="dice")
        packed, packed_welcome = await seated(app, "dice1", "delta", mode="dice")
        json_states, delta_states = await asyncio.gather(play_dice(plain, plain_welcome["you"], 3.0),
                                                         play_dice(packed, packed_welcome["you"], 3.0))
        common = set(json_states) & set(delta_states)
        assert len(common) >= 3
        for tick in common:
            assert delta_states[tick] == json_states[tick]
        assert packed.frames[0] == "key" and "delta" in packed.frames
    finally:
        await app.__aexit__(None, None, None)


# -- the JavaScript client's fixture ------------------------------------------------------------------------------

JS_FIXTURE = Path(__file__).resolve().parent.parent / "clients" / "js" / "test" / "delta-fixture.json"


def js_fixture() -> bytes:
    """Frames (hex) and the JSON states they must decode to: an arena stretch with players leaving and coming back,
    and every shape of `SHAPES`, each sequence starting with a keyframe."""
    arena = list(arena_states(12.0, 5, seed=11, churn=True))[380:420]
    sequences = [arena] + [[{"type": "state", "tick": 1, "t": 0, **before}, {"type": "state", "tick": 2, "t": 15,
                                                                               **after}] for before, after in SHAPES]
    cases = []
    for states in sequences:
        frames = [keyframe(states[0]).hex()] + [delta(p, m).hex() for p, m in itertools.pairwise(states)]
        cases.append({"frames": frames, "states": [as_json(state) for state in states]})
    return orjson.dumps({"generated_by": "tests/test_wire.py (TICKROOM_WRITE_FIXTURE=1 rewrites it)",
                         "cases": cases}) + b"\n"


def test_the_js_clients_delta_fixture_is_what_the_server_encodes_today() -> None:
    expected = js_fixture()
    if os.environ.get("TICKROOM_WRITE_FIXTURE") == "1":
        JS_FIXTURE.write_bytes(expected)
    assert JS_FIXTURE.read_bytes() == expected, "run with TICKROOM_WRITE_FIXTURE=1 to rewrite the fixture"
