"""A websockets server connection that hands each complete data message to a callback as it arrives.

websockets normally queues each message and wakes the handler task to `recv()` it: a task step per
message. Game input arrives at 30 Hz per player, so here every data message (text or binary, whole or
reassembled from fragments) goes synchronously to `on_message`, in arrival order; messages that come
before the session attaches wait in a short list that the session drains first.

The common frame, a small final masked text frame starting right at a frame boundary, is cut out of
the bytes directly: websockets' generator-based parser costs more than the rest of handling an input.
Anything else (partial frames, longer or fragmented or binary messages, control frames, the closing
handshake) goes through websockets' own parser unchanged, which then sees a stream that starts at a
frame boundary, exactly as if the frames we took had never been there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.frames import Frame, Opcode
from websockets.protocol import Event, Protocol, State
from websockets.streams import StreamReader

try:
    from websockets.speedups import apply_mask
except ImportError:  # websockets without its C extension
    from websockets.utils import apply_mask

from server.auth import Identity

_TEXT = Opcode.TEXT
_BINARY = Opcode.BINARY
_CONT = Opcode.CONT
_DATA = (_TEXT, _BINARY, _CONT)
_OPEN = State.OPEN
_FIN_TEXT = 0x81  # FIN, no RSV bits, opcode 1
_MASKED = 0x80
_SHORT = 126  # payload lengths below this fit in the second header byte
_AT_EOF = StreamReader.at_eof.__code__


def at_frame_boundary(protocol: Protocol) -> bool:
    """True when websockets' parser waits for the first byte of a new frame, and holds no bytes.

    Its parser is a chain of generators; between frames the innermost one is `StreamReader.at_eof`.
    An empty buffer alone is not enough: after a frame's header the parser waits for the payload with
    an empty buffer too. Any other shape (a future websockets) reads as "not at a boundary", which
    only turns the fast path off.
    """
    if protocol.reader.buffer or protocol.current_size is not None:
        return False
    generator: Any = protocol.parser
    while True:
        inner = getattr(generator, "gi_yieldfrom", None)
        if inner is None:
            return getattr(generator, "gi_code", None) is _AT_EOF
        generator = inner


@dataclass(frozen=True, slots=True)
class JoinRequest:
    """What the handshake established: who connects, and to which room."""

    identity: Identity
    room_id: str
    mode: str
    # A lobby match: the players the lobby seated in the room (None: a development room, open to anyone).
    roster: frozenset[str] | None = None


Payload = bytes | bytearray | memoryview
# (payload, is_binary)
MessageHandler = Callable[[Payload, bool], None]
# Messages that may wait for the session to attach; more than that is a flood the session will refuse.
EARLY_LIMIT = 256
# Bytes we may owe a client that does not read. Rooms skip states long before this; what else can pile
# up is websockets' automatic answers (a pong per ping), which a client controls.
MAX_UNSENT_BYTES = 1 << 20


class GameConnection(ServerConnection):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.join_request: JoinRequest | None = None  # set for /game
        self.identity: Identity | None = None  # set for /lobby
        self.on_message: MessageHandler | None = None
        self._early: list[tuple[Payload, bool]] = []
        self._fragments: list[Payload] = []
        self._fragments_binary = False

    def attach(self, handler: MessageHandler) -> None:
        """Route messages to `handler` from now on, after those that arrived before."""
        early, self._early = self._early, []
        for payload, binary in early:
            handler(payload, binary)
        self.on_message = handler

    def detach(self) -> None:
        self.on_message = None

    def _deliver(self, payload: Payload, binary: bool) -> None:
        handler = self.on_message
        if handler is not None:
            handler(payload, binary)
            return
        if len(self._early) < EARLY_LIMIT:
            self._early.append((payload, binary))

    def data_received(self, data: bytes) -> None:
        if self.transport.get_write_buffer_size() > MAX_UNSENT_BYTES:
            self.logger.warning("dropping a client that sends but does not read (%d unsent bytes)",
                                self.transport.get_write_buffer_size())
            self.transport.abort()
            return
        handler = self.on_message
        protocol = self.protocol
        if handler is None or protocol.state is not _OPEN or not at_frame_boundary(protocol):
            super().data_received(data)
            return
        pos = 0
        end = len(data)
        while end - pos >= 6:
            second = data[pos + 1]
            if data[pos] != _FIN_TEXT or second < _MASKED:
                break
            length = second - _MASKED
            if length >= _SHORT:
                break
            start = pos + 6
            stop = start + length
            if stop > end:
                break
            payload = apply_mask(data[start:stop], data[pos + 2:start])
            pos = stop
            handler(payload, False)
        if pos < end:
            super().data_received(data[pos:] if pos else data)

    def process_event(self, event: Event) -> None:
        if self.request is None or not isinstance(event, Frame) or event.opcode not in _DATA:
            super().process_event(event)  # the handshake request, and control frames
            return
        if event.opcode is _CONT:
            self._fragments.append(event.data)
            if event.fin:
                payload = b"".join(self._fragments)
                self._fragments = []
                self._deliver(payload, self._fragments_binary)
        elif event.fin:
            self._deliver(event.data, event.opcode is _BINARY)
        else:
            self._fragments = [event.data]
            self._fragments_binary = event.opcode is _BINARY
