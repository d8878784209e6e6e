"""Bad input over a real connection gets its documented error or close code, and nothing else breaks."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from server.app import App
from server.net.connection import MAX_UNSENT_BYTES
from tests.serverkit import (
    closed_with,
    is_type,
    join_game,
    new_token,
    open_game,
    recv_until,
    start_app,
    wait_for,
)


@pytest.fixture
async def app() -> AsyncIterator[App]:
    app = await start_app(rate_per_s=60.0, rate_burst=120)
    yield app
    await app.__aexit__(None, None, None)


async def error_code(ws: ClientConnection) -> str:
    message = await recv_until(ws, is_type("error"))
    assert message["message"]
    code: str = message["code"]
    return code


async def still_alive(ws: ClientConnection) -> None:
    await ws.send('{"type":"ping","t":42}')
    pong = await recv_until(ws, is_type("pong"))
    assert pong["t"] == 42


@pytest.mark.parametrize(("raw", "code"), [
    ("{oops", "bad_json"),
    ('{"type":"ping","t":1e999}', "out_of_range"),
    ("[1,2,3]", "bad_message"),
    ('{"no_type":1}', "bad_message"),
    ('{"type":"warp"}', "unknown_type"),
    ('{"type":"input","seq":1,"dx":0}', "bad_field"),
    ('{"type":"input","seq":"7","dx":0,"dy":0}', "bad_field"),
    ('{"type":"input","seq":1,"dx":true,"dy":0}', "bad_field"),
    ('{"type":"input","seq":1,"dx":1.5,"dy":0}', "out_of_range"),
    ('{"type":"input","seq":-4,"dx":0,"dy":0}', "out_of_range"),
    ('{"type":"fire","seq":2,"angle":100}', "out_of_range"),
    ('{"type":"chat","text":"' + "a" * 201 + '"}', "text_too_long"),
    ('{"type":"hello","v":1}', "bad_message"),
])
async def test_a_bad_message_in_a_room_gets_its_error_and_the_connection_goes_on(app: App, raw: str,
                                                                               code: str) -> None:
    ws, welcome = await join_game(app, "bad-1")
    assert welcome["type"] == "welcome"
    await ws.send(raw)
    assert await error_code(ws) == code
    await still_alive(ws)
    await ws.close()


async def test_a_binary_frame_is_a_bad_message(app: App) -> None:
    ws, _ = await join_game(app, "bad-bin")
    await ws.send(b'{"type":"ping","t":1}')
    assert await error_code(ws) == "bad_message"
    await still_alive(ws)
    await ws.close()


async def test_an_oversized_frame_closes_with_1009_and_the_room_keeps_its_other_players(app: App) -> None:
    big, _ = await join_game(app, "bad-big")
    other, _ = await join_game(app, "bad-big")
    await big.send('{"type":"chat","text":"' + "x" * 5000 + '"}')
    assert await closed_with(big) == 1009
    await recv_until(other, lambda m: m["type"] == "event" and m["kind"] == "leave")
    await still_alive(other)
    await other.close()


async def test_a_flood_gets_rate_limited_then_closed_with_1008(app: App) -> None:
    ws, _ = await join_game(app, "bad-flood")
    for seq in range(200):
        try:
            await ws.send(f'{{"type":"input","seq":{seq},"dx":0,"dy":0}}')
        except ConnectionClosed:
            break
    assert await error_code(ws) == "rate_limited"
    assert await closed_with(ws) == 1008


async def test_a_steady_stream_under_the_limit_is_not_cut(app: App) -> None:
    ws, _ = await join_game(app, "bad-steady")
    for seq in range(100):
        await ws.send(f'{{"type":"input","seq":{seq},"dx":0.1,"dy":0}}')
    await still_alive(ws)
    await ws.close()


async def test_messages_before_hello_are_refused_and_close_1008(app: App) -> None:
    ws = await open_game(app, "bad-nohello")
    await ws.send('{"type":"input","seq":1,"dx":0,"dy":0}')
    assert await error_code(ws) == "hello_required"
    assert await closed_with(ws) == 1008


async def test_ping_is_answered_before_hello(app: App) -> None:
    ws = await open_game(app, "bad-ping-first")
    await still_alive(ws)
    await ws.close()


async def test_no_hello_in_time_closes_1008() -> None:
    app = await start_app(hello_timeout_s=0.3)
    try:
        ws = await open_game(app, "bad-slow-hello")
        assert await error_code(ws) == "hello_required"
        assert await closed_with(ws) == 1008
    finally:
        await app.__aexit__(None, None, None)


async def test_an_unsupported_protocol_version_is_refused(app: App) -> None:
    ws = await open_game(app, "bad-version")
    await ws.send('{"type":"hello","v":2}')
    assert await error_code(ws) == "unsupported_version"
    assert await closed_with(ws) == 1008


async def test_the_same_player_twice_is_refused_while_the_first_connection_plays_on(app: App) -> None:
    token = new_token("twin")
    first, _ = await join_game(app, "bad-twin-a", token=token)
    second = await open_game(app, "bad-twin-b", token=token)
    assert await error_code(second) == "already_connected"
    assert await closed_with(second) == 1008
    await still_alive(first)
    await first.close()


async def test_a_sixth_player_is_refused_as_room_full() -> None:
    app = await start_app(countdown_s=60.0)
    try:
        players = [await join_game(app, "bad-full") for _ in range(5)]
        sixth, answer = await join_game(app, "bad-full")
        assert (answer["type"], answer["code"]) == ("error", "room_full")
        assert await closed_with(sixth) == 1008
        for ws, _ in players:
            await ws.close()
    finally:
        await app.__aexit__(None, None, None)


async def test_a_newcomer_cannot_enter_a_running_match_with_free_seats() -> None:
    app = await start_app(countdown_s=0.0)
    try:
        players = [await join_game(app, "bad-running") for _ in range(3)]
        await recv_until(players[0][0], lambda m: m["type"] == "event" and m.get("state") == "running")
        late, answer = await join_game(app, "bad-running")
        assert (answer["type"], answer["code"]) == ("error", "room_in_progress")
        assert await closed_with(late) == 1008
        for ws, _ in players:
            await ws.close()
    finally:
        await app.__aexit__(None, None, None)


def masked_text_frame(payload: bytes, fin: bool = True, opcode: int = 1, key: bytes | None = None) -> bytes:
    key = key or os.urandom(4)
    masked = bytes(byte ^ key[i % 4] for i, byte in enumerate(payload))
    assert len(payload) < 126
    return bytes(((0x80 if fin else 0) | opcode, 0x80 | len(payload))) + key + masked


async def test_frames_split_across_reads_coalesced_or_fragmented_all_arrive_in_order(app: App) -> None:
    ws, welcome = await join_game(app, "frames")
    me = welcome["you"]
    chats = [b'{"type":"chat","text":"%d"}' % n for n in range(6)]
    first, second = masked_text_frame(chats[0]), masked_text_frame(chats[1])
    # One frame cut in two TCP writes, followed by two frames in one write...
    ws.transport.write(first[:5])
    await asyncio.sleep(0.05)
    ws.transport.write(first[5:] + second + masked_text_frame(chats[2]))
    # ...a message in two fragments (text frame without FIN, then a continuation)...
    ws.transport.write(masked_text_frame(chats[3][:10], fin=False) + masked_text_frame(chats[3][10:], opcode=0))
    # ...and frames after it on the fast path again.
    ws.transport.write(masked_text_frame(chats[4]) + masked_text_frame(chats[5]))
    texts = []
    while len(texts) < 6:
        event = await recv_until(ws, lambda m: m["type"] == "event" and m["kind"] == "chat")
        assert event["p"] == me
        texts.append(event["text"])
    assert texts == [str(n) for n in range(6)]
    await still_alive(ws)
    await ws.close()


async def test_a_frame_cut_after_its_header_whose_payload_looks_like_a_frame_is_read_correctly(app: App) -> None:
    ws, welcome = await join_game(app, "frames-header-cut")
    payload = b'{"type":"chat","text":"whole"}'
    # Choose the mask so that the masked payload starts with 0x81 0x85: a small text frame header.
    key = bytes((payload[0] ^ 0x81, payload[1] ^ 0x85)) + os.urandom(2)
    frame = masked_text_frame(payload, key=key)
    assert frame[6:8] == b"\x81\x85"
    ws.transport.write(frame[:6])  # header and mask only
    await asyncio.sleep(0.05)
    ws.transport.write(frame[6:])
    event = await recv_until(ws, lambda m: m["type"] == "event" and m["kind"] == "chat")
    assert (event["p"], event["text"]) == (welcome["you"], "whole")
    await still_alive(ws)
    await ws.close()
    assert ws.close_code == 1000


async def test_a_client_that_pings_without_reading_is_dropped_before_its_pongs_pile_up(app: App) -> None:
    ws = await open_game(app, "ping-flood")
    ws.transport.pause_reading()
    ping = bytes((0x89, 0x80 | 125)) + b"\x00\x00\x00\x00" + b"p" * 125  # masked with a zero key
    sent = 0
    with contextlib.suppress(ConnectionError):
        for _ in range(400):
            ws.transport.write(ping * 100)
            sent += 100
            await asyncio.sleep(0.001)
            if ws.transport.is_closing():
                break
    ws.transport.resume_reading()
    await wait_for(lambda: ws.state is State.CLOSED, timeout=3.0)
    assert sent * 125 < 8 * MAX_UNSENT_BYTES, "the node kept answering pings nobody read"
