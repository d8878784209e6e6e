"""One player's `/game` connection: hello, join, then every client message checked, limited and dispatched.

Handlers never touch the game directly: moves and fires are queued on the room for its next tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import TYPE_CHECKING

from server.broadcast import send_frames, text_frame
from server.connection import GameConnection, JoinRequest
from server.protocol import (
    PROTOCOL_VERSION,
    Chat,
    ClientMessage,
    CloseCode,
    ErrorCode,
    Fire,
    Hello,
    Input,
    Leave,
    Ping,
    ProtocolError,
    encode,
    error_message,
    parse_client_message,
)
from server.room import Room, Seat

if TYPE_CHECKING:
    from server.node import Node


class TokenBucket:
    """Per-connection flood control: `burst` messages at once, refilled at `rate` per second."""

    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last = now

    def take(self, now: float) -> bool:
        tokens = self._tokens + (now - self._last) * self._rate
        self._last = now
        if tokens > self._burst:
            tokens = self._burst
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True


class PlayerSession:
    """Runs one connection. Messages are handled synchronously as they arrive (see `GameConnection`);
    the session task only waits for the connection to end and owns the closing handshake."""

    def __init__(self, node: Node, ws: GameConnection, join: JoinRequest, logger: logging.Logger) -> None:
        self.node = node
        self.ws = ws
        self.join = join
        self.log = logger
        self.room: Room | None = None
        self.seat: Seat | None = None
        self._loop = asyncio.get_running_loop()
        self._clock = node.clock
        settings = node.settings
        self._bucket = TokenBucket(settings.rate_per_s, settings.rate_burst, self._clock())
        self._closer: asyncio.Task[None] | None = None

    async def run(self) -> None:
        ws = self.ws
        identity = self.join.identity
        sock = ws.transport.get_extra_info("socket")
        if sock is not None:
            # A bounded kernel buffer, so that a client that stops reading shows up in the transport's
            # buffer (where the room skips it) within seconds instead of after megabytes of stale states.
            with contextlib.suppress(OSError):  # the peer may already be gone
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.node.settings.send_buffer_bytes)
        if not self.node.claim_player(identity.player_id, ws):
            self._refuse(ProtocolError(ErrorCode.ALREADY_CONNECTED,
                                       "this player is already connected on this node", CloseCode.POLICY))
            await self._closed()
            return
        hello_timer = self._loop.call_later(self.node.settings.hello_timeout_s, self._hello_timeout)
        try:
            # From here on, messages are handled as they arrive (GameConnection); this task only waits.
            ws.attach(self._on_message)
            await ws.wait_closed()
        finally:
            hello_timer.cancel()
            ws.detach()
            try:
                self._leave_room(left=False)
            finally:
                self.node.release_player(identity.player_id, ws)
            await self._closed()

    async def _closed(self) -> None:
        if self._closer is not None:
            await self._closer

    # -- synchronous message handling ----------------------------------------------------------------

    def _send(self, payload: bytes) -> None:
        send_frames(self.ws, text_frame(payload))

    def _close(self, code: CloseCode, reason: str) -> None:
        if self._closer is None:
            self._closer = self._loop.create_task(self.ws.close(code, reason))

    def _refuse(self, error: ProtocolError) -> None:
        self._send(error_message(error.code, error.message))
        if error.close is not None:
            self._close(error.close, error.code.value)

    def _hello_timeout(self) -> None:
        if self.seat is None and self._closer is None:
            self._refuse(ProtocolError(ErrorCode.HELLO_REQUIRED, "no hello in time", CloseCode.POLICY))

    @property
    def conn_id(self) -> str:
        return f"game-{self.ws.id}"

    def _leave_room(self, *, left: bool) -> None:
        room, seat = self.room, self.seat
        self.seat = None
        if room is not None and seat is not None:
            room.disconnect(seat, self._clock())
            self.node.unseated(room, seat, self.conn_id, left=left)

    def _on_message(self, data: bytes | bytearray | memoryview, binary: bool) -> None:
        if self._closer is not None:
            return  # closing: whatever still arrives is dropped
        try:
            if not self._bucket.take(self._clock()):
                self._refuse(ProtocolError(ErrorCode.RATE_LIMITED, "too many messages; slow down", CloseCode.POLICY))
                return
            if binary:
                raise ProtocolError(ErrorCode.BAD_MESSAGE, "binary frames are not supported; send JSON text frames")
            msg = parse_client_message(data)
            if self.seat is None:
                self._before_join(msg)
            else:
                self._in_room(msg)
        except ProtocolError as error:
            self._refuse(error)
        except Exception:
            self.log.exception("session of player %s failed on a message", self.join.identity.player_id)
            self._refuse(ProtocolError(ErrorCode.INTERNAL_ERROR, "the server failed to handle a message",
                                       CloseCode.INTERNAL))

    def _before_join(self, msg: ClientMessage) -> None:
        if isinstance(msg, Ping):
            self._send(encode({"type": "pong", "t": msg.t, "st": self.node.wall_ms()}))
            return
        if not isinstance(msg, Hello):
            raise ProtocolError(ErrorCode.HELLO_REQUIRED, "send hello first", CloseCode.POLICY)
        if msg.v != PROTOCOL_VERSION:
            raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION,
                                f"protocol version {msg.v} is not supported; this server speaks {PROTOCOL_VERSION}",
                                CloseCode.POLICY)
        room = self.node.room_for(self.join)
        self.seat = room.join(self.join.identity, self.ws, self._clock())
        self.room = room
        self.node.seated(room, self.seat, self.conn_id)

    def _in_room(self, msg: ClientMessage) -> None:
        room = self.room
        seat = self.seat
        assert room is not None and seat is not None
        if isinstance(msg, Input):
            room.queue_move(seat.pid, msg.seq, msg.dx, msg.dy)
        elif isinstance(msg, Fire):
            room.queue_fire(seat.pid, msg.seq, msg.angle)
        elif isinstance(msg, Ping):
            self._send(encode({"type": "pong", "t": msg.t, "st": self.node.wall_ms()}))
        elif isinstance(msg, Chat):
            room.post_chat(seat.pid, msg.text)
        elif isinstance(msg, Leave):
            self._leave_room(left=True)
            self._close(CloseCode.NORMAL, "left")
        elif isinstance(msg, Hello):
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "hello was already received")
