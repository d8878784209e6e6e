"""Helpers for tests that run a real node in-process and talk to it over real WebSocket connections."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import struct
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from game.api import Game, GameContext, GameDefinition
from game.arena import DEFINITION as ARENA
from server.app import App
from server.cli import game_modes
from server.net.auth import mint_token
from server.ops.settings import DEV_SECRET, Settings
from server.rooms.catalog import hosted


def node_settings(**overrides: Any) -> Settings:
    # Rooms by id (direct joins); Redis at a port where nothing listens: the lobby waits for it in the
    # background while rooms run, as a node does through a Redis outage.
    values: dict[str, Any] = {"node_id": "test-node", "port": 0, "redis_url": "redis://127.0.0.1:1",
                              "database_url": "postgresql://unused", "direct_join": True,
                              "stale_probe_s": 0.5,
                              # Every in-process node shares the test's process, and its CPU time: no load limit.
                              "cpu_limit": 1.0}
    values.update(overrides)
    return Settings.load(environ={}, **values)


def new_token(name: str | None = None, *, player_id: str | None = None, ttl_s: float = 600.0,
              secret: str = DEV_SECRET) -> str:
    return mint_token(secret, name or f"p-{uuid.uuid4().hex[:8]}", player_id=player_id or str(uuid.uuid4()),
                      ttl_s=ttl_s)


def variant(mode: str, make: Callable[[GameContext], Game], base: GameDefinition = ARENA) -> GameDefinition:
    """A game like `base` (the arena) under another mode name, built by `make`: a test's stand-in game."""
    return dataclasses.replace(base, mode=mode, make=make)


Modes = Mapping[str, GameDefinition | Callable[[GameContext], Game]]


async def start_app(modes: Modes | None = None, *, persist: bool = False, **overrides: Any) -> App:
    """A node serving every installed game, plus `modes`: a definition adds (or replaces) a game, a callable
    replaces how an installed game of that mode is built."""
    settings = node_settings(**overrides)
    games = game_modes(settings)
    for mode, entry in (modes or {}).items():
        games[mode] = hosted(entry, settings) if isinstance(entry, GameDefinition) else games[mode].with_maker(entry)
    app = App(settings, games, persist=persist)
    await app.__aenter__()
    return app


async def open_game(app: App, room: str, *, token: str | None = None, mode: str | None = None,
                    **connect_kwargs: Any) -> ClientConnection:
    url = f"{app.url}/game?room={room}" + (f"&mode={mode}" if mode else "")
    return await connect(url, additional_headers={"Authorization": f"Bearer {token or new_token()}"},
                         compression=None, open_timeout=5, **connect_kwargs)


async def recv_json(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), timeout)
    message: dict[str, Any] = orjson.loads(raw)
    return message


async def recv_until(ws: ClientConnection, predicate: Callable[[dict[str, Any]], bool],
                     timeout: float = 5.0) -> dict[str, Any]:
    """The first message matching `predicate`, skipping others; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no matching message in time")
        message = await recv_json(ws, remaining)
        if predicate(message):
            return message


async def join_game(app: App, room: str, **kwargs: Any) -> tuple[ClientConnection, dict[str, Any]]:
    ws = await open_game(app, room, **kwargs)
    await ws.send('{"type":"hello","v":1}')
    welcome = await recv_until(ws, lambda m: m["type"] in ("welcome", "error"))
    return ws, welcome


async def no_match_end_for(ws: ClientConnection, seconds: float) -> int:
    """Read for `seconds`: no `match_end` may come; how many states did."""
    states = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        try:
            message = await recv_json(ws, timeout=left)
        except TimeoutError:
            break
        assert message["type"] != "match_end", f"the match ended while players were inside their grace: {message}"
        states += message["type"] == "state"
    return states


def is_type(kind: str) -> Callable[[dict[str, Any]], bool]:
    return lambda message: message["type"] == kind


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(interval)


def is_event(kind: str, **fields: Any) -> Callable[[dict[str, Any]], bool]:
    return lambda m: m["type"] == "event" and m["kind"] == kind and all(m.get(k) == v for k, v in fields.items())


async def closed_with(ws: ClientConnection, timeout: float = 5.0) -> int:
    """Read until the server closes the connection; its close code."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()
    except ConnectionClosed:
        pass
    assert ws.close_code is not None
    return ws.close_code


def lobby_prefix() -> str:
    """A key prefix of its own for one test: no flushing, no interference with other tests."""
    return f"t{uuid.uuid4().hex[:10]}"


async def start_lobby_app(redis_url: str, **overrides: Any) -> App:
    """A node with a real lobby: seat tickets required, short timers unless overridden."""
    values: dict[str, Any] = {"redis_url": redis_url, "direct_join": False, "lobby_prefix": lobby_prefix(),
                              "countdown_s": 1.0, "node_heartbeat_s": 0.2, "node_dead_after_s": 2.0}
    values.update(overrides)
    return await start_app(**values)


async def open_lobby(app: App, token: str | None = None, **connect_kwargs: Any) -> ClientConnection:
    return await connect(f"{app.url}/lobby", additional_headers={"Authorization": f"Bearer {token or new_token()}"},
                         compression=None, open_timeout=5, **connect_kwargs)


async def join_lobby(app: App, token: str | None = None, mode: str = "arena") -> ClientConnection:
    ws = await open_lobby(app, token)
    await ws.send(orjson.dumps({"type": "join", "v": 1, "mode": mode}).decode())
    return ws


class RawClient:
    """A WebSocket client that answers nothing by itself, to see exactly what the server sends and when."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, *, handshake: bool = True, path: str = "/ws", token: str | None = None) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        if handshake:
            key = base64.b64encode(os.urandom(16)).decode()
            auth = f"Authorization: Bearer {token}\r\n" if token else ""
            writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{auth}\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
            assert head.startswith(b"HTTP/1.1 101"), head
        return client

    async def frame(self, timeout: float = 3.0) -> tuple[int, bytes]:
        """The next frame from the server: (opcode, payload)."""
        first, second = await asyncio.wait_for(self.reader.readexactly(2), timeout)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self.reader.readexactly(2))
        return first & 0x0F, await self.reader.readexactly(length)

    async def at_eof(self, timeout: float = 3.0, *, unread_ok: bool = False) -> bool:
        """Whether the server ends the connection within `timeout` (with nothing more sent, unless `unread_ok`)."""
        rest = await asyncio.wait_for(self.reader.read(), timeout)
        return unread_ok or rest == b""

    async def message(self, timeout: float = 3.0) -> dict[str, Any]:
        """The next text frame's JSON, skipping pings."""
        while True:
            opcode, payload = await self.frame(timeout)
            if opcode == 0x1:
                message: dict[str, Any] = orjson.loads(payload)
                return message

    def send_json(self, message: dict[str, Any]) -> None:
        self.send(0x1, orjson.dumps(message))

    def send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(bytes((0x80 | opcode, 0x80 | len(payload))) + mask + masked)

    def close(self) -> None:
        self.writer.close()
