"""One player's `/game` connection: hello, join, then every client message checked, limited and dispatched:
the host's own messages here, the game's to the room (`Room.handle`), each decoded against its schema first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Protocol

from game.api import Message
from server.net.connection import GameConnection, JoinRequest, game_conn_id
from server.net.link import ClientLink, TokenBucket
from server.net.protocol import (
    PROTOCOL_VERSION,
    Chat,
    CloseCode,
    ErrorCode,
    Hello,
    Leave,
    MessageDecoder,
    Ping,
    ProtocolError,
    encode,
)
from server.net.wire import Encoding
from server.ops.settings import Settings
from server.rooms.room import Room, Seat


class RoomHost(Protocol):
    """What a session needs of the node hosting its rooms (`server/cluster/node.py`)."""

    settings: Settings
    clock: Callable[[], float]

    def wall_ms(self) -> int: ...

    async def claim_player(self, player_id: str, ws: GameConnection) -> bool: ...

    def release_player(self, player_id: str, ws: GameConnection) -> None: ...

    def room_for(self, join: JoinRequest) -> Room: ...

    def watchable_room(self, room_id: str) -> Room: ...

    def decoder_for(self, mode: str) -> MessageDecoder: ...

    def seated(self, room: Room, seat: Seat, conn_id: str) -> None: ...

    def unseated(self, room: Room, seat: Seat, conn_id: str, *, left: bool) -> None: ...


_HOST_TYPES = frozenset({Hello, Ping, Chat, Leave})


class PlayerSession:
    """Runs one connection. Messages are handled synchronously as they arrive (see `GameConnection`);
    the session task only waits for the connection to end and owns the closing handshake."""

    def __init__(self, node: RoomHost, ws: GameConnection, join: JoinRequest, logger: logging.Logger) -> None:
        self.node = node
        self.ws = ws
        self.join = join
        self.log = logger
        self.room: Room | None = None
        self.seat: Seat | None = None
        self._loop = asyncio.get_running_loop()
        self._clock = node.clock
        settings = node.settings
        bucket = TokenBucket(settings.rate_per_s, settings.rate_burst, self._clock())
        self.link = ClientLink(ws, bucket, self._clock)
        self._decode = node.decoder_for(join.mode).decode
        self._watching: Room | None = None  # a spectator's room, once its hello was taken

    async def run(self) -> None:
        ws = self.ws
        identity = self.join.identity
        sock = ws.transport.get_extra_info("socket")
        if sock is not None:
            # A bounded kernel buffer, so that a client that stops reading shows up in the transport's
            # buffer (where the room skips it) within seconds instead of after megabytes of stale states.
            with contextlib.suppress(OSError):  # the peer may already be gone
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.node.settings.send_buffer_bytes)
        if self.join.spectator:
            await self._spectate()
            return
        if not await self.node.claim_player(identity.player_id, ws):
            self.link.refuse(ProtocolError(ErrorCode.ALREADY_CONNECTED,
                                       "this player is already connected on this node", CloseCode.POLICY))
            await self.link.closed()
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
            await self.link.closed()

    async def _spectate(self) -> None:
        """A spectator's connection: `hello`, then the room's broadcast; `ping` and `leave` only."""
        ws = self.ws
        hello_timer = self._loop.call_later(self.node.settings.hello_timeout_s, self._spectator_hello_timeout)
        try:
            ws.attach(self._on_spectator_message)
            await ws.wait_closed()
        finally:
            hello_timer.cancel()
            ws.detach()
            if self._watching is not None:
                self._watching.unwatch(ws)
            await self.link.closed()

    def _spectator_hello_timeout(self) -> None:
        if self._watching is None and not self.link.closing:
            self.link.refuse(ProtocolError(ErrorCode.HELLO_REQUIRED, "no hello in time", CloseCode.POLICY))

    def _on_spectator_message(self, data: bytes | bytearray | memoryview, binary: bool) -> None:
        if self.link.closing:
            return
        try:
            self.link.admit(binary)
            msg = self._decode(data)
            if isinstance(msg, Ping):
                self.link.send(encode({"type": "pong", "t": msg.t, "st": self.node.wall_ms()}))
            elif isinstance(msg, Leave):
                self.link.close(CloseCode.NORMAL, "left")
            elif isinstance(msg, Hello) and self._watching is None:
                encoding = self._check_version(msg)
                room = self.node.watchable_room(self.join.room_id)
                room.watch(self.ws, self._clock(), encoding)
                self._watching = room
            elif self._watching is None:
                raise ProtocolError(ErrorCode.HELLO_REQUIRED, "send hello first", CloseCode.POLICY)
            else:
                raise ProtocolError(ErrorCode.READ_ONLY, "a spectator sends nothing but ping and leave")
        except ProtocolError as error:
            self.link.refuse(error)
        except Exception:
            self.log.exception("spectator session of player %s failed on a message", self.join.identity.player_id)
            self.link.refuse(ProtocolError(ErrorCode.INTERNAL_ERROR, "the server failed to handle a message",
                                       CloseCode.INTERNAL))

    # -- synchronous message handling ----------------------------------------------------------------

    def _hello_timeout(self) -> None:
        if self.seat is None and not self.link.closing:
            self.link.refuse(ProtocolError(ErrorCode.HELLO_REQUIRED, "no hello in time", CloseCode.POLICY))

    @property
    def conn_id(self) -> str:
        return game_conn_id(self.ws)

    def _leave_room(self, *, left: bool) -> None:
        room, seat = self.room, self.seat
        self.seat = None
        if room is not None and seat is not None:
            room.disconnect(seat, self._clock())
            self.node.unseated(room, seat, self.conn_id, left=left)

    def _on_message(self, data: bytes | bytearray | memoryview, binary: bool) -> None:
        if self.link.closing:
            return  # closing: whatever still arrives is dropped
        try:
            self.link.admit(binary)
            msg = self._decode(data)
            if self.seat is None:
                self._before_join(msg)
            else:
                self._in_room(msg)
        except ProtocolError as error:
            self.link.refuse(error)
        except Exception:
            self.log.exception("session of player %s failed on a message", self.join.identity.player_id)
            self.link.refuse(ProtocolError(ErrorCode.INTERNAL_ERROR, "the server failed to handle a message",
                                       CloseCode.INTERNAL))

    def _before_join(self, msg: Message) -> None:
        if isinstance(msg, Ping):
            self.link.send(encode({"type": "pong", "t": msg.t, "st": self.node.wall_ms()}))
            return
        if not isinstance(msg, Hello):
            raise ProtocolError(ErrorCode.HELLO_REQUIRED, "send hello first", CloseCode.POLICY)
        encoding = self._check_version(msg)
        room = self.node.room_for(self.join)
        ended = room.ended_for(self.join.identity.player_id)
        if ended is not None:
            # Their hello crossed the end of their match (the lobby had not heard of it yet): not an error, the
            # match's result and a normal close; the lobby, asked again, knows the match is over.
            self.link.close(CloseCode.NORMAL, "match over", last=ended)
            return
        self.seat = room.join(self.join.identity, self.ws, self._clock(), encoding)
        self.room = room
        self.node.seated(room, self.seat, self.conn_id)

    @staticmethod
    def _check_version(msg: Hello) -> Encoding:
        """The hello's version checked, and the state encoding it asks for."""
        if msg.v != PROTOCOL_VERSION:
            raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION,
                                f"protocol version {msg.v} is not supported; this server speaks {PROTOCOL_VERSION}",
                                CloseCode.POLICY)
        try:
            return Encoding(msg.encoding)
        except ValueError:
            raise ProtocolError(ErrorCode.UNSUPPORTED_ENCODING,
                                f"encoding {msg.encoding[:32]!r} is not one of "
                                f"{', '.join(encoding.value for encoding in Encoding)}", CloseCode.POLICY) from None

    def _in_room(self, msg: Message) -> None:
        room = self.room
        seat = self.seat
        assert room is not None and seat is not None
        kind = type(msg)
        if kind not in _HOST_TYPES:
            room.handle(seat, msg)
        elif isinstance(msg, Ping):
            self.link.send(encode({"type": "pong", "t": msg.t, "st": self.node.wall_ms()}))
        elif isinstance(msg, Chat):
            room.post_chat(seat.pid, msg.text)
        elif isinstance(msg, Leave):
            self._leave_room(left=True)
            self.link.close(CloseCode.NORMAL, "left")
        elif isinstance(msg, Hello):
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "hello was already received")
