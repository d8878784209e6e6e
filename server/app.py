"""Wires a node together: the WebSocket server, its small HTTP endpoints, auth at the handshake, the rooms.

`App` is an async context manager so that tests run a real node in-process on a free port, and
`tickroom serve` runs the same thing until a signal arrives.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping
from contextlib import AsyncExitStack
from http import HTTPStatus
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from game.base import GameFactory
from server.auth import AuthError, verify_token
from server.connection import GameConnection, JoinRequest
from server.node import Node
from server.protocol import MAX_FRAME_BYTES, ErrorCode, handshake_error_body
from server.session import PlayerSession
from server.settings import Settings

log = logging.getLogger("tickroom.app")

ROOM_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def json_response(status: HTTPStatus, body: bytes) -> Response:
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                       ("Cache-Control", "no-store")])
    return Response(status.value, status.phrase, headers, body)


def refuse(status: HTTPStatus, code: ErrorCode, message: str) -> Response:
    return json_response(status, handshake_error_body(code, message))


def bearer_token(request: Request, query: dict[str, list[str]]) -> str | None:
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    tokens = query.get("token")
    return tokens[0] if tokens else None


class App:
    """A running node: `async with App(settings, modes) as app:` serves on `app.port` until the block ends."""

    def __init__(self, settings: Settings, modes: Mapping[str, GameFactory]) -> None:
        self.settings = settings
        self.modes = dict(modes)
        self._stack = AsyncExitStack()
        self._server: Server | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self.node: Node | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = next(iter(self._server.sockets)).getsockname()[1]
        return port

    @property
    def url(self) -> str:
        return f"ws://{self.settings.host}:{self.port}"

    async def __aenter__(self) -> App:
        self._tasks = await self._stack.enter_async_context(asyncio.TaskGroup())
        self.node = Node(self.settings, self.modes, self._tasks)
        self._server = await serve(
            self._handle,
            self.settings.host,
            self.settings.port,
            process_request=self._process_request,
            create_connection=GameConnection,
            max_size=MAX_FRAME_BYTES,
            compression=None,
            ping_interval=20,
            ping_timeout=20,
            close_timeout=2,
            logger=logging.getLogger("tickroom.ws"),
        )
        log.info("node %s listening on %s", self.settings.node_id, self.url)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.shutdown()
        await self._stack.__aexit__(exc_type, exc, tb)

    async def shutdown(self) -> None:
        if self.node is not None:
            self.node.accepting = False
        if self._server is not None:
            self._server.close(close_connections=True)
            await self._server.wait_closed()
            self._server = None
        if self.node is not None:
            self.node.stop_rooms()

    # -- handshake ---------------------------------------------------------------------------------

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        query = parse_qs(url.query)
        assert self.node is not None
        if url.path == "/healthz":
            return json_response(HTTPStatus.OK, b'{"status":"ok"}')
        if url.path == "/stats":
            return json_response(HTTPStatus.OK, await self.node.stats())
        if url.path != "/game":
            return refuse(HTTPStatus.NOT_FOUND, ErrorCode.NOT_FOUND, f"no endpoint at {url.path}")
        token = bearer_token(request, query)
        if token is None:
            return refuse(HTTPStatus.UNAUTHORIZED, ErrorCode.TOKEN_MISSING,
                          "send the token as 'Authorization: Bearer TOKEN' or '?token=TOKEN'")
        try:
            identity = verify_token(self.settings.jwt_secret, token)
        except AuthError as error:
            return refuse(HTTPStatus.UNAUTHORIZED, ErrorCode(error.code), error.message)
        rooms = query.get("room")
        if not rooms:
            return refuse(HTTPStatus.BAD_REQUEST, ErrorCode.ROOM_REQUIRED, "/game needs ?room=ROOM_ID")
        room_id = rooms[0]
        if ROOM_ID.fullmatch(room_id) is None:
            return refuse(HTTPStatus.BAD_REQUEST, ErrorCode.BAD_ROOM_ID,
                          "a room id is 1 to 64 characters of A-Z a-z 0-9 _ -")
        mode = query.get("mode", ["arena"])[0]
        if mode not in self.modes:
            return refuse(HTTPStatus.BAD_REQUEST, ErrorCode.UNKNOWN_MODE,
                          f"unknown mode {mode[:40]!r}; this node has {sorted(self.modes)}")
        assert isinstance(connection, GameConnection)
        connection.join_request = JoinRequest(identity, room_id, mode)
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        assert isinstance(ws, GameConnection) and ws.join_request is not None and self.node is not None
        await PlayerSession(self.node, ws, ws.join_request, logging.getLogger("tickroom.session")).run()
