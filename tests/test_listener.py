"""The node's own WebSocket I/O layer (`server/net/listener.py`, `server/net/connection.py`) on real sockets, with short
timeouts: keepalive pings and drops, handshake deadlines, the closing handshake, shutdown, early messages."""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from http import HTTPStatus

import pytest
from websockets.asyncio.client import connect
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.http11 import Request, Response

from server.net.connection import GameConnection, Payload
from server.net.listener import Listener, Timeouts
from tests.serverkit import RawClient

FAST = Timeouts(open_s=0.5, close_s=0.4, ping_interval_s=0.4, ping_timeout_s=0.4, sweep_s=0.05)
Handler = Callable[[GameConnection], Awaitable[None]]


async def accept_all(conn: GameConnection, request: Request) -> Response | None:
    if request.path == "/plain":
        body = b'{"ok":true}'
        return Response(HTTPStatus.OK, "OK", Headers([("Content-Length", str(len(body)))]), body)
    return None


async def wait_for_close(conn: GameConnection) -> None:
    await conn.wait_closed()


@asynccontextmanager
async def listening(handler: Handler = wait_for_close, timeouts: Timeouts = FAST) -> AsyncIterator[Listener]:
    listener = Listener(accept_all, handler, max_size=4096, timeouts=timeouts, logger=logging.getLogger("test.ws"))
    await listener.start("127.0.0.1", 0, backlog=16)
    try:
        yield listener
    finally:
        listener.close()
        await asyncio.wait_for(listener.wait_closed(), 5)


def close_code(payload: bytes) -> int:
    code: int = struct.unpack("!H", payload[:2])[0]
    return code


async def test_a_silent_client_is_pinged_and_dropped_with_1011_when_it_never_answers() -> None:
    async with listening() as listener:
        client = await RawClient.open(listener.port)
        started = time.monotonic()
        assert (await client.frame()) == (0x9, b"")  # a ping after ping_interval_s of silence
        opcode, payload = await client.frame()
        assert opcode == 0x8 and close_code(payload) == 1011 and b"keepalive" in payload
        assert await client.at_eof()
        assert time.monotonic() - started >= FAST.ping_interval_s + FAST.ping_timeout_s - FAST.sweep_s
        client.close()


async def test_a_client_that_answers_pings_stays_connected() -> None:
    async with listening() as listener:
        async with connect(f"ws://127.0.0.1:{listener.port}/ws", ping_interval=None) as ws:
            await asyncio.sleep(3 * (FAST.ping_interval_s + FAST.ping_timeout_s))  # websockets answers each ping
            await ws.ping()
            assert len(listener.connections) == 1


async def test_a_connection_that_sends_no_request_is_closed_at_the_open_timeout() -> None:
    async with listening() as listener:
        client = await RawClient.open(listener.port, handshake=False)
        started = time.monotonic()
        assert await client.at_eof()
        assert FAST.open_s - FAST.sweep_s <= time.monotonic() - started < FAST.open_s + 1.0
        client.close()


async def test_a_client_that_never_answers_the_servers_close_is_cut_at_the_close_timeout() -> None:
    async def close_at_once(conn: GameConnection) -> None:
        conn.close(1000, "bye")
        await conn.wait_closed()

    async with listening(close_at_once) as listener:
        client = await RawClient.open(listener.port)
        opcode, payload = await client.frame()
        assert opcode == 0x8 and close_code(payload) == 1000
        started = time.monotonic()
        assert await client.at_eof()
        assert time.monotonic() - started >= FAST.close_s - FAST.sweep_s
        client.close()


async def test_a_client_close_is_answered_and_the_server_ends_the_tcp_connection() -> None:
    async with listening() as listener:
        client = await RawClient.open(listener.port)
        client.send(0x8, struct.pack("!H", 1000) + b"done")
        opcode, payload = await client.frame()
        assert opcode == 0x8 and close_code(payload) == 1000
        assert await client.at_eof(timeout=FAST.close_s / 2)  # at once, not at a timeout
        client.close()


async def test_plain_http_gets_its_answer_and_the_connection_ends() -> None:
    async with listening() as listener:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 2)
        assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b'{"ok":true}')
        writer.close()


async def test_a_handler_that_fails_closes_the_connection_with_1011(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(conn: GameConnection) -> None:
        raise RuntimeError("boom")

    async with listening(broken) as listener:
        async with connect(f"ws://127.0.0.1:{listener.port}/ws") as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 3)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
    assert "connection handler failed" in caplog.text


async def test_messages_sent_before_the_session_attaches_are_delivered_first_and_in_order() -> None:
    got: list[bytes] = []
    attached = asyncio.Event()

    async def slow_to_attach(conn: GameConnection) -> None:
        await asyncio.sleep(0.3)

        def on_message(payload: Payload, binary: bool) -> None:
            got.append(bytes(payload))
            if len(got) == 4:
                attached.set()

        conn.attach(on_message)
        await conn.wait_closed()

    async with listening(slow_to_attach) as listener:
        async with connect(f"ws://127.0.0.1:{listener.port}/ws") as ws:
            for text in ("one", "two", "three"):
                await ws.send(text)
            await asyncio.sleep(0.5)
            await ws.send("four")
            await asyncio.wait_for(attached.wait(), 3)
    assert got == [b"one", b"two", b"three", b"four"]


async def test_shutdown_closes_open_connections_with_1001_and_refuses_new_ones() -> None:
    listener = Listener(accept_all, wait_for_close, max_size=4096, timeouts=FAST, logger=logging.getLogger("test"))
    await listener.start("127.0.0.1", 0, backlog=16)
    port = listener.port
    ws = await connect(f"ws://127.0.0.1:{port}/ws")
    listener.close()
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 3)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    await asyncio.wait_for(listener.wait_closed(), 3)
    assert not listener.connections
    with pytest.raises((OSError, InvalidStatus)):
        await connect(f"ws://127.0.0.1:{port}/ws", open_timeout=2)


async def test_a_client_that_stops_reading_then_half_closes_is_cut_at_the_close_timeout() -> None:
    """Its end of stream closes the WebSocket, but the transport cannot flush what the client never reads:
    without a deadline it would stay forever (and keep shutdown waiting)."""
    flooded = asyncio.Event()

    async def flood(conn: GameConnection) -> None:
        frame = b"\x82\x7e\xff\xff" + bytes(65535)  # binary frames the client never reads
        while conn.transport.get_write_buffer_size() < 4 << 20:
            conn.transport.write(frame)
        flooded.set()
        await conn.wait_closed()

    async with listening(flood) as listener:
        client = await RawClient.open(listener.port)
        await asyncio.wait_for(flooded.wait(), 5)
        client.writer.write_eof()
        started = time.monotonic()
        while listener.connections:
            assert time.monotonic() - started < FAST.close_s + 2.0, "the connection was never cut"
            await asyncio.sleep(0.02)
        client.close()
