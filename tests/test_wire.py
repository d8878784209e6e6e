"""The `delta` state encoding (server/net/wire.py, docs/protocol.md "State encodings"): what a client rebuilds from
keyframes and deltas equals what JSON would have sent, for the arena and any state shape; over a real node: a
keyframe first (also for a newcomer mid-match), the same states as a JSON client, bad encodings refused."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from pathlib import Path
from typing import Any

import msgspec
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
        # The same JSON text: the same values, of the same types, with the fields in the same order.
        assert orjson.dumps(got) == orjson.dumps(message)
    # The match had what the test is about: players coming and going, deaths, projectiles born and gone.
    counts = {len(state["players"]) for state in states}
    assert len(counts) >= 3
    assert any(not player["alive"] for state in states for player in state["players"])
    assert max(len(state["projectiles"]) for state in states) >= 3
    assert any(state["players"][0]["d"] > 0 for state in states[-10:])


def test_a_newcomer_mid_match_starts_from_a_keyframe_and_then_follows_the_deltas() -> None:
    states = list(arena_states(5.0, 5, seed=3))
    late = StateDecoder()
    assert orjson.dumps(late.decode(keyframe(states[150]))) == orjson.dumps(states[150])
    for previous, message in itertools.pairwise(states[150:]):
        assert orjson.dumps(late.decode(delta(previous, message))) == orjson.dumps(message)


def test_the_arena_delta_is_a_fraction_of_the_json_state() -> None:
    states = list(arena_states(10.0, 5, seed=1))
    json_bytes = sum(len(orjson.dumps(message)) for message in states[1:])
    delta_bytes = sum(len(delta(previous, message)) for previous, message in itertools.pairwise(states))
    assert delta_bytes * 8 < json_bytes


def test_the_worked_example_of_the_protocol_doc_is_what_the_server_encodes() -> None:
    one = {"p": 1, "x": 512.3, "y": 88.0, "hp": 100, "k": 2, "d": 1, "sc": 230, "seq": 871, "alive": True}
    two = {"p": 2, "x": 300.0, "y": 410.5, "hp": 70, "k": 1, "d": 2, "sc": 120, "seq": 640, "alive": True}
    before = {"type": "state", "tick": 1234, "t": 18510, "players": [one, two],
              "projectiles": [{"id": 16, "p": 2, "x": 990.3, "y": 400.0, "vx": 600.0, "vy": 0.0},
                              {"id": 17, "p": 1, "x": 530.1, "y": 90.2, "vx": 600.0, "vy": 0.0}]}
    after = {"type": "state", "tick": 1235, "t": 18525, "players": [{**one, "x": 512.6, "seq": 872}, two],
             "projectiles": [{"id": 17, "p": 1, "x": 539.1, "y": 90.2, "vx": 600.0, "vy": 0.0},
                             {"id": 18, "p": 2, "x": 301.2, "y": 410.5, "vx": 600.0, "vy": 0.0}]}
    frame = delta(before, after)
    doc = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
    block = doc.split("**Worked example** (the arena).", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    documented = []
    for line in block.splitlines():
        for token in line.split():
            if len(token) != 2 or any(char not in "0123456789abcdef" for char in token):
                break
            documented.append(token)
    assert frame.hex(" ") == " ".join(documented)
    assert f"The delta is {len(frame)} bytes (the JSON state is {len(orjson.dumps(after))})" in doc
    decoder = StateDecoder()
    decoder.decode(keyframe(before))
    assert orjson.dumps(decoder.decode(frame)) == orjson.dumps(after)


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
    ({"a": 0.0}, {"a": 999.9}),  # a big jump: a longer integer of tenths
    ({"a": 999.9}, {"a": -1e11}),
    ({"a": 0.3}, {"a": 1e13}),  # beyond tenths that a double holds exactly: the value
    ({"a": 1}, {"a": 2 ** 52}),  # an integer too big for tenths: the value, in ext 1
    ({"a": 2 ** 60}, {"a": 2 ** 60 + 1}),
    ({"a": 7}, {"a": -120}),
    ({"a": 1.0}, {"a": 1}),  # the same number, another type
    ({"a": 0.1}, {"a": 0.30000000000000004}),
    ({"a": 1, "b": 2, "c": 3}, {"b": 2, "a": 1, "c": 4}),  # fields in another order: a keyframe
    ({"a": {"x": 1, "y": 2}}, {"a": {"y": 2, "x": 3}}),  # an object's fields reordered: the object whole
    ({"a": [{"id": 1, "x": 1, "y": 2}]}, {"a": [{"id": 1, "y": 2, "x": 3}]}),  # an element's fields reordered
    ({"a": {"x": 1, "y": 2, "z": 3}}, {"a": {"x": 1, "z": 4, "w": 5, "v": 6}}),  # gone, changed, two new
    ({"a": {"b": 1, "10": 2, "2": 3}}, {"a": {"b": 2, "10": 3, "2": 4, "1": 5}}),  # names like array indices
    ({"a": {"__proto__": 1}}, {"a": {"__proto__": 2, "constructor": 3}}),
    ({"a": [{"id": 5, "x": 1.5}]}, {"a": [{"id": 5, "x": 1.5, "hp": 3}]}),  # an element gains a field
    ({"a": [{"id": "k1", "v": 1}, {"id": "k2", "v": 2}]}, {"a": [{"id": "k2", "v": 3}]}),  # string ids
    ({"a": [{"id": 1, "v": 1}, {"id": 2, "v": 2}]}, {"a": [{"id": 1, "v": 1.25}, {"id": 2, "v": [1]}]}),
    # New elements go as changes against the element before them: with other fields, in another order (whole),
    # after every old one is gone (the first whole), an element that is not an object.
    ({"a": [{"id": 1, "x": 1.5}]}, {"a": [{"id": 1, "x": 1.5}, {"id": 2, "y": 0.5, "z": "s"}]}),
    ({"a": [{"id": 1, "x": 1.5, "y": 2}]}, {"a": [{"id": 1, "x": 1.5, "y": 2}, {"y": 2, "id": 2, "x": 1.5}]}),
    ({"a": [{"id": 1, "x": 1.5}]}, {"a": [{"id": 2, "x": 2.5}, {"id": 3, "x": 3.5, "y": 1}, {"id": 4, "x": 0.01}]}),
    ({"a": [{"id": 1, "x": 1.5}]}, {"a": [{"id": 1, "x": 1.5}, 7]}),
]


@pytest.mark.parametrize(("before", "after"), SHAPES)
def test_any_state_shape_rebuilds_exactly(before: dict[str, Any], after: dict[str, Any]) -> None:
    states = [{"type": "state", "tick": 1, "t": 0, **before}, {"type": "state", "tick": 2, "t": 15, **after},
              {"type": "state", "tick": 4, "t": 40, **before}]
    for got, message in zip(rebuilt(states), states, strict=True):
        assert orjson.dumps(got) == orjson.dumps(message)


def random_states(seed: int, count: int) -> list[dict[str, Any]]:
    """`count` states of a made-up game that changes every way a state can: numbers moving by tenths and not,
    big jumps, type changes, fields and list elements coming and going, lists and fields reordered."""
    rng = random.Random(seed)
    body = {"things": [_random_thing(rng, ident) for ident in range(1, 6)], "score": 0, "board": {"a": 1.5}}
    states = []
    next_id = 6
    for tick in range(1, count + 1):
        body, next_id = _mutate_body(rng, body, next_id)
        states.append({"type": "state", "tick": tick, "t": 15 * tick, **body})
    return states


def _random_thing(rng: random.Random, ident: int) -> dict[str, Any]:
    return {"id": ident, "x": round(rng.uniform(0, 1000), 1), "y": round(rng.uniform(0, 1000), 1),
            "hp": rng.randint(0, 100), "alive": rng.random() < 0.9}


def _random_number(rng: random.Random, old: Any) -> Any:
    roll = rng.random()
    if not isinstance(old, (int, float)) or isinstance(old, bool) or roll < 0.05:
        return rng.choice([rng.randint(-5, 5), rng.random(), 2 ** 55, "text", None, True, [1, 2], {"k": 1}])
    if roll < 0.6:
        return round(old + rng.randint(-90, 90) / 10, 1) if isinstance(old, float) else old + rng.randint(-3, 3)
    if roll < 0.7:
        return round(rng.uniform(-1e6, 1e6), 1)  # a big jump
    if roll < 0.8:
        return old + rng.random()  # not a tenth
    return old


def _mutate_thing(rng: random.Random, thing: dict[str, Any]) -> dict[str, Any]:
    new = {name: _random_number(rng, value) if name != "id" and rng.random() < 0.5 else value
           for name, value in thing.items()}
    if rng.random() < 0.05 and len(new) > 1:
        new.pop(rng.choice([name for name in new if name != "id"]))
    if rng.random() < 0.05:
        new[rng.choice(["extra", "10", "v"])] = rng.randint(0, 9)
    if rng.random() < 0.03:
        new = dict(reversed(list(new.items())))
    return new


def _mutate_body(rng: random.Random, body: dict[str, Any], next_id: int) -> tuple[dict[str, Any], int]:
    things = [_mutate_thing(rng, thing) if rng.random() < 0.8 else thing for thing in body["things"]
              if rng.random() > 0.05]
    while rng.random() < 0.25 or not things:
        things.append(_random_thing(rng, next_id))
        next_id += 1
    if rng.random() < 0.02:
        rng.shuffle(things)
    board = {name: _random_number(rng, value) for name, value in body["board"].items()}
    if rng.random() < 0.1:
        board[f"f{rng.randint(0, 5)}"] = rng.random() * 100
    new = {"things": things, "score": body["score"] + rng.randint(0, 1) * 10, "board": board}
    if rng.random() < 0.02:
        new = {"board": board, "score": new["score"], "things": things}
    return new, next_id


def test_random_states_of_every_shape_rebuild_exactly_in_a_long_run_and_from_any_keyframe() -> None:
    states = random_states(seed=5, count=600)
    for got, message in zip(rebuilt(states), states, strict=True):
        assert orjson.dumps(got) == orjson.dumps(message)
    for start in (1, 77, 300):
        for got, message in zip(rebuilt(states[start:]), states[start:], strict=True):
            assert orjson.dumps(got) == orjson.dumps(message)


def test_a_state_whose_fields_come_in_another_order_is_sent_as_a_keyframe() -> None:
    before = {"type": "state", "tick": 1, "t": 0, "a": 1, "b": 2}
    after = {"type": "state", "tick": 2, "t": 15, "b": 2, "a": 1}
    assert delta(before, after) == keyframe(after)


def test_a_change_to_a_field_the_object_does_not_have_is_refused() -> None:
    decoder = StateDecoder()
    decoder.decode(keyframe({"type": "state", "tick": 1, "t": 0, "a": 1}))
    with pytest.raises(DeltaError, match="field 9"):
        decoder.decode(msgspec.msgpack.encode([1, 15, {9: 10}]))
    with pytest.raises(DeltaError, match=r"keyframe \(map\) or a delta"):
        decoder.decode(msgspec.msgpack.encode([1, 15]))
    with pytest.raises(DeltaError, match="extension type 7"):
        decoder.decode(msgspec.msgpack.encode([1, 15, {3: msgspec.msgpack.Ext(7, b"")}]))


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
    random states changing every way they can, and every shape of `SHAPES`, each sequence starting with a
    keyframe."""
    arena = list(arena_states(12.0, 5, seed=11, churn=True))[380:420]
    shapes = [[{"type": "state", "tick": 1, "t": 0, **before}, {"type": "state", "tick": 2, "t": 15, **after}]
              for before, after in SHAPES]
    sequences = [arena, random_states(seed=9, count=150), *shapes]
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
